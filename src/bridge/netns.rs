//! Joining an existing network namespace by path (podman's
//! `{"type": "network", "path": "/run/netns/..."}`). LXC can share a
//! namespace only with a pid or another container, and Proxmox drops raw
//! `lxc.namespace.*` keys, so the bridge does it: the monitor (on the host,
//! where the path means something) opens the namespace file and sends the
//! descriptor to the init, which joins it with setns before it forks the
//! process. The guest keeps its own empty network namespace underneath.
//! Only a privileged guest's root holds CAP_SYS_ADMIN over a namespace owned
//! by the host's user namespace, so translation refuses the rest.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::libc;

/// statfs f_type of nsfs (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// NS_GET_NSTYPE = _IO(0xb7, 0x3) (linux/nsfs.h).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("linux.namespaces: network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("linux.namespaces: {path} is not a network namespace ({why})")]
    NotNetns { path: PathBuf, why: &'static str },
}

/// Open `path` and make sure it is a network namespace, not just any file
/// (a namespace file is only ever an nsfs inode whose type the kernel tells).
pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let fd = OwnedFd::from(file);
    check(fd.as_fd()).map_err(|why| NetnsError::NotNetns {
        path: path.to_path_buf(),
        why,
    })?;
    Ok(fd)
}

fn check(fd: BorrowedFd) -> Result<(), &'static str> {
    let fs = nix::sys::statfs::fstatfs(fd).map_err(|_| "cannot statfs it")?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err("not a namespace file");
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* type.
    let typ = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if typ != libc::CLONE_NEWNET {
        return Err("a namespace of another type");
    }
    Ok(())
}

/// In the init: join the namespace the monitor sent (checked again: the
/// descriptor crossed a socket).
pub fn join(fd: BorrowedFd) -> Result<(), String> {
    check(fd).map_err(|why| format!("linux.namespaces: the network namespace sent: {why}"))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("linux.namespaces: cannot join the network namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_namespaces_are_accepted() {
        assert!(open(Path::new("/proc/self/ns/net")).is_ok());
        let e = open(Path::new("/proc/self/ns/uts"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another type"), "{e}");
        let e = open(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml"
        )))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a namespace file"), "{e}");
        let e = open(Path::new("/nonexistent/netns"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/netns"), "{e}");
    }
}
