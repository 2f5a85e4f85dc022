//! The container's PID 1: nexcage's own binary, bind-mounted at
//! /.nexcage/init and started by LXC (`lxc.init.cmd`). It takes the caller's
//! stdio from the monitor, forks the process described by process.json, holds
//! it at exec.fifo until `start`, then forwards signals, reaps every orphan,
//! and reports how the process ended. When it returns the container stops.
//!
//! This file holds the two entry points (`run`, `exec`) and the talk with the
//! monitor; each step has its own file: linux.rs (linux.json, applied before
//! fork), root.rs (root mode `bundle`: the bundle's rootfs becomes the
//! root, first), process.rs (process.json checked before fork; the drop to the user
//! and execve), capabilities.rs, terminal.rs (ptys), start.rs (the forked
//! child until `start`), supervise.rs (signals, reaping), fds.rs (stdio and
//! closing the rest), error.rs.

pub mod capabilities;
mod error;
mod fds;
pub mod linux;
mod process;
mod root;
mod start;
mod supervise;
mod terminal;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::unistd::{fork, setsid, ForkResult};

use super::proto::{self, Message};
use super::MOUNT_POINT;
use crate::bridge::settings::INIT_SETTINGS_FILE;
use crate::bridge::{PROCESS_FILE, SOCKET_FILE};
use error::InitError;
use fds::install_fds;
use linux::{apply_linux_settings, load_linux_settings};
use process::{become_process, Prepared};
use start::child;
use supervise::{block_signals, supervise};
use terminal::{exec_terminal, take_controlling_terminal, terminal_stdio};

pub fn run() -> ! {
    let code = match connect_monitor() {
        Ok(conn) => serve(&conn),
        // Nobody to tell: the monitor reports the missing connection.
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn connect_monitor() -> nix::Result<OwnedFd> {
    let path = Path::new(MOUNT_POINT).join(SOCKET_FILE);
    let addr = UnixAddr::new(&path)?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut last = Errno::UnknownErrno;
    for _ in 0..100 {
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => return Ok(sock),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

fn serve(conn: &OwnedFd) -> i32 {
    let stdio = match receive_stdio(conn) {
        Ok(fds) => fds,
        Err(None) => return 1,
        Err(Some(err)) => return fail_and_wait(conn, err),
    };
    let settings = match load_linux_settings(&Path::new(MOUNT_POINT).join(INIT_SETTINGS_FILE)) {
        Ok(s) => s,
        Err(err) => return fail_and_wait(conn, err),
    };
    // First: the program and cwd are checked, and every mount made, in the
    // root the process will have. The lock lives as long as the init.
    let _root_lock = match settings.new_root.as_deref().map(root::switch) {
        None => None,
        Some(Ok(lock)) => lock,
        Some(Err(err)) => return fail_and_wait(conn, err),
    };
    let prepared = match Prepared::load(&Path::new(MOUNT_POINT).join(PROCESS_FILE)) {
        Ok(p) => p,
        Err(err) => return fail_and_wait(conn, err),
    };
    if let Err(err) = apply_linux_settings(&settings) {
        return fail_and_wait(conn, err);
    }
    let stdio = match terminal_stdio(conn, &prepared, stdio) {
        Ok(fds) => fds,
        Err(err) => return fail_and_wait(conn, err),
    };
    let mask = match block_signals() {
        Ok(mask) => mask,
        Err(err) => return fail_and_wait(conn, err),
    };
    // SAFETY: this process is single-threaded; the child only execs or exits.
    match unsafe { fork() } {
        Err(e) => {
            let message = InitError::Fork(e).to_string();
            let _ = proto::send(conn.as_fd(), &Message::Failed { message }, &[]);
            1
        }
        Ok(ForkResult::Child) => die(child(&prepared, stdio)),
        Ok(ForkResult::Parent { child }) => {
            drop(stdio);
            if proto::send(conn.as_fd(), &Message::Ready, &[]).is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let (code, signal) = supervise(child, &mask, conn);
            let _ = proto::send(conn.as_fd(), &Message::Exited { code, signal }, &[]);
            code.unwrap_or_else(|| 128 + signal.unwrap_or(9))
        }
    }
}

/// `init exec FILE`: run the process described by FILE (an OCI process
/// JSON the host wrote into the bridge) in place of this one. lxc-attach has
/// already put us into the guest's namespaces and cgroup, so there is nothing
/// to fork. lxc-attach closes every inherited descriptor but stdio, so the
/// caller's descriptors come over our stdin, a socket from `nexcage exec`
/// (lxc-attach's own stdout and stderr carry only pct's chatter). Failures
/// print one line on the caller's stderr and exit 127, as the container
/// process does.
pub fn exec(file: &Path) -> ! {
    let (msg, fds) = match proto::recv(std::io::stdin().as_fd()) {
        Ok(Some(got)) => got,
        Ok(None) => die(InitError::ExecNoDescriptors),
        Err(e) => die(InitError::ExecReceive(e)),
    };
    let terminal = match (&msg, fds.len()) {
        (Message::ExecStdio, n) if n >= 3 => false,
        (Message::ExecTerminal, n) if n >= 2 => true,
        _ => die(InitError::ExecUnexpected(format!("{msg:?}"))),
    };
    // From here on failures reach the caller's stderr.
    let stderr = if terminal { &fds[1] } else { &fds[2] };
    if let Err(e) = nix::unistd::dup2_stderr(stderr) {
        // Still lxc-attach's stderr: pct shows it.
        die(InitError::step("set up stderr")(e))
    }
    let prepared = Prepared::load(file).unwrap_or_else(|e| die(e));
    let fds = if terminal {
        exec_terminal(&prepared, fds).unwrap_or_else(|e| die(e))
    } else {
        fds
    };
    if terminal {
        // lxc-attach's child leads no process group, so it may start a
        // session and take the pty as its controlling terminal.
        if let Err(e) = setsid() {
            die(InitError::step("start a session")(e))
        }
    }
    // SAFETY: single-threaded (nothing spawned threads yet), and this
    // process only leaves by exec or _exit (die).
    if let Err(e) = unsafe { install_fds(fds) } {
        die(e)
    }
    if terminal {
        if let Err(e) = take_controlling_terminal() {
            die(e)
        }
    }
    die(become_process(&prepared))
}

/// The caller's stdio from the monitor, after joining the namespaces it may
/// send first (network, ipc, uts: before the sysctls, which then apply to
/// that network namespace; `pct exec` joins the init's namespaces, so
/// exec'd processes share them too). Err(None): nobody to tell.
fn receive_stdio(conn: &OwnedFd) -> Result<Vec<OwnedFd>, Option<InitError>> {
    let mut msg = proto::recv(conn.as_fd());
    while let Ok(Some((Message::Join { namespace }, fds))) = &msg {
        let (Some(kind), [ns]) = (super::netns::Kind::from_name(namespace), &fds[..]) else {
            return Err(Some(InitError::JoinWithoutNamespace(namespace.clone())));
        };
        super::netns::join(ns.as_fd(), kind).map_err(|e| Some(InitError::Bridge(e)))?;
        msg = proto::recv(conn.as_fd());
    }
    match msg {
        Ok(Some((Message::Stdio, fds))) if fds.len() >= 3 => Ok(fds),
        _ => Err(None),
    }
}

/// Report a set-up failure, then stay up until create has read it and tears
/// the guest down: a guest that stopped at once would fail `pct start`
/// instead, hiding the reason.
fn fail_and_wait(conn: &OwnedFd, err: InitError) -> i32 {
    let message = err.to_string();
    let _ = proto::send(conn.as_fd(), &Message::Failed { message }, &[]);
    while let Ok(Some(_)) = proto::recv(conn.as_fd()) {}
    1
}

/// What the init would run for `p`, for the translation table's test.
#[cfg(test)]
pub(crate) fn prepared_debug(p: &oci_spec::runtime::Process) -> Result<String, String> {
    Prepared::from_process(p)
        .map(|p| format!("{p:?}"))
        .map_err(|e| e.to_string())
}

/// The process cannot become what process.json says: tell the caller on
/// its own stderr and end as a shell does for a program it cannot run.
fn die(err: InitError) -> ! {
    // Nothing is left to tell if the caller's stderr is gone.
    let _ = std::io::stderr().write_all(format!("nexcage: {err}\n").as_bytes());
    // SAFETY: _exit has no preconditions; unlike exit it runs no atexit
    // handlers that belong to the forking parent.
    unsafe { libc::_exit(127) }
}
