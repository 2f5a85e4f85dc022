//! nexcage's own terminal, for a terminal process without --console-socket
//! (`exec -t` or `run` from a person's shell): as runc does, take the pty's
//! master ourselves and copy between it and our stdio, with our terminal in
//! raw mode so that keys (^C, arrows) reach the guest's line discipline
//! instead of ours.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Child;

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Error, Result};
use crate::lifecycle;

/// The master as the console socket's other end receives it (runc's
/// format: the pty's name as payload, one SCM_RIGHTS descriptor). None when
/// the sender went away without sending one.
pub fn recv_master(sock: BorrowedFd) -> Result<Option<OwnedFd>> {
    let mut name = [0u8; 4096];
    let (_, fds) = crate::bridge::proto::recv_with_fds(sock, &mut name)
        .map_err(Error::sys("console socket: receive"))?;
    Ok(fds.into_iter().next())
}

/// Our stdin's terminal settings, restored on drop (also on errors).
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Raw mode on stdin if it is a terminal; nothing otherwise (piped input).
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return RawMode { saved: None };
        }
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Give the pty our terminal's size (nothing when stdin is not a terminal).
pub fn copy_size(master: BorrowedFd) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize; TIOCSWINSZ reads one.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Copy stdin to the master and the master to stdout until `child` (whose
/// exit status is the process's) has exited, following our window size and
/// relaying other signals to it. Returns its exit code.
pub fn relay(master: OwnedFd, child: &mut Child) -> Result<i32> {
    let signals = lifecycle::block_relayed_signals()?;
    let _raw = RawMode::enter();
    copy_size(master.as_fd());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut master_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("child process", e))?
        {
            // The process may have written its last words just before.
            while master_open && pipe(master.as_fd(), 1, &mut buf, false) {}
            return Ok(lifecycle::exit_code(status));
        }
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if master_open {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(20u16));
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (master_ready, stdin_ready) =
            (master_open && ready(1), stdin_open && ready(fds.len() - 1));
        if master_ready {
            master_open = pipe(master.as_fd(), 1, &mut buf, true);
        }
        if stdin_ready {
            stdin_open = pipe(stdin.as_fd(), master.as_raw_fd(), &mut buf, true);
            // Piped input ended: tell the process as a person would, with
            // ^D (the pty's EOF character), or a shell would wait forever.
            if !stdin_open && !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
                let _ = nix::unistd::write(&master, b"\x04");
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGWINCH) => copy_size(master.as_fd()),
                Ok(sig) => {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
                Err(_) => {}
            }
        }
    }
}

/// One read from `from` written in full to `to`; false at end of input (a
/// master reads EIO once the slave's last holder is gone). With `block`
/// false, nothing waiting also counts as the end.
fn pipe(from: BorrowedFd, to: RawFd, buf: &mut [u8], block: bool) -> bool {
    if !block {
        let mut fds = [PollFd::new(from, PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
            return false;
        }
    }
    let n = match nix::unistd::read(from, buf) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        // SAFETY: writing from a live buffer to a descriptor we hold.
        let w = unsafe { libc::write(to, rest.as_ptr().cast(), rest.len()) };
        if w < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        rest = &rest[w as usize..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_master_is_taken_from_a_console_socket_message() {
        let Ok(pty) = crate::bridge::pty::open(Some((20, 70))) else {
            return; // no usable /dev/ptmx here
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        crate::bridge::pty::send_master(a.as_fd(), &pty.name, pty.master.as_fd()).unwrap();
        let master = recv_master(b.as_fd()).unwrap().expect("a descriptor");
        // Same pty: what the slave writes, the received master reads.
        let mut slave = std::fs::File::from(pty.slave);
        slave.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        std::fs::File::from(master).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        // A sender that closes without sending gives None.
        drop(a);
        assert!(recv_master(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn pipe_copies_everything_and_reports_the_end() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        drop(w);
        let mut buf = [0u8; 2];
        let mut copied = 0;
        while pipe(r.as_fd(), w2.as_raw_fd(), &mut buf, true) {
            copied += 1;
        }
        assert_eq!(copied, 3); // "he", "ll", "o" through a 2-byte buffer
        drop(w2);
        let mut out = String::new();
        std::fs::File::from(r2).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");
    }
}
