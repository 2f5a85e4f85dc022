//! Root mode `bundle`: the guest boots on a stub root volume with the
//! bundle's rootfs mounted at `/.nexcage-root`; the init makes that the
//! root before it reads process.json or mounts anything else.
//!
//! LXC has mounted /proc, /sys, /dev, the bridge and the bundle's own
//! mounts in the stub. Each mount whose parent is the stub's root is moved
//! (with everything mounted below it) to the same path in the new root,
//! then `pivot_root(".", ".")` and a lazy unmount of the stub, as runc
//! leaves its old root. The generated AppArmor profile forbids moving
//! /proc, /sys and /dev and, for privileged guests, pivot_root: the
//! backend writes exact allow rules for those four calls
//! (backend::proxmox::apparmor::root_switch_rules). Mount points missing
//! in the rootfs are made there, as runc makes them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, Flock, FlockArg, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::error::InitError;
use crate::bridge::MOUNT_POINT;

const NONE: Option<&str> = None;

/// One line of /proc/self/mountinfo: id, parent id, mount point.
struct Entry {
    id: u64,
    parent: u64,
    point: PathBuf,
}

fn mountinfo() -> std::io::Result<Vec<Entry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let point = crate::procfs::unescape_mount_field(f.nth(2)?);
            Some(Entry { id, parent, point })
        })
        .collect())
}

/// The mounts to carry into the new root: children of the current root's
/// mount, in mount order, but the new root itself.
fn top_level(entries: &[Entry], new_root: &Path) -> Vec<PathBuf> {
    // The root mount is the last one mounted at "/" (LXC's pivoted rootfs).
    let Some(root) = entries.iter().rev().find(|e| e.point == Path::new("/")) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|e| e.parent == root.id && e.id != root.id && e.point != new_root)
        .map(|e| e.point.clone())
        .collect()
}

/// A mount point like `like` (directory or file) at `target`.
fn make_mount_point(like: &Path, target: &Path) -> std::io::Result<()> {
    let dir = std::fs::metadata(like).map(|m| m.is_dir()).unwrap_or(true);
    if dir {
        return std::fs::create_dir_all(target);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::symlink_metadata(target).is_err() {
        std::fs::File::create(target)?;
    }
    Ok(())
}

/// Switch the guest's root to `new_root`. Returns a descriptor of the
/// bridge's mount point directory in the rootfs, share-locked for as long
/// as the init lives: the host removes that directory when the guest is
/// gone, but not while another guest of the same rootfs still has it.
pub(super) fn switch(new_root: &str) -> Result<Option<Flock<OwnedFd>>, InitError> {
    let fail = |what: String| move |e: std::io::Error| InitError::Root(format!("{what}: {e}"));
    let new_root = Path::new(new_root);
    // Moves need parents that are not shared, and so does pivot_root.
    crate::bridge::devfs::make_root_rslave().map_err(InitError::Bridge)?;
    let entries = mountinfo().map_err(fail("read /proc/self/mountinfo".into()))?;
    let mut bridge_lock = None;
    for point in top_level(&entries, new_root) {
        let rel = point.strip_prefix("/").unwrap_or(&point);
        let target = new_root.join(rel);
        make_mount_point(&point, &target)
            .map_err(fail(format!("mount point {}", target.display())))?;
        if point == Path::new(MOUNT_POINT) {
            let fd = open(
                &target,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| InitError::Root(format!("open {}: {e}", target.display())))?;
            let lock = Flock::lock(fd, FlockArg::LockShared)
                .map_err(|(_, e)| InitError::Root(format!("lock {}: {e}", target.display())))?;
            bridge_lock = Some(lock);
        }
        mount(Some(&point), &target, NONE, MsFlags::MS_MOVE, NONE).map_err(|e| {
            InitError::Root(format!(
                "move {} to {}: {e}",
                point.display(),
                target.display()
            ))
        })?;
    }
    std::env::set_current_dir(new_root).map_err(fail(format!("chdir {}", new_root.display())))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| InitError::Root(format!("pivot_root to {}: {e}", new_root.display())))?;
    // The stub is now stacked on the new root: drop it and everything the
    // guest does not need from it.
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| InitError::Root(format!("unmount the stub root: {e}")))?;
    std::env::set_current_dir("/").map_err(fail("chdir /".into()))?;
    Ok(bridge_lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_children_of_the_root_mount_move_and_never_the_new_root() {
        let text = [
            (20, 1, "/"),
            (21, 20, "/dev"),
            (22, 21, "/dev/pts"),
            (23, 20, "/proc"),
            (24, 23, "/proc/sys"),
            (25, 20, "/.nexcage"),
            (26, 25, "/.nexcage/init"),
            (27, 20, "/.nexcage-root"),
            (28, 20, "/etc/hostname"),
        ];
        let entries: Vec<Entry> = text
            .iter()
            .map(|(id, parent, p)| Entry {
                id: *id,
                parent: *parent,
                point: PathBuf::from(p),
            })
            .collect();
        let got = top_level(&entries, Path::new("/.nexcage-root"));
        assert_eq!(
            got,
            ["/dev", "/proc", "/.nexcage", "/etc/hostname"].map(PathBuf::from)
        );
    }
}
