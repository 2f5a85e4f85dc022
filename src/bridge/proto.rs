//! Messages between the monitor (host) and the init (PID 1 in the container)
//! over the bridge's SOCK_SEQPACKET socket: one JSON document per packet, file
//! descriptors attached with SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::procfs::ProcRef;

/// SCM_RIGHTS carries at most this many descriptors in one message.
pub const MAX_FDS: usize = 253;
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// monitor -> init: the caller's stdio (and preserved fds) ride along.
    Stdio,
    /// monitor -> init, before `Stdio`, once per namespace the bundle names
    /// by path (`linux.namespaces[].path`): `namespace` is its OCI type
    /// (network, ipc, uts); the namespace, opened on the host, rides along.
    Join { namespace: String },
    /// init -> monitor (terminal mode), before `Ready`: the master of the pty
    /// the init opened in the guest's devpts rides along; `pty` names the
    /// slave inside the guest.
    Console { pty: String },
    /// init -> monitor: the process is forked and waits for `start`.
    Ready,
    /// init -> monitor: the process cannot be started.
    Failed { message: String },
    /// `nexcage exec` -> `init exec` (over lxc-attach's stdin): the caller's
    /// stdin, stdout, stderr and preserved descriptors ride along, in order.
    ExecStdio,
    /// `nexcage exec` -> `init exec`, terminal mode: the connected console
    /// socket, the caller's stderr (for set-up failures) and the preserved
    /// descriptors ride along, in order.
    ExecTerminal,
    /// init -> monitor: the process ended.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

pub fn send(sock: BorrowedFd, msg: &Message, fds: &[RawFd]) -> Result<(), String> {
    let body = serde_json::to_vec(msg).expect("message serializes");
    let iov = [IoSlice::new(&body)];
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(|e| format!("cannot send to the bridge socket: {e}"))
}

/// Ok(None) at end of stream (the peer is gone).
pub fn recv(sock: BorrowedFd) -> Result<Option<(Message, Vec<OwnedFd>)>, String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (len, fds) =
        recv_with_fds(sock, &mut buf).map_err(|e| format!("cannot read the bridge socket: {e}"))?;
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len])
        .map_err(|e| format!("malformed bridge message: {e}"))?;
    Ok(Some((msg, fds)))
}

/// One message into `buf` with the descriptors attached to it (close on
/// exec); a length of 0 is the end of the stream.
pub fn recv_with_fds(
    sock: BorrowedFd,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), nix::errno::Errno> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

/// What the monitor tells `create` on its status pipe (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ready { init: ProcRef, process: ProcRef },
    Failed { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_the_socket() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), &Message::Stdio, &[r.as_raw_fd(), w.as_raw_fd()]).unwrap();
        let (msg, fds) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(msg, Message::Stdio);
        assert_eq!(fds.len(), 2);
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut byte = [0u8; 1];
        nix::unistd::read(&r, &mut byte).unwrap();
        assert_eq!(&byte, b"x");

        let exited = Message::Exited {
            code: Some(7),
            signal: None,
        };
        send(b.as_fd(), &exited, &[]).unwrap();
        assert_eq!(recv(a.as_fd()).unwrap().unwrap().0, exited);
        drop(b);
        assert!(
            recv(a.as_fd()).unwrap().is_none(),
            "EOF when the peer is gone"
        );
    }
}
