//! Every bad input gets a one-line `nexcage: ...` error, exit 1, and leaves
//! nothing behind: no guest, no state, no VMID reservation.

mod common;

use common::*;
use serde_json::json;

#[test]
fn missing_bundle_and_bad_config() {
    let node = Node::new();
    let out = node.run(["create", "--bundle", "/nonexistent/bundle", "x"]);
    fails_with(&out, "/nonexistent/bundle");
    let bundle = node.bundle("bad", json!({}));
    std::fs::write(bundle.join("config.json"), "{ nope").unwrap();
    fails_with(&node.create(&bundle, "bad", &[]), "config.json");
    assert_clean(&node);
}

#[test]
fn bad_ids_are_refused_before_any_work() {
    let node = Node::new();
    let bundle = node.bundle("ok", json!({}));
    for id in ["../escape", "a/b", "..", "with space", "new\nline"] {
        let out = node.create(&bundle, id, &[]);
        fails_with(&out, "invalid container id");
    }
    assert_clean(&node);
    assert!(node.templates().is_empty(), "work was done for a bad id");
}

#[test]
fn duplicate_id_start_twice_delete_running_kill_stopped() {
    let node = Node::new();
    let bundle = node.bundle("dup", json!({"process": {"args": ["sleep", "1000"]}}));
    let create = || node.create(&bundle, "dup", &[]);
    assert!(create().status.success());
    fails_with(&create(), "container with given ID already exists: dup");
    assert_eq!(node.vmids().len(), 1, "the duplicate made a guest");

    assert!(node.run(["start", "dup"]).status.success());
    fails_with(&node.run(["start", "dup"]), "already running");
    fails_with(&node.run(["delete", "dup"]), "not stopped: running");
    assert!(node.run(["kill", "dup", "SIGKILL"]).status.success());
    node.wait_status("dup", "stopped");
    fails_with(&node.run(["kill", "dup"]), "container not running");
    fails_with(&node.run(["start", "dup"]), "has stopped");
    assert!(node.run(["delete", "dup"]).status.success());
    assert_clean(&node);
}

#[test]
fn unknown_ids() {
    let node = Node::new();
    for cmd in ["state", "start", "kill", "delete"] {
        fails_with(&node.run([cmd, "ghost"]), "container does not exist");
    }
    let out = node.run(["delete", "--force", "ghost"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn errors_go_to_the_log_file_as_one_json_line() {
    let node = Node::new();
    let log = node.root().join("log.json");
    let out = node
        .nexcage(["--log"])
        .arg(&log)
        .args(["--log-format", "json", "state", "ghost"])
        .output()
        .unwrap();
    fails_with(&out, "does not exist");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"]
        .as_str()
        .unwrap()
        .contains("container does not exist"));
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn pct_create_failure_rolls_back() {
    // A storage the node does not have: pct create refuses it.
    let node = Node::with_config("storage = \"nosuchstorage\"");
    let bundle = node.bundle("rb", json!({}));
    let out = node.create(&bundle, "rb", &[]);
    fails_with(&out, "pct create");
    assert_clean(&node);
    assert!(
        node.templates().is_empty(),
        "the template converted for the failed create is left"
    );
}

#[test]
fn failure_after_pct_create_destroys_the_guest() {
    let node = Node::new();
    let bundle = node.bundle("nox", json!({"process": {"args": ["/no/such/program"]}}));
    let out = node.create(&bundle, "nox", &[]);
    fails_with(&out, "/no/such/program");
    assert_clean(&node);
}

#[test]
fn capabilities_the_guest_cannot_hold_fail_create_by_name() {
    // podman --privileged asks for every capability; Proxmox guests never
    // hold what LXC's common.conf drops (sys_module among them).
    let node = Node::new();
    let caps = json!(["CAP_CHOWN", "CAP_SYS_MODULE"]);
    let bundle = node.bundle(
        "caps",
        json!({"process": {"capabilities": {"bounding": caps, "effective": caps, "permitted": caps}}}),
    );
    let out = node.create(&bundle, "caps", &[]);
    fails_with(&out, "CAP_SYS_MODULE cannot be granted");
    assert_clean(&node);
}

#[test]
fn runc_surface_commands_on_unknown_ids() {
    let node = Node::new();
    for args in [
        &["exec", "ghost", "true"][..],
        &["ps", "ghost"],
        &["pause", "ghost"],
        &["resume", "ghost"],
        &["update", "--memory", "100M", "ghost"],
        &["events", "--stats", "ghost"],
    ] {
        fails_with(&node.run(args), "container does not exist: ghost");
    }
}
