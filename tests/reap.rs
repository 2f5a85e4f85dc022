//! A stopped container's guest is destroyed when its process ends, not at
//! `delete` (issue 12: clients clean up their side meanwhile), and a reap
//! that dies half-way leaves `delete` the same work as before.

mod common;

use std::time::Duration;

use common::*;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// Pids of `nexcage ... reap ID` processes.
fn reapers(id: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"reap" && w[1] == id.as_bytes())
        })
        .collect()
}

#[test]
fn the_guest_of_a_stopped_container_is_gone_before_delete() {
    become_subreaper();
    let node = Node::new();
    start_running(&node, "r1", json!(["true"]));
    node.wait_status("r1", "stopped");
    wait_until(
        "the guest of a stopped container to be destroyed without delete",
        Duration::from_secs(20),
        || node.vmids().is_empty(),
    );
    assert_eq!(record(&node, "r1")["guestDestroyed"], json!(true));
    // Still a stopped container for clients until they delete it.
    assert_eq!(node.status("r1"), "stopped");
    let out = node.run(["start", "r1"]);
    fails_with(&out, "cannot start a container that has stopped");
    let out = node.run(["delete", "r1"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert_clean(&node);
}

#[test]
fn a_reap_killed_before_its_destroy_leaves_nothing_after_delete_force() {
    become_subreaper();
    let node = Node::new();
    start_running(&node, "r2", json!(["sleep", "1"]));
    // Holding the container's lock keeps the reap waiting for it.
    let dir = std::fs::File::open(node.state_root().join("r2")).unwrap();
    let held = Flock::lock(dir, FlockArg::LockExclusive).unwrap();
    node.wait_status("r2", "stopped");
    let mut found = Vec::new();
    wait_until("the reaper to start", Duration::from_secs(20), || {
        found = reapers("r2");
        !found.is_empty()
    });
    for pid in &found {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    wait_until("the reaper to die", Duration::from_secs(20), || {
        reapers("r2").iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        })
    });
    drop(held);
    assert_eq!(node.vmids().len(), 1, "the guest outlives a killed reap");
    let out = node.run(["delete", "--force", "r2"]);
    assert!(out.status.success(), "delete --force: {}", stderr(&out));
    assert_clean(&node);
}
