//! Root mode `bundle` on the host side: the stub the guest's root volume
//! is made from, the mount entry of the bundle's rootfs, and the one
//! directory nexcage adds to that rootfs (the bridge's mount point).
//!
//! Proxmox makes every guest boot on its own root volume (pve-container
//! refuses a raw `lxc.rootfs.path`), so the volume holds a stub: the mount
//! points LXC and the init need, converted once per node through the
//! template cache like any rootfs (it is a few hundred bytes). The bundle's
//! rootfs is bound into it at /.nexcage-root (idmapped for unprivileged
//! guests, so files owned by host uid 0 are uid 0 inside), and the init
//! pivots there (src/bridge/init/root.rs).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

use super::conf::{ConfError, RawLine};
use crate::bridge::{MOUNT_TARGET, ROOT_MOUNT_TARGET};

/// The stub's directories: the bridge, the rootfs's mount point, and what
/// LXC mounts before the init runs.
const STUB_DIRS: &[&str] = &[MOUNT_TARGET, ROOT_MOUNT_TARGET, "dev", "proc", "sys"];

#[derive(Debug, thiserror::Error)]
pub enum BundleRootError {
    #[error("cannot make the stub root {}: {source}", path.display())]
    Stub {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("root.path: {}: {reason}", path.display())]
    Rootfs { path: PathBuf, reason: String },
}

/// The stub's source tree under the state root, made on first use. Only
/// directories, all 0755 and root's: its fingerprint, and so its template,
/// is the same on every create.
pub fn stub_tree(state_root: &Path) -> Result<PathBuf, BundleRootError> {
    let dir = crate::fsutil::own_path(state_root, "cache").join("stub-root");
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleRootError::Stub { path, source }
    };
    for d in STUB_DIRS {
        let p = dir.join(d);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&p)
            .map_err(fail(&p))?;
        // The umask may have narrowed it; the fingerprint covers modes.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(fail(&p))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(fail(&dir))?;
    Ok(dir)
}

/// The bundle's rootfs as the guest's `/.nexcage-root`: recursive like
/// runc's rootfs bind, idmapped to the guest's user namespace when asked
/// (LXC 5: `idmap=container`, bind mounts only; see [`needs_idmap`]).
pub fn mount_line(rootfs: &Path, idmap: bool) -> Result<RawLine, ConfError> {
    let mut o = vec!["rbind"];
    if idmap {
        o.push("idmap=container");
    }
    RawLine::bind_mount(rootfs, ROOT_MOUNT_TARGET, &o)
}

/// Whether an unprivileged guest needs the rootfs idmapped. A rootfs whose
/// root directory belongs to the guest's mapped root (host uid 100000 with
/// Proxmox's map) was laid out for the map, as runc expects of a bundle
/// with a user namespace, and is bound as it is. One owned by anyone else
/// (host root, as podman and containerd unpack images) is idmapped, so the
/// guest's root owns what the host's root owns; overlayfs cannot be
/// idmapped (the kernel refuses MOUNT_ATTR_IDMAP on it), so that case is
/// refused before anything is made.
pub fn needs_idmap(rootfs: &Path, unprivileged: bool) -> Result<bool, BundleRootError> {
    if !unprivileged {
        return Ok(false);
    }
    let bad = |reason: String| BundleRootError::Rootfs {
        path: rootfs.to_path_buf(),
        reason,
    };
    let uid = std::fs::metadata(rootfs)
        .map_err(|e| bad(e.to_string()))?
        .uid();
    let mapped_root = super::translate::namespaces::DEFAULT_IDMAP.1;
    if u64::from(uid) == mapped_root {
        return Ok(false);
    }
    let fs = nix::sys::statfs::statfs(rootfs).map_err(|e| bad(e.to_string()))?;
    if fs.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC {
        return Err(bad(format!(
            "owned by host uid {uid} on overlayfs, which cannot be idmapped for an unprivileged guest in root mode bundle: use org.proxmox.root=template, a privileged guest, or a rootfs owned by the guest's mapped ids (host uid {mapped_root} for root)"
        )));
    }
    Ok(true)
}

/// The rootfs, resolved, with the bridge's mount point made in it (the
/// init moves the bridge there before it pivots). A non-directory by that
/// name (a symlink could lead the host's removal elsewhere) is refused.
pub fn prepare(rootfs: &Path) -> Result<PathBuf, BundleRootError> {
    let bad = |reason: String| BundleRootError::Rootfs {
        path: rootfs.to_path_buf(),
        reason,
    };
    let real = std::fs::canonicalize(rootfs).map_err(|e| bad(e.to_string()))?;
    let point = real.join(MOUNT_TARGET);
    match std::fs::symlink_metadata(&point) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(bad(format!(
                "/{MOUNT_TARGET} is not a directory: it is reserved for nexcage's process bridge"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o755).create(&point) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(bad(format!("cannot make /{MOUNT_TARGET}: {e}"))),
            }
        }
        Err(e) => return Err(bad(format!("/{MOUNT_TARGET}: {e}"))),
    }
    Ok(real)
}

/// Removes the bridge's mount point from the rootfs once no guest uses it:
/// every running init of this rootfs holds it share-locked, so it stays
/// while another guest of the same rootfs runs. Only an empty directory is
/// removed; failures are logged, the guest is gone either way.
pub fn release(rootfs: &Path) {
    let Ok(dir) = open(
        rootfs,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let point = match nix::fcntl::openat(
        &dir,
        MOUNT_TARGET,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return,
    };
    let Ok(_lock) = Flock::lock(point, FlockArg::LockExclusiveNonblock) else {
        tracing::debug!(rootfs = %rootfs.display(), "bridge mount point in use by another guest: kept");
        return;
    };
    // Relative to the rootfs already opened: no path is looked up again.
    if let Err(e) = nix::unistd::unlinkat(&dir, MOUNT_TARGET, nix::unistd::UnlinkatFlags::RemoveDir)
    {
        // ENOTEMPTY: the process put something there; it stays, as runc
        // leaves what a process wrote.
        tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot remove /{MOUNT_TARGET} from the rootfs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_is_the_same_tree_every_time() {
        let tmp = tempfile::tempdir().unwrap();
        let a = stub_tree(tmp.path()).unwrap();
        let b = stub_tree(tmp.path()).unwrap();
        assert_eq!(a, b);
        let mut names: Vec<_> = std::fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".nexcage", ".nexcage-root", "dev", "proc", "sys"]);
    }

    #[test]
    fn the_mount_point_is_made_and_removed_when_free() {
        let tmp = tempfile::tempdir().unwrap();
        let real = prepare(tmp.path()).unwrap();
        assert!(real.join(".nexcage").is_dir());
        let held = Flock::lock(
            std::fs::File::open(real.join(".nexcage")).unwrap(),
            FlockArg::LockShared,
        )
        .unwrap();
        release(&real);
        assert!(real.join(".nexcage").is_dir(), "kept while locked");
        drop(held);
        release(&real);
        assert!(!real.join(".nexcage").exists());
    }

    #[test]
    fn a_symlink_by_the_bridge_s_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join(".nexcage")).unwrap();
        assert!(prepare(tmp.path()).is_err());
    }

    #[test]
    fn only_unprivileged_guests_of_unshifted_rootfs_are_idmapped() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!needs_idmap(tmp.path(), false).unwrap());
        assert!(needs_idmap(tmp.path(), true).unwrap());
        std::os::unix::fs::chown(tmp.path(), Some(100_000), Some(100_000)).unwrap();
        assert!(!needs_idmap(tmp.path(), true).unwrap());
    }

    #[test]
    fn unprivileged_guests_get_an_idmapped_bind() {
        let l = mount_line(Path::new("/b/rootfs"), true).unwrap().render();
        assert_eq!(
            l,
            "lxc.mount.entry: /b/rootfs .nexcage-root none bind,rbind,idmap=container 0 0"
        );
        let l = mount_line(Path::new("/b/rootfs"), false).unwrap().render();
        assert!(l.ends_with("none bind,rbind 0 0"), "{l}");
    }
}
