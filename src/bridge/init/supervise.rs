//! PID 1's signals: all blocked and taken one at a time, forwarded to the
//! process; every orphan reaped until the process itself ends.

use std::os::fd::{AsFd, OwnedFd};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{
    kill, sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::error::InitError;
use crate::bridge::proto;

extern "C" fn ignore(_: libc::c_int) {}

/// PID 1 gets no default signal actions; handle and block everything that
/// can be, and take signals one at a time with sigwait.
pub(super) fn block_signals() -> Result<SigSet, InitError> {
    let mut mask = crate::bridge::monitor::relayed_signals();
    mask.add(Signal::SIGCHLD);
    let handler = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in mask.iter() {
        // SAFETY: the handler does nothing, so it is async-signal-safe;
        // signals are consumed by sigwait.
        unsafe { sigaction(sig, &handler) }.map_err(InitError::Signals)?;
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(InitError::Signals)?;
    Ok(mask)
}

/// In the forked process, undo block_signals' do-nothing handlers before
/// unblocking: the process waits at exec.fifo until `start`, and a created
/// container must die by a signal whose default action terminates (TERM
/// from `kill`, CRI StopContainer, `podman stop`) as runc's waiting init
/// does, where the inherited handler would swallow it and restart the open.
/// Signals ignored by default (WINCH, CHLD, URG, CONT) stay harmless, and
/// one that arrived since fork is still pending and acts once unblocked.
pub(super) fn restore_default_signals() -> Result<(), InitError> {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: SIG_DFL installs no handler, so nothing runs in signal
        // context.
        unsafe { sigaction(sig, &dfl) }.map_err(InitError::Signals)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(InitError::Signals)?;
    Ok(())
}

/// Forward signals to the process; reap everything; return once the process
/// ends. The monitor stands for the process on the host (its pid is the one
/// clients wait for), so when its end of the connection closes, the process
/// is killed: nothing runs on that nobody can wait for, and our own exit then
/// stops the guest.
pub(super) fn supervise(child: Pid, mask: &SigSet, conn: &OwnedFd) -> (Option<i32>, Option<i32>) {
    // Without a signalfd the monitor cannot be watched; sigwait still works.
    let signals = SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
    let mut monitor_up = true;
    loop {
        let sig = match &signals {
            None => mask.wait().ok(),
            Some(sfd) => next_signal(sfd, conn, &mut monitor_up, child),
        };
        let Some(sig) = sig else {
            continue;
        };
        match sig {
            Signal::SIGCHLD => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return (Some(code), None),
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                        return (None, Some(s as i32))
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            // lxc-stop (pct shutdown) asks PID 1 to halt with SIGPWR.
            // ESRCH (the process is just ending) is reported by SIGCHLD.
            Signal::SIGPWR => {
                let _ = kill(child, Signal::SIGTERM);
            }
            other => {
                let _ = kill(child, other);
            }
        }
    }
}

/// A pending signal, or None once poll returned without one: then a
/// readable connection may be the monitor's end, and the process is killed.
fn next_signal(
    sfd: &SignalFd,
    conn: &OwnedFd,
    monitor_up: &mut bool,
    child: Pid,
) -> Option<Signal> {
    let pending = sfd.read_signal().ok().flatten();
    if let Some(sig) = pending.and_then(|i| Signal::try_from(i.ssi_signo as i32).ok()) {
        return Some(sig);
    }
    let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
    if *monitor_up {
        fds.push(PollFd::new(conn.as_fd(), PollFlags::POLLIN));
    }
    let _ = poll(&mut fds, PollTimeout::NONE);
    let conn_ready = fds
        .get(1)
        .and_then(|f| f.revents())
        .is_some_and(|r| !r.is_empty());
    if conn_ready && monitor_gone(conn) {
        *monitor_up = false;
        let _ = kill(child, Signal::SIGKILL);
    }
    None
}

/// The monitor sends nothing after set-up: a readable connection is its
/// end (EOF, or an error once its socket is gone).
fn monitor_gone(conn: &OwnedFd) -> bool {
    !matches!(proto::recv(conn.as_fd()), Ok(Some(_)))
}
