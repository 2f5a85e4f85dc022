//! What a stock Proxmox VE node does differently from a lenient one, and
//! nexcage coping with it: cluster-wide VMID races, the empty cluster list,
//! the guest's inner `ns` cgroup, VMIDs that rotate, and the options a
//! Proxmox guest cannot honour for an OCI container.

mod common;

use common::*;
use serde_json::json;

fn vmlist(node: &Node) -> serde_json::Value {
    let text = std::fs::read_to_string(node.root().join("etc/pve/.vmlist")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn an_empty_cluster_list_has_no_ids_and_the_first_create_still_works() {
    let node = Node::new();
    // pmxcfs writes {"version": N} alone when no guest exists.
    assert!(vmlist(&node).get("ids").is_none(), "{}", vmlist(&node));
    let bundle = node.bundle("first", json!({"process": {"args": ["true"]}}));
    let out = node.create(&bundle, "first", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    assert_eq!(node.vmids().len(), 1);
    // The list does track guests, so its emptiness above and below is real.
    let vmid = node.vmids()[0].to_string();
    assert!(
        vmlist(&node)["ids"].get(&vmid).is_some(),
        "{}",
        vmlist(&node)
    );
    assert!(node.run(["delete", "--force", "first"]).status.success());
    assert!(vmlist(&node).get("ids").is_none(), "{}", vmlist(&node));
}

#[test]
fn a_vmid_lost_to_another_node_at_write_time_is_retried_with_the_next() {
    let node = Node::new();
    // The node's first free id is taken by another node between pct's
    // check and its config write; pmxcfs then refuses the rename.
    let races = node.root().join("etc/pve-sim");
    std::fs::create_dir_all(&races).unwrap();
    std::fs::write(races.join("vmid-races"), "100\n").unwrap();
    let direct = node.pct([
        "create",
        "100",
        "local:vztmpl/nonexistent.tar.zst",
        "--ostype",
        "unmanaged",
        "--storage",
        "local-lvm",
    ]);
    assert!(
        stderr(&direct).contains(
            "close (rename) atomic file '/etc/pve/nodes/pve/lxc/100.conf' failed: File exists"
        ),
        "{}",
        stderr(&direct)
    );
    // 100 now belongs to the other node; so does the next one nexcage tries.
    std::fs::write(races.join("vmid-races"), "100\n101\n").unwrap();

    let bundle = node.bundle("raced", json!({"process": {"args": ["true"]}}));
    let out = node.create(&bundle, "raced", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    assert_eq!(node.vmids(), vec![102]);
    let ids = vmlist(&node)["ids"].clone();
    assert_eq!(ids["101"]["node"], "pve-race", "{ids}");
    assert_eq!(ids["102"]["node"], "pve", "{ids}");
    assert_eq!(node.reservations(), vec!["102".to_string()]);
    assert!(node.run(["delete", "--force", "raced"]).status.success());
    assert!(!node.state_root().join("~nexcage/vmids/102").exists());
}

#[test]
fn the_guest_lives_in_the_inner_ns_cgroup_below_its_limits() {
    let node = Node::new();
    start_running(&node, "inner", json!(["sleep", "100"]));
    let pid = init_pid(&node, "inner");
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let vmid = node.vmids()[0];
    let suffix = format!("/lxc/{vmid}/ns");
    assert!(
        table.lines().any(|l| l.ends_with(&suffix)),
        "init not in the inner cgroup: {table}"
    );
    // ps, pause and the pids limit work over that layout.
    let out = node.run(["ps", "--format", "json", "inner"]);
    assert!(out.status.success(), "ps: {}", stderr(&out));
    let pids: Vec<i32> = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    assert!(node.run(["pause", "inner"]).status.success());
    assert_eq!(node.status("inner"), "paused");
    assert!(node.run(["resume", "inner"]).status.success());
    assert_eq!(node.status("inner"), "running");
    let out = node.run(["update", "--pids-limit", "77", "inner"]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    // The limit belongs above the guest's own cgroup root, where the guest
    // cannot raise it.
    let limit = limit_file(pid, "pids", "pids.max", "pids.max");
    assert_eq!(std::fs::read_to_string(&limit).unwrap().trim(), "77");
    assert!(node.run(["delete", "--force", "inner"]).status.success());
}

#[test]
fn vmids_rotate_so_a_failed_guests_id_is_not_handed_out_next() {
    let node = Node::new();
    // A create that fails after pct create (the program does not exist)
    // destroys its guest and frees its id...
    let bad = node.bundle("bad", json!({"process": {"args": ["/nonexistent"]}}));
    let out = node.create(&bad, "bad", &[]);
    assert!(!out.status.success());
    assert!(node.vmids().is_empty());
    // ...and the next create gets the next id, not the same one again.
    let good = node.bundle("good", json!({"process": {"args": ["true"]}}));
    let out = node.create(&good, "good", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    assert_eq!(node.vmids(), vec![101]);
    assert!(node.run(["delete", "--force", "good"]).status.success());
}

#[test]
fn onboot_and_custom_id_maps_are_refused_by_name() {
    let node = Node::new();
    let onboot = node.bundle(
        "onboot",
        json!({"process": {"args": ["true"]},
               "annotations": {"org.proxmox.onboot": "1"}}),
    );
    let out = node.create(&onboot, "onboot", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("org.proxmox.onboot"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    let mapped = node.bundle(
        "mapped",
        json!({"process": {"args": ["true"]},
               "linux": {"namespaces": [{"type": "user"}, {"type": "network"}, {"type": "mount"}, {"type": "pid"}],
                         "uidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}],
                         "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}}),
    );
    let out = node.create(&mapped, "mapped", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("linux.uidMappings"),
        "{}",
        stderr(&out)
    );
    assert!(node.vmids().is_empty(), "a refused bundle made a guest");
    // Proxmox's own map is what pct unpacks with, so it is accepted.
    let default = node.bundle(
        "default-map",
        json!({"process": {"args": ["true"]},
               "linux": {"namespaces": [{"type": "user"}, {"type": "network"}, {"type": "mount"}, {"type": "pid"}],
                         "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                         "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
    );
    let out = node.create(&default, "default-map", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    assert!(node
        .run(["delete", "--force", "default-map"])
        .status
        .success());
}
