//! Nothing leaks, whatever breaks (issue 15, items 1, 2 and 6): a damaged
//! record, ids that once named nexcage's own directories, a dead monitor.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// True while `pid` exists and has not exited (a zombie has).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 2..];
            after.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[track_caller]
fn wait_dead(pid: i32, what: &str) {
    wait_until(
        &format!("{what} (pid {pid}) to end"),
        Duration::from_secs(20),
        || !alive(pid),
    );
}

/// Host pids of a container's monitor and process, from its state file.
fn pids(node: &Node, id: &str) -> (i32, i32) {
    let v = record(node, id);
    let pid = |k: &str| v[k]["pid"].as_i64().unwrap() as i32;
    (pid("monitor"), pid("process"))
}

fn guest_status(node: &Node, vmid: u32) -> String {
    let out = node.pct(["status", &vmid.to_string()]);
    stdout(&out).trim().to_string()
}

#[test]
fn delete_force_removes_whatever_is_left_of_a_damaged_record() {
    let node = Node::new();
    type Damage = fn(&Path);
    let damages: [(&str, Damage, Option<&str>); 4] = [
        (
            "truncated",
            |dir| {
                let p = dir.join("state.json");
                let text = std::fs::read(&p).unwrap();
                std::fs::write(&p, &text[..text.len() / 2]).unwrap();
            },
            Some("corrupt state file"),
        ),
        (
            "garbage",
            |dir| std::fs::write(dir.join("state.json"), b"\x00\xffnot json").unwrap(),
            Some("corrupt state file"),
        ),
        (
            "no-state-file",
            |dir| std::fs::remove_file(dir.join("state.json")).unwrap(),
            Some("container does not exist"),
        ),
        (
            "no-directory",
            |dir| std::fs::remove_dir_all(dir).unwrap(),
            None,
        ),
    ];
    for (id, damage, plain_error) in damages {
        start_running(&node, id, json!(["sleep", "1000"]));
        let (monitor, process) = pids(&node, id);
        damage(&node.state_root().join(id));
        if let Some(needle) = plain_error {
            // Without --force a damaged record is a one-line error.
            fails_with(&node.run(["delete", id]), needle);
        }
        // What it removed is told at debug level only.
        let debug = id == "no-state-file";
        let out = if debug {
            node.run(["--debug", "delete", "--force", id])
        } else {
            node.run(["delete", "--force", id])
        };
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        if debug {
            let err = stderr(&out);
            for what in [
                "removed the monitor",
                "removed guest",
                "removed the state directory",
            ] {
                assert!(err.contains(what), "{what:?} not in {err}");
            }
        } else {
            assert_eq!(stderr(&out), "", "{id}");
        }
        let _ = reap(monitor, Duration::from_secs(10));
        wait_dead(process, &format!("{id}: the container's process"));
        assert_clean(&node);
    }
    let out = node.run(["delete", "--force", "never-was"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_clean(&node);
}

#[test]
fn delete_force_keeps_a_guest_that_took_a_lost_reservations_vmid() {
    let node = Node::new();
    start_running(&node, "mine", json!(["sleep", "1000"]));
    let vmid = node.vmids()[0];
    let (monitor, process) = pids(&node, "mine");
    // The reservation of another id that lost its state names this guest's
    // VMID: its configuration does not mount that id's bridge, so it stays.
    let own = node.state_root().join("~nexcage/vmids");
    std::fs::remove_file(own.join(vmid.to_string())).unwrap();
    std::fs::write(own.join(vmid.to_string()), "lost").unwrap();
    std::fs::create_dir(node.state_root().join("lost")).unwrap();
    let out = node.run(["delete", "--force", "lost"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.vmids(), vec![vmid], "another's guest was destroyed");
    assert!(alive(monitor) && alive(process));
    assert!(
        node.reservations().is_empty(),
        "the lost reservation stayed"
    );
    assert_eq!(node.status("mine"), "running");
    let out = node.run(["delete", "--force", "mine"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = reap(monitor, Duration::from_secs(10));
    assert_clean(&node);
}

#[test]
fn ids_that_named_nexcage_s_own_directories_are_ordinary_ids() {
    let node = Node::new();
    start_running(&node, "other", json!(["sleep", "1000"]));
    let reserved = node.reservations();
    assert_eq!(reserved.len(), 1);
    for id in [".vmids", ".cache", "nexcage"] {
        // The id is no DNS name: the bundle names the host.
        let bundle = node.bundle(
            id,
            json!({"hostname": "h", "process": {"args": ["sleep", "1000"]}}),
        );
        let out = node.create(&bundle, id, &[]);
        assert!(out.status.success(), "create {id}: {}", stderr(&out));
        assert!(node.run(["start", id]).status.success(), "{id}");
        assert_eq!(node.status(id), "running", "{id}");
    }
    let list = stdout(&node.run(["list", "-q"]));
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        [".cache", ".vmids", "nexcage", "other"]
    );
    let monitors: Vec<i32> = [".vmids", ".cache", "nexcage", "other"]
        .iter()
        .map(|id| pids(&node, id).0)
        .collect();
    for id in [".vmids", ".cache", "nexcage"] {
        let out = node.run(["delete", "--force", id]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        assert!(!node.state_root().join(id).exists(), "{id}");
    }
    assert_eq!(
        node.reservations(),
        reserved,
        "delete .vmids took another's"
    );
    assert_eq!(node.vmids().len(), 1);
    assert_eq!(node.status("other"), "running");
    fails_with(&node.run(["delete", ".vmids"]), "container does not exist");
    let out = node.run(["delete", "--force", "other"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for m in monitors {
        let _ = reap(m, Duration::from_secs(10));
    }
    assert_clean(&node);
}

#[test]
fn own_files_move_out_of_the_id_namespace_on_an_upgraded_node() {
    let node = Node::new();
    let bundle = node.bundle("old", json!({"process": {"args": ["true"]}}));
    assert!(node.create(&bundle, "old", &[]).status.success());
    let (monitor, _) = pids(&node, "old");
    // Put the node back as an older nexcage left it.
    let root = node.state_root();
    std::fs::rename(root.join("~nexcage/vmids"), root.join(".vmids")).unwrap();
    std::fs::rename(root.join("~nexcage/cache"), root.join(".cache")).unwrap();
    std::fs::remove_dir(root.join("~nexcage")).unwrap();
    let vmid = node.vmids()[0];
    assert!(root.join(format!(".vmids/{vmid}")).exists());

    let list = stdout(&node.run(["list", "-q"]));
    assert_eq!(list.trim(), "old", "an old directory shows as a container");
    assert!(!root.join(".vmids").exists() && !root.join(".cache").exists());
    assert_eq!(node.reservations(), vec![vmid.to_string()]);
    assert!(root.join("~nexcage/cache/templates").is_dir());
    // The template's use record came along.
    let templates = node.templates();
    assert_eq!(templates.len(), 1);
    assert!(root
        .join("~nexcage/cache/templates")
        .join(&templates[0])
        .is_file());
    assert!(node.run(["delete", "--force", "old"]).status.success());
    let _ = reap(monitor, Duration::from_secs(10));
    assert_clean(&node);
}

/// SIGKILL of the monitor ends the process and stops the guest; `state`
/// says stopped at once, and a plain delete works.
fn monitor_killed(node: &Node, id: &str) {
    let vmid = *node.vmids().iter().max().unwrap();
    let (monitor, process) = pids(node, id);
    assert!(alive(process));
    kill(Pid::from_raw(monitor), Signal::SIGKILL).unwrap();
    assert_eq!(
        reap(monitor, Duration::from_secs(10)),
        nix::sys::wait::WaitStatus::Signaled(Pid::from_raw(monitor), Signal::SIGKILL, false)
    );
    assert_eq!(node.status(id), "stopped", "{id}");
    assert_eq!(node.state(id)["pid"], 0, "{id}");
    wait_dead(process, &format!("{id}: the process of a dead monitor"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while guest_status(node, vmid) != "status: stopped" {
        assert!(
            Instant::now() < deadline,
            "{id}: guest {vmid}: {}",
            guest_status(node, vmid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fails_with(&node.run(["kill", id]), "container not running");
    let out = node.run(["delete", id]);
    assert!(out.status.success(), "{id}: {}", stderr(&out));
}

#[test]
fn a_dead_monitor_takes_its_process_and_guest_with_it() {
    let node = Node::new();
    start_running(&node, "running", json!(["sleep", "1000"]));
    monitor_killed(&node, "running");
    let bundle = node.bundle("created", json!({"process": {"args": ["sleep", "1000"]}}));
    assert!(node.create(&bundle, "created", &[]).status.success());
    assert_eq!(node.status("created"), "created");
    monitor_killed(&node, "created");
    assert_clean(&node);
}
