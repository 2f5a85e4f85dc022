//! The init's failures, one variant per step, in the words callers see.

use std::ffi::CString;
use std::path::PathBuf;

use nix::errno::Errno;

/// Why the init could not set up or become the container's process. The
/// texts reach `create`/`exec` callers verbatim; the `exec:` ones are runc's
/// words, which clients match (docs/clients.md).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("exec: {program:?}: executable file not found in $PATH")]
    NotInPath { program: String },
    #[error("exec: {program:?}: stat {}: {reason}", path.display())]
    Stat {
        program: String,
        path: PathBuf,
        reason: String,
    },
    #[error("exec: {program:?}: permission denied")]
    NotExecutable { program: String },
    #[error("cwd {cwd:?}: not a directory in the container")]
    Cwd { cwd: String },
    /// Root mode `bundle`: making the bundle's rootfs the guest's root.
    #[error("switch to the bundle's rootfs: {0}")]
    Root(String),
    #[error("process.args is empty")]
    NoArgs,
    #[error("NUL byte in process settings")]
    Nul,
    #[error("process.consoleSize.{0} is too large")]
    ConsoleSize(&'static str),
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error(
        "process.capabilities: {0} cannot be granted: this Proxmox guest's bounding set lacks them"
    )]
    CapabilitiesUnavailable(String),
    /// A system call of a named step failed (the io::Error keeps the words
    /// the caller has always seen: "No such file or directory (os error 2)").
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Capabilities {
        step: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("exec {}: {source}", path.to_string_lossy())]
    Execve {
        path: CString,
        source: std::io::Error,
    },
    #[error("cannot fork the container process: {0}")]
    Fork(Errno),
    #[error("signals: {0}")]
    Signals(Errno),
    #[error("maskedPaths: {path}: {source}")]
    Mask { path: String, source: Errno },
    #[error("readonlyPaths: {path}: {source}")]
    ReadonlyPath { path: String, source: Errno },
    #[error("root.readonly: {0}")]
    ReadonlyRoot(Errno),
    #[error("domainname: {0}")]
    Domainname(std::io::Error),
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
    #[error("network: {0}")]
    Network(String),
    #[error("{}: {source}", path.display())]
    StartHooksFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    StartHooks(crate::hooks::HookError),
    #[error("terminal: {0}")]
    TerminalDup(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::bridge::seccomp::SeccompError),
    /// From the bridge's helpers (pty, devfs, netns, proto), which speak in
    /// their own one-line messages.
    #[error("{0}")]
    Bridge(String),
    #[error("the monitor sent no {0} namespace to join")]
    JoinWithoutNamespace(String),
    #[error("exec: nexcage exec sent no descriptors")]
    ExecNoDescriptors,
    #[error("exec: {0}")]
    ExecReceive(String),
    #[error("exec: unexpected message {0}")]
    ExecUnexpected(String),
}

impl InitError {
    pub(super) fn step(step: &'static str) -> impl FnOnce(Errno) -> InitError {
        move |e| InitError::Step {
            step,
            source: e.into(),
        }
    }

    pub(super) fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
        move |source| InitError::Step { step, source }
    }

    pub(super) fn caps(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> InitError {
        move |source| InitError::Capabilities { step, source }
    }
}

#[cfg(test)]
mod tests {
    use nix::libc;

    use super::*;

    #[test]
    fn init_errors_keep_the_words_callers_match() {
        let e = InitError::step("chdir")(Errno::ENOENT);
        assert_eq!(
            e.to_string(),
            "chdir: No such file or directory (os error 2)"
        );
        let e = InitError::Execve {
            path: CString::new("/bin/x").unwrap(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            e.to_string(),
            "exec /bin/x: Permission denied (os error 13)"
        );
        assert_eq!(
            InitError::Mask {
                path: "/proc/kcore".into(),
                source: Errno::EPERM
            }
            .to_string(),
            "maskedPaths: /proc/kcore: EPERM: Operation not permitted"
        );
    }
}
