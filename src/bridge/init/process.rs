//! The process the init runs: process.json checked and converted before
//! fork (`Prepared`), so that mistakes fail `create`, and the last steps in
//! the process itself, down to execve.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::libc;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process};

use super::capabilities::{set_caps, Caps};
use super::error::InitError;
use crate::bridge::MOUNT_POINT;
use crate::fsutil::DEFAULT_PATH;

/// Everything the child needs, checked and converted before fork, so that
/// mistakes fail `create` with a message instead of a dead process.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) path: CString,
    pub(super) args: Vec<CString>,
    pub(super) env: Vec<CString>,
    pub(super) cwd: CString,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) groups: Vec<Gid>,
    pub(super) umask: Option<u32>,
    pub(super) rlimits: Vec<(Resource, u64, u64)>,
    pub(super) no_new_privileges: bool,
    /// process.terminal: the process runs on a pty opened in the guest.
    pub(super) terminal: bool,
    /// process.consoleSize as (height, width).
    pub(super) console_size: Option<(u16, u16)>,
    /// None: the process keeps the init's capabilities, as with runc.
    pub(super) caps: Option<Caps>,
    pub(super) oom_score_adj: Option<Vec<u8>>,
    /// linux.seccomp, compiled by create; the same for `exec`, as with runc.
    pub(super) seccomp: Option<crate::bridge::seccomp::Loadable>,
}

impl Prepared {
    pub(super) fn load(path: &Path) -> Result<Prepared, InitError> {
        let text = std::fs::read(path).map_err(|source| InitError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let process: Process =
            serde_json::from_slice(&text).map_err(|source| InitError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut prepared = Prepared::from_process(&process)?;
        prepared.seccomp = crate::bridge::seccomp::read(Path::new(MOUNT_POINT))?;
        Ok(prepared)
    }

    pub(super) fn from_process(p: &Process) -> Result<Prepared, InitError> {
        let cstr = |s: &[u8]| CString::new(s).map_err(|_| InitError::Nul);
        let args = p.args().clone().unwrap_or_default();
        let env = p.env().clone().unwrap_or_default();
        let cwd = p.cwd();
        if !cwd.is_dir() {
            return Err(InitError::Cwd {
                cwd: cwd.display().to_string(),
            });
        }
        let program = args.first().ok_or(InitError::NoArgs)?;
        let path = resolve(program, &env, cwd)?;
        let user = p.user();
        let rlimits = p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect();
        Ok(Prepared {
            path: cstr(path.as_os_str().as_bytes())?,
            args: args
                .iter()
                .map(|a| cstr(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|e| cstr(e.as_bytes()))
                .collect::<Result<_, _>>()?,
            cwd: cstr(cwd.as_os_str().as_bytes())?,
            uid: user.uid(),
            gid: user.gid(),
            groups: user
                .additional_gids()
                .iter()
                .flatten()
                .map(|&g| Gid::from_raw(g))
                .collect(),
            umask: user.umask(),
            rlimits,
            no_new_privileges: p.no_new_privileges().unwrap_or(false),
            terminal: p.terminal().unwrap_or(false),
            console_size: match p.console_size() {
                Some(b) => Some((
                    u16::try_from(b.height()).map_err(|_| InitError::ConsoleSize("height"))?,
                    u16::try_from(b.width()).map_err(|_| InitError::ConsoleSize("width"))?,
                )),
                None => None,
            },
            caps: Caps::from_process(p)?,
            oom_score_adj: p.oom_score_adj().map(|a| a.to_string().into_bytes()),
            seccomp: None,
        })
    }
}

/// Find the program as exec would with the process's own PATH (not ours).
fn resolve(program: &str, env: &[String], cwd: &Path) -> Result<PathBuf, InitError> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        // runc's words: podman tells "command not found" (127) from "cannot
        // run it" (126) by "no such file or directory" / "permission denied".
        return match std::fs::metadata(&p) {
            Err(e) => Err(InitError::Stat {
                program: program.to_string(),
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file or directory".to_string()
                } else {
                    e.to_string()
                },
                path: p,
            }),
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(InitError::NotExecutable {
                program: program.to_string(),
            }),
        };
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path_var
        .split(':')
        .map(|dir| {
            cwd.join(if dir.is_empty() { "." } else { dir })
                .join(program)
        })
        .find(|p| executable(p))
        .ok_or_else(|| InitError::NotInPath {
            program: program.to_string(),
        })
}

/// Every rlimit the runtime spec names exists on Linux, so the mapping is
/// total; a type oci-spec does not know already fails when create loads the
/// bundle, and a variant a newer oci-spec adds fails this match at build.
fn rlimit_resource(t: PosixRlimitType) -> Resource {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Drop to the OCI user and exec: cwd, rlimits, umask, oom_score_adj,
/// capabilities, groups, gid, uid, no_new_privs, seccomp, then execve with
/// exactly the process's environment. Shared by the container process
/// (after `start`) and by `exec` (already placed in the guest by
/// lxc-attach). Returns only why it could not; the caller must then _exit.
pub(super) fn become_process(p: &Prepared) -> InitError {
    match drop_to_user(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn drop_to_user(p: &Prepared) -> Result<std::convert::Infallible, InitError> {
    // Built first: after the seccomp filter, allocating may be denied.
    let argv: Vec<*const libc::c_char> = p
        .args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = p
        .env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    nix::unistd::chdir(p.cwd.as_c_str()).map_err(InitError::step("chdir"))?;
    for &(res, soft, hard) in &p.rlimits {
        setrlimit(res, soft, hard).map_err(InitError::step("setrlimit"))?;
    }
    if let Some(m) = p.umask {
        // OCI's umask is a mode_t: anything above 0o7777 is not one.
        umask(Mode::from_bits_truncate(m as libc::mode_t));
    }
    if let Some(adj) = &p.oom_score_adj {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/oom_score_adj")
            .and_then(|mut f| f.write_all(adj))
            .map_err(InitError::io("oom_score_adj"))?;
    }
    // Without no_new_privs the kernel wants CAP_SYS_ADMIN for a filter:
    // load it while we still have it, as runc does (the profile must then
    // allow what follows: setgroups, setuid, capset...).
    if let Some(f) = p.seccomp.as_ref().filter(|_| !p.no_new_privileges) {
        f.load().map_err(InitError::io("load the seccomp filter"))?;
    }
    if let Some(c) = &p.caps {
        // Dropping from the bounding set needs CAP_SETPCAP: before setuid.
        for &cap in &c.drop_bounding {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(InitError::caps("drop bounding capability"))?;
        }
        // Keep the permitted set across setuid; the sets are trimmed after.
        nix::sys::prctl::set_keepcaps(true).map_err(InitError::step("keep capabilities"))?;
    }
    if let Err(e) = nix::unistd::setgroups(&p.groups) {
        // A guest that may not call setgroups still runs a process that
        // asks for no supplementary groups.
        if !p.groups.is_empty() {
            return Err(InitError::step("setgroups")(e));
        }
    }
    let gid = Gid::from_raw(p.gid);
    setresgid(gid, gid, gid).map_err(InitError::step("setgid"))?;
    let uid = Uid::from_raw(p.uid);
    setresuid(uid, uid, uid).map_err(InitError::step("setuid"))?;
    if let Some(c) = &p.caps {
        set_caps(c)?;
    }
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(InitError::step("no_new_privs"))?;
    }
    // As close to execve as possible, so the profile governs the fewest
    // of our own calls (runc's order).
    if let Some(f) = p.seccomp.as_ref().filter(|_| p.no_new_privileges) {
        f.load().map_err(InitError::io("load the seccomp filter"))?;
    }
    // nix's execve builds its pointer arrays itself, which may allocate
    // under the filter; ours were built above.
    // SAFETY: argv and envp are NULL-terminated arrays of pointers into
    // p's CStrings, which outlive the call.
    unsafe { libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(InitError::Execve {
        path: p.path.clone(),
        source: std::io::Error::last_os_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_found_on_the_process_path_not_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("hello");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![format!("PATH={}", bin.display())];
        assert_eq!(resolve("hello", &env, Path::new("/")).unwrap(), prog);
        let err = resolve("hello", &["PATH=/nonexistent".into()], Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"hello\": executable file not found in $PATH"
        );
        assert!(resolve("./bin/hello", &[], tmp.path()).is_ok());
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve(prog.to_str().unwrap(), &[], Path::new("/")).unwrap_err();
        assert!(err.to_string().ends_with(": permission denied"), "{err}");
        let err = resolve("/nonexistent", &[], Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"/nonexistent\": stat /nonexistent: no such file or directory"
        );
    }

    #[test]
    fn every_oci_rlimit_maps_to_its_kernel_resource() {
        // Through serde, as bundles name them, so a wrong arm shows.
        for (name, res) in [
            ("RLIMIT_CPU", libc::RLIMIT_CPU),
            ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
            ("RLIMIT_DATA", libc::RLIMIT_DATA),
            ("RLIMIT_STACK", libc::RLIMIT_STACK),
            ("RLIMIT_CORE", libc::RLIMIT_CORE),
            ("RLIMIT_RSS", libc::RLIMIT_RSS),
            ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
            ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
            ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
            ("RLIMIT_AS", libc::RLIMIT_AS),
            ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
            ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
            ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
            ("RLIMIT_NICE", libc::RLIMIT_NICE),
            ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
            ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
        ] {
            let t: PosixRlimitType = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(
                rlimit_resource(t) as libc::c_int,
                res as libc::c_int,
                "{name}"
            );
        }
    }

    #[test]
    fn process_settings_are_checked_before_fork() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/nonexistent-dir", "args": ["sh"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert_eq!(
            Prepared::from_process(&p).unwrap_err().to_string(),
            "cwd \"/nonexistent-dir\": not a directory in the container"
        );
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "env": ["PATH=/bin:/usr/bin", "A=1"], "user": {"uid": 1000, "gid": 100, "umask": 18, "additionalGids": [5]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}], "noNewPrivileges": true
        }))
        .unwrap();
        let prep = Prepared::from_process(&p).unwrap();
        assert_eq!((prep.uid, prep.gid, prep.umask), (1000, 100, Some(18)));
        assert_eq!(prep.rlimits, vec![(Resource::RLIMIT_NOFILE, 10, 20)]);
        assert!(prep.no_new_privileges);
        assert_eq!(prep.env.len(), 2);
    }
}
