//! The guest's /dev and root propagation as the runtime spec describes
//! them, done by the init before anything else it mounts.
//!
//! LXC mounts its autodev tmpfs on /dev (source `none`) before /proc, binds
//! `/dev/pts/ptmx` over `/dev/ptmx`, and leaves `/` shared. When the bundle
//! lists a /dev tmpfs, the init builds a new one with the bundle's source and
//! options on a staging directory in the bridge, moves LXC's device nodes,
//! consoles and bind mounts into it, mounts the bundle's /dev/* filesystems
//! in the bundle's order (devpts: a bind of LXC's instance, which holds the
//! consoles; the profile allows no new devpts), drops LXC's /dev and moves
//! the new one there. Every step is one the generated AppArmor profile
//! allows: tmpfs and mqueue anywhere, binds and moves from /dev/<name> and
//! from /.nexcage, moves to anywhere, umount, propagation changes.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use super::settings::{InitDev, InitDevMount};
use super::MOUNT_POINT;

/// The staging directory in the bridge (created empty by the host).
pub const STAGE_DIR: &str = "dev";

const NONE: Option<&str> = None;

/// Cut the guest's mounts off from any peer outside it, as runc does with
/// `/` (rslave) before it sets up the container's mounts: mounts made in
/// the guest then never appear elsewhere, and mounts may be moved (the
/// kernel refuses to move a mount out of a shared parent).
pub fn make_root_rslave() -> Result<(), String> {
    mount(NONE, "/", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
        .map_err(|e| format!("make / rslave: {e}"))
}

/// linux.rootfsPropagation on the guest's `/`. "shared" makes a peer group
/// of the guest's own: `/` is a slave of the host's side by then, so mounts
/// made in the guest still never reach the host.
pub fn apply_root_propagation(p: &str) -> Result<(), String> {
    let flags = match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(format!("linux.rootfsPropagation: {other:?} is unknown")),
    };
    mount(NONE, "/", NONE, flags, NONE).map_err(|e| format!("linux.rootfsPropagation {p}: {e}"))
}

/// The runtime spec's /dev symlinks: ptmx to the guest's own devpts (LXC
/// binds it instead), and /dev/core as runc makes it. `dev` is the /dev
/// being built (or /dev itself).
fn dev_symlinks(dev: &Path) -> Result<(), String> {
    let ptmx = dev.join("ptmx");
    if let Ok(m) = std::fs::symlink_metadata(&ptmx) {
        if !m.file_type().is_symlink() {
            // LXC's bind of pts/ptmx; gone with the old /dev when rebuilding.
            let _ = umount2(&ptmx, MntFlags::MNT_DETACH);
        }
        std::fs::remove_file(&ptmx).map_err(|e| format!("/dev/ptmx: {e}"))?;
    }
    let mut links = vec![
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    for (name, target) in links {
        let p = dev.join(name);
        if std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, &p).map_err(|e| format!("/dev/{name}: {e}"))?;
    }
    Ok(())
}

/// Without a /dev tmpfs in the bundle, LXC's /dev stays; only the symlinks
/// are made right.
pub fn fix_lxc_dev() -> Result<(), String> {
    dev_symlinks(Path::new("/dev"))
}

/// One line of /proc/self/mountinfo: id, parent id, mount point.
struct MountInfo {
    id: u64,
    parent: u64,
    point: PathBuf,
}

fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let point = crate::procfs::unescape_mount_field(f.nth(2)?);
            Some(MountInfo { id, parent, point })
        })
        .collect()
}

/// Mount flags and the data string for a tmpfs or mqueue option list (the
/// translation has checked every word).
fn fs_flags(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "rw" | "suid" | "dev" | "exec" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

fn fs_mount(source: &str, target: &Path, fstype: &str, options: &[String]) -> nix::Result<()> {
    let (flags, data) = fs_flags(options);
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(source), target, Some(fstype), flags, data)
}

/// An empty file or directory at `target`, as mount points need.
fn make_target(target: &Path, dir: bool) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if dir {
        std::fs::create_dir_all(target)
    } else if std::fs::symlink_metadata(target).is_err() {
        std::fs::File::create(target).map(drop)
    } else {
        Ok(())
    }
}

fn fail(what: &str, p: &Path, e: &dyn std::fmt::Display) -> String {
    format!("/dev: {what} {}: {e}", p.display())
}

/// Make again below `to` what `from` holds that is not a mount point (those
/// have been moved already and left an empty file or directory behind).
fn carry_over(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| fail("read", from, &e))?;
    for entry in entries.flatten() {
        let src = from.join(entry.file_name());
        let dst = to.join(entry.file_name());
        if skip(&src) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            if std::fs::symlink_metadata(&dst).is_err() {
                std::fs::create_dir(&dst).map_err(|e| fail("create", &dst, &e))?;
                let perms = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
                std::fs::set_permissions(&dst, perms).map_err(|e| fail("chmod", &dst, &e))?;
            }
            carry_over(&src, &dst, skip)?;
            continue;
        }
        if std::fs::symlink_metadata(&dst).is_ok() {
            continue;
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| fail("read", &src, &e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| fail("create", &dst, &e))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
            match mknod(&dst, kind, mode, meta.rdev()) {
                Ok(()) => {
                    std::os::unix::fs::chown(&dst, Some(meta.uid()), Some(meta.gid()))
                        .map_err(|e| fail("chown", &dst, &e))?;
                    // mknod applied the umask.
                    let perms = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
                    std::fs::set_permissions(&dst, perms).map_err(|e| fail("chmod", &dst, &e))?;
                }
                // Where mknod is not allowed, the node is bound, as LXC
                // binds devices into an unprivileged guest.
                Err(nix::errno::Errno::EPERM) => {
                    make_target(&dst, false).map_err(|e| fail("create", &dst, &e))?;
                    mount(Some(&src), &dst, NONE, MsFlags::MS_BIND, NONE)
                        .map_err(|e| fail("bind", &src, &e))?;
                }
                Err(e) => return Err(fail("mknod", &dst, &e)),
            }
        }
        // Regular files (LXC's .lxc-boot-id, kept alive by its bind on
        // /proc/sys/kernel/random/boot_id) are not needed.
    }
    Ok(())
}

/// Build the bundle's /dev in place of LXC's (see the module's comment).
pub fn rebuild(dev: &InitDev) -> Result<(), String> {
    let old = Path::new("/dev");
    let stage = Path::new(MOUNT_POINT).join(STAGE_DIR);
    fs_mount(&dev.source, &stage, "tmpfs", &dev.options)
        .map_err(|e| fail("mount tmpfs on", &stage, &e))?;

    // The bundle's mounts below /dev, made here; LXC's own at those places
    // are dropped with the old /dev.
    let managed: Vec<&Path> = dev
        .mounts
        .iter()
        .map(|m| Path::new(&m.destination))
        .chain([Path::new("/dev/ptmx")])
        .collect();

    // LXC's mounts directly below /dev (device binds, consoles, ttys, bind
    // mounts from the bundle) move over with whatever is mounted below them.
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| fail("read", Path::new("/proc/self/mountinfo"), &e))?;
    let table = parse_mountinfo(&text);
    let old_id = table
        .iter()
        .rev()
        .find(|m| m.point == old)
        .map(|m| m.id)
        .ok_or("/dev: LXC's /dev is not mounted")?;
    let mut has_pts = false;
    for m in table.iter().filter(|m| m.parent == old_id) {
        if m.point == Path::new("/dev/pts") {
            has_pts = true;
        }
        if managed.contains(&m.point.as_path()) || m.point == Path::new("/dev/pts") {
            continue;
        }
        let Ok(rel) = m.point.strip_prefix(old) else {
            continue;
        };
        let target = stage.join(rel);
        let dir = std::fs::metadata(&m.point)
            .map(|s| s.is_dir())
            .unwrap_or(false);
        make_target(&target, dir).map_err(|e| fail("create", &target, &e))?;
        mount(Some(&m.point), &target, NONE, MsFlags::MS_MOVE, NONE)
            .map_err(|e| fail("move", &m.point, &e))?;
    }

    // What is left in the old /dev and not mounted: LXC's device nodes (a
    // privileged guest's are made with mknod, as are those of Proxmox's
    // autodev hook), symlinks and directories, at any depth.
    let skip = |p: &Path| managed.contains(&p) || p == Path::new("/dev/pts");
    carry_over(old, &stage, &skip)?;

    // The bundle's filesystems below /dev, in its order. LXC's devpts holds
    // the consoles and ttys; without a devpts in the bundle it still comes
    // last, as every guest needs ptys.
    let pts = InitDevMount {
        destination: "/dev/pts".into(),
        fstype: "devpts".into(),
        source: "devpts".into(),
        options: Vec::new(),
    };
    let want_pts = has_pts && !dev.mounts.iter().any(|m| m.fstype == "devpts");
    for m in dev.mounts.iter().chain(want_pts.then_some(&pts)) {
        let dst = Path::new(&m.destination);
        let Ok(rel) = dst.strip_prefix(old) else {
            continue;
        };
        let target = stage.join(rel);
        make_target(&target, true).map_err(|e| fail("create", &target, &e))?;
        let r = if m.fstype == "devpts" {
            mount(Some(dst), &target, NONE, MsFlags::MS_BIND, NONE)
        } else {
            fs_mount(&m.source, &target, &m.fstype, &m.options)
        };
        r.map_err(|e| fail(&format!("mount {}", m.fstype), dst, &e))?;
    }
    dev_symlinks(&stage)?;

    umount2(old, MntFlags::MNT_DETACH).map_err(|e| fail("unmount LXC's", old, &e))?;
    mount(Some(&stage), old, NONE, MsFlags::MS_MOVE, NONE)
        .map_err(|e| fail("move the new /dev from", &stage, &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        let t = parse_mountinfo(
            "74 73 0:40 / /dev rw - tmpfs none rw\n82 74 0:43 / /dev/a\\040b rw - tmpfs shm rw\n",
        );
        assert_eq!((t[0].id, t[0].parent), (74, 73));
        assert_eq!(t[1].point, Path::new("/dev/a b"));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["nosuid", "strictatime", "mode=755", "size=65536k", "rw"]
            .map(String::from)
            .to_vec();
        let (flags, data) = fs_flags(&o);
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(data, "mode=755,size=65536k");
    }
}
