//! The error every command returns. Variants that clients (containerd, CRI-O,
//! podman) match on by text carry runc's wording; see shared/reference/clients.md.

use std::path::PathBuf;

use crate::backend::proxmox::driver::DriverError;
use crate::bridge::BridgeError;
use crate::bundle::BundleError;
use crate::config::ConfigError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// go-runc and CRI-O look for "container does not exist" / "does not exist".
    #[error("container does not exist: {0}")]
    NotFound(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container not running: {0}")]
    NotRunning(String),
    #[error("invalid container id {0:?}: {1}")]
    InvalidId(String, &'static str),
    #[error("{0}")]
    Usage(String),
    #[error("{0} is not supported yet")]
    NotSupported(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write pid file {}: {source}", path.display())]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
