//! The Proxmox LXC backend: bundle -> template -> VMID -> `pct create` ->
//! raw lines for the bridge -> `pct start`; and `pct destroy` at the end.
//! One lifecycle costs three tool runs (create, start, destroy); `pvesm` runs
//! once per node for the template directory, then never again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::conf::{self, ConfError, RawLine};
use super::pct::{PctError, Tools};
use super::template::{self, TemplateError};
use super::translate::{self, HostFacts, TranslateError};
use super::vmid::{Allocator, VmidError};
use crate::bridge::{BridgeDir, INIT_CMD, MOUNT_TARGET};
use crate::config::ProxmoxSettings;
use crate::error::Result;
use crate::router::{Backend, Provision};
use crate::state::{write_atomic, Record};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Vmid(#[from] VmidError),
    #[error(transparent)]
    Pct(#[from] PctError),
    #[error("CT {vmid}: {source}")]
    Conf { vmid: u32, source: ConfError },
    #[error("cannot find the template directory of storage {storage}: {message}")]
    TemplateDir { storage: String, message: String },
    #[error("gave up after {0} VMIDs were taken by others while creating")]
    VmidRace(usize),
    #[error("{0} is not searchable by others (o+x): an unprivileged container could not reach its bridge directory")]
    NotSearchable(PathBuf),
}

/// How often a VMID may turn out taken (by another node) before giving up.
const MAX_VMID_RETRIES: usize = 32;

pub struct Driver {
    settings: ProxmoxSettings,
    tools: Tools,
    state_root: PathBuf,
}

impl Driver {
    pub const NAME: &'static str = "proxmox-lxc";

    pub fn new(settings: ProxmoxSettings, state_root: &Path) -> Driver {
        Driver {
            tools: Tools::from_settings(&settings),
            settings,
            state_root: state_root.to_path_buf(),
        }
    }

    fn allocator(&self) -> Allocator<'_> {
        Allocator::new(&self.settings, &self.tools, &self.state_root)
    }

    /// The template storage's directory, asked of `pvesm` once and then
    /// remembered under the state root.
    fn template_dir(&self) -> Result<PathBuf, DriverError> {
        let storage = &self.settings.template_storage;
        let cache = self
            .state_root
            .join(".cache")
            .join(format!("template-dir.{storage}"));
        if let Ok(dir) = std::fs::read_to_string(&cache) {
            let dir = PathBuf::from(dir.trim());
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        let err = |message: String| DriverError::TemplateDir {
            storage: storage.clone(),
            message,
        };
        let out = self
            .tools
            .pvesm(["path", &format!("{storage}:vztmpl/nexcage-probe.tar.zst")])?;
        let file = PathBuf::from(out.trim());
        let dir = file
            .parent()
            .filter(|d| d.is_absolute())
            .ok_or_else(|| err(format!("pvesm printed {:?}", out.trim())))?
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        if let Some(parent) = cache.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = write_atomic(&cache, dir.as_os_str().as_encoded_bytes(), 0o600);
        Ok(dir)
    }

    fn conf_path(&self, vmid: u32) -> PathBuf {
        self.settings.conf_dir.join(format!("{vmid}.conf"))
    }

    /// The fixed lines that make nexcage the guest's PID 1.
    fn bridge_lines(req: &Provision) -> Result<Vec<RawLine>, ConfError> {
        Ok(vec![
            RawLine::bind_mount(req.bridge_dir, MOUNT_TARGET, &["ro", "create=dir"])?,
            RawLine::bind_mount(req.init_binary, &BridgeDir::init_mount_target(), &["ro"])?,
            RawLine::new("lxc.init.cmd", INIT_CMD)?,
        ])
    }

    /// `pct create`, moving to the next VMID whenever the cluster says the
    /// one we picked is taken.
    fn create_guest(
        &self,
        req: &Provision,
        args_for: impl Fn(u32) -> Vec<String>,
        record: &mut Record,
        save: &mut dyn FnMut(&Record) -> Result<()>,
    ) -> Result<u32> {
        let alloc = self.allocator();
        let mut taken = BTreeSet::new();
        while taken.len() < MAX_VMID_RETRIES {
            let reservation = alloc.reserve(req.id, &taken).map_err(DriverError::from)?;
            let vmid = reservation.vmid;
            record.vmid = Some(vmid);
            save(record)?;
            match self.tools.pct(args_for(vmid)) {
                Ok(_) => return Ok(reservation.keep()),
                Err(e) if is_taken(e.stderr()) => {
                    tracing::debug!(vmid, "VMID taken elsewhere: {e}");
                    taken.insert(vmid);
                }
                Err(e) => {
                    record.vmid = None;
                    save(record)?;
                    return Err(DriverError::from(e).into());
                }
            }
        }
        record.vmid = None;
        save(record)?;
        Err(DriverError::VmidRace(taken.len()).into())
    }
}

/// LXC mounts an unprivileged guest's entries as its mapped root user, an
/// "other" to the host: every directory above a bind source must let it pass.
fn check_searchable(path: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in path.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        if mode & 0o001 == 0 {
            return Err(DriverError::NotSearchable(dir.to_path_buf()));
        }
    }
    Ok(())
}

/// pct's words for "somebody else has this VMID".
fn is_taken(stderr: &str) -> bool {
    stderr.contains("already exists")
        || stderr.contains("can't lock file")
        || stderr.contains("CT is locked")
}

impl Backend for Driver {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn provision(
        &self,
        req: &Provision,
        record: &mut Record,
        save: &mut dyn FnMut(&Record) -> Result<()>,
    ) -> Result<()> {
        let plan = translate::plan_bundle(
            &req.bundle.spec,
            Some(&req.bundle.rootfs),
            &self.settings,
            HostFacts::read(),
        )
        .map_err(DriverError::from)?;
        let mut lines =
            Self::bridge_lines(req).map_err(|source| DriverError::Conf { vmid: 0, source })?;
        lines.extend(plan.raw_lines.iter().cloned());
        // The init reads what it applies inside (masked paths, ...) from the bridge.
        plan.init
            .write(req.bridge_dir)
            .map_err(|e| DriverError::Conf {
                vmid: 0,
                source: ConfError::Io {
                    what: "write",
                    path: req.bridge_dir.join(translate::INIT_SETTINGS_FILE),
                    source: e,
                },
            })?;
        if plan.unprivileged {
            for p in [req.bridge_dir, req.init_binary] {
                check_searchable(p)?;
            }
        }
        let dir = self.template_dir()?;
        let tpl = template::ensure(&req.bundle.rootfs, &dir).map_err(DriverError::from)?;
        if !tpl.reused {
            record.new_template = Some(tpl.path.clone());
        }
        let volid = format!("{}:vztmpl/{}", self.settings.template_storage, tpl.name);
        let storage = self.settings.storage.clone();
        let vmid = self.create_guest(
            req,
            |vmid| plan.create_args(vmid, &volid, &storage),
            record,
            save,
        )?;
        conf::append(&self.conf_path(vmid), &self.settings.lock_dir, vmid, &lines)
            .map_err(|source| DriverError::Conf { vmid, source })?;
        Ok(())
    }

    fn boot(&self, record: &Record) -> Result<()> {
        let vmid = record.vmid.expect("booted guests have a VMID");
        self.tools
            .pct(["start", &vmid.to_string()])
            .map_err(DriverError::from)?;
        Ok(())
    }

    fn destroy(&self, record: &Record) -> Result<()> {
        let Some(vmid) = record.vmid else {
            return Ok(());
        };
        let id = vmid.to_string();
        match self
            .tools
            .pct(["destroy", &id, "--force", "1", "--purge", "1"])
        {
            Ok(_) => {}
            // Already gone (destroyed by an admin, or never made): nothing to undo.
            Err(e) if e.stderr().contains("does not exist") => {}
            Err(e) => return Err(DriverError::from(e).into()),
        }
        self.allocator().release(vmid);
        Ok(())
    }

    fn discard(&self, record: &Record) {
        if let Some(path) = &record.new_template {
            let _ = std::fs::remove_file(path);
        }
    }
}
