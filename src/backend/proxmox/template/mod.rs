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

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::libc;
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{lseek, Whence};
use sha2::{Digest, Sha256};
use tar::{EntryType, GnuExtSparseHeader, Header};

pub mod cache;

/// Mixed into every fingerprint. Bump it whenever the archive layout changes,
/// so templates written by an older nexcage are not reused for the new layout.
const FORMAT_TAG: &[u8] = b"nexcage-template-v2\0";

/// zstd level 3 is zstd's own default: most of the ratio at a fraction of the
/// cost of higher levels, and templates are written once per rootfs.
const ZSTD_LEVEL: i32 = 3;

/// Copy buffer for file content; large enough that syscalls are not the cost.
const CHUNK: usize = 256 * 1024;

/// A file with more data segments than this is stored dense: its sparse map
/// has to be held in memory before the header can be written.
const MAX_SPARSE_SEGMENTS: usize = 65_536;

/// Sparse segments the GNU header itself holds; more go to extension blocks.
const SPARSE_IN_HEADER: usize = 4;

/// The tar header's name and linkname fields hold 100 bytes; GNU tar switches
/// to a long-name record at this length, and so do we.
const NAME_FIELD: usize = 100;

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
    /// [`data_bytes`]), measured by the same walk that fingerprints it.
    pub data_bytes: u64,
}

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

/// Hex sha256 fingerprint of the rootfs tree's metadata.
///
/// It covers, in walk order, every entry's relative name, type, permission
/// bits, owner, the mtime (with nanoseconds) of everything but directories
/// and symlinks, the size of regular files, symlink targets, hard-link
/// grouping, device numbers and the stored xattrs: all that goes into the
/// archive except file content and the times that only record when an entry
/// was added. Inode numbers, ctime and atime are left out, so reading the
/// tree or copying it elsewhere with its metadata keeps the fingerprint. Only metadata is read, never content, so
/// a change that keeps size and mtime (`touch -r` after editing) is not seen.
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
    convert(rootfs, cache_dir, &fp)?;
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
    archive_into(rootfs, out, None).map(drop)
}

fn template_name(fp: &str) -> String {
    format!("nexcage-{}.tar.zst", &fp[..32])
}

/// Writes the template under a temporary name and renames it into place once
/// complete and synced, so `pct` never sees a partial archive.
fn convert(rootfs: &Path, cache_dir: &Path, fp: &str) -> Result<PathBuf, TemplateError> {
    let started = Instant::now();
    let final_path = cache_dir.join(template_name(fp));
    // Before writing, not only after: temps of killed converters can fill
    // the storage, and then no conversion would ever get to the sweep.
    sweep_stale_temps(cache_dir);
    let (tmp, file) = create_temp(cache_dir, fp)?;
    let guard = TempGuard(Some(tmp.clone()));
    let write_err = |source| TemplateError::Write {
        path: tmp.clone(),
        source,
    };

    let (written_fp, file) = archive_into(rootfs, file, Some(&tmp))?;
    // The archive pass hashes what it actually stored; if that differs from
    // the fingerprint the name came from, the tree changed in between and the
    // archive must not be filed under that name.
    if written_fp != fp {
        return Err(TemplateError::Changed(rootfs.to_path_buf()));
    }
    file.sync_all().map_err(write_err)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    fs::rename(&tmp, &final_path).map_err(|source| TemplateError::Write {
        path: final_path.clone(),
        source,
    })?;
    guard.disarm();
    // Makes the rename durable; the archive is complete either way, so a
    // failure here is only worth a warning.
    if let Err(e) = File::open(cache_dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %cache_dir.display(), error = %e, "cannot sync template directory");
    }
    sweep_stale_temps(cache_dir);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        rootfs = %rootfs.display(),
        template = %final_path.display(),
        bytes = size,
        seconds = secs,
        "converted rootfs to template"
    );
    Ok(final_path)
}

/// Removes the temporary file unless disarmed: covers every early return and
/// unwinding panic between creating the temp file and renaming it.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary template");
            }
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Host part of temp names: template storage may be shared between nodes,
/// and only this node can tell whether one of its pids is still alive.
fn temp_host() -> String {
    let host = nix::unistd::gethostname().unwrap_or_default();
    let host: String = host
        .as_bytes()
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || **b == b'-')
        .take(63)
        .map(|&b| b as char)
        .collect();
    if host.is_empty() {
        "localhost".into()
    } else {
        host
    }
}

/// `_` cannot occur in the host part, so one node's names never parse as
/// another's whose host name it starts with.
fn temp_prefix(host: &str) -> String {
    format!(".tmp-{host}_")
}

/// Names before they carried a start time: `.tmp-<host>-<pid>-<n>`.
fn legacy_temp_prefix(host: &str) -> String {
    format!(".tmp-{host}-")
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// /proc/<pid>/stat): with the pid it names one process for the life of
/// the boot, so a pid reused by another process is not taken for a writer.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its closing parenthesis are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `.nexcage-<fp>.tmp-<host>_<pid>_<start time>_<n>`: host, pid and start
/// time name the writer, so that a sweep can prove it gone.
fn create_temp(cache_dir: &Path, fp: &str) -> Result<(PathBuf, File), TemplateError> {
    let host = temp_host();
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = cache_dir.join(format!(
            ".nexcage-{}{}{pid}_{start}_{n}",
            &fp[..32],
            temp_prefix(&host)
        ));
        // Root only: the archive holds every file of the image, its 0600
        // keys and /etc/shadow too, and pct reads it as root.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            // Left by an earlier process that had this pid; try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1_000_000 => continue,
            Err(source) => return Err(TemplateError::Write { path: tmp, source }),
        }
    }
}

/// What a temporary template's name says of its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Not one of nexcage's temps.
    None,
    /// This node's process that is provably gone: no such pid, or the pid
    /// now belongs to a process started at another time.
    Gone,
    /// Alive, or not provably gone (another node's, or an older name
    /// without a start time whose pid is in use).
    Unknown,
}

fn temp_writer(name: &str, host: &str) -> Writer {
    let Some(rest) = name.strip_prefix(".nexcage-") else {
        return Writer::None;
    };
    if !rest.contains(".tmp-") {
        return Writer::None;
    }
    let ids = |marker: String, sep: char| {
        rest.split_once(&marker)
            .map(|(_, ids)| ids.split(sep).map(str::to_owned).collect::<Vec<_>>())
    };
    let (pid, start) = if let Some(f) = ids(temp_prefix(host), '_') {
        match &f[..] {
            [pid, start, _n] => (pid.parse::<i32>().ok(), start.parse::<u64>().ok()),
            _ => (None, None),
        }
    } else if let Some(f) = ids(legacy_temp_prefix(host), '-') {
        match &f[..] {
            [pid, _n] => (pid.parse::<i32>().ok(), None),
            _ => (None, None),
        }
    } else {
        return Writer::Unknown;
    };
    let Some(pid) = pid.filter(|&p| p > 0) else {
        return Writer::Unknown;
    };
    // Signal 0 only asks whether the pid exists; EPERM means it does.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return Writer::Gone;
    }
    match (start, start_time(pid as u32)) {
        (Some(want), Some(now)) if want != 0 && want != now => Writer::Gone,
        _ => Writer::Unknown,
    }
}

/// nexcage's temporary templates in a template directory, counted by
/// whether their writer is provably gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Temps {
    /// Left by converters that are gone: the next conversion removes them.
    pub stale: u64,
    pub stale_bytes: u64,
    /// Being written, or written by another node sharing the storage.
    pub other: u64,
    pub other_bytes: u64,
}

/// Counts the temps in `cache_dir` without touching them.
pub fn temps(cache_dir: &Path) -> Temps {
    let host = temp_host();
    let mut t = Temps::default();
    let Ok(dir) = fs::read_dir(cache_dir) else {
        return t;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let writer = temp_writer(name, &host);
        if writer == Writer::None {
            continue;
        }
        let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if writer == Writer::Gone {
            t.stale += 1;
            t.stale_bytes += bytes;
        } else {
            t.other += 1;
            t.other_bytes += bytes;
        }
    }
    t
}

/// Removes temp files this node's converters left behind when they were
/// killed outright (SIGKILL, power loss), where no guard could run.
fn sweep_stale_temps(cache_dir: &Path) {
    let host = temp_host();
    let Ok(dir) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if temp_writer(name, &host) != Writer::Gone {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed stale temporary template")
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove stale temporary template")
            }
        }
    }
}

/// Streams the compressed archive into `out` and returns the fingerprint of
/// what was stored, with `out` back for syncing. `out_path` names `out` in
/// errors when it is a file.
fn archive_into<W: Write>(
    rootfs: &Path,
    out: W,
    out_path: Option<&Path>,
) -> Result<(String, W), TemplateError> {
    let write_err = |source| match out_path {
        Some(path) => TemplateError::Write {
            path: path.to_path_buf(),
            source,
        },
        None => TemplateError::Output {
            rootfs: rootfs.to_path_buf(),
            source,
        },
    };
    let mut encoder = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(write_err)?;
    // Lets `zstd -d` (and so pct's tar) detect a corrupted template.
    encoder.include_checksum(true).map_err(write_err)?;
    // zstd's own worker threads compress while this one walks and reads the
    // tree, as `zstd -T0` does: one thread alone compressed at 0.6x of
    // `tar | zstd -T0 -3`. The output is the same format.
    encoder
        .multithread(compression_workers())
        .map_err(write_err)?;
    // zstd's default job for level 3 is 8 MiB, held per worker with its
    // output: 60-70 MiB of peak RSS, as much as `zstd -T0` itself. 2 MiB
    // jobs keep it near 25 MiB for the same speed and a ratio within 2%
    // (measured on 790 MB of /usr/lib: 1.3 s vs 1.8 s for tar | zstd -T0 -3).
    encoder
        .set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_BYTES))
        .map_err(write_err)?;
    // Headers are 512-byte writes; batching them keeps zstd's per-call cost low.
    let buffered = BufWriter::with_capacity(CHUNK, encoder);
    let progress = Progress::new(buffered, rootfs, std::io::stderr().is_terminal());
    let mut sink = ArchiveSink {
        builder: tar::Builder::new(progress),
        chunk: vec![0; CHUNK],
    };
    let (fp, _) = walk(rootfs, &mut sink, out_path)?;
    let progress = sink.builder.into_inner().map_err(write_err)?;
    let encoder = progress
        .finish()
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    let out = encoder.finish().map_err(write_err)?;
    Ok((fp, out))
}

/// A conversion that runs this long shows its progress on a terminal.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);

/// Counts the tar stream on its way to the compressor and, when stderr is a
/// terminal and the conversion runs long, keeps one line there up to date:
/// someone running `nexcage create` by hand on a large image sees it work.
/// Not a log (it never goes to `--log`); clients never see it, their
/// stderr is no terminal.
struct Progress<W: Write> {
    inner: W,
    bytes: u64,
    started: Instant,
    shown_at: Option<Instant>,
    label: String,
    terminal: bool,
}

impl<W: Write> Progress<W> {
    fn new(inner: W, rootfs: &Path, terminal: bool) -> Self {
        Progress {
            inner,
            bytes: 0,
            started: Instant::now(),
            shown_at: None,
            label: rootfs.display().to_string(),
            terminal,
        }
    }

    /// The line to show now, if any: none before PROGRESS_AFTER, then at
    /// most four a second.
    fn due(&mut self, now: Instant) -> Option<String> {
        if !self.terminal || now.duration_since(self.started) < PROGRESS_AFTER {
            return None;
        }
        if self
            .shown_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(250))
        {
            return None;
        }
        self.shown_at = Some(now);
        Some(progress_line(&self.label, self.bytes, now - self.started))
    }

    /// Ends the line if one was shown.
    fn finish(self) -> W {
        if self.shown_at.is_some() {
            let line = progress_line(&self.label, self.bytes, self.started.elapsed());
            eprintln!("\r{line}");
        }
        self.inner
    }
}

fn progress_line(label: &str, bytes: u64, elapsed: Duration) -> String {
    let mb = bytes as f64 / 1e6;
    let rate = mb / elapsed.as_secs_f64().max(0.001);
    format!("nexcage: converting {label} to a template: {mb:.0} MB, {rate:.0} MB/s")
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if let Some(line) = self.due(Instant::now()) {
            eprint!("\r{line}");
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Input bytes per zstd worker job (see archive_into).
const ZSTD_JOB_BYTES: u32 = 2 << 20;

/// One zstd worker per CPU this process may run on (what `zstd -T0` uses).
fn compression_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------
// The walk

/// The values go into the fingerprint: renumbering them would change every
/// fingerprint (and so reconvert every template) for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir = 1,
    File = 2,
    Symlink = 3,
    HardLink = 4,
    Fifo = 5,
    Char = 6,
    Block = 7,
}

/// One entry as the archive stores it.
struct Node<'a> {
    /// Archive name: `./`, `./etc/` (directories end in `/`), `./etc/passwd`.
    name: &'a [u8],
    kind: Kind,
    st: &'a FileStat,
    /// Symlink target, or for hard links the archive name of the first link.
    link: &'a [u8],
    xattrs: &'a [Xattr],
    /// The open file, for regular files whose content is to be stored.
    file: Option<&'a File>,
}

struct Xattr {
    name: Vec<u8>,
    value: Vec<u8>,
}

enum SinkError {
    Read(io::Error),
    Changed,
    Write(io::Error),
}

/// What the walk feeds every entry to: nothing for a fingerprint, the tar
/// writer for an archive. Both share the walk so that they hash the same.
trait Sink {
    fn entry(&mut self, node: &Node<'_>) -> Result<(), SinkError>;
}

struct NoSink;

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
fn walk(
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
    Ok((hex(&w.hasher.finalize()), w.bytes))
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
                name,
                kind: Kind::Dir,
                st: &st,
                link: b"",
                xattrs: &xattrs,
                file: None,
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
            self.emit(
                sink,
                &Node {
                    name,
                    kind: Kind::Dir,
                    st: &st,
                    link: b"",
                    xattrs: &[],
                    file: None,
                },
            )?;
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
                        name,
                        kind: Kind::HardLink,
                        st: &st,
                        link: &first,
                        xattrs: &[],
                        file: None,
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
                        name,
                        kind,
                        st: &st2,
                        link: b"",
                        xattrs: &xattrs,
                        file: Some(&file),
                    },
                )?;
            }
            Kind::Symlink => {
                let target = readlinkat(dir, child).map_err(|e| self.stat_err(name, e))?;
                self.emit(
                    sink,
                    &Node {
                        name,
                        kind,
                        st: &st,
                        link: target.as_bytes(),
                        xattrs: &[],
                        file: None,
                    },
                )?;
            }
            _ => {
                self.emit(
                    sink,
                    &Node {
                        name,
                        kind,
                        st: &st,
                        link: b"",
                        xattrs: &[],
                        file: None,
                    },
                )?;
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

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// ---------------------------------------------------------------------------
// xattrs (nix has no wrapper for them; nix::libc is the libc it links anyway)

/// The namespaces pct's tar restores; anything else would be dropped there.
fn wanted_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
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

// ---------------------------------------------------------------------------
// Writing tar entries

struct ArchiveSink<W: Write> {
    builder: tar::Builder<W>,
    chunk: Vec<u8>,
}

impl<W: Write> Sink for ArchiveSink<W> {
    fn entry(&mut self, node: &Node<'_>) -> Result<(), SinkError> {
        if !node.xattrs.is_empty() {
            self.pax_xattrs(node.xattrs).map_err(SinkError::Write)?;
        }
        let mut header = Header::new_gnu();
        self.set_name(&mut header, node.name, b'L')
            .map_err(SinkError::Write)?;
        let st = node.st;
        header.set_mode(st.st_mode & 0o7777);
        header.set_uid(st.st_uid.into());
        header.set_gid(st.st_gid.into());
        header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        header.set_size(0);
        let mut sparse = None;
        match node.kind {
            Kind::Dir => header.set_entry_type(EntryType::Directory),
            Kind::File => {
                let size = u64::try_from(st.st_size).unwrap_or(0);
                header.set_entry_type(EntryType::Regular);
                header.set_size(size);
                if let Some(file) = node.file {
                    sparse = sparse_map(file, st).map_err(SinkError::Read)?;
                }
                if let Some(map) = &sparse {
                    set_sparse(&mut header, map, size);
                }
            }
            Kind::Symlink | Kind::HardLink => {
                header.set_entry_type(if node.kind == Kind::Symlink {
                    EntryType::Symlink
                } else {
                    EntryType::Link
                });
                self.set_name(&mut header, node.link, b'K')
                    .map_err(SinkError::Write)?;
            }
            Kind::Fifo => header.set_entry_type(EntryType::Fifo),
            Kind::Char | Kind::Block => {
                header.set_entry_type(if node.kind == Kind::Char {
                    EntryType::Char
                } else {
                    EntryType::Block
                });
                let major = nix::sys::stat::major(st.st_rdev);
                let minor = nix::sys::stat::minor(st.st_rdev);
                let too_big = |_| SinkError::Read(io::Error::other("device number too large"));
                header
                    .set_device_major(u32::try_from(major).map_err(too_big)?)
                    .map_err(SinkError::Write)?;
                header
                    .set_device_minor(u32::try_from(minor).map_err(too_big)?)
                    .map_err(SinkError::Write)?;
            }
        }
        header.set_cksum();
        let out = self.builder.get_mut();
        out.write_all(header.as_bytes()).map_err(SinkError::Write)?;

        let Some(file) = node.file else {
            return Ok(());
        };
        let written = match &sparse {
            Some(map) => {
                write_sparse_ext_headers(out, map).map_err(SinkError::Write)?;
                for seg in map {
                    copy_range(file, seg.0, seg.1, out, &mut self.chunk)?;
                }
                map.iter().map(|s| s.1).sum()
            }
            None => {
                let size = u64::try_from(st.st_size).unwrap_or(0);
                copy_range(file, 0, size, out, &mut self.chunk)?;
                size
            }
        };
        pad(out, written).map_err(SinkError::Write)
    }
}

impl<W: Write> ArchiveSink<W> {
    /// Puts `name` into the header's name (`kind` b'L') or linkname (b'K')
    /// field, preceded by a GNU long-name record when it does not fit. Names
    /// are raw bytes: tar's path setters would drop the leading `./`.
    fn set_name(&mut self, header: &mut Header, name: &[u8], kind: u8) -> io::Result<()> {
        let field = if kind == b'L' {
            &mut header.as_old_mut().name
        } else {
            &mut header.as_old_mut().linkname
        };
        let shown = name.len().min(NAME_FIELD - 1);
        field[..shown].copy_from_slice(&name[..shown]);
        if name.len() < NAME_FIELD {
            return Ok(());
        }
        let mut long = Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        long.set_size(name.len() as u64 + 1);
        long.set_entry_type(EntryType::new(kind));
        long.set_cksum();
        self.builder
            .append(&long, io::Read::chain(name, &[0u8][..]))
    }

    /// A PAX extended header with one `SCHILY.xattr.<name>` record per xattr,
    /// the form GNU tar writes and reads back with `--xattrs`.
    fn pax_xattrs(&mut self, xattrs: &[Xattr]) -> io::Result<()> {
        let mut data = Vec::new();
        for x in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            // GNU tar's escaping of the two bytes a PAX keyword cannot hold.
            for &b in &x.name {
                match b {
                    b'%' => key.extend_from_slice(b"%25"),
                    b'=' => key.extend_from_slice(b"%3D"),
                    b => key.push(b),
                }
            }
            pax_record(&mut data, &key, &x.value);
        }
        let mut header = Header::new_ustar();
        header.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_entry_type(EntryType::XHeader);
        header.set_cksum();
        self.builder.append(&header, data.as_slice())
    }
}

/// Appends `"<len> <key>=<value>\n"`, where len counts the whole record,
/// its own digits included.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Data segments (offset, length) of a file with holes, ending with GNU
/// tar's zero-length marker at the file size; None to store it dense.
fn sparse_map(file: &File, st: &FileStat) -> io::Result<Option<Vec<(u64, u64)>>> {
    let size = st.st_size;
    // Fewer allocated blocks than the size needs is the cheap sign of holes.
    if size <= 0 || st.st_blocks.saturating_mul(512) >= size {
        return Ok(None);
    }
    let fd = file.as_fd();
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(off) => off,
            // Only holes from here to the end.
            Err(Errno::ENXIO) => break,
            // No SEEK_DATA on this filesystem: store it dense.
            Err(Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match lseek(fd, data, Whence::SeekHole) {
            Ok(off) => off.min(size),
            Err(e) => return Err(e.into()),
        };
        if hole <= data {
            // The file changed under us; the dense path reports it properly.
            return Ok(None);
        }
        map.push((data as u64, (hole - data) as u64));
        if map.len() > MAX_SPARSE_SEGMENTS {
            return Ok(None);
        }
        pos = hole;
    }
    if map.len() == 1 && map[0] == (0, size as u64) {
        return Ok(None);
    }
    map.push((size as u64, 0));
    Ok(Some(map))
}

/// Turns a regular-file header into a GNU sparse ('S') one. The first four
/// segments live in the header itself, the rest in extension blocks.
fn set_sparse(header: &mut Header, map: &[(u64, u64)], real_size: u64) {
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(map.iter().map(|s| s.1).sum());
    if let Some(gnu) = header.as_gnu_mut() {
        gnu.set_real_size(real_size);
        for (slot, seg) in gnu.sparse.iter_mut().zip(map) {
            slot.set_offset(seg.0);
            slot.set_length(seg.1);
        }
        gnu.set_is_extended(map.len() > gnu.sparse.len());
    }
}

fn write_sparse_ext_headers(out: &mut dyn Write, map: &[(u64, u64)]) -> io::Result<()> {
    let mut rest = map.iter().skip(SPARSE_IN_HEADER).peekable();
    while rest.peek().is_some() {
        let mut ext = GnuExtSparseHeader::new();
        for slot in ext.sparse.iter_mut() {
            let Some(seg) = rest.next() else { break };
            slot.set_offset(seg.0);
            slot.set_length(seg.1);
        }
        ext.set_is_extended(rest.peek().is_some());
        out.write_all(ext.as_bytes())?;
    }
    Ok(())
}

/// Copies exactly `len` bytes from `offset` of `file`. A file that ends
/// early has shrunk since its header was written: the archive would be
/// corrupt, so that is an error rather than a short entry.
fn copy_range(
    file: &File,
    mut offset: u64,
    len: u64,
    out: &mut dyn Write,
    chunk: &mut [u8],
) -> Result<(), SinkError> {
    let mut left = len;
    while left > 0 {
        let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = match file.read_at(&mut chunk[..want], offset) {
            Ok(0) => return Err(SinkError::Changed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SinkError::Read(e)),
        };
        out.write_all(&chunk[..got]).map_err(SinkError::Write)?;
        offset += got as u64;
        left -= got as u64;
    }
    Ok(())
}

fn pad(out: &mut dyn Write, len: u64) -> io::Result<()> {
    let rem = (len % 512) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 512][rem..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
    use std::process::Command;

    use nix::fcntl::AT_FDCWD;
    use nix::sys::stat::{makedev, mknod, utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;

    /// pct's own extraction command (PVE::LXC::Create::restore_archive).
    const PVE_TAR_ARGS: &[&str] = &[
        "xpf",
        "-",
        "--zstd",
        "--numeric-owner",
        "--acls",
        "--xattrs",
        "--xattrs-include=user.*",
        "--xattrs-include=security.capability",
        "--one-file-system",
        "--sparse",
        "--skip-old-files",
        "--anchored",
        "--exclude",
        "./dev/*",
    ];

    /// vfs_cap_data v2 granting cap_net_bind_service (bit 10), permitted.
    const CAP_NET_BIND: &[u8] = &[
        0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn pve_extract(archive: &Path, dest: &Path) {
        fs::create_dir_all(dest).unwrap();
        let out = Command::new("tar")
            .args(PVE_TAR_ARGS)
            .arg("-C")
            .arg(dest)
            .stdin(File::open(archive).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "GNU tar failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid C strings and a valid value buffer.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {name}: {}", io::Error::last_os_error());
    }

    fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
        let meta = fs::symlink_metadata(path).unwrap();
        if !meta.is_file() && !meta.is_dir() {
            return Vec::new();
        }
        let f = File::open(path).unwrap();
        read_xattrs(f.as_fd())
            .unwrap()
            .into_iter()
            .map(|x| (String::from_utf8_lossy(&x.name).into_owned(), x.value))
            .collect()
    }

    fn set_times(path: &Path, atime: TimeSpec, mtime: TimeSpec) {
        utimensat(
            AT_FDCWD,
            path,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn set_mtime(path: &Path, secs: i64) {
        set_mtime_ns(path, secs, 0);
    }

    /// The mtime alone (of the link itself for a symlink), to the nanosecond.
    fn set_mtime_ns(path: &Path, secs: i64, nsec: i64) {
        set_times(path, TimeSpec::UTIME_OMIT, TimeSpec::new(secs, nsec));
    }

    /// What GNU tar must reproduce of every entry, keyed by relative path.
    /// Hard links are described by the first path of their inode.
    fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
        fn go(
            root: &Path,
            dir: &Path,
            out: &mut BTreeMap<Vec<u8>, String>,
            inodes: &mut HashMap<u64, Vec<u8>>,
        ) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                let m = fs::symlink_metadata(&p).unwrap();
                let ft = m.file_type();
                let mut d = format!(
                    "mode={:o} uid={} gid={} xattrs={:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    xattrs_of(&p)
                );
                if !ft.is_symlink() {
                    // Symlink mtimes are not restored by GNU tar.
                    d += &format!(" mtime={}", m.mtime());
                }
                if ft.is_file() {
                    d += &format!(" size={}", m.size());
                    if m.nlink() > 1 {
                        let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                        d += &format!(" inode-of={:?}", String::from_utf8_lossy(first));
                    }
                }
                if ft.is_symlink() {
                    d += &format!(" target={:?}", fs::read_link(&p).unwrap());
                }
                if m.rdev() != 0 {
                    d += &format!(" rdev={}", m.rdev());
                }
                out.insert(rel, d);
                if ft.is_dir() {
                    go(root, &p, out, inodes);
                }
            }
        }
        let mut out = BTreeMap::new();
        go(root, root, &mut out, &mut HashMap::new());
        let m = fs::metadata(root).unwrap();
        out.insert(
            b".".to_vec(),
            format!(
                "mode={:o} uid={} gid={} mtime={}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime()
            ),
        );
        out
    }

    fn decompressed(archive: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        zstd::Decoder::new(File::open(archive).unwrap())
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    /// (name, entry type, link name) of every entry, read back with the tar crate.
    fn entries(archive: &Path) -> Vec<(Vec<u8>, EntryType, Option<Vec<u8>>)> {
        let data = decompressed(archive);
        let mut ar = tar::Archive::new(data.as_slice());
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path_bytes().into_owned(),
                    e.header().entry_type(),
                    e.link_name_bytes().map(|l| l.into_owned()),
                )
            })
            .collect()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// A tree with every kind of entry pct has to get right.
    fn build_tree(base: &Path) -> PathBuf {
        let root = base.join("rootfs");
        for d in ["bin", "etc", "tmp", "run", "hl", "dev", "long"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("bin/sh"), b"#!/bin/true\n").unwrap();
        chown(root.join("bin/sh"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(root.join("bin/sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        set_xattr(&root.join("bin/sh"), "user.a", b"1");
        set_xattr(&root.join("bin/sh"), "user.b=%x", b"bin\0ary\n=value");
        set_xattr(&root.join("bin/sh"), "security.capability", CAP_NET_BIND);
        set_xattr(&root.join("etc"), "user.dir", b"d");
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::set_permissions(root.join("etc/passwd"), fs::Permissions::from_mode(0o2640)).unwrap();
        fs::write(root.join("etc/empty"), b"").unwrap();
        chown(root.join("etc"), Some(100_000), Some(3_000_000)).unwrap();

        // Symlinks that would leak host files if they were ever followed.
        fs::create_dir(base.join("outside")).unwrap();
        fs::write(base.join("outside/secret"), b"OUTSIDE-SECRET-7f3a9c").unwrap();
        symlink("/etc/shadow", root.join("etc/shadow-link")).unwrap();
        symlink("../../../../etc", root.join("up")).unwrap();
        symlink(base.join("outside"), root.join("outside-dir")).unwrap();
        symlink(base.join("outside/secret"), root.join("secret-link")).unwrap();
        lchown(root.join("up"), Some(42), Some(43)).unwrap();

        fs::write(root.join("hl/a"), b"linked").unwrap();
        fs::hard_link(root.join("hl/a"), root.join("hl/b")).unwrap();
        fs::write(root.join("hl/c"), b"linked").unwrap();

        nix::unistd::mkfifo(&root.join("run/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        mknod(
            &root.join("null-dev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("loop-dev"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 200),
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();

        // pct excludes ./dev/* (anchored): only matches if names start with "./".
        fs::write(root.join("dev/console"), b"not a device").unwrap();

        // Names and link targets past tar's 100-byte fields.
        let long_dir = root.join("long").join("d".repeat(90));
        fs::create_dir(&long_dir).unwrap();
        let long_file = long_dir.join("f".repeat(120));
        fs::write(&long_file, b"long").unwrap();
        fs::hard_link(&long_file, root.join("long/hardlink-to-long")).unwrap();
        symlink("t".repeat(150), root.join("long/long-target")).unwrap();
        set_xattr(&long_file, "user.long", b"x");

        fs::write(root.join(OsStr::from_bytes(b"weird-\xff name")), b"latin1").unwrap();

        // 64 MiB with 4 KiB of data in the middle and a hole at the end.
        let sparse = File::create(root.join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        sparse.write_all_at(&[0xab; 4096], 8 << 20).unwrap();
        drop(sparse);

        set_mtime(&root.join("bin/sh"), 1_000_000_000);
        set_mtime(&root.join("etc/passwd"), 1_234_567_890);
        set_mtime(&root.join("etc"), 1_111_111_111);
        set_mtime(&root, 1_222_222_222);
        root
    }

    #[test]
    fn archive_unpacks_with_pct_tar_flags_exactly() {
        let base = tempfile::tempdir().unwrap();
        let root = build_tree(base.path());
        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let tpl = ensure(&root, &cache).unwrap();

        let names = entries(&tpl.path);
        assert_eq!(names[0].0, b"./", "root entry first");
        assert!(names.iter().all(|e| e.0.starts_with(b"./")), "{names:?}");
        assert!(names.iter().any(|e| e.0 == b"./bin/sh"));
        assert!(
            !names.iter().any(|e| e.0.ends_with(b"/sock")),
            "sockets are skipped"
        );
        let find = |n: &[u8]| names.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(find(b"./hl/b").1, EntryType::Link);
        assert_eq!(find(b"./hl/b").2.unwrap(), b"./hl/a");
        assert_eq!(find(b"./etc/shadow-link").1, EntryType::Symlink);
        assert_eq!(find(b"./etc/shadow-link").2.unwrap(), b"/etc/shadow");
        assert_eq!(find(b"./up").2.unwrap(), b"../../../../etc");
        assert_eq!(find(b"./run/fifo").1, EntryType::Fifo);
        assert_eq!(find(b"./null-dev").1, EntryType::Char);
        assert_eq!(find(b"./sparse").1, EntryType::GNUSparse);

        // Nothing behind a symlink was read.
        let raw = decompressed(&tpl.path);
        assert!(!contains(&raw, b"OUTSIDE-SECRET-7f3a9c"));
        let shadow = fs::read("/etc/shadow").unwrap_or_default();
        for line in shadow.split(|&b| b == b'\n').filter(|l| l.len() > 8) {
            assert!(!contains(&raw, line), "host /etc/shadow leaked");
        }
        // The sparse file's 60 MiB of holes are not stored.
        assert!(raw.len() < 1 << 20, "archive is {} bytes", raw.len());

        let dest = base.path().join("unpacked");
        pve_extract(&tpl.path, &dest);

        let mut want = describe(&root);
        let mut got = describe(&dest);
        // --skip-old-files leaves the existing target directory as pct made
        // it, so "./" is checked in the archive (below) instead.
        want.remove(b".".as_slice());
        got.remove(b".".as_slice());
        assert!(want.remove(b"run/sock".as_slice()).is_some());
        assert!(want.remove(b"dev/console".as_slice()).is_some());
        assert_eq!(got, want);

        // The spot checks behind that comparison, spelled out.
        let sh = fs::metadata(dest.join("bin/sh")).unwrap();
        assert_eq!((sh.uid(), sh.gid()), (1234, 5678));
        assert_eq!(sh.mode() & 0o7777, 0o4755);
        assert_eq!(sh.mtime(), 1_000_000_000);
        assert_eq!(
            fs::metadata(dest.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        let etc = fs::metadata(dest.join("etc")).unwrap();
        assert_eq!((etc.uid(), etc.gid()), (100_000, 3_000_000));
        assert_eq!(etc.mtime(), 1_111_111_111);
        let data = decompressed(&tpl.path);
        let mut ar = tar::Archive::new(data.as_slice());
        let first = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.header().entry_type(), EntryType::Directory);
        assert_eq!(first.header().mtime().unwrap(), 1_222_222_222);
        assert_eq!(first.header().mode().unwrap(), 0o755);
        let sh_x = xattrs_of(&dest.join("bin/sh"));
        assert!(sh_x.contains(&("user.a".into(), b"1".to_vec())), "{sh_x:?}");
        assert!(sh_x.contains(&("user.b=%x".into(), b"bin\0ary\n=value".to_vec())));
        assert!(sh_x.contains(&("security.capability".into(), CAP_NET_BIND.to_vec())));
        assert_eq!(
            xattrs_of(&dest.join("etc")),
            vec![("user.dir".into(), b"d".to_vec())]
        );
        assert_eq!(
            fs::read_link(dest.join("etc/shadow-link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(
            fs::read_link(dest.join("up")).unwrap(),
            Path::new("../../../../etc")
        );
        assert_eq!(
            fs::metadata(dest.join("hl/a")).unwrap().ino(),
            fs::metadata(dest.join("hl/b")).unwrap().ino()
        );
        assert_ne!(
            fs::metadata(dest.join("hl/a")).unwrap().ino(),
            fs::metadata(dest.join("hl/c")).unwrap().ino()
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(dest.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = fs::symlink_metadata(dest.join("null-dev")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert!(fs::symlink_metadata(dest.join("loop-dev"))
            .unwrap()
            .file_type()
            .is_block_device());
        assert!(!dest.join("run/sock").exists());
        assert!(dest.join("dev").is_dir() && !dest.join("dev/console").exists());

        let sparse = fs::metadata(dest.join("sparse")).unwrap();
        assert_eq!(sparse.len(), 64 << 20);
        assert!(sparse.blocks() * 512 < 1 << 20, "unpacked dense");
        let mut buf = vec![0; 8192];
        File::open(dest.join("sparse"))
            .unwrap()
            .read_exact_at(&mut buf, (8 << 20) - 4096)
            .unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 0xab));
        assert_eq!(
            fs::read(dest.join(OsStr::from_bytes(b"weird-\xff name"))).unwrap(),
            b"latin1"
        );
    }

    #[test]
    fn archive_is_deterministic() {
        let base = tempfile::tempdir().unwrap();
        let root = build_tree(base.path());
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_archive(&root, &mut a).unwrap();
        write_archive(&root, &mut b).unwrap();
        assert!(a == b, "two runs over the same tree differ");
    }

    #[test]
    fn many_sparse_segments_use_extension_headers() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let f = File::create(root.join("holes")).unwrap();
        f.set_len(100 << 20).unwrap();
        // 40 segments: 4 fit the header, the rest need two extension blocks.
        for i in 0..40u64 {
            f.write_all_at(&[i as u8 + 1; 5000], i * (2 << 20) + 12345)
                .unwrap();
        }
        drop(f);
        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let tpl = ensure(&root, &cache).unwrap();
        let dest = base.path().join("unpacked");
        pve_extract(&tpl.path, &dest);
        assert_eq!(
            fs::read(dest.join("holes")).unwrap(),
            fs::read(root.join("holes")).unwrap()
        );
    }

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
        let e = convert(&root, &cache, &bogus).unwrap_err();
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

    #[test]
    fn stale_temps_of_dead_converters_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let host = temp_host();
        let me = std::process::id();
        let my_start = start_time(me).unwrap();
        let temp = |fp: char, ids: String| {
            cache.join(format!(
                ".nexcage-{}.tmp-{host}{ids}",
                fp.to_string().repeat(32)
            ))
        };
        // pid_max is at most 2^22, so this pid cannot be alive.
        let dead = temp('a', "_2147483000_5_0".to_string());
        let legacy_dead = temp('d', "-2147483000-0".to_string());
        // A live pid that another process had when it wrote the temp.
        let reused = temp('e', format!("_{me}_{}_0", my_start + 1));
        let live = temp('b', format!("_{me}_{my_start}_0"));
        let legacy_live = temp('f', format!("-{me}-0"));
        let other_host = cache.join(format!(
            ".nexcage-{}.tmp-elsewhere_2147483000_5_0",
            "c".repeat(32)
        ));
        // A host whose name starts with ours is not ours.
        let longer_host = cache.join(format!(
            ".nexcage-{}.tmp-{host}-x_2147483000_5_0",
            "c".repeat(32)
        ));
        for p in [
            &dead,
            &legacy_dead,
            &reused,
            &live,
            &legacy_live,
            &other_host,
            &longer_host,
        ] {
            fs::write(p, b"partial").unwrap();
        }
        assert_eq!(
            temps(&cache),
            Temps {
                stale: 3,
                stale_bytes: 21,
                other: 4,
                other_bytes: 28
            }
        );
        // Swept before converting: a conversion that fails still sweeps.
        let e = convert(&root, &cache, &"0".repeat(64)).unwrap_err();
        assert!(matches!(e, TemplateError::Changed(_)), "{e}");
        for p in [&dead, &legacy_dead, &reused] {
            assert!(!p.exists(), "{} left", p.display());
        }
        for p in [&live, &legacy_live, &other_host, &longer_host] {
            assert!(p.exists(), "{} swept", p.display());
        }
        assert_eq!(temps(&cache).stale, 0);
    }

    #[test]
    fn templates_and_their_temps_are_readable_by_root_only() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("shadow"), b"secret").unwrap();
        fs::set_permissions(root.join("shadow"), fs::Permissions::from_mode(0o600)).unwrap();
        let cache = base.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let (tmp, _f) = create_temp(&cache, &"1".repeat(64)).unwrap();
        assert_eq!(fs::metadata(&tmp).unwrap().mode() & 0o777, 0o600);
        fs::remove_file(&tmp).unwrap();
        let t = ensure(&root, &cache).unwrap();
        assert_eq!(fs::metadata(&t.path).unwrap().mode() & 0o777, 0o600);
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

    fn vm_hwm_kib() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn progress_shows_on_a_terminal_only_after_a_while_and_not_too_often() {
        let root = Path::new("/r");
        let mut quiet = Progress::new(Vec::new(), root, false);
        quiet.write_all(b"abc").unwrap();
        assert_eq!(quiet.due(Instant::now() + Duration::from_secs(60)), None);

        let mut p = Progress::new(Vec::new(), root, true);
        p.write_all(&[0; 1000]).unwrap();
        let t0 = p.started;
        assert_eq!(p.due(t0 + Duration::from_secs(1)), None, "too early");
        let line = p.due(t0 + Duration::from_secs(3)).unwrap();
        assert!(
            line.contains("converting /r") && line.contains(" MB"),
            "{line}"
        );
        assert_eq!(p.due(t0 + Duration::from_millis(3100)), None, "too often");
        assert!(p.due(t0 + Duration::from_millis(3300)).is_some());
        assert_eq!(p.bytes, 1000);
        assert_eq!(p.finish().len(), 1000, "the stream passes through whole");
    }

    #[test]
    fn large_files_are_streamed() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        // 200 MiB of incompressible data: no holes, nothing zstd could shrink.
        let size = 200usize << 20;
        {
            let mut f = BufWriter::new(File::create(root.join("big")).unwrap());
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut block = vec![0u8; 1 << 20];
            for _ in 0..size >> 20 {
                for b in block.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b.copy_from_slice(&x.to_le_bytes());
                }
                f.write_all(&block).unwrap();
            }
            f.flush().unwrap();
        }

        struct Count(u64);
        impl Write for Count {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0 += b.len() as u64;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let before = vm_hwm_kib();
        let started = Instant::now();
        let mut out = Count(0);
        write_archive(&root, &mut out).unwrap();
        let secs = started.elapsed().as_secs_f64();
        let grown = vm_hwm_kib().saturating_sub(before);
        eprintln!(
            "200 MiB file: {:.0} MB/s, archive {} bytes, peak RSS grew {grown} KiB",
            size as f64 / 1e6 / secs,
            out.0
        );
        assert!(out.0 > size as u64, "content was not all written");
        assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
    }
}
