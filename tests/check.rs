//! `nexcage check` on a simulated node, as it is and broken one way at a
//! time: no storage for root volumes, no bridge, no subordinate ids.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Node;

/// `nexcage check` in the node's network namespace, where its vmbr0 is
/// (on a real node, the host's).
fn check(node: &Node, format: &str) -> Output {
    let netns = std::fs::read_to_string(node.root().join("run/pve-sim/netns")).unwrap();
    let inner = node.nexcage(["check", "--format", format]);
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", netns.trim()))
        .arg("--")
        .arg(inner.get_program());
    cmd.args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.output().unwrap()
}

/// name -> (status, line) of the text output.
fn statuses(out: &Output) -> Vec<(String, String)> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let status = l.split_whitespace().next().unwrap().to_string();
            (status, l.to_string())
        })
        .collect()
}

fn line<'a>(lines: &'a [(String, String)], name: &str) -> &'a (String, String) {
    lines
        .iter()
        .find(|(_, l)| l[6..].starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
}

const NAMES: &[&str] = &[
    "state root",
    "cgroup",
    "pct",
    "pveam",
    "pvesm",
    "pvesh",
    "lxc",
    "storage rootdir",
    "storage vztmpl",
    "bridge",
    "ids subuid",
    "ids subgid",
    "apparmor",
    "host-managed",
    "template cache",
];

#[test]
fn a_stock_node_passes_with_one_line_per_check() {
    let node = Node::new();
    let out = check(&node, "text");
    let lines = statuses(&out);
    assert!(
        out.status.success(),
        "{lines:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.len(), NAMES.len(), "{lines:#?}");
    for name in NAMES {
        let (status, l) = line(&lines, name);
        assert!(["ok", "warn"].contains(&status.as_str()), "{l}");
    }
    assert!(line(&lines, "storage rootdir").1.contains("local-lvm: "));
    assert!(line(&lines, "storage vztmpl").1.contains("local: "));
    assert!(line(&lines, "lxc").1.contains("lxc-start 5."));
    assert_eq!(line(&lines, "bridge").0, "ok");
    assert_eq!(line(&lines, "host-managed").0, "ok");

    let json = check(&node, "json");
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, NAMES);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|c| ["ok", "warn"].contains(&c["status"].as_str().unwrap())));
}

fn assert_fails(node: &Node, name: &str, hint: &str) {
    let out = check(node, "text");
    let lines = statuses(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    let (status, l) = line(&lines, name);
    assert_eq!(status, "fail", "{l}");
    assert!(l.contains(hint), "{l}");
    let failed: Vec<&String> = lines
        .iter()
        .filter(|(s, _)| s == "fail")
        .map(|(_, l)| l)
        .collect();
    assert_eq!(failed.len(), 1, "only {name} fails: {failed:#?}");
    let json = check(node, "json");
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    assert_eq!(c["status"], "fail");
    assert!(c["hint"].as_str().unwrap().contains(hint), "{c}");
}

#[test]
fn a_node_without_a_rootdir_storage_fails_the_check() {
    let node = Node::new();
    // The installer's `local` alone: templates, but nowhere for root volumes.
    std::fs::write(
        node.root().join("etc/pve/storage.cfg"),
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,import\n",
    )
    .unwrap();
    assert_fails(&node, "storage rootdir", "--content ...,rootdir");
}

#[test]
fn root_mode_clone_on_a_storage_without_linked_clones_fails_the_check() {
    let node = Node::with_config("root = \"clone\"");
    // local-lvm (lvmthin) clones linked: a stock node passes.
    let out = check(&node, "text");
    assert_eq!(out.status.code(), Some(0), "{:#?}", statuses(&out));
    // Root volumes on the dir storage `local` instead.
    std::fs::write(
        node.root().join("etc/pve/storage.cfg"),
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,import,rootdir\n",
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(node.state_root().join("~nexcage/cache"));
    assert_fails(&node, "storage rootdir", "lvmthin, zfspool, rbd or btrfs");
}

#[test]
fn a_node_without_its_bridge_fails_the_check() {
    let node = Node::new();
    let netns = std::fs::read_to_string(node.root().join("run/pve-sim/netns")).unwrap();
    let st = Command::new("ip")
        .args(["-n", netns.trim(), "link", "del", "vmbr0"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_fails(&node, "bridge", "/etc/network/interfaces");
}

#[test]
fn a_node_without_roots_subordinate_ids_fails_the_check() {
    let node = Node::new();
    let subuid = node.root().join("subuid");
    std::fs::write(&subuid, "admin:100000:65536\nroot:200000:65536\n").unwrap();
    node.write_config(&format!("subuid = {:?}\n", Path::new(&subuid)));
    assert_fails(&node, "ids subuid", "add root:100000:65536 to");
}

/// Each `pvesm status` variant a check asks runs once, the first time
/// (nothing remembered yet) and again after: the template listing uses
/// the storage the vztmpl check chose, and both checks choose as a create
/// does from their one listing.
#[test]
fn check_lists_each_storage_content_once() {
    let node = Node::new();
    let [real, logged, log] =
        ["bin/pvesm", "pvesm-logged", "pvesm.log"].map(|p| node.root().join(p));
    let wrapper = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
        log.display(),
        real.display()
    );
    std::fs::write(&logged, wrapper).unwrap();
    std::fs::set_permissions(&logged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = std::fs::read_to_string(&node.config).unwrap();
    let cfg = cfg.replace(&format!("{real:?}"), &format!("{logged:?}"));
    std::fs::write(&node.config, cfg).unwrap();
    for round in ["first", "second"] {
        std::fs::write(&log, "").unwrap();
        let out = check(&node, "text");
        assert!(out.status.success(), "{:#?}", statuses(&out));
        let runs = std::fs::read_to_string(&log).unwrap();
        let mut status: Vec<&str> = runs.lines().filter(|l| l.starts_with("status")).collect();
        status.sort_unstable();
        assert_eq!(
            status,
            [
                "status --content rootdir --enabled 1",
                "status --content vztmpl --enabled 1"
            ],
            "{round} check ran:\n{runs}"
        );
    }
}

/// What the node says now, not what an earlier create remembered: after
/// pve-container went back to a version without `host-managed`, check
/// says so.
#[test]
fn check_asks_pct_about_host_managed_afresh() {
    let node = Node::new();
    let line = |out: &Output| {
        statuses(out)
            .into_iter()
            .find(|(_, l)| l.contains("host-managed"))
            .unwrap()
    };
    let (status, _) = line(&check(&node, "text"));
    assert_eq!(status, "ok");
    node.set_pve_container_version("6.0.14");
    let (status, l) = line(&check(&node, "text"));
    assert_ne!(status, "ok", "{l}");
    assert!(l.contains("does not know host-managed"), "{l}");
}
