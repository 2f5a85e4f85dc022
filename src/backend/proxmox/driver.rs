//! The Proxmox LXC backend: bundle -> template -> VMID -> `pct create` ->
//! raw lines for the bridge -> `pct start`; and `pct destroy` at the end.
//! One lifecycle costs three tool runs (create, start, destroy); `pvesm` runs
//! once per node for each storage nexcage has to find (root volumes,
//! templates) and for the template directory, and `pct` once more for
//! whether it knows `host-managed`, then never again.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::base::{self, BaseError, BaseKey, Bases};
use super::bundle_root::{self, BundleRootError};
use super::conf::{self, ConfError, RawLine};
use super::node::Node;
use super::pct::{PctError, Tools};
use super::settings::{ProxmoxSettings, RootMode};
use super::template::cache::{self, CacheError, Meta};
use super::template::{self, TemplateError};
use super::translate::{self, HostFacts, TranslateError};
use super::update::UpdateRequest;
use super::vmid::{self, Allocator, VmidError};
use crate::backend::{
    Backend, BackendError, Check, Guest, Provision, Save, Template, TemplateStore,
};
use crate::bridge::settings::INIT_SETTINGS_FILE;
use crate::bridge::{BridgeDir, INIT_CMD, INIT_PATH, MOUNT_TARGET};
use crate::bundle::Bundle;
use crate::cgroup::{self, CgroupError};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    BundleRoot(#[from] BundleRootError),
    #[error(transparent)]
    Vmid(#[from] VmidError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error("root mode clone needs a storage with linked clones (lvmthin, zfspool, rbd or btrfs): storage '{storage}' is {kind}")]
    NoLinkedClones { storage: String, kind: String },
    #[error(transparent)]
    Pct(#[from] PctError),
    #[error("CT {vmid}: {source}")]
    Conf { vmid: u32, source: ConfError },
    #[error("cannot find the template directory of storage {storage}: {message}")]
    TemplateDir { storage: String, message: String },
    #[error("no enabled storage on this node has '{content}' content: set {key} in config.toml to a storage that has")]
    NoStorage {
        key: &'static str,
        content: &'static str,
    },
    #[error("several enabled storages on this node have '{content}' content ({}): set {key} in config.toml to one of them", candidates.join(", "))]
    AmbiguousStorage {
        key: &'static str,
        content: &'static str,
        candidates: Vec<String>,
    },
    #[error("cannot list the storages of this node for {key}: {message}")]
    StorageList { key: &'static str, message: String },
    #[error("gave up after {0} VMIDs were taken by others while creating")]
    VmidRace(usize),
    #[error("{0} is not searchable by others (o+x): an unprivileged container could not reach its bridge directory")]
    NotSearchable(PathBuf),
    #[error("config.json: {0}")]
    Netns(#[from] crate::bridge::netns::NetnsError),
    #[error(transparent)]
    Seccomp(#[from] crate::bridge::seccomp::SeccompError),
    #[error("cannot tell whether pct supports host-managed networks: pct create 0 answered {0:?}")]
    HostManagedProbe(String),
    #[error("invalid configuration: {0}")]
    Settings(String),
    #[error("container {0} has no Proxmox guest")]
    NoGuest(String),
    #[error("corrupt Proxmox data in the state of container {id}: {source}")]
    Data {
        id: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{0}")]
    Update(String),
    #[error("cannot read the configuration of CT {vmid} ({}): {source}", path.display())]
    ReadConf {
        vmid: u32,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<DriverError> for BackendError {
    fn from(e: DriverError) -> Self {
        BackendError::new(e)
    }
}

/// What the Proxmox backend keeps in a container's state record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestData {
    /// Set as soon as it is reserved, so that a crash leaves enough behind
    /// for `delete --force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// The volume id of the template the guest was created from, so that
    /// `template list|prune` know which templates this root's guests use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A template this create converted (not reused): removed if create fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_template: Option<PathBuf>,
    /// Root mode `bundle`: the bundle's rootfs the guest runs on, whose
    /// bridge mount point goes when the guest does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
}

impl GuestData {
    fn of(guest: &Guest) -> Result<GuestData, DriverError> {
        if guest.data.is_null() {
            return Ok(GuestData::default());
        }
        GuestData::deserialize(guest.data).map_err(|source| DriverError::Data {
            id: guest.id.to_string(),
            source,
        })
    }

    fn value(&self) -> Value {
        serde_json::to_value(self).expect("guest data serializes")
    }

    /// The guest's VMID, which every command after create needs.
    fn vmid_of(guest: &Guest) -> Result<u32, DriverError> {
        GuestData::of(guest)?
            .vmid
            .ok_or_else(|| DriverError::NoGuest(guest.id.to_string()))
    }
}

/// How often a VMID may turn out taken (by another node) before giving up.
const MAX_VMID_RETRIES: usize = 32;

pub struct Driver {
    pub(super) settings: ProxmoxSettings,
    pub(super) tools: Tools,
    pub(super) state_root: PathBuf,
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

    pub(super) fn node(&self) -> Node<'_> {
        Node {
            settings: &self.settings,
            tools: &self.tools,
            state_root: &self.state_root,
        }
    }

    fn allocator(&self) -> Allocator<'_> {
        Allocator::new(&self.settings, &self.tools, &self.state_root)
    }

    /// nexcage's templates on `storage`.
    pub(super) fn templates_on(&self, storage: &str) -> Result<Vec<Template>, DriverError> {
        let dir = self.node().template_dir(storage)?;
        let meta = Meta::new(&self.state_root);
        Ok(cache::list(&self.tools, storage, &dir, &meta)?)
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

    /// `pct destroy` (which stops a running guest) and the VMID's release.
    fn destroy_guest(&self, vmid: u32) -> Result<(), DriverError> {
        self.tools.destroy(vmid)?;
        self.allocator().release(vmid);
        Ok(())
    }

    /// Root mode clone: the template's base (made now if need be), a linked
    /// clone of it, then the guest's own options. A failure after the clone
    /// destroys it; the base stays for the next create.
    #[allow(clippy::too_many_arguments)]
    fn create_clone(
        &self,
        req: &Provision,
        plan: &translate::PctPlan,
        template: &str,
        volid: &str,
        storage: &str,
        gib: u64,
        data: &mut GuestData,
        save: &mut dyn FnMut(&GuestData) -> Result<(), BackendError>,
    ) -> Result<u32, BackendError> {
        let (root_storage, size) = plan.root_volume(storage, gib);
        let kind = self.node().storage_type(&root_storage)?;
        if !base::LINKED_CLONE_TYPES.contains(&kind.as_str()) {
            return Err(DriverError::NoLinkedClones {
                storage: root_storage,
                kind,
            }
            .into());
        }
        let key = BaseKey {
            template: template.to_string(),
            volid: volid.to_string(),
            unprivileged: plan.unprivileged,
            storage: root_storage,
            size,
        };
        let phase = Instant::now();
        let (base, cloning) = self
            .bases()
            .ensure(&key, |vmid| plan.base_args(vmid, volid, storage, gib))
            .map_err(DriverError::from)?;
        req.phases.add("base", phase.elapsed(), None);
        let vmid = self.create_guest(req, |vmid| plan.clone_args(base, vmid), data, save)?;
        drop(cloning);
        if let Some(args) = plan.set_args(vmid) {
            if let Err(e) = self.tools.pct(args) {
                if let Err(undo) = self.destroy_guest(vmid) {
                    tracing::warn!(vmid, error = %undo, "cannot destroy the clone whose set failed");
                }
                data.vmid = None;
                save(data)?;
                return Err(DriverError::from(e).into());
            }
        }
        Ok(vmid)
    }

    /// The bases of template `name` go before it (cache::Dependents).
    pub(super) fn release_bases(&self, name: &str) -> Result<bool, String> {
        self.bases()
            .remove_template(name)
            .map_err(|e| e.to_string())
    }

    fn bases(&self) -> Bases<'_> {
        Bases {
            tools: &self.tools,
            alloc: self.allocator(),
            state_root: &self.state_root,
            conf_dir: &self.settings.conf_dir,
        }
    }

    /// `pct create`, moving to the next VMID whenever the cluster says the
    /// one we picked is taken.
    fn create_guest(
        &self,
        req: &Provision,
        args_for: impl Fn(u32) -> Vec<String>,
        data: &mut GuestData,
        save: &mut dyn FnMut(&GuestData) -> Result<(), BackendError>,
    ) -> Result<u32, BackendError> {
        let alloc = self.allocator();
        let mut taken = BTreeSet::new();
        while taken.len() < MAX_VMID_RETRIES {
            let reservation = alloc.reserve(req.id, &taken).map_err(DriverError::from)?;
            let vmid = reservation.vmid;
            data.vmid = Some(vmid);
            save(data)?;
            match self.tools.pct(args_for(vmid)) {
                Ok(_) => return Ok(reservation.keep()),
                Err(e) if is_taken(e.stderr()) => {
                    tracing::debug!(vmid, "VMID taken elsewhere: {e}");
                    taken.insert(vmid);
                }
                Err(e) => {
                    data.vmid = None;
                    save(data)?;
                    return Err(DriverError::from(e).into());
                }
            }
        }
        data.vmid = None;
        save(data)?;
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

/// Whether a guest configuration bind-mounts `bridge_dir` (the first field
/// of an `lxc.mount.entry`, as `bridge_lines` writes it).
fn mounts_bridge(conf: &str, bridge_dir: &Path) -> bool {
    let Some(want) = bridge_dir.to_str() else {
        return false;
    };
    conf.lines()
        .filter_map(|l| l.strip_prefix("lxc.mount.entry:"))
        .any(|v| v.split_whitespace().next() == Some(want))
}

/// pct's words for "somebody else has this VMID". The last is pmxcfs
/// refusing our new config because another node's create of the same id
/// reached the cluster file system first (PVE::File::file_set_contents).
fn is_taken(stderr: &str) -> bool {
    stderr.contains("already exists")
        || stderr.contains("can't lock file")
        || stderr.contains("CT is locked")
        || (stderr.contains("close (rename) atomic file") && stderr.contains("File exists"))
}

impl Backend for Driver {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn check(&self, bundle: &Bundle) -> Result<(), BackendError> {
        translate::plan_bundle(
            &bundle.spec,
            Some(&bundle.rootfs),
            &self.settings,
            HostFacts::read(),
        )
        .map(drop)
        .map_err(|e| DriverError::from(e).into())
    }

    fn provision(
        &self,
        req: &Provision,
        data: &mut Value,
        save: &mut Save,
    ) -> Result<(), BackendError> {
        let mut d = GuestData::default();
        let mut save = |d: &GuestData| {
            *data = d.value();
            save(data)
        };
        let phase = Instant::now();
        let mut plan = translate::plan_bundle(
            &req.bundle.spec,
            Some(&req.bundle.rootfs),
            &self.settings,
            HostFacts::read(),
        )
        .map_err(DriverError::from)?;
        if plan.options.iter().any(|(k, _)| k == "net0") {
            let host_managed = self.node().host_managed()?;
            plan.manage_net0(host_managed).map_err(DriverError::from)?;
        }
        // The monitor opens it again once the guest runs; checking now
        // (exists, a network namespace) fails create before anything is made.
        for (kind, ns) in plan.init.joined() {
            crate::bridge::netns::open(&ns, kind).map_err(DriverError::from)?;
        }
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
                    path: req.bridge_dir.join(INIT_SETTINGS_FILE),
                    source: e,
                },
            })?;
        if let Some(filter) = &plan.seccomp {
            crate::bridge::seccomp::write(req.bridge_dir, filter).map_err(DriverError::from)?;
        }
        if plan.unprivileged {
            for p in [req.bridge_dir, req.init_binary] {
                check_searchable(p)?;
            }
        }
        // Root mode bundle: the guest's volume is made from the stub, and
        // the rootfs itself is mounted into it.
        let tree = match plan.root {
            RootMode::Template | RootMode::Clone => req.bundle.rootfs.clone(),
            RootMode::Bundle => {
                if plan.unprivileged {
                    check_searchable(&req.bundle.rootfs)?;
                }
                let idmap = bundle_root::needs_idmap(&req.bundle.rootfs, plan.unprivileged)
                    .map_err(DriverError::from)?;
                // Saved before the mount point is made: a crash from here
                // on leaves a record that removes it.
                d.rootfs = Some(req.bundle.rootfs.clone());
                save(&d)?;
                let rootfs = bundle_root::prepare(&req.bundle.rootfs).map_err(DriverError::from)?;
                d.rootfs = Some(rootfs.clone());
                lines.push(
                    bundle_root::mount_line(&rootfs, idmap)
                        .map_err(|source| DriverError::Conf { vmid: 0, source })?,
                );
                bundle_root::stub_tree(&self.state_root).map_err(DriverError::from)?
            }
        };
        // An annotation naming the storage needs no discovery.
        let storage = match &plan.storage {
            Some(s) => s.clone(),
            None => self.node().root_storage()?,
        };
        req.phases.add("translate", phase.elapsed(), None);
        let phase = Instant::now();
        let template_storage = self.node().template_storage()?;
        let dir = self.node().template_dir(&template_storage)?;
        let meta = Meta::new(&self.state_root);
        // Held until pct create has unpacked the archive (the end of
        // provision): eviction and prune skip a template so held.
        let (tpl, _in_use) = template::ensure_with(&tree, &dir, |name| Ok(meta.lock_shared(name)?))
            .map_err(DriverError::from)?;
        if let Err(e) = meta.touch(&tpl.name, std::time::SystemTime::now()) {
            // Only the LRU order suffers: it falls back to the archive's mtime.
            tracing::warn!(error = %e, "template cache");
        }
        if !tpl.reused {
            d.new_template = Some(tpl.path.clone());
        }
        let how = if tpl.reused { "hit" } else { "converted" };
        req.phases.add("template", phase.elapsed(), Some(how));
        let phase = Instant::now();
        let volid = format!("{template_storage}:vztmpl/{}", tpl.name);
        d.template = Some(volid.clone());
        let gib = translate::root_volume_gib(tpl.data_bytes);
        let made = if plan.root == RootMode::Clone {
            self.create_clone(
                req, &plan, &tpl.name, &volid, &storage, gib, &mut d, &mut save,
            )
        } else {
            self.create_guest(
                req,
                |vmid| plan.create_args(vmid, &volid, &storage, gib),
                &mut d,
                &mut save,
            )
        };
        let vmid = made.inspect_err(|_| {
            // A remembered storage may have gone from storage.cfg since:
            // the next create asks the node again rather than failing
            // the same way until someone deletes the cache.
            if plan.storage.is_none() && self.settings.storage.is_none() {
                self.node().forget_root_storage();
            }
        })?;
        conf::append(&self.conf_path(vmid), &self.settings.lock_dir, vmid, &lines)
            .map_err(|source| DriverError::Conf { vmid, source })?;
        let step = if plan.root == RootMode::Clone {
            "pct clone"
        } else {
            "pct create"
        };
        req.phases.add(step, phase.elapsed(), None);
        if !tpl.reused {
            // Our own template is still held shared, so it is never the one
            // evicted, even when it alone is over the limit.
            cache::evict(
                &self.tools,
                &template_storage,
                &dir,
                &meta,
                self.settings.template_cache_limits(),
                &|n| self.release_bases(n),
            );
        }
        Ok(())
    }

    fn templates(&self) -> Option<&dyn TemplateStore> {
        Some(self)
    }

    fn check_node(&self) -> Vec<Check> {
        super::check::run(&self.node(), |storage| {
            self.templates_on(storage).map_err(|e| e.to_string())
        })
    }

    fn created(&self, data: &mut Value) {
        if let Some(obj) = data.as_object_mut() {
            obj.remove("newTemplate");
        }
    }

    fn boot(&self, guest: &Guest) -> Result<(), BackendError> {
        let vmid = GuestData::vmid_of(guest)?;
        self.tools
            .pct(["start", &vmid.to_string()])
            .map_err(DriverError::from)?;
        Ok(())
    }

    fn destroy(&self, guest: &Guest) -> Result<(), BackendError> {
        let data = GuestData::of(guest)?;
        if let Some(vmid) = data.vmid {
            self.destroy_guest(vmid)?;
        }
        if let Some(rootfs) = &data.rootfs {
            bundle_root::release(rootfs);
        }
        Ok(())
    }

    /// The reservations name their container, so its guests are found
    /// without the record. A VMID is Proxmox's to hand out again once a
    /// crash lost it, so a guest is destroyed only if its configuration
    /// mounts this container's bridge directory: another's guest that took
    /// the id keeps running and only the reservation goes.
    fn destroy_leftovers(&self, id: &str, bridge_dir: &Path) -> Result<Vec<String>, BackendError> {
        let mut removed = Vec::new();
        for vmid in vmid::reserved_for(&self.state_root, id) {
            let conf = self.conf_path(vmid);
            match std::fs::read_to_string(&conf) {
                Ok(text) if mounts_bridge(&text, bridge_dir) => {
                    self.destroy_guest(vmid)?;
                    removed.push(format!("guest {vmid} and its VMID reservation"));
                    continue;
                }
                Ok(_) => {
                    tracing::debug!(vmid, "guest {vmid} is not container {id}'s: kept");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DriverError::ReadConf {
                        vmid,
                        path: conf,
                        source: e,
                    }
                    .into())
                }
            }
            self.allocator().release(vmid);
            removed.push(format!("VMID reservation {vmid}"));
        }
        Ok(removed)
    }

    /// Through pveam like any removal, and only if no other create has
    /// hit the new template meanwhile (it holds the lock shared).
    fn discard(&self, guest: &Guest) {
        let Ok(d) = GuestData::of(guest) else {
            return;
        };
        let Some(path) = &d.new_template else {
            return;
        };
        let Some(volid) = &d.template else {
            // A record from before templates were named in it.
            let _ = std::fs::remove_file(path);
            return;
        };
        let Some((_, name)) = volid.split_once(":vztmpl/") else {
            return;
        };
        if !path.exists() {
            return;
        }
        let bases = self.bases();
        let dependents = |name: &str| bases.remove_template(name).map_err(|e| e.to_string());
        match cache::remove(
            &self.tools,
            &Meta::new(&self.state_root),
            name,
            volid,
            &dependents,
        ) {
            Ok(true) => {}
            Ok(false) => tracing::debug!(template = %volid, "kept: another create uses it"),
            Err(e) => tracing::warn!(error = %e, "cannot discard the template this create made"),
        }
    }

    /// `pct exec` becomes lxc-attach: stdio passes through and its exit
    /// status is the command's. The environment is cleared because the
    /// process gets exactly the OCI env from the init.
    fn exec_command(
        &self,
        guest: &Guest,
        process_file: &str,
    ) -> Result<Vec<OsString>, BackendError> {
        let vmid = GuestData::vmid_of(guest)?;
        let mut argv: Vec<OsString> = vec![self.settings.pct.clone().into()];
        for a in ["exec", &vmid.to_string(), "--keep-env", "0", "--"] {
            argv.push(a.into());
        }
        argv.push(INIT_PATH.into());
        argv.push("init".into());
        argv.push("exec".into());
        argv.push(process_file.into());
        Ok(argv)
    }

    /// The guest's freezer cgroup directly, not `pct suspend` (lxc-freeze
    /// through Perl): the same kernel operation without hundreds of ms.
    fn pause(&self, guest: &Guest) -> Result<(), BackendError> {
        let cg = cgroup::of_init(guest.id, guest.init).map_err(DriverError::from)?;
        Ok(cg.freeze().map_err(DriverError::from)?)
    }

    fn resume(&self, guest: &Guest) -> Result<(), BackendError> {
        let cg = cgroup::of_init(guest.id, guest.init).map_err(DriverError::from)?;
        Ok(cg.thaw().map_err(DriverError::from)?)
    }

    /// Memory and CPU through `pct set`, so that Proxmox's config agrees and
    /// pct applies them to the running guest; the pids limit (no pct option)
    /// lives in the guest's cgroup. Everything is checked before anything is
    /// applied.
    fn update(&self, guest: &Guest, resources: &LinuxResources) -> Result<(), BackendError> {
        let vmid = GuestData::vmid_of(guest)?;
        let req = UpdateRequest::check(resources)?;
        let mut args = vec!["set".to_string(), vmid.to_string()];
        args.extend(req.pct_options(&self.settings)?);
        if args.len() > 2 {
            self.tools.pct(&args).map_err(DriverError::from)?;
        }
        if let Some(pids) = req.pids {
            cgroup::of_init(guest.id, guest.init)
                .and_then(|cg| cg.set_pids_max(Some(pids)))
                .map_err(DriverError::from)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_is_known_by_the_bridge_its_configuration_mounts() {
        let conf = "arch: amd64\nlxc.mount.entry: /run/nexcage/a/bridge .nexcage none bind,ro,create=dir 0 0\n";
        assert!(mounts_bridge(conf, Path::new("/run/nexcage/a/bridge")));
        assert!(!mounts_bridge(conf, Path::new("/run/nexcage/b/bridge")));
        assert!(!mounts_bridge(conf, Path::new("/run/nexcage/a")));
        assert!(!mounts_bridge(
            "description: lxc.mount.entry: /run/nexcage/b/bridge\n",
            Path::new("/run/nexcage/b/bridge")
        ));
    }
}
