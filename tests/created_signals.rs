//! Signals to a `created` container, as runc has them: one whose default
//! action terminates ends the container before its process ever runs (the
//! monitor dies by it, status `stopped`, `start` refused, poststop at
//! delete); one whose default action is to ignore leaves it created.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde_json::json;

struct Created {
    out: PathBuf,
    poststop: PathBuf,
    monitor: i32,
}

/// A created container whose process would print `ran` and whose poststop
/// hook records the status it was given.
fn create(node: &Node, id: &str) -> Created {
    create_with(node, id, json!({}))
}

/// The same with `patch` merged into its config.json.
fn create_with(node: &Node, id: &str, patch: serde_json::Value) -> Created {
    use std::os::unix::fs::PermissionsExt;
    let poststop = node.root().join(format!("{id}.poststop"));
    let hook = node.root().join(format!("{id}-poststop.sh"));
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntr -d ' \\n' >> {}\n",
            poststop.to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = json!({
        "process": {"args": ["sh", "-c", "echo ran; exec sleep 1000"]},
        "hooks": {"poststop": [{"path": hook}]}
    });
    merge(&mut config, patch);
    let bundle = node.bundle(id, config);
    let Logged { out, pid_file, .. } = node.create_logged(&bundle, id);
    assert_eq!(node.status(id), "created");
    let monitor = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    Created {
        out,
        poststop,
        monitor,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// How the signal reaches the created container.
enum Via {
    /// `nexcage kill` with these flags before the id.
    Kill(&'static [&'static str]),
    /// Straight to the container's pid (the monitor), as a supervisor may.
    Pid,
}

/// `sig` sent to a created container ends it as runc's does, the user's
/// process never having run.
fn signal_ends_created_container(sig: Signal, via: Via) {
    signal_ends_created_container_of(sig, via, json!({}))
}

fn signal_ends_created_container_of(sig: Signal, via: Via, patch: serde_json::Value) {
    let node = Node::new();
    let id = "sig";
    let c = create_with(&node, id, patch);
    let name = sig.as_str().trim_start_matches("SIG");
    match via {
        Via::Kill(extra) => {
            let out = node.run([&["kill"][..], extra, &[id, name]].concat());
            assert!(out.status.success(), "kill {name}: {}", stderr(&out));
        }
        Via::Pid => nix::sys::signal::kill(Pid::from_raw(c.monitor), sig).unwrap(),
    }

    // The caller's wait status is death by that signal, as it is for the
    // process of a running container.
    assert_eq!(
        reap(c.monitor, Duration::from_secs(20)),
        WaitStatus::Signaled(Pid::from_raw(c.monitor), sig, false),
        "monitor after {name}"
    );
    node.wait_status(id, "stopped");
    assert_eq!(node.state(id)["pid"], 0);

    let out = node.run(["start", id]);
    fails_with(&out, "cannot start a container that has stopped");
    assert_eq!(read(&c.out), "", "the process ran after {name}");
    // poststop runs when the container is deleted, as for any stopped one.
    assert_eq!(read(&c.poststop), "", "poststop ran before delete");

    let out = node.run(["delete", id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    let got = read(&c.poststop);
    assert!(
        got.contains(r#""status":"stopped""#) && got.contains(r#""id":"sig""#),
        "poststop got {got:?}"
    );
    assert_eq!(read(&c.out), "");
    assert_clean(&node);
}

#[test]
fn term_ends_a_created_container() {
    signal_ends_created_container(Signal::SIGTERM, Via::Kill(&[]));
}

#[test]
fn int_ends_a_created_container() {
    signal_ends_created_container(Signal::SIGINT, Via::Kill(&[]));
}

/// Nothing in the guest handles USR1: its default action, terminate, holds.
#[test]
fn usr1_handled_nowhere_ends_a_created_container() {
    signal_ends_created_container(Signal::SIGUSR1, Via::Kill(&[]));
}

#[test]
fn kill_all_hup_ends_a_created_container() {
    signal_ends_created_container(Signal::SIGHUP, Via::Kill(&["--all"]));
}

/// An unprivileged guest's process is signalled from the host all the same.
#[test]
fn term_ends_a_created_unprivileged_container() {
    signal_ends_created_container_of(
        Signal::SIGTERM,
        Via::Kill(&[]),
        json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network"}, {"type": "user"}, {"type": "mount"}
        ]}}),
    );
}

/// The monitor relays what it gets to the process, so a supervisor that
/// signals the pid it was given ends a created container too.
#[test]
fn term_to_the_container_pid_ends_a_created_container() {
    signal_ends_created_container(Signal::SIGTERM, Via::Pid);
}

#[test]
fn default_ignored_signals_leave_it_created_and_start_still_runs_it() {
    let node = Node::new();
    let id = "ign";
    let c = create(&node, id);
    for name in ["WINCH", "CHLD", "URG", "CONT"] {
        let out = node.run(["kill", id, name]);
        assert!(out.status.success(), "kill {name}: {}", stderr(&out));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.status(id), "created");
    assert_eq!(
        nix::sys::wait::waitpid(
            Pid::from_raw(c.monitor),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG)
        )
        .unwrap(),
        WaitStatus::StillAlive
    );
    assert_eq!(read(&c.out), "");

    let out = node.run(["start", id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(wait_for_file_content(&c.out, "ran"), "ran\n");
    assert_eq!(node.status(id), "running");
    assert!(node.run(["kill", id, "KILL"]).status.success());
    assert_eq!(
        reap(c.monitor, Duration::from_secs(20)),
        WaitStatus::Signaled(Pid::from_raw(c.monitor), Signal::SIGKILL, false)
    );
    node.wait_status(id, "stopped");
    assert!(node.run(["delete", id]).status.success());
    assert_clean(&node);
}

/// The same relay for a running container: the monitor exits once the
/// process has died of the relayed signal (it used to block reading its
/// signalfd after relaying and outlive the process).
#[test]
fn term_to_the_container_pid_of_a_running_container_ends_it() {
    let node = Node::new();
    let id = "run";
    let c = create(&node, id);
    let out = node.run(["start", id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    wait_for_file_content(&c.out, "ran");
    nix::sys::signal::kill(Pid::from_raw(c.monitor), Signal::SIGTERM).unwrap();
    assert_eq!(
        reap(c.monitor, Duration::from_secs(20)),
        WaitStatus::Signaled(Pid::from_raw(c.monitor), Signal::SIGTERM, false)
    );
    node.wait_status(id, "stopped");
    assert!(node.run(["delete", id]).status.success());
    assert_clean(&node);
}
