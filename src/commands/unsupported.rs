//! Subcommands of a later milestone: a clear failure, never a silent success.

use crate::error::{Error, Result};

pub fn run(name: &'static str) -> Result<i32> {
    Err(Error::NotSupported(name))
}
