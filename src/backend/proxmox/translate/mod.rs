//! config.json -> `pct create` options, raw `lxc.*` lines and the settings
//! the in-container init applies. Proxmox-native settings first, so the
//! Proxmox UI and backups show the truth; raw lines only where pct has no
//! option; the process itself never travels through the LXC config but as
//! JSON to the init (see bridge). Every field is either translated or
//! refused here: docs/translation.md is the table, and a test walks it.
//!
//! The spec is walked as JSON so that every error names the field exactly as
//! config.json spells it.

use std::path::{Component, Path};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::conf::{ConfError, RawLine};
use crate::config::{
    is_bridge_name, is_storage_id, CgroupVersion, ProxmoxSettings, UnprivilegedPolicy,
};

const MIB: u64 = 1024 * 1024;
/// pct refuses less memory than this.
const MIN_MEMORY_MIB: u64 = 16;
/// pct's limits for cores and cpulimit.
const MAX_CPUS: u64 = 8192;
/// Proxmox's default unprivileged map (`u/g 0 100000 65536`).
const DEFAULT_IDMAP: (u64, u64, u64) = (0, 100_000, 65_536);
const GIB: u64 = 1024 * MIB;
/// Where the bridge appears in the guest; nothing may be mounted over it.
const BRIDGE_DIR: &str = "/.nexcage";
/// Host trees a bind mount may never expose, whatever `bind_allow` says: the
/// host's kernel interfaces, its boot files, the cluster configuration and
/// guest volumes.
const BIND_DENY: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/etc/pve",
    "/var/lib/vz",
    "/var/lib/lxc",
    "/run/nexcage",
    "/etc/nexcage",
];
/// The file name, in the bridge directory, of the settings the init applies.
pub const INIT_SETTINGS_FILE: &str = "linux.json";

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

/// What the node's host offers, for settings whose OCI meaning is "no limit",
/// and which cgroup keys its LXC understands.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    pub mem_total_mib: u64,
    pub swap_total_mib: u64,
    /// The host's layout, as detected (the configuration may override it).
    pub cgroup: CgroupVersion,
}

impl HostFacts {
    pub fn read() -> HostFacts {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        HostFacts {
            mem_total_mib: (kib("MemTotal:") / 1024).max(MIN_MEMORY_MIB),
            swap_total_mib: kib("SwapTotal:") / 1024,
            cgroup: detect_cgroup(Path::new("/sys/fs/cgroup")),
        }
    }
}

/// A unified hierarchy has cgroup.controllers at its root; a legacy or hybrid
/// one (controllers under /sys/fs/cgroup/<ctrl>) has not, and LXC then
/// ignores every `lxc.cgroup2.*` key.
pub fn detect_cgroup(root: &Path) -> CgroupVersion {
    if root.join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
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
    /// The guest's own link, configured by the init when the node's pct has
    /// no `host-managed` (set by the driver, which knows the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<InitNet>,
    /// The guest's /dev as the bundle's mounts describe it, rebuilt by the
    /// init (src/bridge/devfs.rs) over LXC's autodev tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<InitDev>,
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
        let storage = self.storage.as_deref().unwrap_or(storage);
        let mut args = vec!["create".to_string(), vmid.to_string(), volid.to_string()];
        for (k, v) in &self.options {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        let size = self
            .rootfs_size
            .clone()
            .unwrap_or_else(|| measured_gib.to_string());
        args.push("--rootfs".into());
        args.push(format!("{storage}:{size}"));
        args.push("--storage".into());
        args.push(storage.into());
        args
    }

    /// Who configures the guest's own link (net0), once the node is known:
    /// pct with `host-managed=1` where it has it, else the init. DHCP needs
    /// a client on the host side, which only host-managed gives.
    pub fn manage_net0(&mut self, host_managed: bool) -> Result<(), TranslateError> {
        let Some((_, net0)) = self.options.iter_mut().find(|(k, _)| k == "net0") else {
            return Ok(());
        };
        let get = |key: &str| {
            net0.split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (ip, gw) = (get("ip"), get("gw"));
        let addressed = ip.as_deref().is_some_and(is_ipv4_cidr);
        if gw.is_some() && !addressed {
            return Err(field(
                "annotations.org.proxmox.net0.gw",
                "a gateway needs an address: set org.proxmox.net0.ip to a CIDR",
            ));
        }
        if host_managed {
            net0.push_str(",host-managed=1");
            return Ok(());
        }
        if ip.as_deref() == Some("dhcp") {
            return Err(field(
                "annotations.org.proxmox.net0.ip",
                "dhcp needs a node whose pct manages the guest's network (host-managed, pve-container 6.0.15 or later); this node's does not: give an address (CIDR)",
            ));
        }
        self.init.net = Some(InitNet {
            link: "eth0".into(),
            address: ip.filter(|_| addressed),
            gateway: gw,
        });
        Ok(())
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

/// `org.proxmox.rootfs.size`: a positive size in GiB as pct takes it
/// (`4`, `0.5`), or with a unit `M`/`MiB`/`G`/`GiB`; pct's size format in
/// GiB, at MiB granularity as pct allocates.
fn parse_rootfs_size(v: &str) -> Option<String> {
    let (number, unit_mib) = if let Some(n) = v.strip_suffix("MiB").or_else(|| v.strip_suffix('M'))
    {
        (n, 1u64)
    } else if let Some(n) = v.strip_suffix("GiB").or_else(|| v.strip_suffix('G')) {
        (n, 1024)
    } else {
        (v, 1024)
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty()
        || int.len() > 9
        || frac.len() > 6
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || (number.contains('.') && frac.is_empty())
    {
        return None;
    }
    // Exact decimal arithmetic in millionths of a unit.
    let millionths: u64 =
        int.parse::<u64>().ok()? * 1_000_000 + format!("{frac:0<6}").parse::<u64>().ok()?;
    let mib = millionths * unit_mib / 1_000_000;
    if mib == 0 {
        return None;
    }
    // MiB / 1024 always ends within ten decimals.
    let gib = format!("{}.{:010}", mib / 1024, (mib % 1024) * 9_765_625);
    Some(gib.trim_end_matches('0').trim_end_matches('.').to_string())
}

/// The translation without a rootfs to check mount destinations against
/// (tests and golden files, which must not depend on a rootfs).
#[cfg_attr(not(test), allow(dead_code))]
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
    let cgroup = match settings.cgroup_version {
        CgroupVersion::Auto => host.cgroup,
        fixed => fixed,
    };
    let mut t = Translator {
        plan: PctPlan {
            options: Vec::new(),
            unprivileged: false,
            raw_lines: Vec::new(),
            storage: None,
            rootfs_size: None,
            init: InitSettings::default(),
            seccomp: None,
        },
        settings,
        host,
        cgroup,
        rootfs,
        ann: Annotations::parse(&annotations, settings)?,
    };
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

struct Translator<'a> {
    plan: PctPlan,
    settings: &'a ProxmoxSettings,
    host: HostFacts,
    cgroup: CgroupVersion,
    rootfs: Option<&'a Path>,
    ann: Annotations,
}

/// A JSON value that is "not set": absent, null, empty string/list/object,
/// or (for numbers whose zero means "default") zero.
fn unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.values().all(|v| unset(Some(v))),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::Bool(b)) => !b,
    }
}

fn refuse_if_set(
    m: &Map<String, Value>,
    prefix: &str,
    key: &str,
    reason: &str,
) -> Result<(), TranslateError> {
    if unset(m.get(key)) {
        Ok(())
    } else {
        Err(field(format!("{prefix}{key}"), reason))
    }
}

/// No control characters (newline, NUL, ...) anywhere a value could reach a
/// command line or a config line.
fn check_text(f: &str, s: &str) -> Result<(), TranslateError> {
    if s.chars().any(char::is_control) {
        return Err(field(
            f,
            format!("{s:?}: control characters are not allowed"),
        ));
    }
    Ok(())
}

impl Translator<'_> {
    fn cg_key(&self, v1: &str, v2: &str) -> String {
        match self.cgroup {
            CgroupVersion::V2 => format!("lxc.cgroup2.{v2}"),
            _ => format!("lxc.cgroup.{v1}"),
        }
    }

    fn top_level(&mut self, v: &Value) -> Result<(), TranslateError> {
        if let Some(h) = v
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
        {
            if !is_dns_name(h) {
                return Err(field("hostname", format!("{h:?} is not a valid DNS name")));
            }
            self.plan.opt("hostname", h);
        }
        if let Some(d) = v
            .get("domainname")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        {
            if !is_dns_name(d) || d.len() > 64 {
                return Err(field(
                    "domainname",
                    format!("{d:?} is not a valid domain name"),
                ));
            }
            self.plan.init.domainname = Some(d.to_string());
        }
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

    fn process(&mut self, p: &Map<String, Value>) -> Result<(), TranslateError> {
        // process.terminal: the init opens a pty in the guest and the monitor
        // hands its master to --console-socket (src/bridge/pty.rs); the
        // window size is set on it, and must fit the kernel's 16 bits.
        if let Some(size) = p.get("consoleSize").and_then(Value::as_object) {
            for k in ["height", "width"] {
                let n = size.get(k).and_then(Value::as_u64).unwrap_or(0);
                if n > u64::from(u16::MAX) {
                    return Err(field(
                        format!("process.consoleSize.{k}"),
                        format!("{n} is larger than a terminal can be (65535)"),
                    ));
                }
            }
        }
        let pre = "process.";
        refuse_if_set(
            p,
            pre,
            "selinuxLabel",
            "SELinux is not available on Proxmox VE",
        )?;
        refuse_if_set(p, pre, "ioPriority", "I/O priorities are not supported")?;
        refuse_if_set(p, pre, "scheduler", "scheduling policies are not supported")?;
        refuse_if_set(p, pre, "execCPUAffinity", "CPU affinity is not supported")?;
        if let Some(adj) = p.get("oomScoreAdj").and_then(Value::as_i64) {
            if !(-1000..=1000).contains(&adj) {
                return Err(field(
                    "process.oomScoreAdj",
                    format!("{adj} is outside -1000..1000"),
                ));
            }
        }
        // Strings the init receives as JSON never reach a config line, but a
        // NUL would be cut off by exec: refuse it here, before anything exists.
        let strings = |k: &str| -> Vec<String> {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        for k in ["args", "env"] {
            for s in strings(k) {
                if s.contains('\0') {
                    return Err(field(format!("process.{k}"), "NUL bytes are not allowed"));
                }
            }
        }
        for e in strings("env") {
            if !e.contains('=') || e.starts_with('=') {
                return Err(field("process.env", format!("{e:?} is not NAME=VALUE")));
            }
        }
        if let Some(cwd) = p.get("cwd").and_then(Value::as_str) {
            if cwd.contains('\0') {
                return Err(field("process.cwd", "NUL bytes are not allowed"));
            }
        }
        Ok(())
    }

    fn resources(&mut self, r: &Map<String, Value>) -> Result<(), TranslateError> {
        let empty = Map::new();
        let get = |k: &str| r.get(k).and_then(Value::as_object).unwrap_or(&empty);
        let mem = get("memory");
        let (memory, swap) = memory_mib(mem, self.host)?;
        self.plan.opt("memory", memory.to_string());
        self.plan.opt("swap", swap.to_string());
        let pre = "linux.resources.memory.";
        if let Some(res) = mem
            .get("reservation")
            .and_then(Value::as_i64)
            .filter(|&x| x > 0)
        {
            let key = self.cg_key("memory.soft_limit_in_bytes", "memory.low");
            self.plan
                .raw(&format!("{pre}reservation"), &key, &res.to_string())?;
        }
        // Obsolete since Linux 5.4 and refused by cgroup v2; runc ignores it too.
        let _ = mem.get("kernel");
        refuse_if_set(
            mem,
            pre,
            "kernelTCP",
            "kernel TCP memory limits are not supported",
        )?;
        if let Some(sw) = mem.get("swappiness").and_then(Value::as_u64) {
            if sw > 100 {
                return Err(field(
                    format!("{pre}swappiness"),
                    format!("{sw} is above 100"),
                ));
            }
            self.v1_only_raw(
                &format!("{pre}swappiness"),
                "lxc.cgroup.memory.swappiness",
                &sw.to_string(),
                "cgroup v2 has no per-group swappiness",
            )?;
        }
        if mem.get("disableOOMKiller").and_then(Value::as_bool) == Some(true) {
            self.v1_only_raw(
                &format!("{pre}disableOOMKiller"),
                "lxc.cgroup.memory.oom_control",
                "1",
                "cgroup v2 cannot disable the OOM killer",
            )?;
        }
        self.cpu(get("cpu"))?;
        if let Some(limit) = get("pids")
            .get("limit")
            .and_then(Value::as_i64)
            .filter(|&l| l > 0)
        {
            let key = self.cg_key("pids.max", "pids.max");
            self.plan
                .raw("linux.resources.pids.limit", &key, &limit.to_string())?;
        }
        let pre = "linux.resources.";
        refuse_if_set(
            r,
            pre,
            "blockIO",
            "block I/O limits are not supported; use Proxmox's disk settings",
        )?;
        refuse_if_set(
            r,
            pre,
            "hugepageLimits",
            "hugepage limits are not supported",
        )?;
        refuse_if_set(r, pre, "network", "net_cls/net_prio settings are not supported; use Proxmox's rate= on the network device")?;
        if r.get("rdma")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(field(
                "linux.resources.rdma",
                "RDMA limits are not supported",
            ));
        }
        if let Some(unified) = r
            .get("unified")
            .and_then(Value::as_object)
            .filter(|u| !u.is_empty())
        {
            if self.cgroup != CgroupVersion::V2 {
                return Err(field("linux.resources.unified", "needs a cgroup v2 host"));
            }
            let mut keys: Vec<_> = unified.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in keys {
                let f = format!("linux.resources.unified.{k}");
                let val = val.as_str().ok_or_else(|| field(&f, "must be a string"))?;
                if !k.contains('.') || k.starts_with("cgroup.") {
                    return Err(field(&f, "not a controller file"));
                }
                self.plan.raw(&f, &format!("lxc.cgroup2.{k}"), val)?;
            }
        }
        if let Some(rules) = r.get("devices").and_then(Value::as_array) {
            self.device_rules(rules)?;
        }
        Ok(())
    }

    /// A memory setting only the v1 memory controller has: a raw line on a
    /// v1 host, refused by name on a v2 host.
    fn v1_only_raw(
        &mut self,
        f: &str,
        key: &str,
        value: &str,
        why_not_v2: &str,
    ) -> Result<(), TranslateError> {
        if self.cgroup == CgroupVersion::V2 {
            return Err(field(f, why_not_v2));
        }
        self.plan.raw(f, key, value)
    }

    fn cpu(&mut self, c: &Map<String, Value>) -> Result<(), TranslateError> {
        let pre = "linux.resources.cpu.";
        if let Some(quota) = c.get("quota").and_then(Value::as_i64).filter(|&q| q > 0) {
            let period = c
                .get("period")
                .and_then(Value::as_u64)
                .filter(|&p| p > 0)
                .unwrap_or(100_000);
            // Hundredths of a CPU, rounded up so the guest never gets less
            // than asked.
            let hundredths = (quota as u128 * 100).div_ceil(period as u128).max(1);
            if hundredths > (MAX_CPUS * 100) as u128 {
                return Err(field(
                    format!("{pre}quota"),
                    format!("{quota}/{period} is above {MAX_CPUS} CPUs"),
                ));
            }
            self.plan
                .opt("cpulimit", format_hundredths(hundredths as u64));
        }
        if let Some(cpus) = c
            .get("cpus")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            let n = cpu_list_len(cpus).ok_or_else(|| {
                field(format!("{pre}cpus"), format!("{cpus:?} is not a CPU list"))
            })?;
            if n == 0 || n > MAX_CPUS {
                return Err(field(
                    format!("{pre}cpus"),
                    format!("{n} CPUs is outside 1..{MAX_CPUS}"),
                ));
            }
            self.plan.opt("cores", n.to_string());
            // cores only counts; the set itself pins the guest to these CPUs.
            let key = self.cg_key("cpuset.cpus", "cpuset.cpus");
            self.plan.raw(&format!("{pre}cpus"), &key, cpus)?;
        }
        if let Some(shares) = c.get("shares").and_then(Value::as_u64).filter(|&s| s > 0) {
            self.plan
                .opt("cpuunits", cpu_units(shares, self.cgroup).to_string());
        }
        if let Some(mems) = c
            .get("mems")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            cpu_list_len(mems).ok_or_else(|| {
                field(format!("{pre}mems"), format!("{mems:?} is not a node list"))
            })?;
            let key = self.cg_key("cpuset.mems", "cpuset.mems");
            self.plan.raw(&format!("{pre}mems"), &key, mems)?;
        }
        refuse_if_set(
            c,
            pre,
            "realtimeRuntime",
            "real-time scheduling is not supported in Proxmox containers",
        )?;
        refuse_if_set(
            c,
            pre,
            "realtimePeriod",
            "real-time scheduling is not supported in Proxmox containers",
        )?;
        refuse_if_set(c, pre, "idle", "SCHED_IDLE groups are not supported")?;
        refuse_if_set(c, pre, "burst", "CPU burst is not supported")?;
        Ok(())
    }

    fn device_rules(&mut self, rules: &[Value]) -> Result<(), TranslateError> {
        for (i, rule) in rules.iter().enumerate() {
            let f = format!("linux.resources.devices[{i}]");
            let allow = rule.get("allow").and_then(Value::as_bool).unwrap_or(false);
            let typ = rule.get("type").and_then(Value::as_str).unwrap_or("a");
            if !matches!(typ, "a" | "b" | "c") {
                return Err(field(
                    format!("{f}.type"),
                    format!("{typ:?} is not a, b or c"),
                ));
            }
            let num = |k: &str| match rule.get(k).and_then(Value::as_i64) {
                Some(n) if n >= 0 => n.to_string(),
                _ => "*".to_string(),
            };
            let access = rule.get("access").and_then(Value::as_str).unwrap_or("rwm");
            if access.is_empty() || !access.bytes().all(|c| b"rwm".contains(&c)) {
                return Err(field(
                    format!("{f}.access"),
                    format!("{access:?} is not a subset of rwm"),
                ));
            }
            let all = typ == "a"
                && rule.get("major").is_none_or(Value::is_null)
                && rule.get("minor").is_none_or(Value::is_null);
            if all && !allow {
                if i == 0 {
                    // LXC's baseline already denies every device but the
                    // standard ones OCI also guarantees (null, zero, tty...).
                    continue;
                }
                return Err(field(f, "denying all devices after other rules would also take away the devices every container needs"));
            }
            let value = if all {
                "a".to_string()
            } else {
                format!("{typ} {}:{} {access}", num("major"), num("minor"))
            };
            let key = self.cg_key(
                if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                },
                if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                },
            );
            self.plan.raw(&f, &key, &value)?;
        }
        Ok(())
    }

    fn linux(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        self.namespaces(l)?;
        self.idmaps(l)?;
        if let Some(devices) = l.get("devices").and_then(Value::as_array) {
            for (i, d) in devices.iter().enumerate() {
                self.device(i, d)?;
            }
        }
        if let Some(sysctl) = l.get("sysctl").and_then(Value::as_object) {
            let mut keys: Vec<_> = sysctl.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in keys {
                let f = format!("linux.sysctl.{k}");
                let val = val.as_str().ok_or_else(|| field(&f, "must be a string"))?;
                check_sysctl(&f, k)?;
                check_text(&f, val)?;
                self.plan.init.sysctl.insert(k.clone(), val.to_string());
            }
        }
        // Compiled here, on the host, so that a profile nexcage cannot apply
        // fails create by name; the init stacks it on LXC's own policy.
        if let Some(s) = l.get("seccomp").filter(|s| !s.is_null()) {
            let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(s.clone())
                .map_err(|e| field("linux.seccomp", e.to_string()))?;
            let filter = crate::bridge::seccomp::compile(&profile).map_err(|e| match e {
                crate::bridge::seccomp::SeccompError::Profile { field: f, message } => {
                    field(f, message)
                }
                other => field("linux.seccomp", other.to_string()),
            })?;
            self.plan.seccomp = Some(filter);
        }
        if let Some(p) = l
            .get("rootfsPropagation")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            if !ROOT_PROPAGATIONS.contains(&p) {
                return Err(field(
                    "linux.rootfsPropagation",
                    format!("{p:?} is not a mount propagation"),
                ));
            }
            self.plan.init.root_propagation = Some(p.to_string());
        }
        for (k, target) in [("maskedPaths", 0), ("readonlyPaths", 1)] {
            for (i, p) in l
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let f = format!("linux.{k}[{i}]");
                let s = p.as_str().ok_or_else(|| field(&f, "must be a string"))?;
                check_container_path(&f, s)?;
                if target == 0 {
                    self.plan.init.masked_paths.push(s.to_string());
                } else {
                    self.plan.init.readonly_paths.push(s.to_string());
                }
            }
        }
        refuse_if_set(
            l,
            "linux.",
            "mountLabel",
            "SELinux is not available on Proxmox VE",
        )?;
        refuse_if_set(l, "linux.", "intelRdt", "Intel RDT is not supported")?;
        refuse_if_set(
            l,
            "linux.",
            "timeOffsets",
            "time namespaces are not supported by Proxmox containers",
        )?;
        // A device entry may be empty ({"eth1": {}}): its key alone asks for it.
        if l.get("netDevices")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(field("linux.netDevices", "moving host network devices into a guest is not supported; use org.proxmox.net0.* annotations"));
        }
        refuse_if_set(
            l,
            "linux.",
            "memoryPolicy",
            "NUMA memory policies are not supported",
        )?;
        if let Some(p) = l.get("personality").and_then(Value::as_object) {
            match p.get("domain").and_then(Value::as_str) {
                None | Some("LINUX") => {}
                Some(d) => {
                    return Err(field(
                        "linux.personality.domain",
                        format!("{d:?}: only LINUX is supported"),
                    ))
                }
            }
            refuse_if_set(
                p,
                "linux.personality.",
                "flags",
                "personality flags are not supported",
            )?;
        }
        // cgroupsPath: Proxmox places every guest under its own /lxc/<vmid>.
        let _ = l.get("cgroupsPath");
        Ok(())
    }

    fn namespaces(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        let ns: Vec<&Value> = l
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let mut user = false;
        let mut net = None;
        for (i, n) in ns.iter().enumerate() {
            let f = format!("linux.namespaces[{i}]");
            let typ = n.get("type").and_then(Value::as_str).unwrap_or("");
            let path = n
                .get("path")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty());
            match typ {
                "network" => net = Some(path),
                "user" | "pid" | "ipc" | "uts" | "mount" | "cgroup" if path.is_some() => {
                    return Err(field(f, format!("joining an existing {typ} namespace is not possible for a Proxmox container")))
                }
                "user" => user = true,
                "pid" | "ipc" | "uts" | "mount" | "cgroup" => {}
                other => return Err(field(f, format!("{other:?} namespaces are not supported"))),
            }
        }
        let policy_unpriv = match self.settings.unprivileged {
            UnprivilegedPolicy::Always => true,
            UnprivilegedPolicy::Auto => user,
        };
        self.plan.unprivileged = match self.ann.unprivileged {
            Some(false) if self.settings.unprivileged == UnprivilegedPolicy::Always => {
                return Err(field(
                    "annotations.org.proxmox.unprivileged",
                    "this node's policy makes every container unprivileged",
                ))
            }
            Some(u) => u,
            None => policy_unpriv,
        };
        self.plan.opt(
            "unprivileged",
            if self.plan.unprivileged { "1" } else { "0" },
        );
        match net {
            None => Err(field("linux.namespaces", "sharing the host's network namespace is not possible for a Proxmox container; add a network namespace")),
            // LXC can share a namespace only with a process (pid) or another
            // container, not a namespace file such as /run/netns/X: the
            // bridge joins it instead (src/bridge/netns.rs), so the guest
            // needs no Proxmox NIC. Only a privileged guest's root may join
            // a namespace owned by the host's user namespace.
            Some(Some(p)) => {
                let f = "linux.namespaces";
                if self.plan.unprivileged {
                    return Err(field(f, format!("joining the host network namespace {p:?} requires a privileged guest (no user namespace)")));
                }
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(field(f, format!("network namespace path {p:?} must be absolute, without ..")));
                }
                check_text(f, p)?;
                if self.ann.bridge.is_some() || self.ann.ip.is_some() || self.ann.gw.is_some() || self.ann.tag.is_some() {
                    return Err(field("annotations", format!("org.proxmox.net0.* configure the guest's own network card, which a guest joining {p:?} does not get")));
                }
                self.plan.init.netns = Some(p.to_string());
                Ok(())
            }
            Some(None) => {
                let mut net0 = format!("name=eth0,bridge={}", self.ann.bridge.as_deref().unwrap_or(&self.settings.bridge));
                for (k, v) in [("ip", &self.ann.ip), ("gw", &self.ann.gw), ("tag", &self.ann.tag)] {
                    if let Some(v) = v {
                        net0.push_str(&format!(",{k}={v}"));
                    }
                }
                self.plan.opt("net0", net0);
                Ok(())
            }
        }
    }

    fn idmaps(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        let read = |k: &str| -> Result<Vec<(u64, u64, u64)>, TranslateError> {
            let mut out = Vec::new();
            for (i, m) in l
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let f = format!("linux.{k}[{i}]");
                let n = |x: &str| {
                    m.get(x)
                        .and_then(Value::as_u64)
                        .ok_or_else(|| field(format!("{f}.{x}"), "must be a number"))
                };
                let (c, h, s) = (n("containerID")?, n("hostID")?, n("size")?);
                if s == 0 || c + s > 1 << 32 || h + s > 1 << 32 {
                    return Err(field(
                        &f,
                        "size must be positive and the range within 32-bit ids",
                    ));
                }
                if h == 0 {
                    return Err(field(
                        &f,
                        "mapping the host's root user into a container is refused",
                    ));
                }
                out.push((c, h, s));
            }
            Ok(out)
        };
        let (uids, gids) = (read("uidMappings")?, read("gidMappings")?);
        if uids.is_empty() && gids.is_empty() {
            return Ok(());
        }
        if !self.plan.unprivileged {
            return Err(field(
                "linux.uidMappings",
                "id mappings need a user namespace (an unprivileged container)",
            ));
        }
        let default = vec![DEFAULT_IDMAP];
        let uids = if uids.is_empty() {
            default.clone()
        } else {
            uids
        };
        let gids = if gids.is_empty() {
            default.clone()
        } else {
            gids
        };
        // pct create unpacks the root filesystem with Proxmox's map, and an
        // lxc.idmap added afterwards cannot change who owns those files: the
        // guest would see its own files as nobody's.
        for (maps, k) in [(&uids, "uidMappings"), (&gids, "gidMappings")] {
            if *maps != default {
                let (c, h, s) = DEFAULT_IDMAP;
                return Err(field(
                    format!("linux.{k}"),
                    format!("only Proxmox's map {c} {h} {s} is supported: pct unpacks the root filesystem with it"),
                ));
            }
        }
        Ok(())
    }

    /// A device node: Proxmox passes host devices through (`--devN`), so the
    /// host must have the same node at the same path.
    fn device(&mut self, i: usize, d: &Value) -> Result<(), TranslateError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let f = format!("linux.devices[{i}]");
        let path = d.get("path").and_then(Value::as_str).unwrap_or("");
        check_container_path(&format!("{f}.path"), path)?;
        check_property_value(&format!("{f}.path"), path)?;
        if lxc_provides_device(path) {
            return Ok(());
        }
        let typ = d.get("type").and_then(Value::as_str).unwrap_or("");
        let meta = std::fs::metadata(path).map_err(|e| {
            field(
                format!("{f}.path"),
                format!("{path}: the host has no such device to pass through ({e})"),
            )
        })?;
        let ft = meta.file_type();
        let host_type = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            ""
        };
        let want_type = if typ == "u" { "c" } else { typ };
        let (major, minor) = (libc_major(meta.rdev()), libc_minor(meta.rdev()));
        let num = |k: &str| d.get(k).and_then(Value::as_u64);
        if host_type != want_type || num("major") != Some(major) || num("minor") != Some(minor) {
            return Err(field(
                &f,
                format!(
                    "the host's {path} is not the device {typ} {:?}:{:?}",
                    num("major"),
                    num("minor")
                ),
            ));
        }
        let mut value = path.to_string();
        if let Some(mode) = num("fileMode") {
            value.push_str(&format!(",mode=0{:o}", mode & 0o7777));
        }
        for k in ["uid", "gid"] {
            if let Some(n) = num(k) {
                value.push_str(&format!(",{k}={n}"));
            }
        }
        let n = self
            .plan
            .options
            .iter()
            .filter(|(k, _)| k.starts_with("dev"))
            .count();
        self.plan.opt(format!("dev{n}"), value);
        Ok(())
    }

    fn mounts(&mut self, mounts: &[Value]) -> Result<(), TranslateError> {
        let mut mp = 0;
        // A /dev tmpfs in the bundle means the init builds /dev, and with
        // it every tmpfs, mqueue and devpts mount below it, in this order.
        for (i, m) in mounts.iter().enumerate() {
            let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
            if s("destination") == "/dev" && s("type") == "tmpfs" {
                let f = format!("mounts[{i}].options");
                let opts: Vec<String> = m
                    .get("options")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o.as_str().map(str::to_string))
                    .collect();
                if opts.iter().any(|o| o == "bind" || o == "rbind") {
                    continue;
                }
                for o in &opts {
                    check_text(&f, o)?;
                }
                self.plan.init.dev = Some(InitDev {
                    source: fs_source(s("source"), "tmpfs"),
                    options: kernel_fs_options(&f, "tmpfs", &opts)?,
                    mounts: Vec::new(),
                });
            }
        }
        for (i, m) in mounts.iter().enumerate() {
            let f = format!("mounts[{i}]");
            let dst = m.get("destination").and_then(Value::as_str).unwrap_or("");
            check_container_path(&format!("{f}.destination"), dst)?;
            let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
            let opts: Vec<String> = m
                .get("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect();
            for o in &opts {
                check_text(&format!("{f}.options"), o)?;
            }
            if !unset(m.get("uidMappings")) || !unset(m.get("gidMappings")) {
                return Err(field(&f, "id-mapped mounts are not supported"));
            }
            let bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
            // Rootless specs bind the host's /sys where they cannot mount sysfs;
            // LXC gives the guest its own.
            let src = m.get("source").and_then(Value::as_str).unwrap_or("");
            if bind && src == dst && system_mount(dst, "sysfs").is_some() {
                continue;
            }
            if !bind {
                if let Some(handled) = system_mount(dst, typ) {
                    if handled {
                        if dst == "/dev/pts" {
                            if let Some(dev) = &mut self.plan.init.dev {
                                dev.mounts.push(InitDevMount {
                                    destination: dst.into(),
                                    fstype: "devpts".into(),
                                    source: "devpts".into(),
                                    options: Vec::new(),
                                });
                            }
                        }
                        continue;
                    }
                    return Err(field(
                        format!("{f}.type"),
                        format!("{typ:?} at {dst}: LXC sets up {dst} itself"),
                    ));
                }
            }
            if dst == BRIDGE_DIR || dst.starts_with(&format!("{BRIDGE_DIR}/")) {
                return Err(field(
                    format!("{f}.destination"),
                    "reserved for nexcage's process bridge",
                ));
            }
            self.check_destination(&format!("{f}.destination"), dst)?;
            let target = dst.trim_start_matches('/');
            if bind {
                mp += self.bind_mount(&f, m, dst, &opts, mp)?;
            } else if matches!(typ, "tmpfs" | "mqueue") {
                let mut o = kernel_fs_options(&format!("{f}.options"), typ, &opts)?;
                let source = fs_source(src, typ);
                if let Some(dev) = self
                    .plan
                    .init
                    .dev
                    .as_mut()
                    .filter(|_| dst.starts_with("/dev/"))
                {
                    dev.mounts.push(InitDevMount {
                        destination: dst.into(),
                        fstype: typ.into(),
                        source,
                        options: o,
                    });
                    continue;
                }
                o.push("create=dir".into());
                let line = RawLine::fs_mount(typ, &source, target, &o).map_err(conf_err(&f))?;
                self.plan.raw_lines.push(line);
            } else {
                return Err(field(format!("{f}.type"), format!("{typ:?} mounts are not supported (only bind, tmpfs, mqueue and the container's standard filesystems)")));
            }
        }
        Ok(())
    }

    /// A directory becomes `--mpN` (shown and backed up by Proxmox); a file,
    /// which Proxmox mount points cannot be, a raw bind line. Returns how
    /// many mount points it used.
    fn bind_mount(
        &mut self,
        f: &str,
        m: &Value,
        dst: &str,
        opts: &[String],
        mp: usize,
    ) -> Result<usize, TranslateError> {
        let src = m.get("source").and_then(Value::as_str).unwrap_or("");
        let sf = format!("{f}.source");
        check_text(&sf, src)?;
        check_property_value(&sf, src)?;
        let src_path = Path::new(src);
        if !src_path.is_absolute()
            || src_path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(field(
                &sf,
                format!("{src:?} must be an absolute host path without '.' or '..'"),
            ));
        }
        let real =
            std::fs::canonicalize(src_path).map_err(|e| field(&sf, format!("{src}: {e}")))?;
        self.check_bind_source(&sf, &real)?;
        let real_str = real.to_str().ok_or_else(|| field(&sf, "not UTF-8"))?;
        check_property_value(&sf, real_str)?;
        let mut ro = false;
        let mut extra: Vec<&str> = Vec::new();
        for o in opts {
            match o.as_str() {
                "bind" | "rbind" | "rw" | "private" | "rprivate" | "relatime" | "dev" | "exec"
                | "suid" => {}
                "ro" => ro = true,
                "nodev" | "noexec" | "nosuid" | "noatime" | "lazytime" | "discard" => extra.push(o),
                other => {
                    return Err(field(
                        format!("{f}.options"),
                        format!("{other:?} is not a bind mount option Proxmox supports"),
                    ))
                }
            }
        }
        if real.is_dir() {
            if mp > 255 {
                return Err(field(f, "more than 256 mount points"));
            }
            let mut value = format!("{real_str},mp={dst}");
            if ro {
                value.push_str(",ro=1");
            }
            if !extra.is_empty() {
                value.push_str(&format!(",mountoptions={}", extra.join(";")));
            }
            self.plan.opt(format!("mp{mp}"), value);
            Ok(1)
        } else {
            let mut o: Vec<&str> = vec!["create=file"];
            if ro {
                o.push("ro");
            }
            o.extend(extra);
            let line =
                RawLine::bind_mount(&real, dst.trim_start_matches('/'), &o).map_err(conf_err(f))?;
            self.plan.raw_lines.push(line);
            Ok(0)
        }
    }

    fn check_bind_source(&self, f: &str, real: &Path) -> Result<(), TranslateError> {
        let under = |p: &Path, prefix: &Path| p.starts_with(prefix);
        if real == Path::new("/") || BIND_DENY.iter().any(|d| under(real, Path::new(d))) {
            return Err(field(
                f,
                format!(
                    "{}: host system paths cannot be bind-mounted",
                    real.display()
                ),
            ));
        }
        let allow = &self.settings.bind_allow;
        if !allow.is_empty() && !allow.iter().any(|a| under(real, a)) {
            return Err(field(
                f,
                format!("{} is outside this node's bind_allow", real.display()),
            ));
        }
        Ok(())
    }

    /// No component of the destination inside the rootfs may be a symlink:
    /// LXC and Proxmox would follow it, possibly out of the container.
    fn check_destination(&self, f: &str, dst: &str) -> Result<(), TranslateError> {
        let Some(root) = self.rootfs else {
            return Ok(());
        };
        let mut p = root.to_path_buf();
        for c in Path::new(dst).components().skip(1) {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(field(
                        f,
                        format!(
                            "{dst}: {} is a symlink in the rootfs",
                            p.strip_prefix(root).unwrap_or(&p).display()
                        ),
                    ));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn annotation_options(&mut self) {
        let a = &self.ann;
        let mut opts = Vec::new();
        for (k, v) in [
            ("nameserver", &a.nameserver),
            ("searchdomain", &a.searchdomain),
            ("onboot", &a.onboot),
            ("tags", &a.tags),
            ("description", &a.description),
            ("features", &a.features),
        ] {
            if let Some(v) = v {
                opts.push((k.to_string(), v.clone()));
            }
        }
        self.plan.options.extend(opts);
        self.plan.storage = a.storage.clone();
        self.plan.rootfs_size = a.rootfs_size.clone();
        // ostype last: nexcage's init is the container's PID 1, so Proxmox must
        // not touch the guest's files as it would for a distribution it manages.
        let at = self
            .plan
            .options
            .iter()
            .position(|(k, _)| k == "swap")
            .map_or(0, |i| i + 1);
        self.plan
            .options
            .insert(at, ("ostype".into(), "unmanaged".into()));
    }
}

/// Device nodes every guest gets from LXC itself (autodev, its own devpts,
/// the `lxc.tty.max` consoles). podman --privileged lists all of the
/// host's; passing these through too would cover LXC's own (LXC then fails
/// to set up the guest's devpts over a bound /dev/ptmx).
fn lxc_provides_device(path: &str) -> bool {
    let tty_n = |p: &str| {
        p.strip_prefix("/dev/tty")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    };
    matches!(
        path,
        "/dev/null"
            | "/dev/zero"
            | "/dev/full"
            | "/dev/random"
            | "/dev/urandom"
            | "/dev/tty"
            | "/dev/console"
            | "/dev/ptmx"
    ) || path.starts_with("/dev/pts/")
        || tty_n(path)
}

/// The filesystems every container gets from LXC itself (lxc.mount.auto,
/// autodev, its own devpts): Some(true) when `dst` is one of them and `typ`
/// is what it should be, Some(false) when the type is wrong, None otherwise.
fn system_mount(dst: &str, typ: &str) -> Option<bool> {
    let ok = match dst {
        "/proc" => typ == "proc",
        "/sys" => typ == "sysfs",
        "/sys/fs/cgroup" => matches!(typ, "cgroup" | "cgroup2"),
        "/dev" => matches!(typ, "tmpfs" | "devtmpfs"),
        "/dev/pts" => typ == "devpts",
        _ => return None,
    };
    Some(ok)
}

/// The values linux.rootfsPropagation may take (runc's).
const ROOT_PROPAGATIONS: &[&str] = &[
    "private",
    "rprivate",
    "slave",
    "rslave",
    "shared",
    "rshared",
    "unbindable",
    "runbindable",
];

/// The source a tmpfs or mqueue mount shows in the guest's mount table: the
/// bundle's when it is a plain name (`shm`, `tmpfs`, `mqueue`), otherwise
/// the type's name, as there is no device behind it to name.
fn fs_source(source: &str, typ: &str) -> String {
    if super::conf::is_plain_fs_source(source) {
        source.to_string()
    } else {
        typ.to_string()
    }
}

/// Options a tmpfs/mqueue mount may carry, validated one by one.
fn kernel_fs_options(f: &str, typ: &str, opts: &[String]) -> Result<Vec<String>, TranslateError> {
    let mut out = Vec::new();
    for o in opts {
        let (k, v) = o
            .split_once('=')
            .map_or((o.as_str(), None), |(k, v)| (k, Some(v)));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        // podman --privileged marks its tmpfs mounts rprivate: a new mount in
        // the guest's own mount namespace receives no events from the host
        // either way, so these need no option of their own.
        if v.is_none() && matches!(k, "private" | "rprivate" | "slave" | "rslave") {
            continue;
        }
        let ok = match (k, v) {
            (
                "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "noatime" | "relatime"
                | "strictatime" | "nodiratime" | "suid" | "dev" | "exec",
                None,
            ) => true,
            ("mode", Some(m)) if typ == "tmpfs" => {
                (3..=4).contains(&m.len()) && m.bytes().all(|c| (b'0'..=b'7').contains(&c))
            }
            ("size" | "nr_inodes", Some(s)) if typ == "tmpfs" => {
                let n = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
                digits(n) && s.len() - n.len() <= 1
            }
            ("uid" | "gid", Some(n)) if typ == "tmpfs" => digits(n),
            _ => false,
        };
        if !ok {
            return Err(field(
                f,
                format!("{o:?} is not a {typ} option nexcage supports"),
            ));
        }
        out.push(o.clone());
    }
    Ok(out)
}

/// An absolute, normalized container path: no '.', '..' or empty
/// components, no control characters.
fn check_container_path(f: &str, p: &str) -> Result<(), TranslateError> {
    check_text(f, p)?;
    if !p.starts_with('/') || p.len() > 4096 {
        return Err(field(f, format!("{p:?} is not an absolute path")));
    }
    if p != "/"
        && p[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(field(
            f,
            format!("{p:?} must be a normalized path without '.', '..' or '//'"),
        ));
    }
    Ok(())
}

/// Proxmox parses `mpN`/`devN` as `key=value` pairs separated by commas, and
/// takes anything with ':' as a storage volume: such paths would be misread.
fn check_property_value(f: &str, p: &str) -> Result<(), TranslateError> {
    check_text(f, p)?;
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, ',' | '=' | ':' | ';') || c.is_whitespace())
    {
        return Err(field(
            f,
            format!("{p:?}: {c:?} cannot appear in a Proxmox mount point or device path"),
        ));
    }
    Ok(())
}

/// Only sysctls that belong to the container's own namespaces (as runc
/// allows): LXC would otherwise change the Proxmox host itself.
fn check_sysctl(f: &str, k: &str) -> Result<(), TranslateError> {
    let well_formed = !k.is_empty()
        && k.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if !well_formed {
        return Err(field(f, "not a sysctl name (lowercase dotted names only)"));
    }
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if k.starts_with("net.") {
        return Ok(());
    }
    if IPC.contains(&k) || k.starts_with("fs.mqueue.") {
        // LXC writes sysctls after mounting /proc with proc:mixed, which
        // leaves only /proc/sys/net writable: lxc-start would fail.
        return Err(field(
            f,
            "a Proxmox guest's /proc/sys is read-only except net.*",
        ));
    }
    if matches!(k, "kernel.hostname" | "kernel.domainname") {
        return Err(field(f, "set hostname/domainname instead"));
    }
    Err(field(
        f,
        "not a namespaced sysctl: it would change the Proxmox host",
    ))
}

/// Proxmox's cpuunits are the v1 cpu.shares on a v1 host; on v2 they become
/// cpu.weight (1..10000), so OCI's shares are converted as runc does.
fn cpu_units(shares: u64, cgroup: CgroupVersion) -> u64 {
    match cgroup {
        CgroupVersion::V2 => 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142,
        _ => shares.clamp(2, 262_144),
    }
}

fn format_hundredths(h: u64) -> String {
    match h % 100 {
        0 => (h / 100).to_string(),
        r if r % 10 == 0 => format!("{}.{}", h / 100, r / 10),
        r => format!("{}.{r:02}", h / 100),
    }
}

/// Number of CPUs (or nodes) in a list like "0-3,8,10-11"; None if malformed.
fn cpu_list_len(s: &str) -> Option<u64> {
    let mut n = 0;
    for part in s.split(',') {
        let num = |x: &str| -> Option<u64> {
            (!x.is_empty() && x.len() <= 5 && x.bytes().all(|c| c.is_ascii_digit()))
                .then(|| x.parse().ok())
                .flatten()
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                num(part)?;
                n += 1;
            }
        }
    }
    Some(n)
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// OCI gives bytes (and -1 or nothing for "no limit"); pct takes MiB, at
/// least 16. Without a limit the container may use what the host has.
fn memory_mib(mem: &Map<String, Value>, host: HostFacts) -> Result<(u64, u64), TranslateError> {
    // runc writes -1 as "max" and any other negative through to the kernel,
    // which refuses it: a -5 is a mistake, not "unlimited".
    for key in ["limit", "reservation", "swap"] {
        if let Some(v) = mem.get(key).and_then(Value::as_i64).filter(|&v| v < -1) {
            return Err(field(
                format!("linux.resources.memory.{key}"),
                format!("{v} is not a limit (of negatives, only -1 means no limit)"),
            ));
        }
    }
    let limit = mem.get("limit").and_then(Value::as_i64).filter(|&l| l > 0);
    let Some(limit) = limit else {
        return Ok((host.mem_total_mib, host.swap_total_mib));
    };
    let limit = limit as u64;
    let memory = limit.div_ceil(MIB).max(MIN_MEMORY_MIB);
    // OCI's swap is memory+swap; Proxmox's is swap alone.
    let swap = match mem.get("swap").and_then(Value::as_i64) {
        Some(s) if s > 0 => {
            let s = s as u64;
            if s < limit {
                return Err(field(
                    "linux.resources.memory.swap",
                    format!("{s} is below the memory limit {limit}"),
                ));
            }
            (s - limit).div_ceil(MIB)
        }
        Some(-1) => host.swap_total_mib,
        _ => 0,
    };
    Ok((memory, swap))
}

/// Proxmox's hostname format: DNS labels of letters, digits and '-'.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 255
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Proxmox settings a bundle may ask for through `org.proxmox.*`
/// annotations; every value is validated for its pct format.
#[derive(Debug, Default)]
struct Annotations {
    storage: Option<String>,
    rootfs_size: Option<String>,
    bridge: Option<String>,
    tag: Option<String>,
    ip: Option<String>,
    gw: Option<String>,
    nameserver: Option<String>,
    searchdomain: Option<String>,
    onboot: Option<String>,
    tags: Option<String>,
    description: Option<String>,
    features: Option<String>,
    unprivileged: Option<bool>,
}

pub const ANNOTATION_PREFIX: &str = "org.proxmox.";

/// Every annotation nexcage understands (docs/translation.md lists them).
pub const ANNOTATIONS: &[&str] = &[
    "org.proxmox.storage",
    "org.proxmox.rootfs.size",
    "org.proxmox.net0.bridge",
    "org.proxmox.net0.tag",
    "org.proxmox.net0.ip",
    "org.proxmox.net0.gw",
    "org.proxmox.nameserver",
    "org.proxmox.searchdomain",
    "org.proxmox.onboot",
    "org.proxmox.tags",
    "org.proxmox.description",
    "org.proxmox.features",
    "org.proxmox.unprivileged",
];

impl Annotations {
    fn parse(
        all: &Map<String, Value>,
        _settings: &ProxmoxSettings,
    ) -> Result<Annotations, TranslateError> {
        let mut a = Annotations::default();
        let mut keys: Vec<_> = all.iter().collect();
        keys.sort_by(|x, y| x.0.cmp(y.0));
        for (k, v) in keys {
            let f = format!("annotations.{k}");
            check_text("annotations", k)?;
            if !k.starts_with(ANNOTATION_PREFIX) {
                // Other annotations are the client's metadata (OCI: opaque).
                continue;
            }
            let v = v.as_str().unwrap_or("");
            check_text(&f, v)?;
            let bad = |what: &str| field(&f, format!("{v:?} is not {what}"));
            let flag = |v: &str| match v {
                "1" | "true" => Some(true),
                "0" | "false" => Some(false),
                _ => None,
            };
            match k.as_str() {
                "org.proxmox.storage" => {
                    if !is_storage_id(v) {
                        return Err(bad("a storage id"));
                    }
                    a.storage = Some(v.into());
                }
                "org.proxmox.rootfs.size" => {
                    a.rootfs_size = Some(parse_rootfs_size(v).ok_or_else(|| {
                        bad("a positive size in GiB (a number, or one with M, MiB, G or GiB)")
                    })?);
                }
                "org.proxmox.net0.bridge" => {
                    if !is_bridge_name(v) {
                        return Err(bad("a bridge name"));
                    }
                    a.bridge = Some(v.into());
                }
                "org.proxmox.net0.tag" => match v.parse::<u16>() {
                    Ok(t) if (1..=4094).contains(&t) => a.tag = Some(t.to_string()),
                    _ => return Err(bad("a VLAN tag 1..4094")),
                },
                "org.proxmox.net0.ip" => {
                    if !(matches!(v, "dhcp" | "manual") || is_ipv4_cidr(v)) {
                        return Err(bad("an IPv4 CIDR, dhcp or manual"));
                    }
                    a.ip = Some(v.into());
                }
                "org.proxmox.net0.gw" => {
                    if v.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(bad("an IPv4 address"));
                    }
                    a.gw = Some(v.into());
                }
                "org.proxmox.nameserver" => {
                    let list: Vec<&str> =
                        v.split([' ', ',', ';']).filter(|s| !s.is_empty()).collect();
                    if list.is_empty()
                        || list.iter().any(|s| s.parse::<std::net::IpAddr>().is_err())
                    {
                        return Err(bad("a list of IP addresses"));
                    }
                    a.nameserver = Some(list.join(" "));
                }
                "org.proxmox.searchdomain" => {
                    let list: Vec<&str> =
                        v.split([' ', ',', ';']).filter(|s| !s.is_empty()).collect();
                    if list.is_empty() || list.iter().any(|s| !is_dns_name(s)) {
                        return Err(bad("a list of DNS domains"));
                    }
                    a.searchdomain = Some(list.join(" "));
                }
                "org.proxmox.onboot" => {
                    // Started by the node at boot, the guest would find no
                    // bridge directory (it lives under /run) and no runtime
                    // client waiting for it: its init could only fail.
                    if flag(v).ok_or_else(|| bad("0 or 1"))? {
                        return Err(field(
                            &f,
                            "guests started at boot are not supported: their runtime client starts them",
                        ));
                    }
                    a.onboot = Some("0".into());
                }
                "org.proxmox.tags" => {
                    let list: Vec<&str> =
                        v.split([' ', ',', ';']).filter(|s| !s.is_empty()).collect();
                    let tag_ok = |t: &str| {
                        t.len() <= 64
                            && t.bytes()
                                .next()
                                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                            && t.bytes()
                                .all(|c| c.is_ascii_alphanumeric() || b"_+.-".contains(&c))
                    };
                    if list.is_empty() || !list.iter().all(|t| tag_ok(t)) {
                        return Err(bad("a list of Proxmox tags"));
                    }
                    a.tags = Some(list.join(";"));
                }
                "org.proxmox.description" => {
                    if v.len() > 8192 {
                        return Err(field(&f, "longer than 8 KiB"));
                    }
                    a.description = Some(v.into());
                }
                "org.proxmox.features" => {
                    let mut out = Vec::new();
                    for item in v.split(',').filter(|s| !s.is_empty()) {
                        let (name, val) = item.split_once('=').unwrap_or((item, "1"));
                        if !matches!(name, "nesting" | "keyctl" | "fuse") {
                            return Err(field(
                                &f,
                                format!("{name:?} is not one of nesting, keyctl, fuse"),
                            ));
                        }
                        let b = flag(val).ok_or_else(|| bad("a list of feature=0|1"))?;
                        out.push(format!("{name}={}", u8::from(b)));
                    }
                    if out.is_empty() {
                        return Err(bad("a list of features"));
                    }
                    a.features = Some(out.join(","));
                }
                "org.proxmox.unprivileged" => {
                    a.unprivileged = Some(flag(v).ok_or_else(|| bad("0 or 1"))?);
                }
                _ => {
                    return Err(field(
                        &f,
                        format!(
                            "unknown Proxmox annotation; known: {}",
                            ANNOTATIONS.join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(a)
    }
}

fn is_ipv4_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok()
            && len.len() <= 2
            && len.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostFacts = HostFacts {
        mem_total_mib: 24000,
        swap_total_mib: 0,
        cgroup: CgroupVersion::V1,
    };

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
        });
        merge(&mut base, json);
        serde_json::from_value(base).unwrap()
    }

    pub(super) fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn opt<'a>(p: &'a PctPlan, k: &str) -> Option<&'a str> {
        p.options
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn readonly_mounts_get_apparmor_rules_or_are_refused_by_name() {
        let p = plan(
            &spec(serde_json::json!({"root": {"readonly": true},
                "linux": {"readonlyPaths": ["/etc", "/proc/bus"]}})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        let raw: Vec<String> = p.raw_lines.iter().map(RawLine::render).collect();
        let aa: Vec<&String> = raw
            .iter()
            .filter(|l| l.starts_with("lxc.apparmor.raw"))
            .collect();
        assert_eq!(aa.len(), 3, "{raw:?}");
        assert!(aa.iter().all(|l| !l.contains("/etc")), "{aa:?}");
        for (path, text) in [
            ("/proc", "denies mounts on /proc itself"),
            ("/sys/a*b", "can be named in an AppArmor rule"),
        ] {
            let e = plan(
                &spec(serde_json::json!({"linux": {"readonlyPaths": ["/etc", path]}})),
                &ProxmoxSettings::default(),
                HOST,
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("linux.readonlyPaths[1]") && e.contains(text),
                "{e}"
            );
        }
    }

    #[test]
    fn devices_lxc_makes_itself_are_not_passed_through() {
        // podman --privileged lists every host device, these among them.
        let dev = |path: &str, major: u64, minor: u64| serde_json::json!({"path": path, "type": "c", "major": major, "minor": minor});
        let devices = serde_json::json!({"linux": {"devices": [
            dev("/dev/ptmx", 5, 2), dev("/dev/null", 1, 3), dev("/dev/tty", 5, 0),
            dev("/dev/tty1", 4, 1), dev("/dev/console", 5, 1), dev("/dev/pts/0", 136, 0)]}});
        let p = plan(&spec(devices), &ProxmoxSettings::default(), HOST).unwrap();
        assert!(
            !p.options.iter().any(|(k, _)| k.starts_with("dev")),
            "{:?}",
            p.options
        );
        // Others still must exist on the host as the same node.
        let other = serde_json::json!({"linux": {"devices": [dev("/dev/nexcage-none", 1, 1)]}});
        assert!(plan(&spec(other), &ProxmoxSettings::default(), HOST).is_err());
        assert!(!lxc_provides_device("/dev/ttyS0"));
        assert!(!lxc_provides_device("/dev/tty_"));
    }

    #[test]
    fn propagation_flags_on_a_tmpfs_are_accepted_and_not_written() {
        // As podman --privileged writes its tmpfs mounts.
        let tmpfs = |opt: &str| {
            spec(
                serde_json::json!({"mounts": [{"destination": "/run", "type": "tmpfs",
                "source": "tmpfs", "options": ["nosuid", opt, "mode=755"]}]}),
            )
        };
        let p = plan(&tmpfs("rprivate"), &ProxmoxSettings::default(), HOST).unwrap();
        let raw: Vec<String> = p.raw_lines.iter().map(RawLine::render).collect();
        assert!(
            raw.contains(&"lxc.mount.entry: tmpfs run tmpfs nosuid,mode=755,create=dir 0 0".into()),
            "{raw:?}"
        );
        // Sharing with the host is not something a guest's mount can do.
        assert!(plan(&tmpfs("rshared"), &ProxmoxSettings::default(), HOST).is_err());
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

    #[test]
    fn rootfs_size_annotation_overrides_the_measure_and_refuses_garbage() {
        for (given, gib) in [
            ("2", "2"),
            ("0.5", "0.5"),
            ("1.25G", "1.25"),
            ("3GiB", "3"),
            ("512M", "0.5"),
            ("100MiB", "0.09765625"),
            ("1536M", "1.5"),
        ] {
            assert_eq!(parse_rootfs_size(given).as_deref(), Some(gib), "{given}");
        }
        for bad in [
            "",
            "0",
            "0M",
            "-1",
            "1.",
            ".5",
            "1e3",
            "1T",
            "2 G",
            "0.0000001",
            "abc",
        ] {
            assert_eq!(parse_rootfs_size(bad), None, "{bad:?}");
        }
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.rootfs.size": "512M"}}));
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        let args = p.create_args(100, "local:vztmpl/t.tar.zst", "local-lvm", 7);
        assert!(
            args.windows(2).any(|w| w == ["--rootfs", "local-lvm:0.5"]),
            "{args:?}"
        );
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.rootfs.size": "lots"}}));
        let err = plan(&s, &ProxmoxSettings::default(), HOST)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("org.proxmox.rootfs.size") && err.contains("\"lots\""),
            "{err}"
        );
    }

    #[test]
    fn memory_is_rounded_up_to_mib_with_a_floor_of_16() {
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 268435457, "swap": 536870912}}}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(opt(&p, "memory"), Some("257"));
        assert_eq!(opt(&p, "swap"), Some("256"));
        let s = spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 1000}}}}));
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(opt(&p, "memory"), Some("16"));
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 100_000_000, "swap": 10}}}}),
        );
        assert!(plan(&s, &ProxmoxSettings::default(), HOST).is_err());
    }

    #[test]
    fn negative_memory_values_other_than_minus_one_are_refused() {
        for key in ["limit", "reservation", "swap"] {
            let s = spec(serde_json::json!({"linux": {"resources": {"memory": {key: -5}}}}));
            let err = plan(&s, &ProxmoxSettings::default(), HOST)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("linux.resources.memory.{key}")) && err.contains("-5"),
                "{err}"
            );
        }
        // -1 is runc's "no limit": the host's memory and swap.
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": -1, "swap": -1, "reservation": -1}}}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(
            opt(&p, "memory"),
            Some(HOST.mem_total_mib.to_string().as_str())
        );
    }

    #[test]
    fn user_namespace_makes_the_guest_unprivileged() {
        let s = spec(
            serde_json::json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}]}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert!(p.unprivileged);
        assert_eq!(opt(&p, "unprivileged"), Some("1"));
        let forced = ProxmoxSettings {
            unprivileged: UnprivilegedPolicy::Always,
            ..Default::default()
        };
        assert!(
            plan(&spec(serde_json::json!({})), &forced, HOST)
                .unwrap()
                .unprivileged
        );
    }

    #[test]
    fn hostname_must_be_a_dns_name() {
        let p = plan(
            &spec(serde_json::json!({"hostname": "web-1.example"})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        assert_eq!(opt(&p, "hostname"), Some("web-1.example"));
        for bad in [
            "a b",
            "x\nlxc.init.cmd=/evil",
            "-a",
            "a..b",
            "a_b",
            &"a".repeat(64),
        ] {
            let err = plan(
                &spec(serde_json::json!({"hostname": bad})),
                &ProxmoxSettings::default(),
                HOST,
            )
            .unwrap_err();
            assert!(err.to_string().contains("hostname"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn host_network_is_refused_and_a_netns_path_is_joined_by_the_bridge() {
        let d = ProxmoxSettings::default();
        let err = |j: serde_json::Value| plan(&spec(j), &d, HOST).unwrap_err().to_string();
        let host_net = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert!(err(host_net).contains("network namespace"));
        let by_path = spec(
            serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}}),
        );
        let p = plan(&by_path, &d, HOST).unwrap();
        assert_eq!(p.init.netns.as_deref(), Some("/run/netns/x"));
        assert!(opt(&p, "net0").is_none(), "no Proxmox NIC when joining");
        let e = err(
            serde_json::json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network", "path": "/run/netns/x"}]}}),
        );
        assert!(
            e.contains("linux.namespaces") && e.contains("privileged guest"),
            "{e}"
        );
        for bad in ["run/netns/x", "/run/netns/../x", "/run/netns/x\ny"] {
            let e = err(
                serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": bad}]}}),
            );
            assert!(e.contains("linux.namespaces"), "{bad}: {e}");
        }
        let e = err(serde_json::json!({
            "annotations": {"org.proxmox.net0.ip": "dhcp"},
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}
        }));
        assert!(e.contains("annotations"), "{e}");
    }

    #[test]
    fn net0_is_host_managed_where_pct_can_and_else_configured_by_the_init() {
        let d = ProxmoxSettings::default();
        let with = |ann: serde_json::Value| {
            plan(&spec(serde_json::json!({ "annotations": ann })), &d, HOST).unwrap()
        };
        let addressed = serde_json::json!({"org.proxmox.net0.ip": "10.1.2.3/24", "org.proxmox.net0.gw": "10.1.2.1"});
        let mut p = with(addressed.clone());
        p.manage_net0(true).unwrap();
        assert_eq!(
            opt(&p, "net0"),
            Some("name=eth0,bridge=vmbr0,ip=10.1.2.3/24,gw=10.1.2.1,host-managed=1")
        );
        assert_eq!(p.init.net, None);

        let mut p = with(addressed);
        p.manage_net0(false).unwrap();
        assert!(!opt(&p, "net0").unwrap().contains("host-managed"));
        let net = p.init.net.clone().unwrap();
        assert_eq!(
            (
                net.link.as_str(),
                net.address.as_deref(),
                net.gateway.as_deref()
            ),
            ("eth0", Some("10.1.2.3/24"), Some("10.1.2.1"))
        );

        // No address: the init still brings the link (and lo) up.
        let mut p = with(serde_json::json!({}));
        p.manage_net0(false).unwrap();
        assert_eq!(p.init.net.as_ref().map(|n| n.address.clone()), Some(None));

        let mut p = with(serde_json::json!({"org.proxmox.net0.ip": "dhcp"}));
        let e = p.manage_net0(false).unwrap_err().to_string();
        assert!(
            e.contains("org.proxmox.net0.ip") && e.contains("host-managed"),
            "{e}"
        );
        let mut p = with(serde_json::json!({"org.proxmox.net0.ip": "dhcp"}));
        p.manage_net0(true).unwrap();
        assert!(opt(&p, "net0").unwrap().ends_with("ip=dhcp,host-managed=1"));

        let mut p = with(serde_json::json!({"org.proxmox.net0.gw": "10.1.2.1"}));
        let e = p.manage_net0(true).unwrap_err().to_string();
        assert!(e.contains("org.proxmox.net0.gw"), "{e}");
    }

    #[test]
    fn terminal_is_accepted_and_its_size_bounded() {
        let d = ProxmoxSettings::default();
        let tty = spec(
            serde_json::json!({"process": {"terminal": true, "consoleSize": {"height": 30, "width": 100}}}),
        );
        assert!(plan(&tty, &d, HOST).is_ok());
        let huge = spec(
            serde_json::json!({"process": {"terminal": true, "consoleSize": {"height": 70000, "width": 1}}}),
        );
        let e = plan(&huge, &d, HOST).unwrap_err().to_string();
        assert!(e.contains("process.consoleSize.height"), "{e}");
    }
}

/// docs/translation.md is the contract: every row is exercised here.
#[cfg(test)]
mod doc_table {
    use super::*;
    use serde_json::json;

    const DOC: &str = include_str!("../../../../docs/translation.md");

    enum Expect {
        /// `--flag` followed by a value containing the text.
        Arg(&'static str, &'static str),
        /// A rendered raw line.
        Raw(&'static str),
        /// Text in the JSON the init reads (linux.json).
        Init(&'static str),
        /// Text in what the init prepares from process.json.
        Process(&'static str),
        /// A compiled linux.seccomp filter for the init.
        Seccomp,
        /// Provided by LXC or ignored: the plan succeeds.
        Accepted,
        /// Refused naming the field.
        Refused,
    }
    use Expect::*;

    fn host(v: CgroupVersion) -> HostFacts {
        HostFacts {
            mem_total_mib: 2048,
            swap_total_mib: 0,
            cgroup: v,
        }
    }

    fn res(r: Value) -> Value {
        json!({"linux": {"resources": r}})
    }

    /// The bundle exercising each row, and the effect it must have.
    fn case(row: &str) -> Option<(Value, CgroupVersion, Expect)> {
        use CgroupVersion::{V1, V2};
        let caps = |set: &str| json!({"process": {"capabilities": {set: ["CAP_KILL"]}}});
        Some(match row {
            "`process.args`" => (
                json!({"process": {"args": ["/bin/sh", "-c", "true"]}}),
                V1,
                Process("\"-c\""),
            ),
            "`process.env`" => (json!({"process": {"env": ["A=1"]}}), V1, Process("\"A=1\"")),
            "`process.cwd`" => (
                json!({"process": {"cwd": "/tmp"}}),
                V1,
                Process("cwd: \"/tmp\""),
            ),
            "`process.user.uid`" => (
                json!({"process": {"user": {"uid": 1234, "gid": 0}}}),
                V1,
                Process("uid: 1234"),
            ),
            "`process.user.gid`" => (
                json!({"process": {"user": {"uid": 0, "gid": 4321}}}),
                V1,
                Process("gid: 4321"),
            ),
            "`process.user.umask`" => (
                json!({"process": {"user": {"uid": 0, "gid": 0, "umask": 63}}}),
                V1,
                Process("umask: Some(63)"),
            ),
            "`process.user.additionalGids`" => (
                json!({"process": {"user": {"uid": 0, "gid": 0, "additionalGids": [77]}}}),
                V1,
                Process("groups: [Gid(77)]"),
            ),
            "`process.terminal`" => (
                json!({"process": {"terminal": true}}),
                V1,
                Process("terminal: true"),
            ),
            "`process.consoleSize`" => (
                json!({"process": {"terminal": true, "consoleSize": {"height": 1, "width": 2}}}),
                V1,
                Process("console_size: Some((1, 2))"),
            ),
            "`process.capabilities.bounding`" => (
                caps("bounding"),
                V1,
                Process("drop_bounding: [CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_SETGID,"),
            ),
            "`process.capabilities.effective`" => {
                (caps("effective"), V1, Process("effective: {CAP_KILL},"))
            }
            "`process.capabilities.permitted`" => {
                (caps("permitted"), V1, Process("permitted: {CAP_KILL},"))
            }
            "`process.capabilities.inheritable`" => {
                (caps("inheritable"), V1, Process("inheritable: {CAP_KILL},"))
            }
            "`process.capabilities.ambient`" => (caps("ambient"), V1, Process("ambient: [CAP_KILL]")),
            "`process.rlimits`" => (
                json!({"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 5, "hard": 6}]}}),
                V1,
                Process(", 5, 6)]"),
            ),
            "`process.noNewPrivileges`" => (
                json!({"process": {"noNewPrivileges": true}}),
                V1,
                Process("no_new_privileges: true"),
            ),
            "`process.apparmorProfile`" => {
                (json!({"process": {"apparmorProfile": "x"}}), V1, Accepted)
            }
            "`process.selinuxLabel`" => (json!({"process": {"selinuxLabel": "x"}}), V1, Refused),
            "`process.oomScoreAdj`" => (
                json!({"process": {"oomScoreAdj": 500}}),
                V1,
                Process("oom_score_adj: Some([53, 48, 48])"),
            ),
            "`process.ioPriority`" => (
                json!({"process": {"ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0}}}),
                V1,
                Refused,
            ),
            "`process.scheduler`" => (
                json!({"process": {"scheduler": {"policy": "SCHED_BATCH"}}}),
                V1,
                Refused,
            ),
            "`process.execCPUAffinity`" => (
                json!({"process": {"execCPUAffinity": {"initial": "0"}}}),
                V1,
                Refused,
            ),
            "`root.path`" => (json!({}), V1, Accepted),
            "`root.readonly`" => (
                json!({"root": {"path": "rootfs", "readonly": true}}),
                V1,
                Init("\"readonlyRoot\":true"),
            ),
            "`hostname`" => (json!({"hostname": "web"}), V1, Arg("hostname", "web")),
            "`domainname`" => (
                json!({"domainname": "example.org"}),
                V1,
                Init("\"domainname\":\"example.org\""),
            ),
            "`mounts` (bind, directory)" => (
                json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro", "nodev"]}]}),
                V1,
                Arg("mp0", "/tmp,mp=/data,ro=1,mountoptions=nodev"),
            ),
            "`mounts` (bind, file)" => (
                json!({"mounts": [{"destination": "/etc/x", "source": "/etc/passwd", "options": ["bind", "ro"]}]}),
                V1,
                Raw("lxc.mount.entry: /etc/passwd etc/x none bind,create=file,ro 0 0"),
            ),
            "`mounts` (tmpfs)" => (
                json!({"mounts": [{"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=64k"]}]}),
                V1,
                Raw("lxc.mount.entry: tmpfs run tmpfs nosuid,mode=755,size=64k,create=dir 0 0"),
            ),
            "`mounts` (mqueue)" => (
                json!({"mounts": [{"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid"]}]}),
                V1,
                Raw("lxc.mount.entry: mqueue dev/mqueue mqueue nosuid,create=dir 0 0"),
            ),
            "`mounts` (proc, sysfs, cgroup, devpts)" => (
                json!({"mounts": [{"destination": "/proc", "type": "proc"}, {"destination": "/sys", "type": "sysfs"}, {"destination": "/sys/fs/cgroup", "type": "cgroup"}, {"destination": "/dev/pts", "type": "devpts"}]}),
                V1,
                Accepted,
            ),
            "`mounts` (/dev tmpfs)" => (
                json!({"mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=65536k"]}]}),
                V1,
                Init("\"dev\":{\"source\":\"tmpfs\",\"options\":[\"nosuid\",\"size=65536k\"]}"),
            ),
            "`mounts` (below /dev)" => (
                json!({"mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}, {"destination": "/dev/pts", "type": "devpts", "source": "devpts"}, {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}]}),
                V1,
                Init("\"mounts\":[{\"destination\":\"/dev/pts\",\"type\":\"devpts\",\"source\":\"devpts\"},{\"destination\":\"/dev/shm\",\"type\":\"tmpfs\",\"source\":\"shm\"}]"),
            ),
            "`mounts` (other types)" => (
                json!({"mounts": [{"destination": "/mnt", "type": "nfs", "source": "h:/x"}]}),
                V1,
                Refused,
            ),
            "`mounts[].options`" => (
                json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "options": ["bind", "nosuid", "noexec"]}]}),
                V1,
                Arg("mp0", "mountoptions=nosuid;noexec"),
            ),
            "`mounts[].uidMappings`" => (
                json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]}),
                V1,
                Refused,
            ),
            "`hooks`" => (
                json!({"hooks": {"poststart": [{"path": "/bin/true"}]}}),
                V1,
                Accepted,
            ),
            "`annotations`" => (
                json!({"annotations": {"org.proxmox.onboot": "0", "com.example": "x"}}),
                V1,
                Arg("onboot", "0"),
            ),
            "`linux.namespaces` (network)" => {
                (json!({}), V1, Arg("net0", "name=eth0,bridge=vmbr0"))
            }
            "`linux.namespaces` (user)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}]}}),
                V1,
                Arg("unprivileged", "1"),
            ),
            "`linux.namespaces` (pid, ipc, uts, mount, cgroup)" => (
                json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "network"}]}}),
                V1,
                Accepted,
            ),
            "`linux.namespaces` (no network)" => (
                json!({"linux": {"namespaces": [{"type": "pid"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces[].path` (network)" => (
                json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}}),
                V1,
                Init("\"netns\":\"/run/netns/x\""),
            ),
            "`linux.namespaces[].path` (network, unprivileged guest)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network", "path": "/run/netns/x"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces[].path` (other types)" => (
                json!({"linux": {"namespaces": [{"type": "network"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces` (time)" => (
                json!({"linux": {"namespaces": [{"type": "network"}, {"type": "time"}]}}),
                V1,
                Refused,
            ),
            "`linux.uidMappings`" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
                V1,
                Arg("unprivileged", "1"),
            ),
            "`linux.uidMappings` (other maps)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "uidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}}),
                V1,
                Refused,
            ),
            "`linux.gidMappings`" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
                V1,
                Arg("unprivileged", "1"),
            ),
            "`linux.gidMappings` (other maps)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}}),
                V1,
                Refused,
            ),
            "`linux.devices`" => (
                json!({"linux": {"devices": [{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 438}]}}),
                V1,
                Arg("dev0", "/dev/kmsg,mode=0666"),
            ),
            "`linux.cgroupsPath`" => (json!({"linux": {"cgroupsPath": "/x/y"}}), V1, Accepted),
            "`linux.resources.memory.limit`" => (
                res(json!({"memory": {"limit": 268435456}})),
                V1,
                Arg("memory", "256"),
            ),
            "`linux.resources.memory.reservation`" => (
                res(json!({"memory": {"reservation": 1048576}})),
                V1,
                Raw("lxc.cgroup.memory.soft_limit_in_bytes: 1048576"),
            ),
            "`linux.resources.memory.swap`" => (
                res(json!({"memory": {"limit": 268435456, "swap": 536870912}})),
                V1,
                Arg("swap", "256"),
            ),
            "`linux.resources.memory.kernel`" => {
                (res(json!({"memory": {"kernel": 1048576}})), V1, Accepted)
            }
            "`linux.resources.memory.kernelTCP`" => {
                (res(json!({"memory": {"kernelTCP": 1048576}})), V1, Refused)
            }
            "`linux.resources.memory.swappiness`" => (
                res(json!({"memory": {"swappiness": 10}})),
                V1,
                Raw("lxc.cgroup.memory.swappiness: 10"),
            ),
            "`linux.resources.memory.disableOOMKiller`" => (
                res(json!({"memory": {"disableOOMKiller": true}})),
                V1,
                Raw("lxc.cgroup.memory.oom_control: 1"),
            ),
            "`linux.resources.memory.useHierarchy`" => {
                (res(json!({"memory": {"useHierarchy": true}})), V1, Accepted)
            }
            "`linux.resources.memory.checkBeforeUpdate`" => (
                res(json!({"memory": {"checkBeforeUpdate": true}})),
                V1,
                Accepted,
            ),
            "`linux.resources.cpu.shares`" => (
                res(json!({"cpu": {"shares": 512}})),
                V1,
                Arg("cpuunits", "512"),
            ),
            "`linux.resources.cpu.quota`" => (
                res(json!({"cpu": {"quota": 150000, "period": 100000}})),
                V1,
                Arg("cpulimit", "1.5"),
            ),
            "`linux.resources.cpu.period`" => (
                res(json!({"cpu": {"quota": 50000, "period": 200000}})),
                V1,
                Arg("cpulimit", "0.25"),
            ),
            "`linux.resources.cpu.cpus`" => (
                res(json!({"cpu": {"cpus": "0-1,3"}})),
                V1,
                Arg("cores", "3"),
            ),
            "`linux.resources.cpu.mems`" => (
                res(json!({"cpu": {"mems": "0"}})),
                V1,
                Raw("lxc.cgroup.cpuset.mems: 0"),
            ),
            "`linux.resources.cpu.realtimeRuntime`" => {
                (res(json!({"cpu": {"realtimeRuntime": 1000}})), V1, Refused)
            }
            "`linux.resources.cpu.realtimePeriod`" => {
                (res(json!({"cpu": {"realtimePeriod": 1000}})), V1, Refused)
            }
            "`linux.resources.cpu.idle`" => (res(json!({"cpu": {"idle": 1}})), V1, Refused),
            "`linux.resources.cpu.burst`" => (res(json!({"cpu": {"burst": 1000}})), V1, Refused),
            "`linux.resources.pids.limit`" => (
                res(json!({"pids": {"limit": 64}})),
                V1,
                Raw("lxc.cgroup.pids.max: 64"),
            ),
            "`linux.resources.blockIO`" => (res(json!({"blockIO": {"weight": 100}})), V1, Refused),
            "`linux.resources.hugepageLimits`" => (
                res(json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]})),
                V1,
                Refused,
            ),
            "`linux.resources.network`" => (res(json!({"network": {"classID": 1}})), V1, Refused),
            "`linux.resources.rdma`" => (
                res(json!({"rdma": {"mlx": {"hcaHandles": 1}}})),
                V1,
                Refused,
            ),
            "`linux.resources.unified`" => (
                res(json!({"unified": {"memory.high": "1000000"}})),
                V2,
                Raw("lxc.cgroup2.memory.high: 1000000"),
            ),
            "`linux.resources.devices`" => (
                res(
                    json!({"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]}),
                ),
                V1,
                Raw("lxc.cgroup.devices.allow: c 10:200 rwm"),
            ),
            "`linux.sysctl`" => (
                json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}}),
                V1,
                Init("\"sysctl\":{\"net.ipv4.ip_forward\":\"1\"}"),
            ),
            "`linux.seccomp`" => (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}}),
                V1,
                Seccomp,
            ),
            "`linux.seccomp.listenerPath`" => (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                              "listenerPath": "/run/agent.sock"}}}),
                V1,
                Refused,
            ),
            "`linux.rootfsPropagation`" => (
                json!({"linux": {"rootfsPropagation": "rprivate"}}),
                V1,
                Init("\"rootPropagation\":\"rprivate\""),
            ),
            "`linux.rootfsPropagation` (other values)" => (
                json!({"linux": {"rootfsPropagation": "sideways"}}),
                V1,
                Refused,
            ),
            "`linux.maskedPaths`" => (
                json!({"linux": {"maskedPaths": ["/proc/kcore"]}}),
                V1,
                Init("\"maskedPaths\":[\"/proc/kcore\"]"),
            ),
            "`linux.readonlyPaths`" => (
                json!({"linux": {"readonlyPaths": ["/proc/sys"]}}),
                V1,
                Init("\"readonlyPaths\":[\"/proc/sys\"]"),
            ),
            "`linux.mountLabel`" => (json!({"linux": {"mountLabel": "x"}}), V1, Refused),
            "`linux.personality`" => (
                json!({"linux": {"personality": {"domain": "LINUX"}}}),
                V1,
                Accepted,
            ),
            "`linux.intelRdt`" => (json!({"linux": {"intelRdt": {"closID": "x"}}}), V1, Refused),
            "`linux.timeOffsets`" => (
                json!({"linux": {"timeOffsets": {"monotonic": {"secs": 1, "nanosecs": 0}}}}),
                V1,
                Refused,
            ),
            "`linux.netDevices`" => (json!({"linux": {"netDevices": {"eth1": {}}}}), V1, Refused),
            "`linux.memoryPolicy`" => (
                json!({"linux": {"memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0"}}}),
                V1,
                Refused,
            ),
            _ => return None,
        })
    }

    /// The rows of the "Fields" table: (first column, status).
    fn rows() -> Vec<(String, String)> {
        let table = DOC
            .split("## Fields")
            .nth(1)
            .unwrap()
            .split("\n## ")
            .next()
            .unwrap();
        table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cols: Vec<&str> = l.split(" | ").collect();
                (
                    cols[0].trim_start_matches("| ").to_string(),
                    cols[1].to_string(),
                )
            })
            .collect()
    }

    fn spec(patch: Value) -> Spec {
        let mut base = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
        });
        super::tests::merge(&mut base, patch);
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn doc_table_covers_every_field_of_the_issue() {
        let rows = rows();
        let names: Vec<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
        for f in [
            "process.args",
            "process.env",
            "process.cwd",
            "process.user.uid",
            "process.user.gid",
            "process.user.umask",
            "process.user.additionalGids",
            "process.terminal",
            "process.consoleSize",
            "process.capabilities.bounding",
            "process.capabilities.effective",
            "process.capabilities.permitted",
            "process.capabilities.inheritable",
            "process.capabilities.ambient",
            "process.rlimits",
            "process.noNewPrivileges",
            "process.apparmorProfile",
            "process.selinuxLabel",
            "process.oomScoreAdj",
            "process.ioPriority",
            "process.scheduler",
            "root.path",
            "root.readonly",
            "hostname",
            "domainname",
            "mounts",
            "hooks",
            "annotations",
            "linux.namespaces",
            "linux.uidMappings",
            "linux.gidMappings",
            "linux.devices",
            "linux.cgroupsPath",
            "linux.resources.memory.limit",
            "linux.resources.memory.reservation",
            "linux.resources.memory.swap",
            "linux.resources.memory.kernel",
            "linux.resources.memory.swappiness",
            "linux.resources.memory.disableOOMKiller",
            "linux.resources.cpu.shares",
            "linux.resources.cpu.quota",
            "linux.resources.cpu.period",
            "linux.resources.cpu.cpus",
            "linux.resources.cpu.mems",
            "linux.resources.cpu.realtimeRuntime",
            "linux.resources.cpu.realtimePeriod",
            "linux.resources.pids.limit",
            "linux.resources.blockIO",
            "linux.resources.hugepageLimits",
            "linux.resources.network",
            "linux.resources.rdma",
            "linux.resources.unified",
            "linux.resources.devices",
            "linux.sysctl",
            "linux.seccomp",
            "linux.rootfsPropagation",
            "linux.maskedPaths",
            "linux.readonlyPaths",
            "linux.mountLabel",
            "linux.personality",
            "linux.intelRdt",
            "linux.timeOffsets",
        ] {
            let tick = format!("`{f}`");
            assert!(
                names.iter().any(|n| n.starts_with(&tick)),
                "docs/translation.md has no row for {f}"
            );
        }
    }

    #[test]
    fn doc_table_rows_hold() {
        let rows = rows();
        assert!(rows.len() > 80, "{} rows", rows.len());
        for (row, status) in rows {
            let (patch, cg, expect) =
                case(&row).unwrap_or_else(|| panic!("no test case for row {row}"));
            let name = row.split('`').nth(1).unwrap();
            let name = name.split('[').next().unwrap();
            let s = spec(patch);
            let got = plan(&s, &ProxmoxSettings::default(), host(cg));
            let applied = status.starts_with("applied");
            match (&expect, status.as_str()) {
                (Refused, "refused") => {
                    let err = got.expect_err(&row).to_string();
                    assert!(err.contains(name), "{row}: {err}");
                    continue;
                }
                (Accepted, "ignored" | "applied (lxc)" | "applied (pct)" | "applied (nexcage)") => {
                }
                (Arg(..) | Raw(_) | Init(_) | Process(_) | Seccomp, _) if applied => {}
                _ => panic!("{row}: status {status:?} does not match its test"),
            }
            let p = got.unwrap_or_else(|e| panic!("{row}: {e}"));
            let args = p
                .create_args(100, "local:vztmpl/T.tar.zst", "local-lvm", 1)
                .join("\n");
            let raw: Vec<String> = p.raw_lines.iter().map(RawLine::render).collect();
            match expect {
                Arg(flag, value) => assert!(
                    args.split("\n--")
                        .any(|a| a.starts_with(&format!("{flag}\n")) && a.contains(value)),
                    "{row}: --{flag} {value} not in {args}"
                ),
                Raw(line) => assert!(
                    raw.iter().any(|r| r == line),
                    "{row}: {line} not in {raw:?}"
                ),
                Init(text) => {
                    let json = serde_json::to_string(&p.init).unwrap();
                    assert!(json.contains(text), "{row}: {text} not in {json}");
                }
                Process(text) => {
                    let dbg =
                        crate::bridge::init::prepared_debug(s.process().as_ref().unwrap()).unwrap();
                    assert!(dbg.contains(text), "{row}: {text} not in {dbg}");
                }
                Seccomp => assert!(p.seccomp.is_some(), "{row}: no filter"),
                Accepted | Refused => {}
            }
        }
    }
}

/// fixtures/bundles/golden/<name>/config.json -> pct-args.txt, raw-lines.txt
/// and init.json, or error.txt. UPDATE_GOLDEN=1 rewrites them.
#[cfg(test)]
mod golden {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bundles/golden");

    fn outputs(config: &Path) -> Vec<(&'static str, String)> {
        let text = std::fs::read_to_string(config).unwrap();
        let spec: Spec = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => return vec![("error.txt", format!("invalid config.json: {e}\n"))],
        };
        let host = HostFacts {
            mem_total_mib: 2048,
            swap_total_mib: 0,
            cgroup: CgroupVersion::V1,
        };
        match plan(&spec, &ProxmoxSettings::default(), host) {
            Err(e) => vec![("error.txt", format!("{e}\n"))],
            Ok(p) => {
                let lines = |v: Vec<String>| v.iter().map(|l| format!("{l}\n")).collect::<String>();
                vec![
                    (
                        "pct-args.txt",
                        lines(p.create_args(100, "local:vztmpl/T.tar.zst", "local-lvm", 1)),
                    ),
                    (
                        "raw-lines.txt",
                        lines(p.raw_lines.iter().map(RawLine::render).collect()),
                    ),
                    (
                        "init.json",
                        format!("{}\n", serde_json::to_string_pretty(&p.init).unwrap()),
                    ),
                ]
            }
        }
    }

    #[test]
    fn golden_bundles_translate_as_recorded() {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut dirs: Vec<_> = std::fs::read_dir(DIR)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        assert!(dirs.len() >= 12, "only {} golden bundles", dirs.len());
        let mut failures = Vec::new();
        for dir in dirs {
            let outs = outputs(&dir.join("config.json"));
            if update {
                for f in ["error.txt", "pct-args.txt", "raw-lines.txt", "init.json"] {
                    let _ = std::fs::remove_file(dir.join(f));
                }
            }
            for (file, got) in outs {
                let path = dir.join(file);
                if update {
                    std::fs::write(&path, &got).unwrap();
                    continue;
                }
                let want = std::fs::read_to_string(&path).unwrap_or_default();
                if want != got {
                    failures.push(format!(
                        "{}:\n--- want\n{want}--- got\n{got}",
                        path.display()
                    ));
                }
            }
            if dir
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("hostile-")
            {
                assert!(
                    dir.join("error.txt").exists() || update,
                    "{} must be refused",
                    dir.display()
                );
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
