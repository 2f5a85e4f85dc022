//! The container state store: `<root>/<id>/state.json`, one directory per
//! container. Writes are atomic (temp file, fsync, rename) and happen under a
//! per-container flock on the container's directory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::fsutil::{write_atomic, FileError, OWN_DIR};
use crate::procfs::ProcRef;

const STATE_FILE: &str = "state.json";
/// The runtime spec version nexcage implements (`state`, `features`, `spec`).
pub const OCI_VERSION: &str = "1.2.0";
/// Where a migration from the old locations gathers them before it renames
/// this into `OWN_DIR`, so that a crash midway never leaves a half-filled
/// `OWN_DIR` that later runs would take as done.
const OWN_DIR_STAGING: &str = "~nexcage.new";
/// The old homes of nexcage's own files, and their names below `OWN_DIR`.
const LEGACY_DIRS: [(&str, &str); 2] = [(".vmids", "vmids"), (".cache", "cache")];
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt state file {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("timed out waiting for the lock on {0}")]
    LockTimeout(PathBuf),
    #[error(transparent)]
    File(#[from] FileError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// OCI lifecycle status, plus runc's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

/// What each status allows, as runc decides it; callers choose the words.
impl Status {
    /// The container's process exists: it can be signalled, listed (`ps`),
    /// watched (`events`) and given new limits (`update`).
    pub fn has_process(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }

    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    pub fn can_kill(self) -> bool {
        self.has_process()
    }

    /// Without `--force`: a created container is deleted as runc does, by
    /// killing its waiting process.
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Created | Status::Stopped)
    }

    /// A paused container only with `--ignore-paused`.
    pub fn can_exec(self, ignore_paused: bool) -> bool {
        matches!(self, Status::Created | Status::Running)
            || (ignore_paused && self == Status::Paused)
    }

    pub fn can_pause(self) -> bool {
        self == Status::Running
    }

    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What nexcage keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub oci_version: String,
    pub id: String,
    /// The last status a command set; the live status is derived (see
    /// `crate::lifecycle::status`), because a process can exit at any time.
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub created: String,
    #[serde(default)]
    pub owner: String,
    /// Backend chosen at create; later commands go to the same one.
    pub backend: String,
    /// What the backend keeps about this container, in its own format
    /// (`crate::backend::Guest::data`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub backend_data: serde_json::Value,
    /// The bridge monitor: its pid is the container's pid for clients.
    #[serde(default)]
    pub monitor: Option<ProcRef>,
    /// The container's PID 1 (nexcage init), as a host pid.
    #[serde(default)]
    pub init: Option<ProcRef>,
    /// The user's process, as a host pid.
    #[serde(default)]
    pub process: Option<ProcRef>,
    #[serde(default)]
    pub systemd_cgroup: bool,
    /// The bundle's OCI hooks as create read them: poststart and poststop
    /// run later, when config.json may have changed or be gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// `bridge::PROTOCOL` of the nexcage that created it (0: before numbers).
    #[serde(default)]
    pub bridge_protocol: u32,
    /// The guest was destroyed once the process ended (`lifecycle::reap`):
    /// `delete` has only the state left to remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest_destroyed: bool,
}

/// The state document `nexcage state` prints (OCI runtime spec + runc's extras).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: BTreeMap<String, String>,
}

impl Record {
    /// A new container's record: what its bundle says, made by `backend`,
    /// no process yet.
    pub fn new(id: &str, bundle: &crate::bundle::Bundle, backend: &str, status: Status) -> Record {
        Record {
            oci_version: OCI_VERSION.into(),
            id: id.to_string(),
            status,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            created: crate::logging::now_rfc3339(),
            owner: String::new(),
            backend: backend.to_string(),
            backend_data: serde_json::Value::Null,
            monitor: None,
            init: None,
            process: None,
            systemd_cgroup: false,
            hooks: None,
            bridge_protocol: 0,
            guest_destroyed: false,
        }
    }

    /// The backend's view of this container.
    pub fn guest(&self) -> crate::backend::Guest<'_> {
        crate::backend::Guest {
            id: &self.id,
            data: &self.backend_data,
            init: self.init,
        }
    }

    pub fn oci_state(&self, status: Status) -> OciState {
        let pid = match status {
            Status::Stopped => 0,
            _ => self.monitor.map(|m| m.pid).unwrap_or(0),
        };
        OciState {
            oci_version: self.oci_version.clone(),
            id: self.id.clone(),
            status,
            pid,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: self.owner.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[cfg(test)]
impl Record {
    /// A created container's record, for tests.
    pub fn sample(id: &str) -> Record {
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_annotations(None);
        let bundle = crate::bundle::Bundle {
            dir: "/b".into(),
            spec,
            rootfs: "/b/rootfs".into(),
        };
        Record {
            backend_data: serde_json::json!({"vmid": 123}),
            ..Record::new(id, &bundle, "proxmox-lxc", Status::Created)
        }
    }
}

/// Records written before backends kept their own data had the Proxmox
/// backend's fields at the top; a container created then is still deleted
/// by this nexcage (state lives on tmpfs, so only across an upgrade).
const LEGACY_BACKEND_FIELDS: [&str; 3] = ["vmid", "newTemplate", "template"];

fn upgrade_record(doc: &mut serde_json::Value) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    if obj.contains_key("backendData") {
        return;
    }
    let mut data = serde_json::Map::new();
    for key in LEGACY_BACKEND_FIELDS {
        if let Some(v) = obj.remove(key).filter(|v| !v.is_null()) {
            data.insert(key.to_string(), v);
        }
    }
    if !data.is_empty() {
        obj.insert("backendData".into(), data.into());
    }
}

/// Container ids as runc accepts them: `[A-Za-z0-9_+\-.]+`, not `.` or `..`.
/// They become directory names, hence the length bound.
pub fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("empty");
    }
    if id.len() > 255 {
        return Err("longer than 255 bytes");
    }
    if id == "." || id == ".." {
        return Err("not a valid name");
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'+' | b'-' | b'.'))
    {
        return Err("only letters, digits and _+-. are allowed");
    }
    Ok(())
}

/// Exclusive hold on one container's directory; released on drop.
pub struct ContainerLock {
    _lock: Flock<File>,
    pub id: String,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The root is searchable but not listable (0711, as runc's): state files
    /// stay private (0600), while an unprivileged container's root user can
    /// still reach its bridge directory below it.
    ///
    /// The root is made absolute: the monitor's command line and the guest's
    /// bridge mount name paths below it, and `delete --force` recognises
    /// them by those paths when the state file is lost.
    pub fn open(root: &Path) -> Result<Store, StateError> {
        let root = std::path::absolute(root).map_err(io("resolve", root))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&root)
            .map_err(io("create state root", &root))?;
        migrate_own_files(&root)?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir(id).join(STATE_FILE)
    }

    /// Claim a new container directory. Returns None when the id is taken.
    pub fn claim(&self, id: &str) -> Result<Option<ContainerLock>, StateError> {
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => self.lock_dir(id).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(io("create state directory", &dir)(e)),
        }
    }

    /// Lock an existing container; None when it does not exist (or vanished
    /// while we waited for the lock).
    pub fn lock(&self, id: &str) -> Result<Option<ContainerLock>, StateError> {
        if !self.dir(id).is_dir() {
            return Ok(None);
        }
        let lock = match self.lock_dir(id) {
            Ok(l) => l,
            Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Ok(self.dir(id).is_dir().then_some(lock))
    }

    fn lock_dir(&self, id: &str) -> Result<ContainerLock, StateError> {
        let dir = self.dir(id);
        let file = File::open(&dir).map_err(io("open", &dir))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(ContainerLock {
                        _lock: lock,
                        id: id.to_string(),
                    })
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    // Short: `run`'s delete comes right after the exit and
                    // usually finds the reap's `pct destroy` holding the lock.
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(StateError::LockTimeout(dir));
                }
                Err((_, e)) => return Err(io("lock", &dir)(e.into())),
            }
        }
    }

    /// Read without the lock: writers replace the file atomically, so a reader
    /// always sees a whole document. None when the container does not exist.
    pub fn load(&self, id: &str) -> Result<Option<Record>, StateError> {
        let path = self.state_path(id);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let corrupt = |e: serde_json::Error| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut doc: serde_json::Value = serde_json::from_slice(&text).map_err(corrupt)?;
        upgrade_record(&mut doc);
        serde_json::from_value(doc).map(Some).map_err(corrupt)
    }

    pub fn save(&self, lock: &ContainerLock, record: &Record) -> Result<(), StateError> {
        debug_assert_eq!(lock.id, record.id);
        let body = serde_json::to_vec_pretty(record).expect("state serializes");
        Ok(write_atomic(&self.state_path(&record.id), &body, 0o600)?)
    }

    /// Remove the container's directory; the lock goes with it.
    pub fn remove(&self, lock: ContainerLock) -> Result<(), StateError> {
        let dir = self.dir(&lock.id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &dir)(e)),
        }
    }

    /// Ids of every container directory, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let rd = fs::read_dir(&self.root).map_err(io("list", &self.root))?;
        let mut ids: Vec<String> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                (e.file_type().ok()?.is_dir() && validate_id(&name).is_ok()).then_some(name)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Move `.vmids` and `.cache` of an older nexcage below `OWN_DIR`, once,
/// under an exclusive flock on the root so that concurrent commands of an
/// upgraded node wait for it instead of seeing reservations vanish. A
/// directory holding a state file is a container (an older nexcage let
/// `create .vmids` take the name on a fresh root) and stays where it is.
fn migrate_own_files(root: &Path) -> Result<(), StateError> {
    let own = root.join(OWN_DIR);
    if own.is_dir() {
        return Ok(());
    }
    let file = File::open(root).map_err(io("open", root))?;
    let _lock =
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io("lock", root)(e.into()))?;
    if own.is_dir() {
        return Ok(());
    }
    let staging = root.join(OWN_DIR_STAGING);
    match fs::DirBuilder::new().mode(0o700).create(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", &staging)(e)),
    }
    for (old, new) in LEGACY_DIRS {
        let from = root.join(old);
        let to = staging.join(new);
        if !from.is_dir() || from.join(STATE_FILE).exists() || to.exists() {
            continue;
        }
        fs::rename(&from, &to).map_err(io("move into place", &to))?;
        tracing::debug!(from = %from.display(), to = %to.display(), "moved nexcage's own files out of the id namespace");
    }
    fs::rename(&staging, &own).map_err(io("move into place", &own))?;
    let d = File::open(root).map_err(io("open", root))?;
    nix::unistd::fsync(d.as_fd()).map_err(|e| io("sync", root)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::own_path;

    fn record(id: &str) -> Record {
        Record::sample(id)
    }

    #[test]
    fn records_from_before_backend_data_keep_their_vmid_and_template() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("root")).unwrap();
        let lock = store.claim("old").unwrap().unwrap();
        let mut doc = serde_json::to_value(record("old")).unwrap();
        let obj = doc.as_object_mut().unwrap();
        obj.remove("backendData");
        obj.insert("vmid".into(), 104.into());
        obj.insert("template".into(), "local:vztmpl/nexcage-x.tar.zst".into());
        obj.insert("newTemplate".into(), serde_json::Value::Null);
        write_atomic(&store.state_path("old"), doc.to_string().as_bytes(), 0o600).unwrap();
        let back = store.load("old").unwrap().unwrap();
        assert_eq!(
            back.backend_data,
            serde_json::json!({"vmid": 104, "template": "local:vztmpl/nexcage-x.tar.zst"})
        );
        // Saved again, it is in the new form only.
        store.save(&lock, &back).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(store.state_path("old")).unwrap()).unwrap();
        assert!(raw.get("vmid").is_none() && raw["backendData"]["vmid"] == 104);
    }

    #[test]
    fn each_status_allows_what_runc_allows() {
        use Status::*;
        let all = [Creating, Created, Running, Paused, Stopped];
        let which = |f: &dyn Fn(Status) -> bool| -> Vec<Status> {
            all.into_iter().filter(|s| f(*s)).collect()
        };
        assert_eq!(which(&Status::can_start), [Created]);
        assert_eq!(which(&Status::can_kill), [Created, Running, Paused]);
        assert_eq!(which(&Status::can_delete), [Created, Stopped]);
        assert_eq!(which(&|s| s.can_exec(false)), [Created, Running]);
        assert_eq!(which(&|s| s.can_exec(true)), [Created, Running, Paused]);
        assert_eq!(which(&Status::can_pause), [Running]);
        assert_eq!(which(&Status::can_resume), [Paused]);
    }

    #[test]
    fn ids_follow_runc_rules() {
        for ok in ["a", "abc-1_2+3.4", "0123456789abcdef", "A.B"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a\nb",
            "../x",
            "é",
            &"x".repeat(256),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claim_save_load_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("root")).unwrap();
        let lock = store.claim("c1").unwrap().expect("new id");
        assert!(
            store.claim("c1").unwrap().is_none(),
            "second claim must fail"
        );
        store.save(&lock, &record("c1")).unwrap();
        let back = store.load("c1").unwrap().unwrap();
        assert_eq!(back.backend_data, serde_json::json!({"vmid": 123}));
        assert_eq!(store.ids().unwrap(), vec!["c1".to_string()]);
        store.remove(lock).unwrap();
        assert!(store.load("c1").unwrap().is_none());
        assert!(store.lock("c1").unwrap().is_none());
    }

    #[test]
    fn own_files_of_an_older_nexcage_move_out_of_the_id_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join(".vmids")).unwrap();
        fs::write(root.join(".vmids/100"), "c1").unwrap();
        fs::create_dir_all(root.join(".cache/templates")).unwrap();
        fs::write(root.join(".cache/storage.rootdir"), "local").unwrap();
        let store = Store::open(root).unwrap();
        assert_eq!(
            fs::read_to_string(own_path(root, "vmids").join("100")).unwrap(),
            "c1"
        );
        assert!(own_path(root, "cache").join("storage.rootdir").is_file());
        assert!(!root.join(".vmids").exists() && !root.join(".cache").exists());
        assert!(!root.join(OWN_DIR_STAGING).exists());
        assert!(store.ids().unwrap().is_empty(), "{OWN_DIR} is no container");
        // Once done, a container of that name is left alone.
        let lock = store.claim(".vmids").unwrap().expect("an ordinary id");
        store.save(&lock, &record(".vmids")).unwrap();
        Store::open(root).unwrap();
        assert_eq!(store.ids().unwrap(), vec![".vmids".to_string()]);
    }

    #[test]
    fn a_container_that_took_an_old_own_name_is_not_migrated() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join(".cache")).unwrap();
        fs::write(root.join(".cache/state.json"), "{}").unwrap();
        Store::open(root).unwrap();
        assert!(root.join(".cache/state.json").is_file());
        assert!(root.join(OWN_DIR).is_dir());
    }

    #[test]
    fn a_relative_root_is_made_absolute() {
        let store = Store::open(Path::new("target/state-test-root")).unwrap();
        assert!(store.root().is_absolute());
        let _ = fs::remove_dir_all(store.root());
    }

    #[test]
    fn lock_is_exclusive_between_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let held = store.claim("c").unwrap().unwrap();
        let dir = store.dir("c");
        // flock conflicts between open file descriptions, even in one process.
        let f = File::open(&dir).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        let f = File::open(&dir).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
    }

    #[test]
    fn stopped_state_reports_pid_zero() {
        let mut r = record("c");
        r.monitor = Some(ProcRef {
            pid: 77,
            start_time: 1,
        });
        assert_eq!(r.oci_state(Status::Created).pid, 77);
        assert_eq!(r.oci_state(Status::Stopped).pid, 0);
        let json = serde_json::to_value(r.oci_state(Status::Created)).unwrap();
        assert_eq!(json["ociVersion"], "1.2.0");
        assert_eq!(json["status"], "created");
    }
}
