//! The `[proxmox]` table of /etc/nexcage/config.toml. Every key has a
//! default that matches a stock Proxmox VE node, so no file is needed there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which cgroup hierarchy the node's LXC uses for limits pct has no option
/// for (pids, devices, ...). `auto` reads /sys/fs/cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum CgroupVersion {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Legacy or hybrid hierarchy: `lxc.cgroup.*` keys.
    #[serde(rename = "1")]
    V1,
    /// Unified hierarchy: `lxc.cgroup2.*` keys.
    #[serde(rename = "2")]
    V2,
}

/// Whether containers are created unprivileged (with Proxmox's uid map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnprivilegedPolicy {
    /// Unprivileged exactly when the bundle asks for a user namespace.
    #[default]
    Auto,
    /// Always unprivileged, whatever the bundle says.
    Always,
}

/// What a guest's root is (docs/architecture.md, "Root modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootMode {
    /// The bundle's rootfs converted to a template (cached) and unpacked
    /// into the guest's own root volume: a self-contained Proxmox guest
    /// that vzdump backs up, restores and migrates.
    #[default]
    Template,
    /// The bundle's rootfs itself, bind-mounted into a guest whose root
    /// volume holds only a stub: create costs the same whatever the image's
    /// size, writes land in the bundle as with runc.
    Bundle,
    /// As `template`, but the archive is unpacked once into a base guest
    /// made a Proxmox template, and each guest is a linked clone of it (a
    /// thin snapshot): storages with linked clones only (LVM-thin, ZFS, RBD,
    /// btrfs).
    Clone,
}

impl RootMode {
    pub fn parse(s: &str) -> Option<RootMode> {
        match s {
            "template" => Some(RootMode::Template),
            "bundle" => Some(RootMode::Bundle),
            "clone" => Some(RootMode::Clone),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxmoxSettings {
    pub pct: PathBuf,
    pub pveam: PathBuf,
    pub pvesm: PathBuf,
    pub pvesh: PathBuf,
    /// Where `<vmid>.conf` lives (this node's view of the cluster filesystem).
    pub conf_dir: PathBuf,
    /// Cluster-wide list of guest ids; read instead of starting `pvesh`.
    pub vmlist: PathBuf,
    pub datacenter_cfg: PathBuf,
    /// Directory of pct's per-guest config locks.
    pub lock_dir: PathBuf,
    /// Storage that holds converted templates (`<storage>:vztmpl/...`).
    /// Unset: the node's one enabled storage with `vztmpl` content.
    pub template_storage: Option<String>,
    /// Storage for container root volumes (`pct create --storage`). Unset:
    /// the node's one enabled storage with `rootdir` content.
    pub storage: Option<String>,
    /// Bridge for net0 when the bundle asks for its own network namespace.
    pub bridge: String,
    /// Inclusive VMID range; defaults to the datacenter's next-id range.
    pub vmid_min: Option<u32>,
    pub vmid_max: Option<u32>,
    pub unprivileged: UnprivilegedPolicy,
    /// Host directories a bundle may bind-mount from (component-wise
    /// prefixes). Empty: any existing path outside the always-refused host
    /// trees (see docs/translation.md).
    pub bind_allow: Vec<PathBuf>,
    pub cgroup_version: CgroupVersion,
    /// Upper bound for one pct/pveam/pvesm/pvesh call.
    pub command_timeout_secs: u64,
    /// Bounds on nexcage's converted templates: after a conversion adds
    /// one, the least recently used are removed (pveam remove) until both
    /// hold. Unset: unlimited.
    pub template_cache_max_bytes: Option<u64>,
    pub template_cache_max_count: Option<u32>,
    /// The default root mode; the `org.proxmox.root` annotation overrides it.
    pub root: RootMode,
    /// Subordinate id files, where root's range must hold the 100000..165535
    /// pve-container maps unprivileged guests to (read by `nexcage check`).
    pub subuid: PathBuf,
    pub subgid: PathBuf,
}

impl Default for ProxmoxSettings {
    fn default() -> Self {
        ProxmoxSettings {
            pct: "/usr/sbin/pct".into(),
            pveam: "/usr/sbin/pveam".into(),
            pvesm: "/usr/sbin/pvesm".into(),
            pvesh: "/usr/bin/pvesh".into(),
            conf_dir: "/etc/pve/lxc".into(),
            vmlist: "/etc/pve/.vmlist".into(),
            datacenter_cfg: "/etc/pve/datacenter.cfg".into(),
            lock_dir: "/run/lock/lxc".into(),
            template_storage: None,
            storage: None,
            bridge: "vmbr0".into(),
            vmid_min: None,
            vmid_max: None,
            unprivileged: UnprivilegedPolicy::Auto,
            bind_allow: Vec::new(),
            cgroup_version: CgroupVersion::Auto,
            command_timeout_secs: 300,
            template_cache_max_bytes: None,
            template_cache_max_count: None,
            root: RootMode::Template,
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
        }
    }
}

impl ProxmoxSettings {
    /// The `[proxmox]` table of config.toml, checked.
    pub fn from_table(table: &toml::Table) -> Result<ProxmoxSettings, String> {
        if table.contains_key("start_timeout_secs") {
            return Err(
                "start_timeout_secs is not a [proxmox] key any more: put it at the top of the file"
                    .into(),
            );
        }
        let s = ProxmoxSettings::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| format!("[proxmox]: {}", e.message()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn template_cache_limits(&self) -> super::template::cache::Limits {
        super::template::cache::Limits {
            max_bytes: self.template_cache_max_bytes,
            max_count: self.template_cache_max_count.map(|n| n as usize),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("template_storage", &self.template_storage),
            ("storage", &self.storage),
        ] {
            let Some(value) = value else { continue };
            if !is_storage_id(value) {
                return Err(format!("{key}: {value:?} is not a Proxmox storage id"));
            }
        }
        if !is_bridge_name(&self.bridge) {
            return Err(format!("bridge: {:?} is not a bridge name", self.bridge));
        }
        if let (Some(lo), Some(hi)) = (self.vmid_min, self.vmid_max) {
            if lo > hi {
                return Err(format!("vmid_min {lo} is above vmid_max {hi}"));
            }
        }
        for v in [self.vmid_min, self.vmid_max].into_iter().flatten() {
            if !(100..=999_999_999).contains(&v) {
                return Err(format!("vmid {v} is outside 100..999999999"));
            }
        }
        if self.template_cache_max_bytes == Some(0) || self.template_cache_max_count == Some(0) {
            return Err(
                "template_cache_max_bytes/template_cache_max_count: 0 would evict every template; leave unset for no limit"
                    .into(),
            );
        }
        for p in &self.bind_allow {
            if !p.is_absolute() || p.components().any(|c| c.as_os_str() == "..") {
                return Err(format!(
                    "bind_allow: {:?} is not an absolute path without '..'",
                    p.display().to_string()
                ));
            }
        }
        Ok(())
    }
}

/// Proxmox storage ids: `[a-z][a-z0-9\-\_\.]*[a-z0-9]`.
pub fn is_storage_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Linux interface names: at most 15 bytes, no '/', ':', whitespace or '='.
pub fn is_bridge_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProxmoxSettings, String> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        ProxmoxSettings::from_table(
            doc.get("proxmox")
                .and_then(|v| v.as_table())
                .unwrap_or(&toml::Table::new()),
        )
    }

    /// The conffile scripts/package.sh installs as /etc/nexcage/config.toml.
    const EXAMPLE: &str = include_str!("../../../packaging/config.toml");

    #[test]
    fn the_packaged_example_holds_every_key_at_its_default() {
        let s = parse(EXAMPLE).unwrap();
        assert_eq!(s, ProxmoxSettings::default());
        let keys = serde_json::to_value(ProxmoxSettings::default()).unwrap();
        let section = EXAMPLE.split("[proxmox]").nth(1).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let named = section.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.strip_prefix(key.as_str())
                    .is_some_and(|r| r.trim_start().starts_with('='))
            });
            assert!(named, "packaging/config.toml lacks [proxmox] {key}");
        }
    }

    #[test]
    fn empty_file_gives_stock_node_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.pct, PathBuf::from("/usr/sbin/pct"));
        assert_eq!(s.conf_dir, PathBuf::from("/etc/pve/lxc"));
        // Found on the node (pvesm status), not assumed: a stock node's
        // `local` holds templates but no root volumes.
        assert_eq!(s.template_storage, None);
        assert_eq!(s.storage, None);
        let s = parse("[proxmox]\nstorage = \"fast\"\n").unwrap();
        assert_eq!(s.storage.as_deref(), Some("fast"));
    }

    #[test]
    fn keys_override_defaults() {
        let s = parse(
            "[proxmox]\npct = \"/x/pct\"\nbridge = \"vmbr1\"\nvmid_min = 5000\nvmid_max = 5999\nunprivileged = \"always\"\n",
        )
        .unwrap();
        assert_eq!(s.pct, PathBuf::from("/x/pct"));
        assert_eq!(s.bridge, "vmbr1");
        assert_eq!(s.vmid_min, Some(5000));
        assert_eq!(s.unprivileged, UnprivilegedPolicy::Always);
    }

    #[test]
    fn root_mode_is_template_unless_set() {
        assert_eq!(parse("").unwrap().root, RootMode::Template);
        assert_eq!(
            parse("[proxmox]\nroot = \"bundle\"\n").unwrap().root,
            RootMode::Bundle
        );
        assert!(parse("[proxmox]\nroot = \"copy\"\n").is_err());
    }

    #[test]
    fn translation_policy_keys() {
        let s = parse("[proxmox]\ncgroup_version = \"1\"\nbind_allow = [\"/srv\", \"/tmp\"]\n")
            .unwrap();
        assert_eq!(s.cgroup_version, CgroupVersion::V1);
        assert_eq!(s.bind_allow, [PathBuf::from("/srv"), "/tmp".into()]);
        assert_eq!(parse("").unwrap().cgroup_version, CgroupVersion::Auto);
        assert!(parse("[proxmox]\ncgroup_version = \"3\"\n").is_err());
        assert!(parse("[proxmox]\nbind_allow = [\"srv\"]\n").is_err());
        assert!(parse("[proxmox]\nbind_allow = [\"/srv/../etc\"]\n").is_err());
    }

    #[test]
    fn template_cache_limits_are_unset_by_default() {
        let s = parse("").unwrap();
        assert_eq!(s.template_cache_limits(), Default::default());
        let s = parse(
            "[proxmox]\ntemplate_cache_max_bytes = 1073741824\ntemplate_cache_max_count = 3\n",
        )
        .unwrap();
        let l = s.template_cache_limits();
        assert_eq!((l.max_bytes, l.max_count), (Some(1 << 30), Some(3)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let moved = parse("[proxmox]\nstart_timeout_secs = 5\n").unwrap_err();
        assert!(moved.contains("top of the file"), "{moved}");
        assert!(parse("[proxmox]\nbogus = 1\n").is_err());
        assert!(parse("[proxmox]\nbridge = \"vmbr0\\nlxc.x=1\"\n").is_err());
        assert!(parse("[proxmox]\nstorage = \"local:evil\"\n").is_err());
        assert!(parse("[proxmox]\nvmid_min = 50\n").is_err());
        assert!(parse("[proxmox]\nvmid_min = 900\nvmid_max = 800\n").is_err());
        assert!(parse("[proxmox]\ntemplate_cache_max_count = 0\n").is_err());
        assert!(parse("[proxmox]\ntemplate_cache_max_bytes = 0\n").is_err());
        assert!(parse("[proxmox]\ntemplate_cache_max_bytes = -5\n").is_err());
        assert!(parse("[proxmox]\ntemplate_cache_max_count = \"x\"\n").is_err());
    }
}
