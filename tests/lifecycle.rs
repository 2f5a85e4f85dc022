//! The core lifecycle over a simulated Proxmox node with real LXC containers.

mod common;

use std::fs::File;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use serde_json::json;

#[test]
fn create_start_kill_delete() {
    let node = Node::new();
    let bundle = node.bundle(
        "life",
        json!({"process": {"args": ["sh", "-c", "echo started-$(hostname); echo to-stderr >&2; exec sleep 1000"]}}),
    );
    let out_path = node.root().join("out.txt");
    let err_path = node.root().join("err.txt");
    let pid_file = node.root().join("life.pid");

    let create = node
        .nexcage(["create", "--bundle"])
        .arg(&bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("life")
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .status()
        .unwrap();
    assert!(
        create.success(),
        "create: {}",
        std::fs::read_to_string(&err_path).unwrap()
    );

    // created: a live pid, the same in the pid file and the state, process not run.
    let state = node.state("life");
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "life");
    assert_eq!(
        state["bundle"],
        bundle.canonicalize().unwrap().to_str().unwrap()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(state["pid"], pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&out_path).unwrap(),
        "",
        "process ran before start"
    );
    let vmids = node.vmids();
    assert_eq!(vmids.len(), 1);

    // start: the process runs with create's stdout and stderr.
    let out = node.run(["start", "life"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(node.status("life"), "running");
    assert_eq!(
        wait_for_file_content(&out_path, "started-life"),
        "started-life\n"
    );
    wait_for_file_content(&err_path, "to-stderr");

    // kill: the process dies by SIGTERM, and so does the monitor.
    let out = node.run(["kill", "life", "TERM"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    assert_eq!(
        reap(pid, Duration::from_secs(20)),
        WaitStatus::Signaled(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM, false)
    );
    node.wait_status("life", "stopped");
    assert_eq!(node.state("life")["pid"], 0);

    // delete: the Proxmox guest and the state are gone.
    let out = node.run(["delete", "life"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(node.vmids().is_empty(), "guest left behind");
    let out = node.run(["state", "life"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!node.state_root().join("life").exists());
}

#[test]
fn run_passes_output_and_exit_status_and_cleans_up() {
    let node = Node::new();
    let bundle = node.bundle(
        "runner",
        json!({"process": {"args": ["sh", "-c", "echo hi from $(hostname); exit 7"]}}),
    );
    let out = node.run_bundle(&bundle, "runner");
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hi from runner\n");
    assert!(node.vmids().is_empty());
    assert!(!node.run(["state", "runner"]).status.success());
}

#[test]
fn monitor_exits_with_the_process_exit_code() {
    let node = Node::new();
    let bundle = node.bundle("code", json!({"process": {"args": ["sh", "-c", "exit 3"]}}));
    let pid_file = node.root().join("code.pid");
    let out = node.create(&bundle, "code", &["--pid-file", pid_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert!(node.run(["start", "code"]).status.success());
    assert_eq!(
        reap(pid, Duration::from_secs(20)),
        WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 3)
    );
    node.wait_status("code", "stopped");
    assert!(node.run(["delete", "code"]).status.success());
    assert!(node.vmids().is_empty());
}

#[test]
fn unprivileged_when_the_bundle_has_a_user_namespace() {
    let node = Node::new();
    let bundle = node.bundle(
        "unpriv",
        json!({"process": {"args": ["sh", "-c", "cat /proc/self/uid_map; id -u"]},
               "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "user"}, {"type": "mount"}]}}),
    );
    let out = node.run_bundle(&bundle, "unpriv");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields, ["0", "100000", "65536", "0"], "{text}");
}

#[test]
fn process_user_cwd_env_and_rlimits_are_applied_inside() {
    let node = Node::new();
    let bundle = node.bundle(
        "creds",
        json!({"process": {
            "args": ["sh", "-c", "id -u; id -g; pwd; echo $GREETING; ulimit -n; umask"],
            "env": ["PATH=/bin", "GREETING=hello world"],
            "cwd": "/tmp",
            "user": {"uid": 1234, "gid": 5678, "umask": 63},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]
        }}),
    );
    let out = node.run_bundle(&bundle, "creds");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1234\n5678\n/tmp\nhello world\n321\n0077\n");
}

#[test]
fn one_rootfs_is_converted_once_for_two_containers() {
    let node = Node::new();
    let a = node.bundle("tpl_a", json!({}));
    let b = node.bundle("tpl_b", json!({}));
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        let names = node.templates();
        assert_eq!(names.len(), 1, "{names:?}");
        let path = node.template_dir().join(&names[0]);
        std::fs::metadata(path).unwrap().ino()
    };
    let out = node.create(&a, "tpl_a", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = inode();
    let out = node.create(&b, "tpl_b", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A re-conversion would rename a new file over the old name.
    assert_eq!(inode(), first, "the template was converted again");
    assert_eq!(node.vmids().len(), 2);
    for id in ["tpl_a", "tpl_b"] {
        assert!(node.run(["delete", "--force", id]).status.success());
    }
    assert!(node.vmids().is_empty());
}

#[test]
fn a_lifecycle_costs_three_node_tool_runs_and_state_kill_none() {
    let node = Node::new();
    // Count every pct/pvesm/pvesh run through logging wrappers.
    let log = node.root().join("calls.log");
    let wrappers = node.root().join("wrap");
    std::fs::create_dir_all(&wrappers).unwrap();
    for tool in ["pct", "pvesm", "pvesh", "pveam"] {
        let w = wrappers.join(tool);
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\necho \"{tool} $1\" >> {log}\nexec {real} \"$@\"\n",
                log = log.display(),
                real = node.root().join("bin").join(tool).display()
            ),
        )
        .unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&w).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let cfg = std::fs::read_to_string(&node.config).unwrap();
    let bin = node.root().join("bin");
    std::fs::write(
        &node.config,
        cfg.replace(bin.to_str().unwrap(), wrappers.to_str().unwrap()),
    )
    .unwrap();

    // Warm the template directory cache (one pvesm for the node's lifetime).
    let warm = node.bundle("warm", json!({}));
    assert!(node.run_bundle(&warm, "warm").status.success());
    std::fs::write(&log, "").unwrap();

    start_running(&node, "count", json!(["sleep", "1000"]));
    let before_state_kill = std::fs::read_to_string(&log).unwrap();
    assert_eq!(node.status("count"), "running");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        before_state_kill,
        "state ran a node tool"
    );
    assert!(node.run(["kill", "count", "KILL"]).status.success());
    node.wait_status("count", "stopped");
    // Once the process has ended the reaper destroys the guest: its one
    // `pct destroy` is the only call after create and start, so neither
    // kill nor state (polled meanwhile) ran any.
    wait_until("the reaper's destroy", Duration::from_secs(20), || {
        record(&node, "count")["guestDestroyed"] == true
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{before_state_kill}pct destroy\n"),
        "state/kill ran a node tool"
    );
    assert!(node.run(["delete", "count"]).status.success());
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls, "pct create\npct start\npct destroy\n");
}

#[test]
fn preserved_descriptors_reach_the_process() {
    let node = Node::new();
    let bundle = node.bundle(
        "fds",
        json!({"process": {"args": ["sh", "-c", "echo through-fd-3 >&3"]}}),
    );
    let extra = node.root().join("fd3.txt");
    let file = File::create(&extra).unwrap();
    let mut cmd = node.nexcage(["run", "--preserve-fds", "1", "--bundle"]);
    cmd.arg(&bundle).arg("fds");
    with_fd3(&mut cmd, file.into());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&extra).unwrap(), "through-fd-3\n");
}
