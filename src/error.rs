//! The error every command returns. Variants that clients (containerd, CRI-O,
//! podman) match on by text carry runc's wording (docs/clients.md says which).
//! `Usage` is for what the caller asked wrongly; failures of the system keep
//! their source in their own variants.

use std::path::PathBuf;

use crate::backend::BackendError;
use crate::bridge::pty::ConsoleError;
use crate::bridge::BridgeError;
use crate::bundle::BundleError;
use crate::cgroup::CgroupError;
use crate::config::ConfigError;
use crate::delegate::DelegateError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// go-runc and CRI-O look for "container does not exist" / "does not exist".
    #[error("container does not exist: {0}")]
    NotFound(String),
    /// runc 1.1's words (Debian 12's runc), with the id.
    #[error("container with given ID already exists: {0}")]
    Exists(String),
    #[error("container not running: {0}")]
    NotRunning(String),
    #[error("cannot delete {0}: it was created and removed again and again while delete waited")]
    Contested(String),
    #[error("invalid container id {0:?}: {1}")]
    InvalidId(String, &'static str),
    /// The caller asked for something invalid (a flag, a file's content, a
    /// command the container's status does not allow).
    #[error("{0}")]
    Usage(String),
    #[error("{0} is not supported yet")]
    NotSupported(&'static str),
    #[error("unknown backend {name:?} (this build has: {known})")]
    UnknownBackend { name: String, known: String },
    #[error("backend {0} keeps no templates")]
    NoTemplates(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A system call of nexcage's own failed.
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::errno::Errno,
    },
    #[error("cannot signal container {id}: {source}")]
    Signal {
        id: String,
        source: nix::errno::Errno,
    },
    #[error("cannot write pid file {}: {source}", path.display())]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The exec never reached the process: what the backend's tool said.
    #[error(
        "exec failed: {program} exited with status {code} before the process started{}",
        said_suffix(said)
    )]
    ExecFailed {
        program: String,
        code: i32,
        said: Vec<String>,
    },
    #[error("exec: cannot pass descriptors 0..{count} to the process: {message}")]
    ExecHandOff { count: usize, message: String },
    #[error("exec: the process did not start within {0} s")]
    ExecTimeout(u64),
    #[error("cannot find a free process file name in {}", .0.display())]
    NoProcessFileName(PathBuf),
    #[error("ps {args}: {stderr}")]
    Ps { args: String, stderr: String },
    #[error("{error}; rollback failed: {undo}")]
    Rollback {
        error: Box<Error>,
        undo: BackendError,
    },
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Delegate(#[from] DelegateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

fn said_suffix(said: &[String]) -> String {
    if said.is_empty() {
        String::new()
    } else {
        format!(": {}", said.join("; "))
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> Self {
        move |source| Error::Sys { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
