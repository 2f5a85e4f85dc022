//! The monitor's move into the guest's namespaces. Its pid is the
//! container's pid (`state.pid`, `--pid-file`, the state hooks get), and
//! clients set the container up through `/proc/<pid>/ns/*`: nerdctl's
//! createRuntime hook and `ctr run --cni` run CNI ADD in
//! `/proc/<pid>/ns/net`. So once the process is forked, and before `create`
//! learns the pid, the monitor joins the namespaces the process lives in.
//!
//! Joined: net, uts, ipc, cgroup and time (each only where it differs from
//! ours). None of them changes what the monitor still does afterwards: it
//! talks to the init over an already connected unix socket and the status
//! pipe (descriptors, not names looked up in a namespace), signals the
//! process by host pid and reads /proc of the host (the mount namespace is
//! kept). Not joined, because the kernel or the monitor's job forbid it:
//!
//! - pid: setns only moves a process's future children; the monitor's own
//!   pid namespace is fixed for life, as is its host pid.
//! - mnt: /proc there is the guest's, numbered in the guest's pid namespace,
//!   and the host paths the monitor uses (--root, --log) are not there.
//! - user: an unprivileged guest's user namespace would make the monitor,
//!   which holds the caller's stdio and exits with the process's status, a
//!   process of the guest's owner, with no capability left on the host; a
//!   privileged guest shares the host's anyway.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::sched::CloneFlags;

use crate::procfs::ProcRef;

/// The namespaces joined, in the order joined, by their /proc/<pid>/ns name.
pub const JOINED: [(&str, CloneFlags); 5] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    (
        "time",
        CloneFlags::from_bits_retain(nix::libc::CLONE_NEWTIME),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum GuestNsError {
    #[error("cannot open the container process's namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the container's process (host pid {pid}) exited before its namespaces were joined")]
    Gone { pid: i32 },
    #[error("cannot join the container process's {name} namespace {path}: {source}")]
    Join {
        name: &'static str,
        path: PathBuf,
        source: nix::errno::Errno,
    },
}

/// Join `process`'s namespaces (see the module's list); returns the names of
/// those that differed from ours and were joined.
pub fn join(process: ProcRef) -> Result<Vec<&'static str>, GuestNsError> {
    let mut opened: Vec<(&'static str, CloneFlags, PathBuf, OwnedFd)> = Vec::new();
    for (name, flag) in JOINED {
        let path = PathBuf::from(format!("/proc/{}/ns/{name}", process.pid));
        let file = match File::options()
            .read(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) if !process.is_alive() => return Err(GuestNsError::Gone { pid: process.pid }),
            // A kernel without this namespace type: nothing to differ in.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(GuestNsError::Open { path, source }),
        };
        if same_as_ours(&file, name) {
            continue;
        }
        opened.push((name, flag, path, OwnedFd::from(file)));
    }
    // The descriptors pin the namespaces; the pid they were found by must
    // still be the process, or they may be another process's.
    if !process.is_alive() {
        return Err(GuestNsError::Gone { pid: process.pid });
    }
    let mut joined = Vec::new();
    for (name, flag, path, fd) in opened {
        nix::sched::setns(fd.as_fd(), flag).map_err(|source| GuestNsError::Join {
            name,
            path,
            source,
        })?;
        joined.push(name);
    }
    Ok(joined)
}

fn same_as_ours(theirs: &File, name: &str) -> bool {
    let ours = match std::fs::metadata(format!("/proc/self/ns/{name}")) {
        Ok(m) => m,
        Err(_) => return false,
    };
    match theirs.metadata() {
        Ok(t) => t.dev() == ours.dev() && t.ino() == ours.ino(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespaces_are_already_joined() {
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        assert_eq!(join(me).unwrap(), Vec::<&str>::new());
    }

    #[test]
    fn a_process_gone_is_refused_by_pid() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let p = ProcRef::of(child.id() as i32).unwrap();
        child.wait().unwrap();
        let e = join(p).unwrap_err();
        assert!(
            matches!(e, GuestNsError::Gone { pid } if pid == p.pid),
            "{e}"
        );
        assert!(e.to_string().contains(&p.pid.to_string()), "{e}");
    }
}
