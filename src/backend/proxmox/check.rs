//! `nexcage check` for a Proxmox VE node: the tools pve-container brings,
//! the storages creates need, the bridge, root's subordinate ids, AppArmor,
//! `host-managed` networks and the template cache. Every item only reads
//! or asks (`pvesm status`, pct's verification-only probe); no guest or
//! template is made.

use std::path::Path;
use std::time::Duration;

use super::node::Node;
use super::pct;
use super::settings::ProxmoxSettings;
use super::translate::namespaces::DEFAULT_IDMAP;
use crate::backend::{Check, Template};

/// The host range pve-container maps unprivileged guests to.
const ID_RANGE: (u64, u64) = (DEFAULT_IDMAP.1, DEFAULT_IDMAP.2);
/// Below this much free space a storage is reported as nearly full.
const LOW_SPACE: u64 = 1 << 30;

pub fn run(node: &Node, templates: Result<Vec<Template>, String>) -> Vec<Check> {
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
    out.push(storage(node, "rootdir", "storage", s.storage.as_deref()));
    out.push(storage(
        node,
        "vztmpl",
        "template_storage",
        s.template_storage.as_deref(),
    ));
    out.push(bridge(&s.bridge));
    out.push(id_range("subuid", &s.subuid));
    out.push(id_range("subgid", &s.subgid));
    out.push(apparmor(Path::new("/sys")));
    out.push(host_managed(node));
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

/// One row of `pvesm status` (pvesm.pm print_status).
#[derive(Debug, PartialEq, Eq)]
struct StorageRow {
    id: String,
    status: String,
    available_kib: u64,
}

fn status_rows(out: &str) -> Result<Vec<StorageRow>, String> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        Some(h) if h.split_whitespace().next() == Some("Name") => {}
        other => return Err(format!("pvesm status printed {:?}", other.unwrap_or(""))),
    }
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [id, _kind, status, _total, _used, avail, ..] => Ok(StorageRow {
                    id: id.to_string(),
                    status: status.to_string(),
                    available_kib: avail.parse().unwrap_or(0),
                }),
                _ => Err(format!("pvesm status printed {l:?}")),
            }
        })
        .collect()
}

fn gib(kib: u64) -> String {
    format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0))
}

/// The storage a create would use for `content`, as node.rs picks it, and
/// its free space.
fn storage(node: &Node, content: &str, key: &str, configured: Option<&str>) -> Check {
    let name = format!("storage {content}");
    let listed = node
        .tools
        .pvesm(["status", "--content", content, "--enabled", "1"])
        .map_err(|e| e.to_string())
        .and_then(|out| status_rows(&out));
    let rows = match listed {
        Ok(rows) => rows,
        Err(e) => return Check::fail(name, e, "pvesm must work for nexcage to find its storages"),
    };
    let add = format!(
        "add '{content}' to a storage's content (pvesm set ID --content ...,{content}), or set {key} in config.toml"
    );
    let row = match (configured, rows.as_slice()) {
        (Some(id), _) => match rows.iter().find(|r| r.id == id) {
            Some(r) => r,
            None => {
                return Check::fail(
                    name,
                    format!("{key} = {id:?} is not an enabled storage with '{content}' content"),
                    add,
                )
            }
        },
        (None, [one]) => one,
        (None, []) => {
            return Check::fail(
                name,
                format!("no enabled storage has '{content}' content"),
                add,
            )
        }
        (None, many) => {
            let ids: Vec<&str> = many.iter().map(|r| r.id.as_str()).collect();
            return Check::fail(
                name,
                format!(
                    "several storages have '{content}' content: {}",
                    ids.join(", ")
                ),
                format!("set {key} in config.toml to one of them"),
            );
        }
    };
    let detail = format!("{}: {} free", row.id, gib(row.available_kib));
    if row.status != "active" {
        Check::fail(
            name,
            format!("{}: {}", row.id, row.status),
            "activate the storage (pvesm status shows why)",
        )
    } else if row.available_kib * 1024 < LOW_SPACE {
        Check::warn(name, detail, "free space on the storage")
    } else {
        Check::ok(name, detail)
    }
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

    #[test]
    fn pvesm_status_rows_give_state_and_free_space() {
        let out = "Name             Type     Status     Total (KiB)      Used (KiB) Available (KiB)        %\nlocal-lvm     lvmthin     active        20971520         1048576        19922944    5.00%\nold            dir   inactive               0               0               0    0.00%\n";
        let rows = status_rows(out).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "local-lvm");
        assert_eq!(rows[0].available_kib, 19922944);
        assert_eq!(rows[1].status, "inactive");
        assert!(status_rows("garbage\n").is_err());
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
