//! linux.seccomp over a simulated Proxmox node with real LXC containers:
//! the init loads the bundle's filter for the process and for exec, on top
//! of the policy the node's LXC loads for every guest.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// Denies mkdir and mkdirat with EPERM; everything else is allowed.
fn deny_mkdir() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    })
}

/// A golden bundle's config.json (the clients' real profiles and capabilities).
fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/bundles/golden")
        .join(name)
        .join("config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Create with stdout and stderr in files that the process keeps.
fn create(node: &Node, bundle: &Path, id: &str) -> (PathBuf, PathBuf) {
    let logged = node.create_logged(bundle, id);
    (logged.out, logged.err)
}

#[test]
fn a_denied_syscall_fails_with_eperm_for_the_process_and_for_exec() {
    let node = Node::new();
    let script =
        "mkdir /tmp/x; echo mkdir=$?; echo data >/tmp/f && cat /tmp/f; echo ready; exec sleep 1000";
    let bundle = node.bundle(
        "deny",
        json!({"process": {"args": ["sh", "-c", script]},
               "linux": {"seccomp": deny_mkdir()}}),
    );
    let (out, err) = create(&node, &bundle, "deny");
    assert!(node.run(["start", "deny"]).status.success());
    let got = wait_for_file_content(&out, "ready\n");
    assert_eq!(got, "mkdir=1\ndata\nready\n");
    let stderr_text = std::fs::read_to_string(&err).unwrap();
    assert!(
        stderr_text.contains("Operation not permitted"),
        "{stderr_text}"
    );

    // exec gets the same filter, whatever the no_new_privs of its process.
    for extra in [&[][..], &["--no-new-privs"][..]] {
        let out = node.run(
            ["exec"]
                .iter()
                .chain(extra)
                .chain(&["deny", "mkdir", "/tmp/y"]),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("Operation not permitted"),
            "{}",
            stderr(&out)
        );
    }
    let out = node.run(["exec", "deny", "sh", "-c", "ls /tmp; id -u"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "f\n0\n");

    // An allowing profile leaves mount(2) to the node's AppArmor model (a
    // notify filter of the node's LXC): the stricter of the stacked filters
    // decides, so what AppArmor denies stays denied and tmpfs still mounts.
    let out = node.run(["exec", "deny", "mount", "-o", "remount,ro", "/"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let out = node.run([
        "exec",
        "deny",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /tmp && grep -c ' /tmp tmpfs' /proc/mounts",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(node.run(["delete", "--force", "deny"]).status.success());
}

#[test]
fn with_no_new_privileges_a_non_root_process_is_filtered_too() {
    let node = Node::new();
    let bundle = node.bundle(
        "nnp",
        json!({"process": {"args": ["sh", "-c", "mkdir /tmp/x; echo mkdir=$? uid=$(id -u); touch /tmp/f && echo tmp-writable"],
                           "user": {"uid": 1000, "gid": 1000},
                           "noNewPrivileges": true},
               "linux": {"seccomp": deny_mkdir()}}),
    );
    let (out, _) = create(&node, &bundle, "nnp");
    assert!(node.run(["start", "nnp"]).status.success());
    node.wait_status("nnp", "stopped");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "mkdir=1 uid=1000\ntmp-writable\n"
    );
    assert!(node.run(["delete", "nnp"]).status.success());
}

#[test]
fn podman_and_containerd_default_profiles_let_the_container_run() {
    let node = Node::new();
    // podman's profile denies sethostname with EPERM even to a process that
    // holds CAP_SYS_ADMIN, which the kernel alone lets it do (own UTS
    // namespace): the control without the profile shows the difference.
    let g = golden("podman-run-echo");
    let mut caps = g["process"]["capabilities"].clone();
    for set in caps.as_object_mut().unwrap().values_mut() {
        set.as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN"));
    }
    for (id, seccomp, want) in [
        ("phost", g["linux"]["seccomp"].clone(), "rc=1\n"),
        ("phost-control", Value::Null, "rc=0\n"),
    ] {
        let bundle = node.bundle(
            id,
            json!({"process": {"args": ["sh", "-c", "hostname other 2>/dev/null; echo rc=$?"],
                               "capabilities": caps},
                   "linux": {"seccomp": seccomp}}),
        );
        let (out, err) = create(&node, &bundle, id);
        assert!(node.run(["start", id]).status.success());
        node.wait_status(id, "stopped");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            want,
            "{id}: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        assert!(node.run(["delete", id]).status.success());
    }

    for name in ["podman-run-echo", "containerd-ctr-run-seccomp"] {
        let g = golden(name);
        let id = name.replace("-run", "");
        // The client's profile and capabilities (so capset and setuid run
        // under the filter when noNewPrivileges is unset), over busybox.
        let bundle = node.bundle(
            &id,
            json!({"process": {"args": ["sh", "-c", "echo hello; mkdir /tmp/d && echo made"],
                               "capabilities": g["process"]["capabilities"],
                               "noNewPrivileges": g["process"]["noNewPrivileges"]},
                   "linux": {"seccomp": g["linux"]["seccomp"]}}),
        );
        let (out, err) = create(&node, &bundle, &id);
        assert!(node.run(["start", &id]).status.success());
        node.wait_status(&id, "stopped");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "hello\nmade\n",
            "{name}: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        assert!(node.run(["delete", &id]).status.success());
    }
}

#[test]
fn a_notify_profile_is_refused_by_name_before_anything_is_made() {
    let node = Node::new();
    let bundle = node.bundle(
        "notify",
        json!({"linux": {"seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}}}),
    );
    let out = node.create(&bundle, "notify", &[]);
    fails_with(&out, "linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY");
    assert_clean(&node);

    let bundle = node.bundle(
        "listener",
        json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                      "listenerPath": "/run/agent.sock"}}}),
    );
    let out = node.create(&bundle, "listener", &[]);
    fails_with(&out, "linux.seccomp.listenerPath");
    assert_clean(&node);
}

/// In an unprivileged guest the init holds CAP_SYS_ADMIN only in the guest's
/// user namespace, which is where the kernel looks when no_new_privs is off.
#[test]
fn an_unprivileged_guest_loads_the_filter_too() {
    let node = Node::new();
    let bundle = node.bundle(
        "unpriv",
        json!({"process": {"args": ["sh", "-c", "mkdir /tmp/x 2>/dev/null; echo mkdir=$? $(cat /proc/self/uid_map); touch /tmp/f && echo tmp-writable"]},
               "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "user"}, {"type": "mount"}],
                         "seccomp": deny_mkdir()}}),
    );
    let out = node.run_bundle(&bundle, "unpriv");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "mkdir=1 0 100000 65536\ntmp-writable\n");
}
