//! The walk of a rootfs tree that both the fingerprint and the archive are
//! made from: every entry is hashed into the fingerprint, counted into the
//! room the tree needs, and handed to a [`Sink`] (nothing for a fingerprint,
//! the tar writer for an archive). Children are opened relative to their
//! parent's descriptor with `O_NOFOLLOW`, listings are sorted by bytes, and
//! mounts inside the rootfs are not descended into.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::libc;
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};

use super::TemplateError;
use crate::hex;

/// Mixed into every fingerprint. Bump it whenever the archive layout changes,
/// so templates written by an older nexcage are not reused for the new layout.
const FORMAT_TAG: &[u8] = b"nexcage-template-v2\0";

/// Block size the root volume's ext4 gets from mkfs.ext4 for volumes of a
/// GiB and more.
const BLOCK: u64 = 4096;

/// The room one walked entry takes on the guest's ext4: regular files
/// rounded up to whole blocks (their apparent size, holes counted, since the
/// unpack may not recreate them), a block per directory and per symlink too
/// long to live in the inode; hard links share their first name's blocks.
fn data_bytes(kind: Kind, st: &FileStat, link: &[u8]) -> u64 {
    match kind {
        Kind::File => u64::try_from(st.st_size).unwrap_or(0).div_ceil(BLOCK) * BLOCK,
        Kind::Dir => BLOCK,
        // ext4 keeps targets shorter than 60 bytes inside the inode.
        Kind::Symlink if link.len() >= 60 => BLOCK,
        _ => 0,
    }
}

/// The values go into the fingerprint: renumbering them would change every
/// fingerprint (and so reconvert every template) for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir = 1,
    File = 2,
    Symlink = 3,
    HardLink = 4,
    Fifo = 5,
    Char = 6,
    Block = 7,
}

/// One entry as the archive stores it.
pub(super) struct Node<'a> {
    /// Archive name: `./`, `./etc/` (directories end in `/`), `./etc/passwd`.
    pub(super) name: &'a [u8],
    pub(super) kind: Kind,
    pub(super) st: &'a FileStat,
    /// Symlink target, or for hard links the archive name of the first link.
    pub(super) link: &'a [u8],
    pub(super) xattrs: &'a [Xattr],
    /// The open file, for regular files whose content is to be stored.
    pub(super) file: Option<&'a File>,
}

impl<'a> Node<'a> {
    /// An entry with no link target, extended attributes or content; the
    /// walk fills in what a kind has.
    fn bare(name: &'a [u8], kind: Kind, st: &'a FileStat) -> Self {
        Node {
            name,
            kind,
            st,
            link: b"",
            xattrs: &[],
            file: None,
        }
    }
}

pub(super) struct Xattr {
    pub(super) name: Vec<u8>,
    pub(super) value: Vec<u8>,
}

pub(super) enum SinkError {
    Read(io::Error),
    Changed,
    Write(io::Error),
}

/// What the walk feeds every entry to: nothing for a fingerprint, the tar
/// writer for an archive. Both share the walk so that they hash the same.
pub(super) trait Sink {
    fn entry(&mut self, node: &Node<'_>) -> Result<(), SinkError>;
}

pub(super) struct NoSink;

impl Sink for NoSink {
    fn entry(&mut self, _: &Node<'_>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A directory being walked: its descriptor (children are opened relative to
/// it, so a path component swapped for a symlink cannot redirect us) and its
/// sorted listing.
struct Frame {
    dir: OwnedFd,
    names: Vec<CString>,
    next: usize,
    /// Length of this directory's archive name (`./a/b/`) in the name buffer.
    prefix_len: usize,
}

struct Walker<'a> {
    rootfs: &'a Path,
    hasher: Sha256,
    /// (st_dev, st_ino) -> archive name of the first link seen.
    links: HashMap<(u64, u64), Vec<u8>>,
    out_path: Option<&'a Path>,
    /// Sum of [`data_bytes`] over the entries emitted so far.
    bytes: u64,
    /// The mount the rootfs directory is on; entries on another are mount
    /// points and are not descended into.
    root_mount: Mount,
}

/// Which mount an entry is on: the mount id where the kernel tells it
/// (statx, Linux 5.8), else only the device, as tar --one-file-system uses.
#[derive(Debug, Clone, Copy)]
struct Mount {
    id: Option<u64>,
    dev: u64,
}

impl Mount {
    /// `other` is on a different mount than `self`. Without mount ids only
    /// directories are compared: overlayfs reports the lower layers' devices
    /// for non-directories, so a device alone does not mark a file mount.
    fn differs(self, other: Mount, is_dir: bool) -> bool {
        match (self.id, other.id) {
            (Some(a), Some(b)) => a != b,
            _ => is_dir && self.dev != other.dev,
        }
    }
}

/// The mount id of `name` in `dir` (the directory itself when `name` is
/// empty), not following a final symlink.
fn mount_id(dir: BorrowedFd<'_>, name: &CStr) -> Option<u64> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: statx is plain integers, for which all zeroes is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx only writes into `stx`; `name` is NUL-terminated and
    // `dir` a descriptor that outlives the call.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Walks the tree into `sink`: its fingerprint and its [`data_bytes`].
pub(super) fn walk(
    rootfs: &Path,
    sink: &mut dyn Sink,
    out_path: Option<&Path>,
) -> Result<(String, u64), TemplateError> {
    let mut w = Walker {
        rootfs,
        hasher: Sha256::new(),
        links: HashMap::new(),
        out_path,
        bytes: 0,
        root_mount: Mount { id: None, dev: 0 },
    };
    w.hasher.update(FORMAT_TAG);

    // The rootfs path itself is the caller's to resolve (a bundle may well
    // link `rootfs` elsewhere); below it nothing is followed.
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => TemplateError::RootfsMissing(rootfs.to_path_buf()),
        Errno::ENOTDIR => TemplateError::RootfsNotDirectory(rootfs.to_path_buf()),
        e => TemplateError::Read {
            path: rootfs.to_path_buf(),
            source: e.into(),
        },
    })?;
    let root_st = fstat(&root).map_err(|e| w.read_err(b"./", e))?;
    w.root_mount = Mount {
        id: mount_id(root.as_fd(), c""),
        dev: root_st.st_dev,
    };
    let mut name: Vec<u8> = b"./".to_vec();
    let root_frame = w.enter_dir(sink, root, &name)?;
    let mut stack = vec![root_frame];

    while let Some(frame) = stack.last_mut() {
        let Some(child) = frame.names.get(frame.next) else {
            stack.pop();
            continue;
        };
        frame.next += 1;
        name.truncate(frame.prefix_len);
        name.extend_from_slice(child.to_bytes());
        if let Some(sub) = w.visit(sink, frame.dir.as_fd(), child, &mut name)? {
            stack.push(sub);
        }
    }
    Ok((hex::encode(&w.hasher.finalize()), w.bytes))
}

impl Walker<'_> {
    fn abs(&self, name: &[u8]) -> PathBuf {
        let rel = name.strip_prefix(b"./").unwrap_or(name);
        let rel = rel.strip_suffix(b"/").unwrap_or(rel);
        if rel.is_empty() {
            self.rootfs.to_path_buf()
        } else {
            self.rootfs.join(OsStr::from_bytes(rel))
        }
    }

    fn read_err(&self, name: &[u8], e: impl Into<io::Error>) -> TemplateError {
        TemplateError::Read {
            path: self.abs(name),
            source: e.into(),
        }
    }

    /// Errors of calls on an entry the listing just reported: "gone" or "not
    /// what it was" mean the tree changed under us, not that it is unreadable.
    fn stat_err(&self, name: &[u8], e: Errno) -> TemplateError {
        match e {
            Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR => TemplateError::Changed(self.abs(name)),
            e => self.read_err(name, e),
        }
    }

    fn emit(&mut self, sink: &mut dyn Sink, node: &Node<'_>) -> Result<(), TemplateError> {
        hash_node(&mut self.hasher, node);
        self.bytes += data_bytes(node.kind, node.st, node.link);
        sink.entry(node).map_err(|e| match e {
            SinkError::Read(source) => TemplateError::Read {
                path: self.abs(node.name),
                source,
            },
            SinkError::Changed => TemplateError::Changed(self.abs(node.name)),
            SinkError::Write(source) => match self.out_path {
                Some(path) => TemplateError::Write {
                    path: path.to_path_buf(),
                    source,
                },
                None => TemplateError::Output {
                    rootfs: self.rootfs.to_path_buf(),
                    source,
                },
            },
        })
    }

    /// Emits the directory open at `fd` (named `name`, ending in `/`) and
    /// lists it for the walk.
    fn enter_dir(
        &mut self,
        sink: &mut dyn Sink,
        fd: OwnedFd,
        name: &[u8],
    ) -> Result<Frame, TemplateError> {
        let st = fstat(&fd).map_err(|e| self.read_err(name, e))?;
        let xattrs = read_xattrs(fd.as_fd()).map_err(|e| self.read_err(name, e))?;
        self.emit(
            sink,
            &Node {
                xattrs: &xattrs,
                ..Node::bare(name, Kind::Dir, &st)
            },
        )?;
        let mut names = list_dir(fd.as_fd()).map_err(|e| self.read_err(name, e))?;
        // Byte order, independent of locale and of the filesystem's own order.
        names.sort_unstable();
        Ok(Frame {
            dir: fd,
            names,
            next: 0,
            prefix_len: name.len(),
        })
    }

    /// Emits one child of `dir`; returns its frame when it is a directory to
    /// descend into. `name` holds the child's archive name on entry.
    fn visit(
        &mut self,
        sink: &mut dyn Sink,
        dir: BorrowedFd<'_>,
        child: &CStr,
        name: &mut Vec<u8>,
    ) -> Result<Option<Frame>, TemplateError> {
        let st = fstatat(dir, child, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.stat_err(name, e))?;
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let here = Mount {
            id: mount_id(dir, child),
            dev: st.st_dev,
        };
        if self.root_mount.differs(here, fmt == SFlag::S_IFDIR) {
            // A mount inside the rootfs is not part of the image: its
            // mount point is kept as an empty directory (the mounted root's
            // metadata, as tar --one-file-system stores it), a file mounted
            // over a file is left out.
            if fmt != SFlag::S_IFDIR {
                tracing::debug!(path = %self.abs(name).display(), "skipping a file mount inside the rootfs");
                return Ok(None);
            }
            tracing::debug!(path = %self.abs(name).display(), "not descending into a mount inside the rootfs");
            name.push(b'/');
            self.emit(sink, &Node::bare(name, Kind::Dir, &st))?;
            return Ok(None);
        }
        let kind = match fmt {
            SFlag::S_IFDIR => {
                let fd = openat(
                    dir,
                    child,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.stat_err(name, e))?;
                name.push(b'/');
                return self.enter_dir(sink, fd, name).map(Some);
            }
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFIFO => Kind::Fifo,
            SFlag::S_IFCHR => Kind::Char,
            SFlag::S_IFBLK => Kind::Block,
            SFlag::S_IFSOCK => {
                tracing::debug!(path = %self.abs(name).display(), "skipping socket: tar cannot store one");
                return Ok(None);
            }
            _ => {
                tracing::warn!(path = %self.abs(name).display(), mode = st.st_mode, "skipping file of unknown type");
                return Ok(None);
            }
        };

        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                self.emit(
                    sink,
                    &Node {
                        link: &first,
                        ..Node::bare(name, Kind::HardLink, &st)
                    },
                )?;
                return Ok(None);
            }
            self.links.insert(key, name.clone());
        }

        match kind {
            Kind::File => {
                // O_NONBLOCK and O_NOCTTY make the open harmless should the
                // file have been swapped for a fifo or device since the stat.
                let fd = openat(
                    dir,
                    child,
                    OFlag::O_RDONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_NOCTTY
                        | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.stat_err(name, e))?;
                let st2 = fstat(&fd).map_err(|e| self.read_err(name, e))?;
                let same = st2.st_ino == st.st_ino
                    && st2.st_dev == st.st_dev
                    && st2.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
                if !same {
                    return Err(TemplateError::Changed(self.abs(name)));
                }
                // user.* and security.capability live only on regular files
                // and directories, so only those are asked for xattrs.
                let xattrs = read_xattrs(fd.as_fd()).map_err(|e| self.read_err(name, e))?;
                let file = File::from(fd);
                self.emit(
                    sink,
                    &Node {
                        xattrs: &xattrs,
                        file: Some(&file),
                        ..Node::bare(name, kind, &st2)
                    },
                )?;
            }
            Kind::Symlink => {
                let target = readlinkat(dir, child).map_err(|e| self.stat_err(name, e))?;
                self.emit(
                    sink,
                    &Node {
                        link: target.as_bytes(),
                        ..Node::bare(name, kind, &st)
                    },
                )?;
            }
            _ => {
                self.emit(sink, &Node::bare(name, kind, &st))?;
            }
        }
        Ok(None)
    }
}

/// The names in the directory open at `fd`, without `.` and `..`.
fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // readdir needs a DIR stream, which owns its descriptor; a duplicate
    // leaves `fd` to the walk's *at calls.
    let dup = fd.try_clone_to_owned()?;
    // SAFETY: `dup` is a valid directory descriptor; on success the stream
    // owns it, so ownership is released with into_raw_fd.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    let Some(stream) = std::ptr::NonNull::new(stream) else {
        return Err(io::Error::last_os_error());
    };
    let _ = std::os::fd::IntoRawFd::into_raw_fd(dup);
    let stream = DirStream(stream);
    let mut names = Vec::new();
    loop {
        Errno::clear();
        // SAFETY: the stream is open and used by this thread only.
        let entry = unsafe { libc::readdir(stream.0.as_ptr()) };
        if entry.is_null() {
            // NULL is both "end" and "error"; errno tells them apart.
            return match Errno::last_raw() {
                0 => Ok(names),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        // SAFETY: readdir returned a valid entry whose d_name is
        // NUL-terminated; it stays valid until the next readdir call.
        let child = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if child != c"." && child != c".." {
            names.push(child.to_owned());
        }
    }
}

/// Closes the DIR stream (and with it the duplicated descriptor).
struct DirStream(std::ptr::NonNull<libc::DIR>);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream came from fdopendir and is closed only here.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

fn hash_node(h: &mut Sha256, n: &Node<'_>) {
    fn put(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    put(h, n.name);
    h.update([n.kind as u8]);
    if n.kind == Kind::HardLink {
        // The inode's metadata was hashed with its first name.
        put(h, n.link);
        return;
    }
    h.update((n.st.st_mode & 0o7777).to_le_bytes());
    h.update(n.st.st_uid.to_le_bytes());
    h.update(n.st.st_gid.to_le_bytes());
    // A directory's or symlink's mtime only records when an entry was
    // added (podman's fresh overlay top, the /etc/mtab link it makes when an
    // image has none, /etc itself then): hashing them made every run of one
    // image a new template. What the guest runs is the same; the first
    // archive's times for them stand for all.
    if !matches!(n.kind, Kind::Dir | Kind::Symlink) {
        h.update(n.st.st_mtime.to_le_bytes());
        h.update(n.st.st_mtime_nsec.to_le_bytes());
    }
    match n.kind {
        // Directory sizes are filesystem bookkeeping that tar does not store.
        Kind::File => h.update(n.st.st_size.to_le_bytes()),
        Kind::Symlink => put(h, n.link),
        Kind::Char | Kind::Block => h.update(n.st.st_rdev.to_le_bytes()),
        _ => {}
    }
    h.update((n.xattrs.len() as u64).to_le_bytes());
    for x in n.xattrs {
        put(h, &x.name);
        put(h, &x.value);
    }
}

// ---------------------------------------------------------------------------
// xattrs (nix has no wrapper for them; nix::libc is the libc it links anyway)

/// The namespaces pct's tar restores; anything else would be dropped there.
fn wanted_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

pub(super) fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
    let raw = fd.as_raw_fd();
    let list = match xattr_call(|buf, len| {
        // SAFETY: `buf` points to `len` writable bytes (or is null with len 0).
        unsafe { libc::flistxattr(raw, buf.cast(), len) }
    }) {
        Ok(list) => list,
        // No xattr support on this filesystem: nothing to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0) {
        if name.is_empty() || !wanted_xattr(name) {
            continue;
        }
        let cname = CString::new(name).map_err(io::Error::other)?;
        let value = match xattr_call(|buf, len| {
            // SAFETY: as above; `cname` is a valid NUL-terminated string.
            unsafe { libc::fgetxattr(raw, cname.as_ptr(), buf.cast(), len) }
        }) {
            Ok(v) => v,
            // Removed since the listing: it is simply not there any more.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push(Xattr {
            name: name.to_vec(),
            value,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Runs a size-query-then-fetch xattr call, retrying if the data grew in
/// between (ERANGE).
fn xattr_call(mut call: impl FnMut(*mut u8, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};

    use nix::sys::time::TimeSpec;

    use crate::backend::proxmox::template::test_util::{
        contains, decompressed, entries, set_mtime, set_mtime_ns, set_times, set_xattr,
    };
    use crate::backend::proxmox::template::{ensure, fingerprint};

    #[test]
    fn fingerprint_follows_metadata_changes() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        symlink("hosts", root.join("etc/link")).unwrap();
        let hosts = root.join("etc/hosts");

        let fp = fingerprint(&root).unwrap();
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fingerprint(&root).unwrap(), fp, "stable");

        // Reading the file or changing only its atime keeps the fingerprint.
        fs::read(&hosts).unwrap();
        set_times(&hosts, TimeSpec::new(12345, 0), TimeSpec::UTIME_OMIT);
        assert_eq!(fingerprint(&root).unwrap(), fp, "atime must not count");

        let mut seen = vec![fp];
        let mut changed = |what: &str| {
            let fp = fingerprint(&root).unwrap();
            assert!(!seen.contains(&fp), "{what} did not change the fingerprint");
            seen.push(fp);
        };
        set_mtime_ns(&hosts, 1_500_000_000, 7);
        changed("mtime");
        set_mtime_ns(&hosts, 1_500_000_000, 8);
        changed("mtime nanoseconds");
        fs::set_permissions(&hosts, fs::Permissions::from_mode(0o600)).unwrap();
        changed("chmod");
        chown(&hosts, Some(1), None).unwrap();
        changed("chown uid");
        chown(&hosts, None, Some(1)).unwrap();
        changed("chown gid");
        set_xattr(&hosts, "user.x", b"1");
        changed("new xattr");
        set_xattr(&hosts, "user.x", b"2");
        changed("xattr value");
        fs::remove_file(root.join("etc/link")).unwrap();
        symlink("other", root.join("etc/link")).unwrap();
        // Same-second symlink replacement: the target alone must tell.
        let link_m = fs::symlink_metadata(root.join("etc/link")).unwrap();
        set_mtime(&root.join("etc/link"), link_m.mtime());
        changed("symlink target");
        let etc_m = fs::metadata(root.join("etc")).unwrap();
        fs::write(root.join("etc/new"), b"").unwrap();
        // Undo the directory mtime change: the new name alone must tell.
        set_mtime_ns(&root.join("etc"), etc_m.mtime(), etc_m.mtime_nsec());
        changed("new file");
        fs::hard_link(&hosts, root.join("etc/zz-link")).unwrap();
        changed("new hard link");
    }

    #[test]
    fn fingerprint_ignores_directory_and_symlink_times() {
        // What podman changes between two runs of one image: the top
        // directory, /etc and the /etc/mtab link it (re)creates.
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hosts"), b"x").unwrap();
        symlink("/proc/mounts", root.join("etc/mtab")).unwrap();
        let fp = fingerprint(&root).unwrap();
        for (path, secs) in [("", 1_700_000_000), ("etc", 1_700_000_001)] {
            set_mtime(&root.join(path), secs);
        }
        set_mtime(&root.join("etc/mtab"), 1_700_000_002);
        assert_eq!(fingerprint(&root).unwrap(), fp);
        // A regular file's time still counts (it is what tar and make see).
        set_mtime(&root.join("etc/hosts"), 1_700_000_003);
        assert_ne!(fingerprint(&root).unwrap(), fp);
    }

    #[test]
    fn fingerprint_ignores_inode_numbers() {
        // A copy with the same metadata (e.g. the same image unpacked twice)
        // gets the same fingerprint and so shares the template.
        let base = tempfile::tempdir().unwrap();
        let mut fps = Vec::new();
        for n in ["one", "two"] {
            let root = base.path().join(n);
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("bin/x"), b"x").unwrap();
            set_mtime(&root.join("bin/x"), 1_000);
            set_mtime(&root.join("bin"), 1_000);
            set_mtime(&root, 1_000);
            fps.push(fingerprint(&root).unwrap());
        }
        assert_eq!(fps[0], fps[1]);
    }

    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    fn bind(src: &Path, dst: &Path) {
        nix::mount::mount(
            Some(src),
            dst,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }

    #[test]
    fn mounts_inside_the_rootfs_are_not_part_of_the_template() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        for d in ["etc", "mnt/host", "proc", "keep"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/hosts"), b"image").unwrap();
        fs::write(root.join("keep/file"), b"image").unwrap();
        fs::write(root.join("mnt/host/hidden"), b"under the mount").unwrap();
        let host = base.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("secret"), b"HOST-SECRET").unwrap();
        fs::write(base.path().join("host-hosts"), b"HOST-SECRET").unwrap();
        let before = fingerprint(&root).unwrap();

        let mut mounts = Unmount(Vec::new());
        bind(&host, &root.join("mnt/host"));
        mounts.0.push(root.join("mnt/host"));
        nix::mount::mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        mounts.0.push(root.join("proc"));
        bind(&base.path().join("host-hosts"), &root.join("etc/hosts"));
        mounts.0.push(root.join("etc/hosts"));

        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let t = ensure(&root, &cache).unwrap();
        let names: Vec<String> = entries(&t.path)
            .into_iter()
            .map(|(n, _, _)| String::from_utf8(n).unwrap())
            .collect();
        for want in ["./mnt/", "./mnt/host/", "./proc/", "./etc/", "./keep/file"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        for gone in ["./mnt/host/secret", "./mnt/host/hidden", "./etc/hosts"] {
            assert!(!names.iter().any(|n| n == gone), "{gone} stored: {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("./proc/") && n != "./proc/"),
            "proc's contents stored: {names:?}"
        );
        assert!(!contains(&decompressed(&t.path), b"HOST-SECRET"));
        drop(mounts);
        assert_eq!(
            fingerprint(&root).unwrap(),
            before,
            "unmounted: the image again"
        );
    }

    #[test]
    fn without_mount_ids_only_directories_on_other_devices_are_mounts() {
        let root = Mount { id: None, dev: 1 };
        // overlayfs reports lower layers' devices for files.
        assert!(!root.differs(Mount { id: None, dev: 2 }, false));
        assert!(root.differs(Mount { id: None, dev: 2 }, true));
        assert!(!root.differs(Mount { id: None, dev: 1 }, true));
        let root = Mount {
            id: Some(7),
            dev: 1,
        };
        assert!(root.differs(
            Mount {
                id: Some(8),
                dev: 1
            },
            false
        ));
        assert!(!root.differs(
            Mount {
                id: Some(7),
                dev: 2
            },
            true
        ));
    }
}
