//! OCI hooks over a simulated node with real LXC: each runs at its moment,
//! where the spec puts it, with the state on stdin; failures fail (and roll
//! back) the operation or are only logged, as the spec says.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

/// A host script that appends its name, the status and pid from the state
/// on stdin and the hostname it sees to `log`.
fn recorder(dir: &Path, name: &str, log: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nstate=$(cat)\necho \"{name} $(echo \"$state\" | tr -d ' \\n') $(hostname)\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn log_dir(node: &Node) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = node.root().join("hooklog");
    std::fs::create_dir_all(&d).unwrap();
    // Unprivileged guests' root is an "other" uid on the host.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_hook_runs_at_its_moment_with_the_state_on_stdin() {
    become_subreaper();
    let node = Node::new();
    let dir = log_dir(&node);
    let log = dir.join("log");
    let host = |name: &str| json!([{"path": recorder(&dir, name, &log)}]);
    // startContainer runs inside the guest: the guest's busybox sh, writing
    // through a bind mount of the log directory.
    let start = json!([{"path": "/bin/sh", "args": ["sh", "-c",
        "echo \"startContainer $(cat | tr -d ' \\n') $(hostname)\" >> /hooklog/log"]}]);
    let bundle = node.bundle(
        "hk",
        json!({
            "process": {"args": ["sh", "-c", "echo process-ran >> /hooklog/log; exec sleep 1000"]},
            "mounts": [{"destination": "/hooklog", "type": "bind", "source": dir, "options": ["rbind", "rw"]}],
            "hooks": {
                "prestart": host("prestart"),
                "createRuntime": host("createRuntime"),
                "createContainer": host("createContainer"),
                "startContainer": start,
                "poststart": host("poststart"),
                "poststop": host("poststop"),
            }
        }),
    );
    let out = node.create(&bundle, "hk", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let pid = node.state("hk")["pid"].as_i64().unwrap();
    let out = node.run(["start", "hk"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "hook output must not reach stdout");
    wait_until(
        "the process's line",
        std::time::Duration::from_secs(20),
        || lines(&log).iter().any(|l| l == "process-ran"),
    );
    assert!(node.run(["kill", "hk", "KILL"]).status.success());
    node.wait_status("hk", "stopped");
    assert!(node.run(["delete", "hk"]).status.success());

    let got = lines(&log);
    let kinds: Vec<&str> = got.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "process-ran",
            "poststart",
            "poststop"
        ],
        "{got:#?}"
    );
    let entry = |kind: &str| got.iter().find(|l| l.starts_with(kind)).unwrap().clone();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (kind, status, in_guest) in [
        ("createRuntime", "creating", false),
        ("createContainer", "creating", true),
        ("startContainer", "created", true),
        ("poststart", "running", false),
        ("poststop", "stopped", false),
    ] {
        let e = entry(kind);
        assert!(e.contains(&format!("\"status\":\"{status}\"")), "{e}");
        assert!(e.contains("\"id\":\"hk\""), "{e}");
        let want_pid = if status == "stopped" { 0 } else { pid };
        assert!(e.contains(&format!("\"pid\":{want_pid},")), "{e}");
        // The guest's uts namespace (hostname "hk") or the host's.
        let seen = e.rsplit(' ').next().unwrap();
        if in_guest {
            assert_eq!(seen, "hk", "{e}");
        } else {
            assert_eq!(seen, host_name.trim(), "{e}");
        }
    }
}

#[test]
fn a_failing_or_slow_create_hook_fails_create_and_rolls_back() {
    let node = Node::new();
    let dir = log_dir(&node);
    let fail = dir.join("fail");
    std::fs::write(&fail, "#!/bin/sh\necho no-thanks >&2\nexit 2\n").unwrap();
    std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (kind, hook, want) in [
        (
            "createRuntime",
            json!({"path": fail}),
            "exit status 2): no-thanks",
        ),
        (
            "createContainer",
            json!({"path": fail}),
            "exit status 2): no-thanks",
        ),
        (
            "prestart",
            json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}),
            "did not finish within 1 s",
        ),
    ] {
        let bundle = node.bundle("bad", json!({"hooks": {kind: [hook]}}));
        let out = node.create(&bundle, "bad", &[]);
        assert_eq!(out.status.code(), Some(1), "{kind}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{kind} hook")) && err.contains(want),
            "{err}"
        );
        assert_clean(&node);
    }
    // Refused before anything is made.
    let bundle = node.bundle("rel", json!({"hooks": {"poststop": [{"path": "hook"}]}}));
    let out = node.create(&bundle, "rel", &[]);
    fails_with(&out, "hooks.poststop[0]");
    assert_clean(&node);
}

#[test]
fn a_failing_start_hook_fails_start_and_a_failing_poststop_does_not_fail_delete() {
    let node = Node::new();
    let dir = log_dir(&node);
    let bundle = node.bundle(
        "sh",
        json!({
            "process": {"args": ["sh", "-c", "echo process-ran >> /hooklog/log"]},
            "mounts": [{"destination": "/hooklog", "type": "bind", "source": dir, "options": ["rbind", "rw"]}],
            "hooks": {
                "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo not-today; exit 4"]}],
                "poststop": [{"path": "/bin/false"}]
            }
        }),
    );
    let out = node.create(&bundle, "sh", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let out = node.run(["start", "sh"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("startContainer hook /bin/sh failed (exit status 4): not-today"),
        "{err}"
    );
    node.wait_status("sh", "stopped");
    assert!(lines(&dir.join("log")).is_empty(), "the process ran");
    let out = node.run(["delete", "sh"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert_clean(&node);
}

#[test]
fn create_container_hooks_enter_an_unprivileged_guests_user_namespace() {
    let node = Node::new();
    let dir = log_dir(&node);
    let log = dir.join("log");
    let hook = dir.join("cc");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$(id -u) $(hostname) $(cat /proc/self/uid_map | tr -s ' ' | tr -d '\\n')\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bundle = node.bundle(
        "un",
        json!({
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "user"},
                                     {"type": "uts"}, {"type": "mount"}]},
            "hooks": {"createContainer": [{"path": hook}]}
        }),
    );
    let out = node.create(&bundle, "un", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    // Root of the guest's user namespace (host uid 100000), in its uts.
    let got = lines(&log);
    let words: Vec<&str> = got.iter().flat_map(|l| l.split_whitespace()).collect();
    assert_eq!(words, ["0", "un", "0", "100000", "65536"], "{got:?}");
    assert!(node.run(["delete", "--force", "un"]).status.success());
    assert_clean(&node);
}
