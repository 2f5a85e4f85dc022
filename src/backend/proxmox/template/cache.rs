//! The template cache: nexcage's archives in the template storage's
//! `vztmpl` directory, each named after the fingerprint of its rootfs.
//!
//! Filling it: [`convert`] writes an archive under a temporary name and
//! renames it into place, so `pct` never sees a partial one. Temporaries of
//! converters killed outright are swept by the next conversion; [`temps`]
//! counts them.
//!
//! Keeping it in bounds: which of nexcage's templates exist (`pveam list`),
//! when each was last used, which are being created from at this moment,
//! and removal through `pveam remove` so that the storage layer stays the
//! one that deletes volumes.
//!
//! Per template, under `<state root>/~nexcage/cache/templates/`:
//! * `<name>` holds the time of the last create that hit or made it, written
//!   atomically (atime is not trusted: relatime and noatime mounts);
//! * `<name>.lock` is flocked shared by every create from ensure until
//!   `pct create` has unpacked the archive, and exclusively (non-blocking) by
//!   eviction and prune, which skip a template whose lock is busy.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::libc;

use super::writer::{archive_into, Writeback};
use super::{template_name, TemplateError};
use crate::backend::proxmox::pct::{PctError, Tools};
use crate::backend::{Template, Temporaries};
use crate::fsutil::{own_path, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot lock template {name} ({}): {source}", path.display())]
    Lock {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot record the use of template {name} in {}: {message}", path.display())]
    Record {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("cannot list the templates of storage {storage}: {source}")]
    List { storage: String, source: PctError },
    #[error("cannot remove template {volid}: {source}")]
    Remove { volid: String, source: PctError },
    #[error("cannot remove template {volid}: {message}")]
    Dependents { volid: String, message: String },
}

// ---------------------------------------------------------------------------
// Filling the cache

/// Writes the template under a temporary name and renames it into place once
/// complete and synced, so `pct` never sees a partial archive.
pub(super) fn convert(rootfs: &Path, cache_dir: &Path, fp: &str) -> Result<PathBuf, TemplateError> {
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

    let (written_fp, out) = archive_into(rootfs, Writeback::new(file), Some(&tmp))?;
    let file = out.into_inner();
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

/// Counts nexcage's temporary templates in `cache_dir` without touching
/// them, by whether their writer is provably gone.
pub fn temps(cache_dir: &Path) -> Temporaries {
    let host = temp_host();
    let mut t = Temporaries::default();
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

// ---------------------------------------------------------------------------
// Keeping the cache in bounds

/// `nexcage-<32 hex>.tar.zst`: only these are ever listed, evicted or
/// pruned; an admin's own templates on the same storage are not ours.
pub fn is_own_template(name: &str) -> bool {
    name.strip_prefix("nexcage-")
        .and_then(|r| r.strip_suffix(".tar.zst"))
        .is_some_and(|fp| {
            fp.len() == 32 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// What is kept about templates under one state root.
#[derive(Debug, Clone)]
pub struct Meta {
    dir: PathBuf,
}

/// A held flock on a template's lock file; released on drop.
#[derive(Debug)]
pub struct TemplateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl Meta {
    pub fn new(state_root: &Path) -> Meta {
        Meta {
            dir: own_path(state_root, "cache").join("templates"),
        }
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }

    fn used_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Held by a create for as long as it needs the archive; waits for an
    /// eviction that is removing it (the create then converts anew).
    pub fn lock_shared(&self, name: &str) -> Result<TemplateLock, CacheError> {
        self.lock(name, FlockArg::LockSharedNonblock, true)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// For removal: None while any create holds it.
    pub fn try_lock_exclusive(&self, name: &str) -> Result<Option<TemplateLock>, CacheError> {
        self.lock(name, FlockArg::LockExclusiveNonblock, false)
    }

    fn lock(
        &self,
        name: &str,
        arg: FlockArg,
        wait: bool,
    ) -> Result<Option<TemplateLock>, CacheError> {
        let path = self.lock_path(name);
        let err = |source: io::Error| CacheError::Lock {
            name: name.to_string(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(err)?;
            let held = if wait {
                let blocking = match arg {
                    FlockArg::LockSharedNonblock => FlockArg::LockShared,
                    _ => FlockArg::LockExclusive,
                };
                Flock::lock(file, blocking).map_err(|(_, e)| err(e.into()))?
            } else {
                match Flock::lock(file, arg) {
                    Ok(l) => l,
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                    Err((_, e)) => return Err(err(e.into())),
                }
            };
            // A remover unlinks the lock file while holding it: a lock taken
            // on that unlinked inode protects nothing, so take the new one.
            let ours = held.metadata().map_err(err)?;
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                    return Ok(Some(TemplateLock {
                        _lock: held,
                        path: path.clone(),
                    }))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// Record that a create hit or made `name` at `when`.
    pub fn touch(&self, name: &str, when: SystemTime) -> Result<(), CacheError> {
        let path = self.used_path(name);
        let err = |message: String| CacheError::Record {
            name: name.to_string(),
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| err(e.to_string()))?;
        let d = when.duration_since(UNIX_EPOCH).unwrap_or_default();
        let body = format!("{}.{:09}\n", d.as_secs(), d.subsec_nanos());
        write_atomic(&path, body.as_bytes(), 0o600).map_err(|e| err(e.to_string()))
    }

    /// The recorded last use, if any (a template made under another state
    /// root, or before nexcage kept these, has none).
    pub fn last_used(&self, name: &str) -> Option<SystemTime> {
        let text = std::fs::read_to_string(self.used_path(name)).ok()?;
        let (secs, nanos) = text.trim().split_once('.')?;
        let d = Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
        UNIX_EPOCH.checked_add(d)
    }

    /// Drop what is kept about a removed template; `lock` is its exclusive
    /// lock, so the lock file goes while no create can be relying on it.
    pub fn forget(&self, name: &str, lock: TemplateLock) {
        let _ = std::fs::remove_file(self.used_path(name));
        let _ = std::fs::remove_file(&lock.path);
        drop(lock);
    }
}

/// The volume ids `pveam list <storage>` prints: a `NAME SIZE` header, then
/// one `<volid> <size>` row per template.
pub fn parse_pveam_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "NAME")
        .map(str::to_string)
        .collect()
}

/// nexcage's templates on `storage` as pveam lists them, sized from the
/// storage directory `dir` (pveam prints rounded MB).
pub fn list(
    tools: &Tools,
    storage: &str,
    dir: &Path,
    meta: &Meta,
) -> Result<Vec<Template>, CacheError> {
    let out = tools
        .pveam(["list", storage])
        .map_err(|source| CacheError::List {
            storage: storage.to_string(),
            source,
        })?;
    let prefix = format!("{storage}:vztmpl/");
    let mut entries = Vec::new();
    for volid in parse_pveam_list(&out) {
        let Some(name) = volid.strip_prefix(&prefix) else {
            continue;
        };
        if !is_own_template(name) {
            continue;
        }
        // Removed between the listing and now: not there any more.
        let Ok(st) = std::fs::metadata(dir.join(name)) else {
            continue;
        };
        let recorded = meta.last_used(name);
        entries.push(Template {
            name: name.to_string(),
            volid: volid.clone(),
            bytes: st.len(),
            last_used: recorded
                .or_else(|| st.modified().ok())
                .unwrap_or(UNIX_EPOCH),
            recorded: recorded.is_some(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// `[proxmox] template_cache_max_*`: None is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: Option<u64>,
    pub max_count: Option<usize>,
}

impl Limits {
    /// Whether `count` templates of `bytes` in all break either bound.
    pub fn exceeded(&self, count: usize, bytes: u64) -> bool {
        self.max_count.is_some_and(|m| count > m) || self.max_bytes.is_some_and(|m| bytes > m)
    }
}

/// Which templates to evict so that the rest fit `limits`: least recently
/// used first, never one `busy` says is being created from. When only busy
/// ones are left the cache may stay over its limit until they are free.
pub fn choose_evictions<'a>(
    entries: &'a [Template],
    limits: Limits,
    busy: &dyn Fn(&Template) -> bool,
) -> Vec<&'a Template> {
    let mut count = entries.len();
    let mut bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let over = |count: usize, bytes: u64| limits.exceeded(count, bytes);
    let mut by_age: Vec<&Template> = entries.iter().collect();
    by_age.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    let mut out = Vec::new();
    for e in by_age {
        if !over(count, bytes) {
            break;
        }
        if busy(e) {
            continue;
        }
        count -= 1;
        bytes -= e.bytes;
        out.push(e);
    }
    out
}

/// What was made from a template and goes before it (root mode clone's
/// base guests): called under the template's exclusive lock; Ok(false)
/// keeps the template, an Err is the reason it cannot go.
pub type Dependents<'a> = &'a dyn Fn(&str) -> Result<bool, String>;

/// Remove template `name` (volume `volid`) through pveam under its
/// exclusive lock, after `dependents`. Ok(false) when a create holds it or
/// a dependent stays.
pub fn remove(
    tools: &Tools,
    meta: &Meta,
    name: &str,
    volid: &str,
    dependents: Dependents,
) -> Result<bool, CacheError> {
    let Some(lock) = meta.try_lock_exclusive(name)? else {
        return Ok(false);
    };
    match dependents(name) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(message) => {
            return Err(CacheError::Dependents {
                volid: volid.to_string(),
                message,
            })
        }
    }
    match tools.pveam(["remove", volid]) {
        Ok(_) => {}
        // Gone already (another root's prune, an admin): what we wanted.
        Err(e) if e.stderr().contains("No such file") => {}
        Err(source) => {
            return Err(CacheError::Remove {
                volid: volid.to_string(),
                source,
            })
        }
    }
    meta.forget(name, lock);
    Ok(true)
}

/// Evict least recently used templates until `limits` hold; a failure is
/// only logged, since the create that called it has succeeded.
pub fn evict(
    tools: &Tools,
    storage: &str,
    dir: &Path,
    meta: &Meta,
    limits: Limits,
    dependents: Dependents,
) {
    if limits == Limits::default() {
        return;
    }
    let entries = match list(tools, storage, dir, meta) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "template cache: cannot list for eviction");
            return;
        }
    };
    // A template whose lock is busy at choice time is skipped; one that
    // becomes busy after is caught by remove's own try-lock.
    let busy = |e: &Template| !matches!(meta.try_lock_exclusive(&e.name), Ok(Some(_)));
    for e in choose_evictions(&entries, limits, &busy) {
        match remove(tools, meta, &e.name, &e.volid, dependents) {
            Ok(true) => {
                tracing::info!(template = %e.volid, bytes = e.bytes, "evicted least recently used template")
            }
            Ok(false) => tracing::debug!(template = %e.volid, "busy, not evicted"),
            Err(err) => tracing::warn!(error = %err, "template cache: eviction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::backend::proxmox::template::ensure;

    fn entry(name: &str, bytes: u64, age: u64) -> Template {
        Template::sample(name, bytes, age)
    }

    #[test]
    fn only_nexcage_names_are_ours() {
        let fp = "0123456789abcdef0123456789abcdef";
        assert!(is_own_template(&format!("nexcage-{fp}.tar.zst")));
        for bad in [
            "debian-12-standard_12.7-1_amd64.tar.zst".to_string(),
            format!("nexcage-{fp}.tar.gz"),
            format!("nexcage-{}.tar.zst", &fp[1..]),
            format!("nexcage-{}.tar.zst", fp.to_uppercase()),
            "nexcage-probe.tar.zst".into(),
        ] {
            assert!(!is_own_template(&bad), "{bad}");
        }
    }

    #[test]
    fn pveam_list_gives_volids() {
        let out = "NAME                                                         SIZE  \nlocal:vztmpl/a.tar.zst   1.00MB\nlocal:vztmpl/b.tar.zst 0.01MB\n";
        assert_eq!(
            parse_pveam_list(out),
            ["local:vztmpl/a.tar.zst", "local:vztmpl/b.tar.zst"]
        );
    }

    #[test]
    fn lru_evicts_oldest_until_within_limits_and_skips_busy() {
        let es = vec![
            entry("a", 100, 30),
            entry("b", 100, 10),
            entry("c", 100, 20),
        ];
        let names = |v: Vec<&Template>| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        let none = |_: &Template| false;
        let count1 = Limits {
            max_count: Some(1),
            ..Limits::default()
        };
        assert_eq!(names(choose_evictions(&es, count1, &none)), ["a", "c"]);
        let bytes = Limits {
            max_bytes: Some(250),
            ..Limits::default()
        };
        assert_eq!(names(choose_evictions(&es, bytes, &none)), ["a"]);
        // The oldest is being created from: the next oldest goes instead.
        let a_busy = |e: &Template| e.name == "a";
        assert_eq!(names(choose_evictions(&es, bytes, &a_busy)), ["c"]);
        assert!(choose_evictions(&es, Limits::default(), &none).is_empty());
        // All busy: over the limit, but nothing is removed.
        let all = |_: &Template| true;
        assert!(choose_evictions(&es, count1, &all).is_empty());
    }

    #[test]
    fn shared_locks_coexist_and_keep_removal_out() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Meta::new(tmp.path());
        let a = meta.lock_shared("t").unwrap();
        let b = meta.lock_shared("t").unwrap();
        assert!(meta.try_lock_exclusive("t").unwrap().is_none());
        drop(a);
        assert!(meta.try_lock_exclusive("t").unwrap().is_none());
        drop(b);
        let x = meta.try_lock_exclusive("t").unwrap().unwrap();
        // While removal holds it, nobody else may remove it too.
        assert!(meta.try_lock_exclusive("t").unwrap().is_none());
        meta.forget("t", x);
        assert!(!tmp.path().join("~nexcage/cache/templates/t.lock").exists());
        // A new lock after forget is a fresh file, and takes.
        let _c = meta.lock_shared("t").unwrap();
        assert!(meta.try_lock_exclusive("t").unwrap().is_none());
    }

    #[test]
    fn a_waiter_on_a_forgotten_lock_file_takes_the_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Meta::new(tmp.path());
        let x = meta.try_lock_exclusive("t").unwrap().unwrap();
        let m2 = meta.clone();
        let waiter = std::thread::spawn(move || {
            let l = m2.lock_shared("t").unwrap();
            std::fs::metadata(&l.path).unwrap().ino()
        });
        std::thread::sleep(Duration::from_millis(100));
        meta.forget("t", x);
        let ino = waiter.join().unwrap();
        // The waiter's lock is on the file now at the path, not the unlinked one.
        assert_eq!(
            std::fs::metadata(tmp.path().join("~nexcage/cache/templates/t.lock"))
                .unwrap()
                .ino(),
            ino
        );
    }

    #[test]
    fn use_times_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Meta::new(tmp.path());
        assert_eq!(meta.last_used("t"), None);
        let when = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        meta.touch("t", when).unwrap();
        assert_eq!(meta.last_used("t"), Some(when));
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
            Temporaries {
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
}
