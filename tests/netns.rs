//! Joining an existing network namespace by path (podman's /run/netns/X)
//! over a simulated node with real LXC: the process sees that namespace's
//! interfaces, the guest gets no Proxmox NIC.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// A named network namespace with a recognizable interface (d0), deleted
/// when the test ends, failed or not.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let ns = Netns(name);
        ns.ip(&["netns", "add", &ns.0]);
        ns.ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        // A bridge device: built into the kernel, unlike dummy or veth.
        ns.ip(&["-n", &ns.0, "link", "add", "d0", "type", "bridge"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

/// The default namespaces with `net` as the network one.
fn namespaces(net: serde_json::Value, user: bool) -> serde_json::Value {
    let mut ns = common::namespaces(user);
    ns[1] = net;
    ns
}

#[test]
fn process_runs_in_the_network_namespace_named_by_path() {
    let ns = Netns::new(format!("nexcage-test-{}", std::process::id()));
    let node = Node::new();
    let bundle = node.bundle(
        "joined",
        json!({
            "process": {"args": ["cat", "/proc/net/dev"]},
            "linux": {"namespaces": namespaces(json!({"type": "network", "path": ns.path()}), false)}
        }),
    );
    let out = node.run_bundle(&bundle, "joined");
    assert!(out.status.success(), "run: {}", stderr(&out));
    let dev = stdout(&out);
    assert!(dev.contains("d0:"), "d0 not visible: {dev}");
    assert!(
        !dev.contains("eth0:"),
        "the guest's own NIC is visible: {dev}"
    );
    assert!(node.vmids().is_empty(), "guest left behind");
}

#[test]
fn netns_path_is_refused_for_unprivileged_guests_and_when_not_a_netns() {
    let node = Node::new();
    let check = |name: &str, net: serde_json::Value, user: bool, want: &str| {
        let bundle = node.bundle(
            name,
            json!({"linux": {"namespaces": namespaces(net, user)}}),
        );
        let out = node.create(&bundle, name, &[]);
        assert!(!out.status.success(), "{name}: create succeeded");
        let err = stderr(&out);
        assert!(
            err.contains("linux.namespaces") && err.contains(want),
            "{name}: {err}"
        );
        assert!(node.vmids().is_empty(), "{name}: guest left behind");
        assert!(
            !node.state_root().join(name).exists(),
            "{name}: state left behind"
        );
    };
    check(
        "unpriv",
        json!({"type": "network", "path": "/proc/1/ns/net"}),
        true,
        "privileged guest",
    );
    check(
        "missing",
        json!({"type": "network", "path": "/run/netns/nexcage-no-such-netns"}),
        false,
        "nexcage-no-such-netns",
    );
    check(
        "notns",
        json!({"type": "network", "path": "/proc/self/ns/uts"}),
        false,
        "not a namespace of type network",
    );
}

#[test]
fn state_pid_is_in_the_network_namespace_named_by_path() {
    use std::os::unix::fs::MetadataExt;
    let ns = Netns::new(format!("nexcage-pidns-{}", std::process::id()));
    let node = Node::new();
    let bundle = node.bundle(
        "bypath",
        json!({
            "process": {"args": ["sleep", "1000"]},
            "linux": {"namespaces": namespaces(json!({"type": "network", "path": ns.path()}), false)}
        }),
    );
    let out = node.create(&bundle, "bypath", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let pid = node.state("bypath")["pid"].as_i64().unwrap();
    // The namespace the process uses, not the guest's own one underneath.
    let joined = std::fs::metadata(ns.path()).unwrap();
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(
        (theirs.dev(), theirs.ino()),
        (joined.dev(), joined.ino()),
        "the state pid is not in {}",
        ns.path()
    );
    assert!(node.run(["delete", "--force", "bypath"]).status.success());
    assert_clean(&node);
}

/// A Kubernetes pod as containerd's CRI lays it out: the sandbox guest joins
/// the pod's network namespace by path; an app container names the
/// sandbox's state pid's network, ipc and uts namespaces and so shares its
/// address, its SysV IPC and its hostname.
#[test]
fn app_container_joins_the_sandboxs_ipc_and_uts_namespaces() {
    use std::os::unix::fs::MetadataExt;
    let ns = Netns::new(format!("nexcage-pod-{}", std::process::id()));
    let node = Node::new();
    let sandbox = node.bundle(
        "sandbox",
        json!({
            "hostname": "podhost",
            "process": {"args": ["sleep", "1000"]},
            "linux": {"namespaces": namespaces(json!({"type": "network", "path": ns.path()}), false)}
        }),
    );
    let out = node.create(&sandbox, "sandbox", &[]);
    assert!(out.status.success(), "create sandbox: {}", stderr(&out));
    let pid = node.state("sandbox")["pid"].as_i64().unwrap();
    let app = |name: &str, script: &str, hostname: &str| {
        node.bundle(
            name,
            json!({
                "hostname": hostname,
                "process": {"args": ["sh", "-c", script]},
                "linux": {"namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
                    {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
                    {"type": "mount"},
                    {"type": "network", "path": format!("/proc/{pid}/ns/net")}
                ]}
            }),
        )
    };
    let bundle = app(
        "app",
        "hostname; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; cat /proc/net/dev",
        "",
    );
    let out = node.run_bundle(&bundle, "app");
    assert!(out.status.success(), "run app: {}", stderr(&out));
    let text = stdout(&out);
    let inode = |t: &str| {
        let m = std::fs::metadata(format!("/proc/{pid}/ns/{t}")).unwrap();
        format!("{t}:[{}]", m.ino())
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"podhost"), "{text}");
    assert_eq!(lines.get(1).copied(), Some(inode("ipc").as_str()), "{text}");
    assert_eq!(lines.get(2).copied(), Some(inode("uts").as_str()), "{text}");
    assert!(text.contains("d0:"), "not in the pod's netns: {text}");
    // Its own hostname in a namespace it joins: refused, as by runc.
    let named = app("named", "true", "apphost");
    let out = node.create(&named, "named", &[]);
    fails_with(&out, "hostname and domainname cannot be set");
    assert!(!node.state_root().join("named").exists(), "state left");
    assert!(node.run(["delete", "--force", "sandbox"]).status.success());
    assert_clean(&node);
}
