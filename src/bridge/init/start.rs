//! The forked container process, from fork until `start` lets it exec.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::libc;
use nix::unistd::setsid;

use super::error::InitError;
use super::fds::install_fds;
use super::process::{become_process, Prepared};
use super::supervise::restore_default_signals;
use super::terminal::take_controlling_terminal;
use crate::bridge::MOUNT_POINT;

/// After fork: become the user's process. Returns only why it could not.
pub(super) fn child(p: &Prepared, stdio: Vec<OwnedFd>) -> InitError {
    if let Err(e) = restore_default_signals() {
        return e;
    }
    // Forked from the session's leader: cannot fail.
    if let Err(e) = setsid() {
        return InitError::step("start a session")(e);
    }
    // SAFETY: single-threaded child that leaves by exec or _exit (die).
    if let Err(e) = unsafe { install_fds(stdio) } {
        return e;
    }
    // Terminal mode: stdin is the pty's slave; as the new session's
    // leader, make it our controlling terminal (job control, ^C).
    if p.terminal {
        if let Err(e) = take_controlling_terminal() {
            return e;
        }
    }
    if let Err(e) = wait_for_start() {
        return e;
    }
    become_process(p)
}

/// Wait at exec.fifo until `nexcage start` opens the other end, run the
/// startContainer hooks (inside the guest, before the process) and tell
/// start '0', or '1' and why, which it fails with.
fn wait_for_start() -> Result<(), InitError> {
    let fifo = Path::new(MOUNT_POINT).join(crate::bridge::FIFO_FILE);
    // std opens with O_CLOEXEC.
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .map_err(InitError::io("wait for start"))?;
    if let Err(reason) = run_start_hooks() {
        // start reports the reason; if it is gone there is nobody to tell.
        let _ = fifo.write_all(format!("1{reason}").as_bytes());
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) }
    }
    fifo.write_all(b"0")
        .map_err(InitError::io("wait for start"))
}

/// The startContainer hooks create left in the bridge, if any.
fn run_start_hooks() -> Result<(), InitError> {
    let path = Path::new(MOUNT_POINT).join(crate::bridge::START_HOOKS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(InitError::Read { path, source }),
    };
    #[derive(serde::Deserialize)]
    struct StartHooks {
        hooks: Vec<oci_spec::runtime::Hook>,
        state: serde_json::Value,
    }
    let doc: StartHooks = match serde_json::from_slice(&text) {
        Ok(doc) => doc,
        Err(source) => return Err(InitError::StartHooksFile { path, source }),
    };
    let mut hooks = oci_spec::runtime::Hooks::default();
    hooks.set_start_container(Some(doc.hooks));
    let state = serde_json::to_vec(&doc.state).expect("state serializes");
    crate::hooks::run(crate::hooks::Kind::StartContainer, &hooks, &state)
        .map_err(InitError::StartHooks)
}
