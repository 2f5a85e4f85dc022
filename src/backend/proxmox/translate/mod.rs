//! config.json -> `pct create` options, raw `lxc.*` lines and the settings
//! the in-container init applies. Proxmox-native settings first, so the
//! Proxmox UI and backups show the truth; raw lines only where pct has no
//! option; the process itself never travels through the LXC config but as
//! JSON to the init (see bridge). Every field is either translated or
//! refused here: docs/translation.md is the table, and doc_table.rs walks it.
//!
//! The spec is walked as JSON so that every error names the field exactly as
//! config.json spells it.
//!
//! One file per part of config.json: process.rs, mounts.rs, namespaces.rs
//! (with the id maps, hostname and net0), resources.rs, linux.rs (devices,
//! sysctl, seccomp and the rest of `linux`), annotations.rs; host.rs holds
//! the host facts the translation depends on, check.rs the validators they
//! share. Each adds its part to the one [`PctPlan`] through `Translator`.

mod annotations;
mod check;
mod host;
mod linux;
mod mounts;
pub mod namespaces;
mod process;
mod resources;

#[cfg(test)]
mod doc_table;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod test_support;

use std::path::Path;

use oci_spec::runtime::{LinuxResources, Spec};
use serde_json::{Map, Value};

use super::conf::{ConfError, RawLine};
use crate::backend::proxmox::settings::{CgroupVersion, ProxmoxSettings, RootMode};
use crate::bridge::settings::InitSettings;
pub use annotations::ANNOTATIONS;
pub use host::HostFacts;

use annotations::Annotations;
use check::unset;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("config.json: {field}: {message}")]
    Field { field: String, message: String },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::Field {
        field: field.into(),
        message: message.into(),
    }
}

fn conf_err(f: impl Into<String>) -> impl FnOnce(ConfError) -> TranslateError {
    let f = f.into();
    move |e| field(f, e.to_string())
}

/// What a linked clone has from its base and keeps (root mode clone).
const BASE_OPTIONS: &[&str] = &["ostype", "unprivileged"];

/// The `pct create` options, raw lines and init settings for one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PctPlan {
    /// `--name value` pairs, in a fixed order (golden files compare them).
    pub options: Vec<(String, String)>,
    pub unprivileged: bool,
    /// Lines for `<vmid>.conf` where pct has no option, in order.
    pub raw_lines: Vec<RawLine>,
    /// Storage for the root volume when an annotation overrides the default.
    pub storage: Option<String>,
    /// Root volume size in GiB (pct's format) when an annotation sets it.
    pub rootfs_size: Option<String>,
    pub init: InitSettings,
    /// linux.seccomp compiled for the init (crate::bridge::seccomp), which
    /// loads it last before exec; written beside the init settings.
    pub seccomp: Option<crate::bridge::seccomp::Filter>,
    /// What the guest's root is: the node's `root` key or the
    /// `org.proxmox.root` annotation.
    pub root: RootMode,
}

impl PctPlan {
    /// The complete argument vector for `pct create`. The root volume gets
    /// the annotation's size, else `measured_gib` (see [`root_volume_gib`]).
    pub fn create_args(
        &self,
        vmid: u32,
        volid: &str,
        storage: &str,
        measured_gib: u64,
    ) -> Vec<String> {
        self.create_with(vmid, volid, storage, measured_gib, |_| true)
    }

    /// The root volume: the annotation's storage, else `storage`, and the
    /// annotation's size, else `measured_gib`.
    pub fn root_volume(&self, storage: &str, measured_gib: u64) -> (String, String) {
        let storage = self.storage.as_deref().unwrap_or(storage);
        let size = self
            .rootfs_size
            .clone()
            .unwrap_or_else(|| measured_gib.to_string());
        (storage.to_string(), size)
    }

    fn create_with(
        &self,
        vmid: u32,
        volid: &str,
        storage: &str,
        measured_gib: u64,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let (storage, size) = self.root_volume(storage, measured_gib);
        let mut args = vec!["create".to_string(), vmid.to_string(), volid.to_string()];
        for (k, v) in self.options.iter().filter(|(k, _)| keep(k)) {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        args.push("--rootfs".into());
        args.push(format!("{storage}:{size}"));
        args.push("--storage".into());
        args.push(storage);
        args
    }

    /// Root mode clone: the base's `pct create`, with only the options a
    /// clone keeps from its base and `pct set` cannot change (`unprivileged`
    /// is fixed once the archive is unpacked with or without the id shift)
    /// and the OS type, which the base's own start-up configuration needs.
    pub fn base_args(
        &self,
        vmid: u32,
        volid: &str,
        storage: &str,
        measured_gib: u64,
    ) -> Vec<String> {
        let mut args = self.create_with(vmid, volid, storage, measured_gib, |k| {
            BASE_OPTIONS.contains(&k)
        });
        args.extend(["--hostname".into(), format!("nexcage-base-{vmid}")]);
        args
    }

    /// Root mode clone: `pct clone` of the base, named as `pct create`
    /// would name the guest (its hostname, else `CT<vmid>`).
    pub fn clone_args(&self, base: u32, vmid: u32) -> Vec<String> {
        let hostname = self
            .options
            .iter()
            .find(|(k, _)| k == "hostname")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("CT{vmid}"));
        vec![
            "clone".into(),
            base.to_string(),
            vmid.to_string(),
            "--hostname".into(),
            hostname,
        ]
    }

    /// Root mode clone: the guest's own options, set on the clone (which
    /// has the base's). None when there are none.
    pub fn set_args(&self, vmid: u32) -> Option<Vec<String>> {
        let own: Vec<&(String, String)> = self
            .options
            .iter()
            .filter(|(k, _)| !BASE_OPTIONS.contains(&k.as_str()) && k != "hostname")
            .collect();
        if own.is_empty() {
            return None;
        }
        let mut args = vec!["set".to_string(), vmid.to_string()];
        for (k, v) in own {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        Some(args)
    }

    fn opt(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.options.push((k.into(), v.into()));
    }

    fn raw(&mut self, f: &str, key: &str, value: &str) -> Result<(), TranslateError> {
        let line = RawLine::new(key, value).map_err(conf_err(f))?;
        self.raw_lines.push(line);
        Ok(())
    }
}

/// The root volume for a rootfs needing `data_bytes` (the template walk's
/// measure): a quarter more, plus 512 MiB for ext4's journal, inode tables
/// and reserved blocks and for the guest's first writes, in whole GiB (the
/// unit pct takes), at least 1 GiB.
pub fn root_volume_gib(data_bytes: u64) -> u64 {
    let need = data_bytes
        .saturating_add(data_bytes / 4)
        .saturating_add(512 * MIB);
    need.div_ceil(GIB).max(1)
}

/// The translation without a rootfs to check mount destinations against,
/// for the tests and golden files, which must not depend on one.
#[cfg(test)]
pub fn plan(
    spec: &Spec,
    settings: &ProxmoxSettings,
    host: HostFacts,
) -> Result<PctPlan, TranslateError> {
    plan_bundle(spec, None, settings, host)
}

/// The translation of a loaded bundle. `rootfs`, when given, is where mount
/// destinations are checked for symlinks leading out of the container.
pub fn plan_bundle(
    spec: &Spec,
    rootfs: Option<&Path>,
    settings: &ProxmoxSettings,
    host: HostFacts,
) -> Result<PctPlan, TranslateError> {
    let v = serde_json::to_value(spec).map_err(|e| field("config.json", e.to_string()))?;
    let empty = Map::new();
    let obj = |v: &Value| v.as_object().cloned();
    let linux = v.get("linux").and_then(obj).unwrap_or_default();
    let annotations = v.get("annotations").and_then(obj).unwrap_or_default();
    let ann = Annotations::parse(&annotations, settings)?;
    let mut t = Translator::new(settings, host, rootfs, ann);
    if t.plan.root == RootMode::Bundle {
        t.plan.init.new_root = Some(crate::bridge::ROOT_MOUNT_POINT.to_string());
    }
    t.top_level(&v)?;
    t.process(
        v.get("process")
            .and_then(Value::as_object)
            .unwrap_or(&empty),
    )?;
    t.resources(
        linux
            .get("resources")
            .and_then(Value::as_object)
            .unwrap_or(&empty),
    )?;
    t.linux(&linux)?;
    t.mounts(
        v.get("mounts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    )?;
    // After everything that fills plan.init: the init's own mounts need
    // allow rules in the node's AppArmor profile (super::apparmor).
    for (f, rule) in super::apparmor::rules(&t.plan.init).map_err(|(f, m)| field(f, m))? {
        t.plan.raw(&f, "lxc.apparmor.raw", &rule)?;
    }
    t.annotation_options();
    Ok(t.plan)
}

/// `linux.resources` alone, converted exactly as create converts them (the
/// same MiB rounding, cpulimit and cpuunits): for `update`, which takes the
/// options it was asked for from the plan.
pub fn resources_plan(
    resources: &LinuxResources,
    settings: &ProxmoxSettings,
    host: HostFacts,
) -> Result<PctPlan, TranslateError> {
    let v = serde_json::to_value(resources).map_err(|e| field("linux.resources", e.to_string()))?;
    let ann = Annotations::parse(&Map::new(), settings)?;
    let mut t = Translator::new(settings, host, None, ann);
    t.resources(v.as_object().unwrap_or(&Map::new()))?;
    Ok(t.plan)
}

/// The plan being built and what every section consults; each section's
/// file adds its own `impl Translator` block.
struct Translator<'a> {
    plan: PctPlan,
    settings: &'a ProxmoxSettings,
    host: HostFacts,
    cgroup: CgroupVersion,
    rootfs: Option<&'a Path>,
    ann: Annotations,
}

impl<'a> Translator<'a> {
    fn new(
        settings: &'a ProxmoxSettings,
        host: HostFacts,
        rootfs: Option<&'a Path>,
        ann: Annotations,
    ) -> Self {
        let cgroup = match settings.cgroup_version {
            CgroupVersion::Auto => host.cgroup,
            fixed => fixed,
        };
        Translator {
            plan: PctPlan {
                options: Vec::new(),
                unprivileged: false,
                raw_lines: Vec::new(),
                storage: None,
                rootfs_size: None,
                init: InitSettings::default(),
                seccomp: None,
                root: ann.root.unwrap_or(settings.root),
            },
            settings,
            host,
            cgroup,
            rootfs,
            ann,
        }
    }

    fn top_level(&mut self, v: &Value) -> Result<(), TranslateError> {
        self.uts(v)?;
        if v.get("root")
            .and_then(|r| r.get("readonly"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            self.plan.init.readonly_root = true;
        }
        // hooks: run by nexcage itself around the guest's lifecycle
        // (src/hooks.rs); nothing of them goes into the guest's config.
        for other in ["solaris", "windows", "vm", "zos"] {
            if !unset(v.get(other)) {
                return Err(field(other, "only Linux containers are supported"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{spec, HOST};
    use super::*;

    #[test]
    fn a_clone_gets_from_its_base_only_what_set_cannot_change() {
        let p = plan(
            &spec(serde_json::json!({"hostname": "web", "linux": {"uidMappings": [
                {"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "namespaces": [{"type": "user"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]}})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        assert!(p.unprivileged);
        let create = p.create_args(150, "local:vztmpl/t.tar.zst", "local-lvm", 2);
        let base = p.base_args(90, "local:vztmpl/t.tar.zst", "local-lvm", 2);
        assert_eq!(
            base,
            [
                "create",
                "90",
                "local:vztmpl/t.tar.zst",
                "--ostype",
                "unmanaged",
                "--unprivileged",
                "1",
                "--rootfs",
                "local-lvm:2",
                "--storage",
                "local-lvm",
                "--hostname",
                "nexcage-base-90"
            ]
        );
        assert_eq!(
            p.clone_args(90, 150),
            ["clone", "90", "150", "--hostname", "web"]
        );
        let set = p.set_args(150).unwrap();
        assert_eq!(set[..2], ["set", "150"]);
        // Every create option is in exactly one of the three.
        let opts = |a: &[String]| -> Vec<String> {
            a.iter().filter(|x| x.starts_with("--")).cloned().collect()
        };
        let mut split = opts(&base);
        split.retain(|o| o != "--hostname" && o != "--rootfs" && o != "--storage");
        split.extend(opts(&set));
        split.push("--hostname".into());
        let mut all = opts(&create);
        all.retain(|o| o != "--rootfs" && o != "--storage");
        split.sort();
        all.sort();
        assert_eq!(split, all);
        // Without a hostname the clone is named as pct create names a guest.
        let anon = plan(
            &spec(serde_json::json!({})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        assert_eq!(anon.clone_args(90, 151)[4], "CT151");
    }

    #[test]
    fn minimal_bundle_gives_unmanaged_privileged_guest_on_the_bridge() {
        let p = plan(
            &spec(serde_json::json!({})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        assert_eq!(
            p.create_args(150, "local:vztmpl/t.tar.zst", "local-lvm", 2),
            [
                "create",
                "150",
                "local:vztmpl/t.tar.zst",
                "--memory",
                "24000",
                "--swap",
                "0",
                "--ostype",
                "unmanaged",
                "--unprivileged",
                "0",
                "--net0",
                "name=eth0,bridge=vmbr0",
                "--rootfs",
                "local-lvm:2",
                "--storage",
                "local-lvm"
            ]
        );
    }

    #[test]
    fn root_volume_size_rule() {
        assert_eq!(root_volume_gib(0), 1);
        // 400 MiB of data: 500 + 512 MiB still fits one GiB.
        assert_eq!(root_volume_gib(400 * MIB), 1);
        assert_eq!(root_volume_gib(410 * MIB), 2);
        assert_eq!(root_volume_gib(3 * GIB), 5);
    }
}
