//! Terminal mode (`process.terminal` with `--console-socket`), as runc does
//! it: `create` connects to the caller's console socket (conmon's, the shim's),
//! the init opens a pty in the guest's own devpts and gives the process its
//! slave as controlling terminal, and the monitor sends the master over the
//! console socket (one message: the pty's name, one SCM_RIGHTS descriptor)
//! before it tells `create` the container is ready.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// runc: "cannot allocate tty if runc will detach without setting console socket".
    #[error("process.terminal is true but no --console-socket was given: nexcage sends the terminal's master there and relays no terminal itself")]
    Missing,
    /// runc: "cannot use console socket if runc will not detach or allocate tty".
    #[error("--console-socket {0}: process.terminal is false, so there is no terminal to send")]
    Unwanted(PathBuf),
    #[error("cannot connect to --console-socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `create`: check the flag against the bundle as runc does, then connect
/// now, so that a wrong socket fails before anything is made.
pub fn connect(terminal: bool, socket: Option<&Path>) -> Result<Option<OwnedFd>, ConsoleError> {
    match (terminal, socket) {
        (false, None) => Ok(None),
        (true, None) => Err(ConsoleError::Missing),
        (false, Some(p)) => Err(ConsoleError::Unwanted(p.to_path_buf())),
        (true, Some(p)) => UnixStream::connect(p)
            .map(|s| Some(OwnedFd::from(s)))
            .map_err(|source| ConsoleError::Connect {
                path: p.to_path_buf(),
                source,
            }),
    }
}

/// A pty opened inside the guest.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path in the guest (`/dev/pts/N`).
    pub name: String,
}

/// Open a pty in the devpts the guest sees at /dev/pts (LXC mounts a new
/// instance per guest, `lxc.pty.max`), so the process's `tty` names a device
/// of its own container. `size` is (height, width), set before anyone reads.
pub fn open(size: Option<(u16, u16)>) -> Result<Pty, String> {
    let err = |what: &str| format!("terminal: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls on descriptors we own; results checked.
    unsafe {
        let fd = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(err("open /dev/ptmx"));
        }
        let master = OwnedFd::from_raw_fd(fd);
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(err("unlock the pty"));
        }
        let mut n: libc::c_uint = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) != 0 {
            return Err(err("pty number"));
        }
        // The slave through the master itself (TIOCGPTPEER), never by path:
        // whatever is mounted at /dev/pts, this is the right device.
        let s = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(err("open the pty's slave"));
        }
        let slave = OwnedFd::from_raw_fd(s);
        if let Some((height, width)) = size {
            let ws = libc::winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) != 0 {
                return Err(err("set the console size"));
            }
        }
        Ok(Pty {
            master,
            slave,
            name: format!("/dev/pts/{n}"),
        })
    }
}

/// Hand the master to the console socket's owner as runc does: one message
/// whose payload is the pty's name, with the descriptor attached.
pub fn send_master(sock: BorrowedFd, name: &str, master: BorrowedFd) -> Result<(), String> {
    // The name comes from the guest: bound it; receivers only log it.
    let name: String = name.chars().filter(|c| !c.is_control()).take(256).collect();
    let name = if name.is_empty() { "/dev/ptmx" } else { &name };
    let fds = [master.as_raw_fd()];
    let iov = [IoSlice::new(name.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(|e| format!("cannot send the terminal to the console socket: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn console_socket_follows_runcs_rules() {
        assert!(connect(false, None).unwrap().is_none());
        assert!(matches!(connect(true, None), Err(ConsoleError::Missing)));
        let p = Path::new("/nonexistent/console.sock");
        assert!(matches!(
            connect(false, Some(p)),
            Err(ConsoleError::Unwanted(_))
        ));
        let e = connect(true, Some(p)).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/console.sock"), "{e}");
    }

    #[test]
    fn master_crosses_the_console_socket_with_its_size() {
        let Ok(pty) = open(Some((30, 100))) else {
            return; // no usable /dev/ptmx here (a minimal build sandbox)
        };
        let (a, b) = UnixStream::pair().unwrap();
        send_master(a.as_fd(), &pty.name, pty.master.as_fd()).unwrap();
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            b.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = match msg.cmsgs().unwrap().next() {
            Some(nix::sys::socket::ControlMessageOwned::ScmRights(v)) => v[0],
            other => panic!("no descriptor: {other:?}"),
        };
        let len = msg.bytes;
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .starts_with("/dev/pts/"));
        // SAFETY: the kernel installed it for us.
        let got = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills a winsize.
        assert_eq!(
            unsafe { libc::ioctl(got.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
            0
        );
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
    }
}
