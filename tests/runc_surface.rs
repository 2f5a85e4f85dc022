//! exec, ps, pause/resume, kill --all, update and events over a simulated
//! Proxmox node with real LXC containers.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::wait::WaitStatus;
use serde_json::json;

/// Process files are removed once the init has read them.
fn exec_files_left(node: &Node, id: &str) -> Vec<String> {
    std::fs::read_dir(node.state_root().join(id).join("bridge"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("exec-"))
        .collect()
}

fn guest_pids(node: &Node, id: &str) -> Vec<i32> {
    let out = node.run(["ps", "--format", "json", id]);
    assert!(out.status.success(), "ps: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn exec_passes_output_status_env_cwd_user_and_process_files() {
    let node = Node::new();
    // A pids limit is a raw lxc.cgroup line, which pct warns about on every
    // call on a cgroup v1 node (such as these): see the stderr check below.
    let bundle = node.bundle(
        "ex",
        json!({"process": {"args": ["sleep", "1000"]}, "linux": {"resources": {"pids": {"limit": 100}}}}),
    );
    assert!(node.create(&bundle, "ex", &[]).status.success());
    assert!(node.run(["start", "ex"]).status.success());

    let out = node.run(["exec", "ex", "sh", "-c", "echo in; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "in\n");
    assert_eq!(stderr(&out), "err\n");

    let out = node.run([
        "exec",
        "-e",
        "FOO=bar baz",
        "--cwd",
        "/tmp",
        "-u",
        "1234:5678",
        "ex",
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "bar baz\n/tmp\n1234\n5678\n");

    let process = node.root().join("process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&json!({
            "args": ["sh", "-c", "echo from-file $X; exit 3"],
            "env": ["PATH=/bin", "X=y"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0}
        }))
        .unwrap(),
    )
    .unwrap();
    let out = node
        .nexcage(["exec", "--process"])
        .arg(&process)
        .arg("ex")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from-file y\n");

    // A missing program is reported, with a failure status.
    let out = node.run(["exec", "ex", "no-such-program"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no-such-program"), "{}", stderr(&out));

    // pct's own warnings (on a cgroup v1 node it repeats one per raw
    // lxc.cgroup line on every call) stay out of the process's stderr.
    let out = node.run(["exec", "ex", "sh", "-c", "echo only-this >&2"]);
    assert_eq!(stderr(&out), "only-this\n");

    // Preserved descriptors reach the process, past lxc-attach.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut cmd = node.nexcage([
        "exec",
        "--preserve-fds",
        "1",
        "ex",
        "sh",
        "-c",
        "echo via-fd3 >&3",
    ]);
    with_fd3(&mut cmd, w);
    let out = cmd.output().unwrap();
    drop(cmd); // our copy of the pipe's write end, so that the read ends
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut got = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut got).unwrap();
    assert_eq!(got, "via-fd3\n");
    assert!(exec_files_left(&node, "ex").is_empty());
    assert!(node.run(["delete", "--force", "ex"]).status.success());
}

#[test]
fn exec_detach_leaves_a_reapable_pid_with_the_command_status() {
    let node = Node::new();
    start_running(&node, "det", json!(["sleep", "1000"]));
    let pid_file = node.root().join("exec.pid");
    let started = Instant::now();
    let out = node
        .nexcage(["exec", "--detach", "--pid-file"])
        .arg(&pid_file)
        .args(["det", "sh", "-c", "sleep 1; exit 4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(1) + Duration::from_millis(900));
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(
        reap(pid, Duration::from_secs(20)),
        WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 4)
    );
    assert!(exec_files_left(&node, "det").is_empty());
    assert!(node.run(["delete", "--force", "det"]).status.success());
}

#[test]
fn exec_into_a_guest_of_an_older_bridge_protocol_is_refused_by_name() {
    let node = Node::new();
    start_running(&node, "old", json!(["sleep", "1000"]));
    // As a state file written before the protocol number existed.
    let path = node.state_root().join("old").join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["bridgeProtocol"], 2);
    state.as_object_mut().unwrap().remove("bridgeProtocol");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = node.run(["exec", "old", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bridge protocol 0, this one speaks 2"),
        "{}",
        stderr(&out)
    );
    assert!(node.run(["delete", "--force", "old"]).status.success());
}

#[test]
fn exec_in_a_stopped_container_is_refused() {
    let node = Node::new();
    start_running(&node, "gone", json!(["true"]));
    node.wait_status("gone", "stopped");
    let out = node.run(["exec", "gone", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("container not running"),
        "{}",
        stderr(&out)
    );
    let out = node.run(["exec", "nosuch", "true"]);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(node.run(["delete", "gone"]).status.success());
}

#[test]
fn ps_pause_resume_and_kill_all() {
    let node = Node::new();
    start_running(
        &node,
        "pp",
        json!([
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"
        ]),
    );
    let init = init_pid(&node, "pp");
    // The detached process keeps the stdio it was given: not a pipe here,
    // or the output would never end.
    let status = node
        .nexcage(["exec", "-d", "pp", "sleep", "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let mut sleeper = 0;
    wait_until("the exec'd sleep in ps", Duration::from_secs(20), || {
        let pids = guest_pids(&node, "pp");
        assert!(pids.contains(&init), "{pids:?}");
        sleeper = pids
            .iter()
            .copied()
            .find(|&p| cmdline(p) == "sleep 2000 ")
            .unwrap_or(0);
        sleeper != 0
    });

    // Table format: ps(1)'s header and only the guest's rows.
    let out = node.run(["ps", "pp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert!(table.contains("sleep 2000"), "{table}");
    assert!(!table.contains("cargo"), "{table}");

    // pause: frozen for real, the counter stops.
    let out = node.run(["pause", "pp"]);
    assert!(out.status.success(), "pause: {}", stderr(&out));
    assert_eq!(node.status("pp"), "paused");
    let freezer = cgroup_file(init, "freezer", "freezer.state", "cgroup.freeze");
    let frozen = std::fs::read_to_string(&freezer).unwrap();
    assert!(matches!(frozen.trim(), "FROZEN" | "1"), "{frozen}");
    let count = node
        .root()
        .join("var/lib/lxc")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("rootfs/tmp/count");
    let before = std::fs::read_to_string(&count).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(std::fs::read_to_string(&count).unwrap(), before);
    let out = node.run(["pause", "pp"]);
    assert!(!out.status.success());
    let out = node.run(["exec", "pp", "true"]);
    assert!(stderr(&out).contains("paused"), "{}", stderr(&out));

    // resume: running again, the counter moves.
    let out = node.run(["resume", "pp"]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_eq!(node.status("pp"), "running");
    wait_until("the counter to move", Duration::from_secs(20), || {
        std::fs::read_to_string(&count).unwrap() != before
    });
    let out = node.run(["resume", "pp"]);
    assert!(
        stderr(&out).contains("container not paused"),
        "{}",
        stderr(&out)
    );

    // kill --all reaches the exec'd process too.
    let out = node.run(["kill", "--all", "pp", "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // When lxc-attach exits first, the detached process is reparented to
    // us, a subreaper as containerd's shim is, and as the shim we reap it:
    // the guest's init cannot finish exiting while a process of its pid
    // namespace is an unreaped zombie.
    wait_until("the exec'd sleep to die", Duration::from_secs(20), || {
        use nix::sys::wait::{waitpid, WaitPidFlag};
        let _ = waitpid(
            nix::unistd::Pid::from_raw(sleeper),
            Some(WaitPidFlag::WNOHANG),
        );
        !std::path::Path::new(&format!("/proc/{sleeper}")).exists()
    });
    node.wait_status("pp", "stopped");
    let out = node.run(["ps", "--format", "json", "pp"]);
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
    let out = node.run(["pause", "pp"]);
    assert!(
        stderr(&out).contains("container not running"),
        "{}",
        stderr(&out)
    );
    // As runc: a plain kill of a stopped container fails, with --all it
    // succeeds (containerd's shim sends it after every exit).
    let out = node.run(["kill", "pp", "KILL"]);
    assert!(
        stderr(&out).contains("container not running"),
        "{}",
        stderr(&out)
    );
    let out = node.run(["kill", "--all", "pp", "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.run(["delete", "pp"]).status.success());
}

#[test]
fn a_paused_container_can_be_killed_and_deleted() {
    let node = Node::new();
    start_running(&node, "pk", json!(["sleep", "1000"]));
    assert!(node.run(["pause", "pk"]).status.success());
    let out = node.run(["kill", "pk", "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    node.wait_status("pk", "stopped");
    assert!(node.run(["delete", "pk"]).status.success());

    start_running(&node, "pd", json!(["sleep", "1000"]));
    assert!(node.run(["pause", "pd"]).status.success());
    let out = node.run(["delete", "--force", "pd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.vmids().is_empty());
}

#[test]
fn update_sets_proxmox_config_and_live_cgroup_limits() {
    let node = Node::new();
    start_running(&node, "up", json!(["sleep", "1000"]));
    let init = init_pid(&node, "up");
    let vmid = node.vmids()[0].to_string();

    let out = node.run(["update", "--memory", "256m", "--pids-limit", "50", "up"]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    let config = stdout(&node.pct(["config", &vmid]));
    assert!(config.contains("memory: 256\n"), "{config}");
    let limit = limit_file(init, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(
        std::fs::read_to_string(limit).unwrap().trim(),
        (256u64 << 20).to_string()
    );
    let pids_max = limit_file(init, "pids", "pids.max", "pids.max");
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "50");

    // LinuxResources on stdin, as containerd and CRI-O send it.
    let mut child = node
        .nexcage(["update", "--resources", "-", "up"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory":{"limit":134217728,"swap":268435456},"cpu":{"quota":50000,"period":100000,"cpus":""},"pids":{"limit":0}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "update -: {}", stderr(&out));
    let config = stdout(&node.pct(["config", &vmid]));
    assert!(config.contains("memory: 128\n"), "{config}");
    assert!(config.contains("swap: 128\n"), "{config}");
    assert!(config.contains("cpulimit: 0.5\n"), "{config}");
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "max");

    // What cannot be applied is refused by name, and nothing changes.
    let out = node.run(["update", "--memory", "64m", "--blkio-weight", "500", "up"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("blockIO"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not supported yet"),
        "{}",
        stderr(&out)
    );
    let config = stdout(&node.pct(["config", &vmid]));
    assert!(config.contains("memory: 128\n"), "{config}");
    assert!(node.run(["delete", "--force", "up"]).status.success());
}

#[test]
fn update_reads_sizes_as_runc_does() {
    let node = Node::new();
    // A size that is not one is refused before the container is looked up.
    for (flag, bad) in [
        ("--memory", "1.5.g"),
        ("--memory-swap", "-1m"),
        ("--memory", "g"),
        ("--memory-reservation", "8192p"),
    ] {
        let out = node.run(["update", flag, bad, "ghost"]);
        fails_with(&out, &format!("invalid value for {flag}: {bad:?}"));
    }

    start_running(&node, "sz", json!(["sleep", "1000"]));
    let vmid = node.vmids()[0].to_string();
    for (args, want) in [
        (&["--memory", "1.5g"][..], &["memory: 1536\n"][..]),
        (
            &["--memory", "512MB", "--memory-swap", "1G"],
            &["memory: 512\n", "swap: 512\n"],
        ),
        (&["--memory", "262144k"], &["memory: 256\n"]),
        (
            &[
                "--memory",
                "128m",
                "--memory-swap",
                "-1",
                "--cpu-quota",
                "-1",
            ],
            &["memory: 128\n"],
        ),
    ] {
        let out = node.run(["update"].iter().chain(args).chain(&["sz"]));
        assert!(out.status.success(), "update {args:?}: {}", stderr(&out));
        let config = stdout(&node.pct(["config", &vmid]));
        for w in want {
            assert!(config.contains(w), "{args:?}: {config}");
        }
    }
    assert!(node.run(["delete", "--force", "sz"]).status.success());
    assert_clean(&node);
}

#[test]
fn events_print_stats_and_stream_until_the_container_stops() {
    let node = Node::new();
    start_running(&node, "ev", json!(["sleep", "1000"]));
    let out = node.run(["events", "--stats", "ev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "stats");
    assert_eq!(v["id"], "ev");
    assert!(
        v["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(v["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["data"]["cpu"]["usage"]["total"].as_u64().is_some(), "{v}");

    let mut child = node
        .nexcage(["events", "--interval", "200ms", "ev"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "stats");
    }
    assert!(node.run(["kill", "ev", "KILL"]).status.success());
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(node.run(["delete", "ev"]).status.success());
}
