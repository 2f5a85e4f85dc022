//! Applying layer tars to a root filesystem, as the OCI image spec's
//! layer.md says (whiteouts, opaque directories), without ever touching
//! anything outside it.
//!
//! Safety rules: an entry's path must be relative and free of `..`; its
//! parent directory is resolved with openat2(RESOLVE_IN_ROOT), so a symlink
//! an earlier entry planted (`etc -> /etc`, `x -> ../../..`) resolves inside
//! the rootfs or fails, never on the host; the entry itself is made with
//! *at() calls on that directory and a plain name, none of which follow a
//! symlink in the last component (O_NOFOLLOW, O_EXCL, AT_SYMLINK_NOFOLLOW);
//! a hard link's target is resolved the same way, so it can only name a
//! file of the rootfs.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::libc;
use nix::sys::stat::{fchmod, fchmodat, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::ImageError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// The root filesystem being built, held open by descriptor.
pub struct Rootfs {
    fd: OwnedFd,
}

impl Rootfs {
    pub fn open(dir: &Path) -> Result<Rootfs, ImageError> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ImageError::io(dir, e.into()))?;
        Ok(Rootfs { fd })
    }

    /// A file of the rootfs for reading (`etc/passwd`), symlinks resolved
    /// inside it; `None` if it does not exist.
    pub fn open_file(&self, rel: &str) -> Result<Option<File>, ImageError> {
        match self.resolve(OsStr::new(rel), OFlag::O_RDONLY) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(sys(rel, "open", e)),
        }
    }

    fn resolve(&self, rel: &OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        openat2(self.fd.as_fd(), rel, how)
    }

    /// The directory `parts` names, made (0755, root's) where missing.
    fn dir(&self, parts: &[OsString], create: bool) -> Result<OwnedFd, Errno> {
        let dirflags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        if parts.is_empty() {
            return self.fd.try_clone().map_err(|_| Errno::EMFILE);
        }
        match self.resolve(&join(parts), dirflags) {
            Err(Errno::ENOENT) if create => {}
            other => return other,
        }
        let mut cur = self.fd.try_clone().map_err(|_| Errno::EMFILE)?;
        for i in 0..parts.len() {
            let prefix = join(&parts[..=i]);
            cur = match self.resolve(&prefix, dirflags) {
                Err(Errno::ENOENT) => {
                    // `cur` is the resolved parent and the name has no '/':
                    // mkdirat makes it there or fails on whatever is there.
                    let mode = Mode::from_bits_truncate(0o755);
                    mkdirat(cur.as_fd(), parts[i].as_os_str(), mode)?;
                    // Whatever the umask: implicit parents are 0755, as other unpackers make them.
                    fchmodat(
                        cur.as_fd(),
                        parts[i].as_os_str(),
                        mode,
                        FchmodatFlags::FollowSymlink,
                    )?;
                    self.resolve(&prefix, dirflags)?
                }
                other => other?,
            };
        }
        Ok(cur)
    }
}

/// Applies one layer's tar stream. Errors name the entry.
pub fn apply<R: Read>(root: &Rootfs, layer: R) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(layer);
    // Paths written by this layer: whiteouts hide only lower layers' files.
    let mut ours: HashSet<Vec<u8>> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| ImageError::io("tar stream", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::io("tar stream", e))?;
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue; // pax metadata the tar reader did not fold into an entry
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let parts = clean(&raw).map_err(|why| ImageError::Hostile {
            entry: shown.clone(),
            why,
        })?;
        let Some((name, parent)) = parts.split_last() else {
            // `./`: the root directory's own owner and mode.
            if entry.header().entry_type().is_dir() {
                set_meta(root.fd.as_fd(), &mut entry, &shown)?;
            }
            continue;
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            let dir = root
                .dir(parent, true)
                .map_err(|e| sys(&shown, "opaque", e))?;
            let keep = join(parent);
            clear_dir(dir.as_fd(), keep.as_bytes(), &ours).map_err(|e| sys(&shown, "opaque", e))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
            if hidden.starts_with(WHITEOUT.as_bytes()) || hidden.is_empty() {
                continue; // aufs's own bookkeeping (.wh..wh.plnk, ...)
            }
            if hidden == b"." || hidden == b".." {
                // `.wh..` would empty the directory, `.wh...` its parent,
                // which for the rootfs's top is outside it.
                return Err(ImageError::Hostile {
                    entry: shown,
                    why: "whiteout of '.' or '..'",
                });
            }
            let mut path = parent.to_vec();
            path.push(OsStr::from_bytes(hidden).to_os_string());
            if ours.contains(join(&path).as_bytes()) {
                continue;
            }
            match root.dir(parent, false) {
                Ok(dir) => remove_tree(dir.as_fd(), OsStr::from_bytes(hidden))
                    .map_err(|e| sys(&shown, "whiteout", e))?,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(sys(&shown, "whiteout", e)),
            }
            continue;
        }
        let dir = root
            .dir(parent, true)
            .map_err(|e| sys(&shown, "parent directory", e))?;
        // With its ancestors: a directory this layer only implies (its
        // `d/new/x` without a `d/new/` entry) is this layer's too.
        for n in 1..=parts.len() {
            ours.insert(join(&parts[..n]).as_bytes().to_vec());
        }
        make(root, dir.as_fd(), name, &mut entry, &shown)?;
    }
    Ok(())
}

/// An entry's path as plain components; refuses absolute paths and `..`.
fn clean(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut parts = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' in path"),
            c => parts.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(parts)
}

fn join(parts: &[OsString]) -> OsString {
    let mut out = OsString::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push("/");
        }
        out.push(p);
    }
    out
}

fn make<R: Read>(
    root: &Rootfs,
    dir: BorrowedFd,
    name: &OsStr,
    entry: &mut tar::Entry<R>,
    shown: &str,
) -> Result<(), ImageError> {
    use tar::EntryType as T;
    let kind = entry.header().entry_type();
    let err = |what: &'static str| move |e: Errno| sys(shown, what, e);
    let existing = lstat_at(dir, name).map_err(err("stat"))?;
    let existing_dir = existing.is_some_and(|m| m & libc::S_IFMT == libc::S_IFDIR);
    // A directory over a directory merges; anything else replaces.
    if existing.is_some() && !(kind == T::Directory && existing_dir) {
        remove_tree(dir, name).map_err(err("replace"))?;
    }
    let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
    match kind {
        T::Directory => {
            if !existing_dir {
                mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(err("mkdir"))?;
            }
            let fd = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(err("open"))?;
            set_meta(fd.as_fd(), entry, shown)?;
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            let fd = openat(
                dir,
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(err("create"))?;
            let mut file = File::from(fd);
            std::io::copy(entry, &mut file).map_err(|e| ImageError::io(shown, e))?;
            set_meta(file.as_fd(), entry, shown)?;
            let t = mtime(entry);
            nix::sys::stat::futimens(file.as_fd(), &t, &t).map_err(err("utimes"))?;
        }
        T::Symlink => {
            let target = entry.link_name_bytes().unwrap_or_default();
            symlinkat(OsStr::from_bytes(&target), dir, name).map_err(err("symlink"))?;
            chown_at(dir, name, entry).map_err(err("chown"))?;
        }
        T::Link => {
            let target = entry.link_name_bytes().unwrap_or_default();
            let parts = clean(&target).map_err(|why| ImageError::Hostile {
                entry: shown.to_string(),
                why,
            })?;
            let Some((tname, tparent)) = parts.split_last() else {
                return Err(ImageError::Hostile {
                    entry: shown.to_string(),
                    why: "hard link to the root",
                });
            };
            let tdir = root.dir(tparent, false).map_err(err("link target"))?;
            // No AT_SYMLINK_FOLLOW: a symlink target is linked as itself.
            linkat(tdir.as_fd(), tname.as_os_str(), dir, name, AtFlags::empty())
                .map_err(err("link"))?;
        }
        T::Char | T::Block | T::Fifo => {
            let sflag = match kind {
                T::Char => SFlag::S_IFCHR,
                T::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            let dev = libc::makedev(major, minor);
            mknodat(dir, name, sflag, Mode::from_bits_truncate(0o600), dev)
                .map_err(err("mknod"))?;
            chown_at(dir, name, entry).map_err(err("chown"))?;
            // Just made by us in a directory only we write to: not a symlink.
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(err("chmod"))?;
        }
        other => {
            return Err(ImageError::Hostile {
                entry: shown.to_string(),
                why: unsupported(other),
            })
        }
    }
    Ok(())
}

fn unsupported(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::GNULongName | tar::EntryType::GNULongLink => "dangling long-name header",
        _ => "unsupported tar entry type",
    }
}

fn mtime<R: Read>(entry: &tar::Entry<R>) -> nix::sys::time::TimeSpec {
    let secs = entry.header().mtime().unwrap_or(0);
    nix::sys::time::TimeSpec::new(secs.min(i64::MAX as u64) as i64, 0)
}

fn ids<R: Read>(entry: &tar::Entry<R>) -> (Uid, Gid) {
    let h = entry.header();
    let uid = h.uid().unwrap_or(0).min(u32::MAX as u64) as u32;
    let gid = h.gid().unwrap_or(0).min(u32::MAX as u64) as u32;
    (Uid::from_raw(uid), Gid::from_raw(gid))
}

fn chown_at<R: Read>(dir: BorrowedFd, name: &OsStr, entry: &tar::Entry<R>) -> nix::Result<()> {
    let (u, g) = ids(entry);
    fchownat(dir, name, Some(u), Some(g), AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Owner, then mode (a chown clears set-id bits), then xattrs.
fn set_meta<R: Read>(
    fd: BorrowedFd,
    entry: &mut tar::Entry<R>,
    shown: &str,
) -> Result<(), ImageError> {
    let (u, g) = ids(entry);
    fchown(fd, Some(u), Some(g)).map_err(|e| sys(shown, "chown", e))?;
    let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
    fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| sys(shown, "chmod", e))?;
    let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| ImageError::io(shown, e))?
    else {
        return Ok(());
    };
    for ext in pax {
        let ext = ext.map_err(|e| ImageError::io(shown, e))?;
        let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        let key = CString::new(key).map_err(|_| ImageError::Hostile {
            entry: shown.to_string(),
            why: "NUL in an xattr name",
        })?;
        let value = ext.value_bytes();
        // SAFETY: a valid descriptor, a NUL-terminated name, a buffer and its length.
        let rc = unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let e = Errno::last();
            if e == Errno::ENOTSUP {
                tracing::warn!("{shown}: xattr {key:?} not supported here, skipped");
            } else {
                return Err(sys(shown, "setxattr", e));
            }
        }
    }
    Ok(())
}

fn lstat_at(dir: BorrowedFd, name: &OsStr) -> nix::Result<Option<u32>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st.st_mode)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir` and, if it is a directory, all below it,
/// following no symlink.
fn remove_tree(dir: BorrowedFd, name: &OsStr) -> nix::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let sub = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for child in children(sub.as_fd())? {
        remove_tree(sub.as_fd(), &child)?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}

/// Removes what lower layers left in `dir` (at `path`), at any depth,
/// keeping this layer's entries and the directories leading to them.
fn clear_dir(dir: BorrowedFd, path: &[u8], ours: &HashSet<Vec<u8>>) -> nix::Result<()> {
    for child in children(dir)? {
        let mut full = path.to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(child.as_bytes());
        if !ours.contains(&full) {
            remove_tree(dir, &child)?;
            continue;
        }
        // Kept: a directory of ours may still hold lower layers' entries.
        match openat(
            dir,
            child.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(sub) => clear_dir(sub.as_fd(), &full, ours)?,
            Err(Errno::ENOTDIR | Errno::ELOOP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn children(dir: BorrowedFd) -> nix::Result<Vec<OsString>> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

fn sys(entry: &str, what: &'static str, source: Errno) -> ImageError {
    ImageError::Entry {
        entry: entry.to_string(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests;
