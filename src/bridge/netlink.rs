//! The few rtnetlink requests the init makes to configure the guest's link
//! when the node's pct cannot (no `host-managed`): link up, one IPv4
//! address, a default route. The guest has no `ip` binary and the init is
//! static, so the messages are built here over a plain NETLINK_ROUTE socket
//! (libc only) instead of pulling in an async netlink stack for three
//! requests. Layouts and numbers are those of linux/netlink.h,
//! linux/rtnetlink.h, linux/if_link.h and linux/if_addr.h.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const NLMSG_HDRLEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network interface {0:?} does not exist")]
    NoLink(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Io { what, source }
}

/// The ifindex of `name` in this thread's network namespace.
pub fn index(name: &str) -> Result<u32, NetlinkError> {
    let c = std::ffi::CString::new(name).map_err(|_| NetlinkError::NoLink(name.into()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(NetlinkError::NoLink(name.into())),
        i => Ok(i),
    }
}

/// Set the link administratively up (`ip link set NAME up`).
pub fn link_up(name: &str) -> Result<(), NetlinkError> {
    let idx = index(name)?;
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    body.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    body.extend_from_slice(&(idx as i32).to_ne_bytes());
    body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_flags
    body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
    request(RTM_NEWLINK, 0, &body).map_err(io_err(format!("set {name} up")))
}

/// Add an IPv4 address (`ip addr add ADDR/PREFIX dev NAME`).
pub fn add_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
    let idx = index(name)?;
    let mut body = vec![libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&idx.to_ne_bytes());
    attr(&mut body, IFA_LOCAL, &addr.octets());
    attr(&mut body, IFA_ADDRESS, &addr.octets());
    request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
        .map_err(io_err(format!("add address {addr}/{prefix} to {name}")))
}

/// Add the default route (`ip route add default via GW dev NAME`).
pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
    let idx = index(name)?;
    let mut body = vec![
        libc::AF_INET as u8,
        0, // dst_len: default
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    attr(&mut body, RTA_GATEWAY, &gateway.octets());
    attr(&mut body, RTA_OIF, &idx.to_ne_bytes());
    request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &body).map_err(io_err(format!(
        "add default route via {gateway} dev {name}"
    )))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

/// Send one request and wait for the kernel's acknowledgement.
fn request(kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let seq: u32 = 1;
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    // SAFETY: sockaddr_nl is plain data; zero is pid 0 (the kernel), groups 0.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and kernel are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if let Some(result) = find_ack(&buf[..n as usize], seq) {
            return result;
        }
    }
}

/// The NLMSG_ERROR answering `seq` in a datagram, if there is one: error 0
/// is the acknowledgement, a negative one an errno.
fn find_ack(mut data: &[u8], seq: u32) -> Option<io::Result<()>> {
    let u32_at = |d: &[u8], at: usize| u32::from_ne_bytes(d[at..at + 4].try_into().unwrap());
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Some(Err(io::Error::other("malformed netlink answer")));
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if kind == NLMSG_ERROR && u32_at(data, 8) == seq && len >= NLMSG_HDRLEN + 4 {
            let code = u32_at(data, NLMSG_HDRLEN) as i32;
            return Some(if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-code))
            });
        }
        data = &data[align4(len).min(data.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut b = Vec::new();
        attr(&mut b, 7, &[1, 2, 3, 4, 5]);
        assert_eq!(b.len(), 12);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 9);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 7);
    }

    #[test]
    fn acks_and_errors_are_read_from_the_answer() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        m.resize(36, 0);
        let e = find_ack(&m, 1).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(find_ack(&m, 2).is_none());
        m[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].copy_from_slice(&0i32.to_ne_bytes());
        assert!(find_ack(&m, 1).unwrap().is_ok());
    }

    /// In a network namespace of its own (a thread of the test, as root):
    /// lo up, an address on it, a default route through it.
    #[test]
    fn configures_a_link_in_a_fresh_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for a network namespace");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            link_up("lo").unwrap();
            let addr = Ipv4Addr::new(10, 199, 9, 1);
            add_ipv4("lo", addr, 24).unwrap();
            // The address is now bindable in this namespace.
            std::net::UdpSocket::bind((addr, 0)).unwrap();
            add_default_route("lo", Ipv4Addr::new(10, 199, 9, 254)).unwrap();
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            // Destination 0.0.0.0, gateway 10.199.9.254 (little-endian hex).
            assert!(
                routes
                    .lines()
                    .any(|l| l.starts_with("lo\t00000000\tFE09C70A")),
                "{routes}"
            );
            let e = add_ipv4("lo", addr, 24).unwrap_err().to_string();
            assert!(e.contains("10.199.9.1/24") && e.contains("exists"), "{e}");
            assert!(matches!(link_up("nope0"), Err(NetlinkError::NoLink(_))));
        })
        .join()
        .unwrap();
    }
}
