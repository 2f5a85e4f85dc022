//! The bridge's own file format: the settings the in-guest init reads from
//! the bridge directory and applies before it runs the process. A backend's
//! translation builds them (backend::proxmox::translate); the init
//! (super::init and super::devfs) applies them, and the monitor reads the
//! namespaces to join from them (super::joined_namespaces).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file name, in the bridge directory, of the settings the init applies.
pub const INIT_SETTINGS_FILE: &str = "linux.json";

impl InitSettings {
    /// The namespaces to join by path, network first (the order the init
    /// joins them in).
    pub fn joined(&self) -> Vec<(super::netns::Kind, std::path::PathBuf)> {
        use super::netns::Kind;
        [
            (Kind::Network, &self.netns),
            (Kind::Ipc, &self.ipcns),
            (Kind::Uts, &self.utsns),
        ]
        .into_iter()
        .filter_map(|(k, p)| Some((k, p.as_ref()?.into())))
        .collect()
    }
}

/// Settings the in-container init applies before it runs the process: they
/// concern the container's own mounts and UTS namespace, which neither pct
/// nor a raw line can express. Written as JSON into the bridge directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly_root: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// net.* sysctls, written by the init under /proc/sys/net: Proxmox's
    /// config parser drops raw `lxc.sysctl.net.*` lines (it allows only the
    /// IPC ones), so a raw line would be lost silently on a real node.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sysctl: std::collections::BTreeMap<String, String>,
    /// A network namespace to join by path (podman's /run/netns/X). Read by
    /// the monitor on the host, which opens it and passes the descriptor to
    /// the init (src/bridge/netns.rs); the path means nothing in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// An ipc and a uts namespace to join by path, as for `netns`: a
    /// Kubernetes pod's sandbox's (containerd's `/proc/<pid>/ns/ipc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipcns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utsns: Option<String>,
    /// The guest's own link, configured by the init when the node's pct has
    /// no `host-managed` (set by the driver, which knows the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<InitNet>,
    /// The guest's /dev as the bundle's mounts describe it, rebuilt by the
    /// init (src/bridge/devfs.rs) over LXC's autodev tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<InitDev>,
    /// Where the bundle's rootfs is mounted in the guest when it is to be
    /// the process's root (root mode `bundle`): the init moves the guest's
    /// mounts into it and pivots there before anything else
    /// (src/bridge/init/root.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_root: Option<String>,
    /// linux.rootfsPropagation, applied by the init to the guest's `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_propagation: Option<String>,
}

/// A new tmpfs for /dev and the bundle's mounts below it, in bundle order.
/// LXC's autodev /dev is mounted with source `none` before /proc, so the
/// init replaces it with the bundle's own, keeping LXC's device nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitDev {
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<InitDevMount>,
}

/// One tmpfs, mqueue or devpts mount below /dev (devpts: LXC's instance,
/// which holds the guest's console and ttys, bound there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitDevMount {
    pub destination: String,
    #[serde(rename = "type")]
    pub fstype: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// What the init does to a link pct leaves down (ostype unmanaged without
/// host-managed): up, with lo, and the address and default route if given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitNet {
    pub link: String,
    /// `a.b.c.d/len`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl InitSettings {
    /// Write into the bridge directory (host side), before the guest starts.
    pub fn write(&self, bridge_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(bridge_dir.join(INIT_SETTINGS_FILE), text)
    }
}
