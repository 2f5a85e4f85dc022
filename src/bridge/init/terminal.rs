//! process.terminal: a pty opened in the guest, whose master goes to the
//! caller (through the monitor, or to `nexcage exec`) and whose slave becomes
//! the process's stdio and controlling terminal.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::libc;

use super::error::InitError;
use super::process::Prepared;
use crate::bridge::proto::{self, Message};

/// Terminal `exec`: a pty whose master goes to `nexcage exec` over the
/// console socket it sent, and whose slave becomes stdio.
pub(super) fn exec_terminal(
    prepared: &Prepared,
    fds: Vec<OwnedFd>,
) -> Result<Vec<OwnedFd>, InitError> {
    let mut fds = fds.into_iter();
    let console = fds.next().expect("checked above");
    let _stderr = fds.next();
    let pty = crate::bridge::pty::open(prepared.console_size).map_err(InitError::Bridge)?;
    crate::bridge::pty::send_master(console.as_fd(), &pty.name, pty.master.as_fd())
        .map_err(InitError::Bridge)?;
    drop(console);
    drop(pty.master);
    let mut stdio = Vec::new();
    for _ in 0..3 {
        stdio.push(pty.slave.try_clone().map_err(InitError::TerminalDup)?);
    }
    stdio.extend(fds);
    Ok(stdio)
}

nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

/// stdin (the pty's slave) becomes the controlling terminal of this
/// session, whose leader we are (job control, ^C).
pub(super) fn take_controlling_terminal() -> Result<(), InitError> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal the
    // terminal from another session), no pointer.
    unsafe { tiocsctty(0, 0) }
        .map(drop)
        .map_err(InitError::step("set the controlling terminal"))
}

/// Terminal mode: open a pty in the guest, send its master to the monitor
/// (which hands it to --console-socket), and give the process the slave as
/// stdin, stdout and stderr in place of the caller's (preserved descriptors
/// from 3 up stay). The parent's copies of the slave close after fork.
pub(super) fn terminal_stdio(
    conn: &OwnedFd,
    p: &Prepared,
    mut stdio: Vec<OwnedFd>,
) -> Result<Vec<OwnedFd>, InitError> {
    if !p.terminal {
        return Ok(stdio);
    }
    let pty = crate::bridge::pty::open(p.console_size).map_err(InitError::Bridge)?;
    let msg = Message::Console {
        pty: pty.name.clone(),
    };
    proto::send(conn.as_fd(), &msg, &[pty.master.as_raw_fd()]).map_err(InitError::Bridge)?;
    drop(pty.master);
    for fd in stdio.iter_mut().take(3) {
        *fd = pty.slave.try_clone().map_err(InitError::TerminalDup)?;
    }
    Ok(stdio)
}
