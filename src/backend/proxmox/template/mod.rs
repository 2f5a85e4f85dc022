//! OCI rootfs directory -> Proxmox container template (`.tar.zst`).
//!
//! `pct create` cannot take a directory: it only makes a container from a
//! template archive in a storage's `vztmpl` directory, which it unpacks with
//! GNU tar (`tar xpf - --zstd --numeric-owner --acls --xattrs
//! --xattrs-include=user.* --xattrs-include=security.capability
//! --one-file-system --sparse --skip-old-files --anchored --exclude ./dev/*`,
//! through `lxc-usernsexec` for unprivileged guests). This module writes that
//! archive the way GNU tar itself would for `tar -C rootfs -c .`:
//!
//! * names are `./`-relative (`./`, `./bin/`, `./bin/sh`), so Proxmox's
//!   anchored `./dev/*` exclude matches them, and `./` comes first;
//! * owners are numeric, modes keep setuid/setgid/sticky, mtimes are kept;
//! * symlinks are stored, never followed: the walk opens every directory and
//!   file relative to its parent's descriptor with `O_NOFOLLOW`, so nothing
//!   outside the rootfs is ever read, even if the tree is changed meanwhile;
//! * hard links become tar link entries to the first name seen;
//! * the xattrs pct restores (`user.*`, `security.capability`) are stored as
//!   PAX `SCHILY.xattr.*` records; other namespaces are left out because pct
//!   would drop them anyway and they would only make cache misses;
//! * fifos and devices are stored, sockets skipped (tar cannot hold them);
//! * files with holes are stored as GNU sparse entries, so a huge sparse file
//!   neither bloats the archive nor becomes dense in the guest;
//! * everything is streamed: memory does not grow with file sizes, and the
//!   walk holds only the sorted listings of the directories it is inside.
//!
//! Conversion is costly, so templates are cached by a fingerprint of the
//! tree's metadata (see [`fingerprint`]): an unchanged rootfs is converted
//! once and then reused by every later container.
//!
//! The parts: [`walk`] reads the tree, once for the fingerprint and once more
//! for the archive, so that both see the same entries; [`writer`] turns the
//! walk into the compressed tar stream; [`cache`] files archives under their
//! fingerprint and keeps the template storage in bounds.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod cache;
#[cfg(test)]
mod test_util;
mod walk;
mod writer;

use walk::{walk, NoSink};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("rootfs {} does not exist", .0.display())]
    RootfsMissing(PathBuf),
    #[error("rootfs {} is not a directory", .0.display())]
    RootfsNotDirectory(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} changed while it was being converted; try again", .0.display())]
    Changed(PathBuf),
    #[error("cannot write template {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// A write to the caller's writer in [`write_archive`], which has no path.
    #[error("cannot write the archive of rootfs {}: {source}", rootfs.display())]
    Output { rootfs: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

/// A converted (or reused) template in the storage directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// File name inside the storage directory, e.g. "nexcage-0123...abcd.tar.zst".
    pub name: String,
    /// Absolute path of the archive.
    pub path: PathBuf,
    /// True when an archive with this fingerprint already existed and was reused.
    pub reused: bool,
    /// What the tree needs on a file system with 4 KiB blocks (see
    /// [`walk::data_bytes`]), measured by the same walk that fingerprints it.
    pub data_bytes: u64,
}

/// Hex sha256 fingerprint of the rootfs tree's metadata.
///
/// It covers, in walk order, every entry's relative name, type, permission
/// bits, owner, the mtime (with nanoseconds) of everything but directories
/// and symlinks, the size of regular files, symlink targets, hard-link
/// grouping, device numbers and the stored xattrs: all that goes into the
/// archive except file content and the times that only record when an entry
/// was added. Inode numbers, ctime and atime are left out, so reading the
/// tree or copying it elsewhere with its metadata keeps the fingerprint.
/// Only metadata is read, never content, so a change that keeps size and
/// mtime (`touch -r` after editing) is not seen.
#[cfg_attr(not(test), allow(dead_code, reason = "ensure walks once for both"))]
pub fn fingerprint(rootfs: &Path) -> Result<String, TemplateError> {
    walk(rootfs, &mut NoSink, None).map(|w| w.0)
}

/// Make sure `cache_dir` holds the template for `rootfs`; convert only when new.
#[cfg_attr(not(test), allow(dead_code, reason = "the driver locks: ensure_with"))]
pub fn ensure(rootfs: &Path, cache_dir: &Path) -> Result<Template, TemplateError> {
    ensure_with(rootfs, cache_dir, |_| Ok(())).map(|(t, ())| t)
}

/// [`ensure`], calling `hold` with the template's name once it is known and
/// before the archive is looked for, so that what `hold` returns (a lock
/// that keeps eviction away) covers both the hit and the conversion.
pub fn ensure_with<H>(
    rootfs: &Path,
    cache_dir: &Path,
    hold: impl FnOnce(&str) -> Result<H, TemplateError>,
) -> Result<(Template, H), TemplateError> {
    // A hit's whole cost is this walk and a stat: scripts/bench.sh reads
    // `seconds` off the debug line to compare it with a plain metadata walk.
    let started = Instant::now();
    let (fp, data_bytes) = walk(rootfs, &mut NoSink, None)?;
    let name = template_name(&fp);
    let held = hold(&name)?;
    let path = cache_dir.join(&name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => {
            tracing::debug!(
                template = %path.display(),
                seconds = started.elapsed().as_secs_f64(),
                "reusing template"
            );
            return Ok((
                Template {
                    name,
                    path,
                    reused: true,
                    data_bytes,
                },
                held,
            ));
        }
        Ok(_) => {
            return Err(TemplateError::Write {
                source: io::Error::other("exists and is not a regular file"),
                path,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(TemplateError::Write { path, source }),
    }
    cache::convert(rootfs, cache_dir, &fp)?;
    Ok((
        Template {
            name,
            path,
            reused: false,
            data_bytes,
        },
        held,
    ))
}

/// Write the template archive for `rootfs` to `out`: a zstd-compressed tar
/// stream, exactly the bytes [`ensure`] stores. Writing to [`io::sink`] is a
/// convenient benchmark of the whole conversion without disk writes.
#[allow(
    dead_code,
    reason = "public for tests and benchmarks; the runtime itself only calls ensure"
)]
pub fn write_archive<W: Write>(rootfs: &Path, out: W) -> Result<(), TemplateError> {
    writer::archive_into(rootfs, out, None).map(drop)
}

fn template_name(fp: &str) -> String {
    format!("nexcage-{}.tar.zst", &fp[..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::MetadataExt;

    use nix::libc;

    #[test]
    fn ensure_converts_once_then_reuses() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/sh"), b"sh").unwrap();
        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();

        let first = ensure(&root, &cache).unwrap();
        assert!(!first.reused);
        let fp = fingerprint(&root).unwrap();
        assert_eq!(first.name, format!("nexcage-{}.tar.zst", &fp[..32]));
        assert!(first
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert_eq!(first.path, cache.join(&first.name));
        let listing: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            listing,
            vec![OsStr::new(&first.name).to_owned()],
            "no temp left"
        );
        let m1 = fs::metadata(&first.path).unwrap();
        assert_eq!(m1.mode() & 0o777, 0o600);

        let second = ensure(&root, &cache).unwrap();
        assert!(second.reused);
        assert_eq!(
            (second.name.as_str(), &second.path),
            (first.name.as_str(), &first.path)
        );
        let m2 = fs::metadata(&second.path).unwrap();
        assert_eq!(
            (m1.ino(), m1.mtime(), m1.mtime_nsec()),
            (m2.ino(), m2.mtime(), m2.mtime_nsec())
        );

        fs::write(root.join("bin/new"), b"").unwrap();
        let third = ensure(&root, &cache).unwrap();
        assert!(!third.reused);
        assert_ne!(third.name, first.name);
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 2);
    }

    #[test]
    fn errors_name_the_path_and_leave_no_temp() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("f"), b"f").unwrap();

        let missing = base.path().join("nope");
        let e = ensure(&missing, base.path()).unwrap_err();
        assert!(matches!(e, TemplateError::RootfsMissing(_)));
        assert_eq!(
            e.to_string(),
            format!("rootfs {} does not exist", missing.display())
        );
        let e = fingerprint(&root.join("f")).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");

        let not_dir = base.path().join("cache-is-a-file");
        fs::write(&not_dir, b"").unwrap();
        let e = ensure(&root, &not_dir).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot write template {}/", not_dir.display())),
            "{msg}"
        );
        assert!(msg.contains("Not a directory"), "{msg}");

        // A failure after the archive was written: the tree "changed" since
        // the fingerprint, so nothing may be filed under that name.
        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let bogus = "0".repeat(64);
        let e = cache::convert(&root, &cache, &bogus).unwrap_err();
        assert!(
            matches!(e, TemplateError::Changed(ref p) if p == &root),
            "{e}"
        );
        assert_eq!(
            fs::read_dir(&cache).unwrap().count(),
            0,
            "temp file left behind"
        );

        // A failing writer: an error, not a panic, and it names the rootfs.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = write_archive(&root, Full).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&root.display().to_string()) && msg.contains("No space left"),
            "{msg}"
        );
    }
}
