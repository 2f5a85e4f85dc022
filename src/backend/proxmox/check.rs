//! `nexcage check` for a Proxmox VE node: the tools pve-container brings,
//! the storages creates need, the bridge, root's subordinate ids, AppArmor,
//! `host-managed` networks and the template cache. Every item only reads
//! or asks (`pvesm status`, pct's verification-only probe); no guest or
//! template is made.

use std::path::Path;
use std::time::Duration;

use super::base::LINKED_CLONE_TYPES;
use super::driver::DriverError;
use super::node::{Node, StorageUse};
use super::pct;
use super::settings::{ProxmoxSettings, RootMode};
use super::translate::namespaces::DEFAULT_IDMAP;
use crate::backend::{Check, Template};

/// The host range pve-container maps unprivileged guests to.
const ID_RANGE: (u64, u64) = (DEFAULT_IDMAP.1, DEFAULT_IDMAP.2);
/// Below this much free space a storage is reported as nearly full.
const LOW_SPACE: u64 = 1 << 30;

/// `templates` lists the converted templates on the template storage given.
pub fn run(
    node: &Node,
    templates: impl FnOnce(&str) -> Result<Vec<Template>, String>,
) -> Vec<Check> {
    let s = node.settings;
    let mut out = Vec::new();
    for (name, path, package) in [
        ("pct", &s.pct, "pve-container"),
        ("pveam", &s.pveam, "pve-manager"),
        ("pvesm", &s.pvesm, "libpve-storage-perl"),
        ("pvesh", &s.pvesh, "pve-manager"),
    ] {
        out.push(tool(name, path, package));
    }
    out.push(lxc_version(node.tools.timeout));
    out.push(storage(node, StorageUse::Root).0);
    let (vztmpl, template_storage) = storage(node, StorageUse::Templates);
    out.push(vztmpl);
    out.push(bridge(&s.bridge));
    out.push(id_range("subuid", &s.subuid));
    out.push(id_range("subgid", &s.subgid));
    out.push(apparmor(Path::new("/sys")));
    out.push(host_managed(node));
    // On the storage just checked: the listing needs no second `pvesm status`.
    let templates = match template_storage {
        Some(id) => templates(&id),
        None => Err("no template storage".to_string()),
    };
    out.push(template_cache(s, templates));
    out
}

fn tool(name: &str, path: &Path, package: &str) -> Check {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            Check::ok(name, path.display().to_string())
        }
        Ok(_) => Check::fail(
            name,
            format!("{} is not an executable file", path.display()),
            format!("install {package}, or set [proxmox] {name} in config.toml"),
        ),
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", path.display()),
            format!("install {package}, or set [proxmox] {name} in config.toml"),
        ),
    }
}

/// pve-container asks `lxc-start --version` for LXC's version
/// (PVE/LXC.pm get_lxc_version), from PATH as it does.
fn lxc_version(timeout: Duration) -> Check {
    match pct::run(Path::new("lxc-start"), ["--version"], timeout) {
        Ok(out) => match out.lines().next().map(str::trim) {
            Some(v) if v.starts_with(|c: char| c.is_ascii_digit()) => {
                Check::ok("lxc", format!("lxc-start {v}"))
            }
            other => Check::fail(
                "lxc",
                format!("lxc-start --version printed {:?}", other.unwrap_or("")),
                "reinstall lxc-pve",
            ),
        },
        Err(e) => Check::fail("lxc", e.to_string(), "install lxc-pve (pct runs lxc-start)"),
    }
}

fn gib(kib: u64) -> String {
    format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0))
}

/// The storage a create would use for `usage` (node.rs chooses it for
/// both), its state and free space; and its id, where there is one.
fn storage(node: &Node, usage: StorageUse) -> (Check, Option<String>) {
    let (content, key) = (usage.content(), usage.key());
    let name = format!("storage {content}");
    let add = format!(
        "add '{content}' to a storage's content (pvesm set ID --content ...,{content}), or set {key} in config.toml"
    );
    let (id, rows) = match node.storage_in_use(usage) {
        Ok(found) => found,
        Err(e) => {
            let hint = match e {
                DriverError::NoStorage { .. } => add,
                DriverError::AmbiguousStorage { .. } => {
                    format!("set {key} in config.toml to one of them")
                }
                _ => "pvesm must work for nexcage to find its storages".to_string(),
            };
            return (Check::fail(name, e.to_string(), hint), None);
        }
    };
    let Some(row) = rows.iter().find(|r| r.id == id) else {
        let whose = if node.configured(usage).is_some() {
            format!("{key} = {id:?}")
        } else {
            format!("{id} (remembered from an earlier create)")
        };
        let check = Check::fail(
            name,
            format!("{whose} is not an enabled storage with '{content}' content"),
            add,
        );
        return (check, Some(id));
    };
    let detail = format!(
        "{}: {} free of {}",
        row.id,
        gib(row.available_kib),
        gib(row.total_kib)
    );
    let clone_mode = usage == StorageUse::Root && node.settings.root == RootMode::Clone;
    let check = if clone_mode && !LINKED_CLONE_TYPES.contains(&row.kind.as_str()) {
        Check::fail(
            name,
            format!(
                "{}: root = \"clone\" needs linked clones, and a {} storage has none",
                row.id, row.kind
            ),
            "set storage to an lvmthin, zfspool, rbd or btrfs storage, or another root mode",
        )
    } else if row.status != "active" {
        Check::fail(
            name,
            format!("{}: {}", row.id, row.status),
            "activate the storage (pvesm status shows why)",
        )
    } else if row.available_kib * 1024 < LOW_SPACE {
        Check::warn(name, detail, "free space on the storage")
    } else {
        Check::ok(name, detail)
    };
    (check, Some(id))
}

/// The bridge net0 uses, looked up in this process's network namespace
/// (where pct start plugs the guest's veth).
fn bridge(name: &str) -> Check {
    match crate::bridge::netlink::index(name) {
        Ok(i) => Check::ok("bridge", format!("{name} (ifindex {i})")),
        Err(_) => Check::fail(
            "bridge",
            format!("{name}: no such interface"),
            "add it in /etc/network/interfaces (ifreload -a), or set [proxmox] bridge in config.toml",
        ),
    }
}

/// Whether `root:START:COUNT` lines of `file` hold pve-container's range.
fn id_range(which: &str, file: &Path) -> Check {
    let name = format!("ids {which}");
    let hint = format!(
        "add root:{}:{} to {} for unprivileged guests",
        ID_RANGE.0,
        ID_RANGE.1,
        file.display()
    );
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return Check::fail(name, format!("{}: {e}", file.display()), hint),
    };
    if covers(&text, ID_RANGE) {
        Check::ok(
            name,
            format!("root:{}:{} in {}", ID_RANGE.0, ID_RANGE.1, file.display()),
        )
    } else {
        Check::fail(
            name,
            format!(
                "{} gives root no range holding {}..{}",
                file.display(),
                ID_RANGE.0,
                ID_RANGE.0 + ID_RANGE.1 - 1
            ),
            hint,
        )
    }
}

fn covers(text: &str, (start, count): (u64, u64)) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        match f.as_slice() {
            [user, s, c] if *user == "root" || *user == "0" => {
                match (s.parse::<u64>(), c.parse::<u64>()) {
                    (Ok(s), Ok(c)) => s <= start && s + c >= start + count,
                    _ => false,
                }
            }
            _ => false,
        }
    })
}

/// pve-container confines every guest with an AppArmor profile (and
/// relies on it for mount mediation); without it guests run unconfined.
fn apparmor(sys: &Path) -> Check {
    let enabled = std::fs::read_to_string(sys.join("module/apparmor/parameters/enabled"))
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    if !enabled {
        return Check::warn(
            "apparmor",
            "not enabled in the kernel",
            "boot with apparmor=1 security=apparmor: guests run without pve-container's profile",
        );
    }
    if sys.join("kernel/security/apparmor/.load").exists() {
        Check::ok("apparmor", "enabled, profiles can be loaded")
    } else {
        Check::warn(
            "apparmor",
            "enabled, but securityfs is not mounted",
            "mount -t securityfs securityfs /sys/kernel/security",
        )
    }
}

fn host_managed(node: &Node) -> Check {
    match node.probe_host_managed() {
        Ok(true) => Check::ok("host-managed", "pct configures guest addresses (net0 host-managed)"),
        Ok(false) => Check::warn(
            "host-managed",
            "pct does not know host-managed on netN",
            "upgrade pve-container to 6.0.15 or later; until then nexcage's init sets org.proxmox.net0.ip itself",
        ),
        Err(e) => Check::warn("host-managed", e.to_string(), "check that pct runs"),
    }
}

fn template_cache(s: &ProxmoxSettings, templates: Result<Vec<Template>, String>) -> Check {
    let list = match templates {
        Ok(l) => l,
        Err(e) => {
            return Check::warn(
                "template cache",
                e,
                "fix the template storage (see storage vztmpl)",
            )
        }
    };
    let bytes: u64 = list.iter().map(|t| t.bytes).sum();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let limits = s.template_cache_limits();
    let bound = match (limits.max_bytes, limits.max_count) {
        (None, None) => "no limit".to_string(),
        (b, c) => format!(
            "limit {} and {}",
            b.map_or("no size bound".into(), mib),
            c.map_or("no count bound".into(), |c| format!("{c} templates"))
        ),
    };
    let detail = format!("{} templates, {} ({bound})", list.len(), mib(bytes));
    let over = limits.exceeded(list.len(), bytes);
    if over {
        Check::warn(
            "template cache",
            detail,
            "nexcage template prune (the next conversion also evicts)",
        )
    } else {
        Check::ok("template cache", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CheckStatus;

    /// Create (root_storage) and check (storage) on a node whose pvesm
    /// prints `<dir>/pvesm.out`.
    struct TwoStorages {
        dir: tempfile::TempDir,
        tools: super::super::pct::Tools,
    }

    impl TwoStorages {
        fn new() -> TwoStorages {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let pvesm = dir.path().join("pvesm");
            let script = format!("#!/bin/sh\ncat '{}.out'\n", pvesm.display());
            std::fs::write(&pvesm, script).unwrap();
            std::fs::set_permissions(&pvesm, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut tools = super::super::pct::Tools::from_settings(&ProxmoxSettings::default());
            tools.pvesm = pvesm;
            TwoStorages { dir, tools }
        }

        fn lists(&self, ids: &[&str]) {
            let mut out = "Name Type Status Total(KiB) Used(KiB) Available(KiB) %\n".to_string();
            for id in ids {
                out += &format!("{id} dir active 20971520 0 20971520 0.00%\n");
            }
            std::fs::write(self.dir.path().join("pvesm.out"), out).unwrap();
        }

        /// What create would use and what check says.
        fn choices(&self, s: &ProxmoxSettings) -> (Result<String, String>, Check) {
            let node = Node {
                settings: s,
                tools: &self.tools,
                state_root: self.dir.path(),
            };
            let create = node.root_storage().map_err(|e| e.to_string());
            (create, storage(&node, StorageUse::Root).0)
        }
    }

    #[test]
    fn check_and_create_choose_the_same_of_two_rootdir_storages() {
        let node = TwoStorages::new();
        let mut s = ProxmoxSettings::default();
        node.lists(&["one", "two"]);
        let (create, check) = node.choices(&s);
        assert!(create.unwrap_err().contains("one, two"));
        assert_eq!(check.status, CheckStatus::Fail);
        assert!(check.detail.contains("one, two"), "{}", check.detail);

        s.storage = Some("two".into());
        let (create, check) = node.choices(&s);
        assert_eq!(create.unwrap(), "two");
        assert!(check.detail.starts_with("two: "), "{}", check.detail);

        // A create remembered the node's only storage; a second one added
        // since does not change what the next create uses, nor what check
        // reports.
        s.storage = None;
        node.lists(&["one"]);
        assert_eq!(node.choices(&s).0.unwrap(), "one");
        node.lists(&["one", "two"]);
        let (create, check) = node.choices(&s);
        assert_eq!(create.unwrap(), "one");
        assert_eq!(check.status, CheckStatus::Ok, "{}", check.detail);
        assert!(check.detail.starts_with("one: "), "{}", check.detail);
    }

    #[test]
    fn roots_subordinate_range_must_hold_pve_containers_map() {
        assert!(covers("root:100000:65536\n", ID_RANGE));
        assert!(covers("lxc:1:2\n0:0:4294967295\n", ID_RANGE));
        assert!(!covers("root:100000:1000\n", ID_RANGE));
        assert!(!covers("admin:100000:65536\n", ID_RANGE));
        assert!(!covers("", ID_RANGE));
    }

    #[test]
    fn apparmor_off_is_a_warning_not_a_failure() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(apparmor(sys.path()).status, CheckStatus::Warn);
        let p = sys.path().join("module/apparmor/parameters");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("enabled"), "Y\n").unwrap();
        std::fs::create_dir_all(sys.path().join("kernel/security/apparmor")).unwrap();
        std::fs::write(sys.path().join("kernel/security/apparmor/.load"), "").unwrap();
        assert_eq!(apparmor(sys.path()).status, CheckStatus::Ok);
    }

    #[test]
    fn a_cache_over_its_bounds_is_a_warning() {
        let mut s = ProxmoxSettings::default();
        let list = || {
            Ok(vec![
                Template::sample("a", 10 << 20, 0),
                Template::sample("b", 5 << 20, 0),
            ])
        };
        let c = template_cache(&s, list());
        assert_eq!(c.status, CheckStatus::Ok);
        assert!(
            c.detail.starts_with("2 templates, 15.0 MiB (no limit)"),
            "{}",
            c.detail
        );
        s.template_cache_max_count = Some(1);
        assert_eq!(template_cache(&s, list()).status, CheckStatus::Warn);
    }
}
