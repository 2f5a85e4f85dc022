//! Joining existing namespaces by path: a network namespace (podman's
//! `{"type": "network", "path": "/run/netns/..."}`) and, in a Kubernetes
//! pod, the sandbox's ipc and uts namespaces (containerd's CRI names
//! `/proc/<sandbox pid>/ns/{net,ipc,uts}` for every app container). LXC can
//! share a namespace only with a pid or another container, and Proxmox drops
//! raw `lxc.namespace.*` keys, so the bridge does it: the monitor (on the
//! host, where the path means something) opens the namespace file and sends
//! the descriptor to the init, which joins it with setns before it forks the
//! process. The guest keeps its own namespaces underneath. Only a privileged
//! guest's root holds CAP_SYS_ADMIN over a namespace owned by the host's user
//! namespace, so translation refuses the rest.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sched::CloneFlags;

/// statfs f_type of nsfs (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// NS_GET_NSTYPE = _IO(0xb7, 0x3) (linux/nsfs.h).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The namespace types a guest can join by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Network,
    Ipc,
    Uts,
}

impl Kind {
    /// The OCI name (`linux.namespaces[].type`), also used on the bridge.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Network, Kind::Ipc, Kind::Uts]
            .into_iter()
            .find(|k| k.name() == name)
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Network => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("linux.namespaces: {kind} namespace {path}: {source}", kind = .kind.name())]
    Open {
        kind: Kind,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("linux.namespaces: {path} is not a namespace of type {kind} ({why})", kind = .kind.name())]
    NotNetns {
        kind: Kind,
        path: PathBuf,
        why: &'static str,
    },
}

/// Open `path` and make sure it is a namespace of `kind`, not just any file
/// (a namespace file is only ever an nsfs inode whose type the kernel tells).
pub fn open(path: &Path, kind: Kind) -> Result<OwnedFd, NetnsError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Open {
            kind,
            path: path.to_path_buf(),
            source,
        })?;
    let fd = OwnedFd::from(file);
    check(fd.as_fd(), kind).map_err(|why| NetnsError::NotNetns {
        kind,
        path: path.to_path_buf(),
        why,
    })?;
    Ok(fd)
}

fn check(fd: BorrowedFd, kind: Kind) -> Result<(), &'static str> {
    let fs = nix::sys::statfs::fstatfs(fd).map_err(|_| "cannot statfs it")?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err("not a namespace file");
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* type.
    let typ = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if typ != kind.flag().bits() {
        return Err("a namespace of another type");
    }
    Ok(())
}

/// In the init: join the namespace the monitor sent (checked again: the
/// descriptor crossed a socket).
pub fn join(fd: BorrowedFd, kind: Kind) -> Result<(), String> {
    let name = kind.name();
    check(fd, kind).map_err(|why| format!("linux.namespaces: the {name} namespace sent: {why}"))?;
    nix::sched::setns(fd, kind.flag())
        .map_err(|e| format!("linux.namespaces: cannot join the {name} namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaces_of_the_kind_asked_are_accepted() {
        assert!(open(Path::new("/proc/self/ns/net"), Kind::Network).is_ok());
        assert!(open(Path::new("/proc/self/ns/ipc"), Kind::Ipc).is_ok());
        assert!(open(Path::new("/proc/self/ns/uts"), Kind::Uts).is_ok());
        let e = open(Path::new("/proc/self/ns/uts"), Kind::Network)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another type") && e.contains("of type network"),
            "{e}"
        );
        let e = open(Path::new("/proc/self/ns/net"), Kind::Ipc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a namespace of type ipc"), "{e}");
        let e = open(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")),
            Kind::Network,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a namespace file"), "{e}");
        let e = open(Path::new("/nonexistent/netns"), Kind::Uts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uts namespace /nonexistent/netns"), "{e}");
    }

    #[test]
    fn kinds_have_their_oci_names() {
        for k in [Kind::Network, Kind::Ipc, Kind::Uts] {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("pid"), None);
    }
}
