//! The monitor's move into the guest's namespaces. Its pid is the
//! container's pid (`state.pid`, `--pid-file`, the state hooks get), and
//! clients set the container up through `/proc/<pid>/ns/*`: nerdctl's
//! createRuntime hook and `ctr run --cni` run CNI ADD in
//! `/proc/<pid>/ns/net`. So once the process is forked, and before `create`
//! learns the pid, the monitor joins the namespaces the process lives in.
//!
//! Joined: net, uts, ipc, cgroup and time (each only where it differs from
//! ours), then mnt (`enter_mount`, last). None of the first five changes what
//! the monitor still does afterwards: it talks to the init over an already
//! connected unix socket and the status pipe (descriptors, not names looked
//! up in a namespace), signals the process by a pidfd and logs to a file it
//! opened before.
//!
//! mnt is joined because clients reach the container's files through the
//! pid: podman cp resolves paths under `/proc/<pid>/root` and joins
//! `/proc/<pid>/ns/mnt`. In the host's mount namespace those paths are the
//! node's own files: a copy into the container would write the node's
//! /etc. In the guest's, the monitor's /proc is the guest's (numbered in
//! its pid namespace) and the host paths are gone, and every path it opened
//! there would be the guest's to choose. So it opens nothing while it is
//! there: it gets there only once set-up is done, holding the process's
//! pidfd and a descriptor of the host's mount namespace, and leaves
//! (`HostMount::leave`) before anything else when the process has ended.
//!
//! Not joined, because the kernel or the monitor's job forbid it:
//!
//! - pid: setns only moves a process's future children; the monitor's own
//!   pid namespace is fixed for life, as is its host pid.
//! - user: an unprivileged guest's user namespace would make the monitor,
//!   which holds the caller's stdio and exits with the process's status, a
//!   process of the guest's owner, with no capability left on the host; a
//!   privileged guest shares the host's anyway.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::sched::CloneFlags;

use crate::procfs::{Pinned, ProcRef};

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
    #[error("cannot hold the container's process (host pid {pid}) by a pidfd: {source}")]
    Pin { pid: i32, source: nix::errno::Errno },
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

/// The host's mount namespace, kept while the monitor is in the guest's.
#[derive(Debug)]
pub struct HostMount(OwnedFd);

impl HostMount {
    /// Back to the host's mount namespace (and its root and cwd).
    pub fn leave(self) -> Result<(), nix::errno::Errno> {
        nix::sched::setns(self.0.as_fd(), CloneFlags::CLONE_NEWNS)
    }
}

/// Pin `process` by a pidfd, then join its mount namespace. Returns the
/// pidfd, for the signals the monitor relays from then on, and the way back.
pub fn enter_mount(process: ProcRef) -> Result<(Pinned, HostMount), GuestNsError> {
    let open = |path: PathBuf| {
        File::options()
            .read(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| GuestNsError::Open { path, source })
    };
    let host = open(PathBuf::from("/proc/self/ns/mnt"))?;
    let path = PathBuf::from(format!("/proc/{}/ns/mnt", process.pid));
    let theirs = match open(path.clone()) {
        Err(_) if !process.is_alive() => return Err(GuestNsError::Gone { pid: process.pid }),
        other => other?,
    };
    let pinned = process.pin().map_err(|source| match source {
        nix::errno::Errno::ESRCH => GuestNsError::Gone { pid: process.pid },
        source => GuestNsError::Pin {
            pid: process.pid,
            source,
        },
    })?;
    if !same_as_ours(&theirs, "mnt") {
        nix::sched::setns(theirs.as_fd(), CloneFlags::CLONE_NEWNS).map_err(|source| {
            GuestNsError::Join {
                name: "mnt",
                path,
                source,
            }
        })?;
    }
    Ok((pinned, HostMount(OwnedFd::from(host))))
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
