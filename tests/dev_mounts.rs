//! The guest's /dev and mount table as the process sees them, checked the
//! way runtime-tools' runtimetest does (/proc/self/mountinfo: type, source,
//! order) in real LXC guests, privileged and unprivileged.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn unprivileged() -> serde_json::Value {
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    json!({"linux": {
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                       {"type": "uts"}, {"type": "mount"}, {"type": "user"}],
        "uidMappings": map, "gidMappings": map
    }})
}

/// Runs `script` as the container process; returns its stdout.
fn run_in(node: &Node, name: &str, patch: serde_json::Value, script: &str) -> String {
    let out = run_script(node, name, patch, script);
    assert!(node.run(["delete", "--force", name]).status.success());
    out
}

/// One line of mountinfo: mount point, optional fields, type, source,
/// super options.
#[derive(Debug)]
struct Mount {
    point: String,
    optional: Vec<String>,
    fstype: String,
    source: String,
    options: String,
    super_options: String,
}

fn mountinfo(out: &str) -> Vec<Mount> {
    out.lines()
        .take_while(|l| *l != "--")
        .map(|l| {
            let (left, right) = l.split_once(" - ").expect(l);
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Mount {
                point: left[4].to_string(),
                options: left[5].to_string(),
                optional: left[6..].iter().map(|s| s.to_string()).collect(),
                fstype: right[0].to_string(),
                source: right[1].to_string(),
                super_options: right[2].to_string(),
            }
        })
        .collect()
}

fn position(table: &[Mount], point: &str, fstype: &str, source: &str) -> usize {
    table
        .iter()
        .position(|m| m.point == point && m.fstype == fstype && m.source == source)
        .unwrap_or_else(|| panic!("no {fstype} {source} on {point} in {table:#?}"))
}

const SHOW: &str = "cat /proc/self/mountinfo; echo --; \
    for l in ptmx fd stdin stdout stderr; do echo $l=$(readlink /dev/$l); done; \
    test -c /dev/pts/ptmx && echo ptmx-dev=yes; \
    test -c /dev/null && echo null=yes; test -c /dev/tty1 && echo tty1=yes; \
    echo x > /dev/null && echo null-writable=yes; \
    echo END";

fn check_runc_dev(out: &str) {
    let table = mountinfo(out);
    let proc_ = position(&table, "/proc", "proc", "proc");
    let dev = position(&table, "/dev", "tmpfs", "tmpfs");
    let pts = position(&table, "/dev/pts", "devpts", "devpts");
    let shm = position(&table, "/dev/shm", "tmpfs", "shm");
    let mqueue = position(&table, "/dev/mqueue", "mqueue", "mqueue");
    position(&table, "/sys", "sysfs", "sysfs");
    assert!(
        proc_ < dev && dev < pts && pts < shm && shm < mqueue,
        "spec order: {out}"
    );
    // LXC's autodev tmpfs (source "none") is gone from the table.
    assert_eq!(
        table.iter().filter(|m| m.point == "/dev").count(),
        1,
        "{out}"
    );
    let d = &table[dev];
    assert!(d.options.split(',').any(|o| o == "nosuid"), "{d:?}");
    assert!(
        !d.options.split(',').any(|o| o == "relatime"),
        "strictatime: {d:?}"
    );
    for o in ["size=65536k", "mode=755"] {
        assert!(d.super_options.split(',').any(|s| s == o), "{o}: {d:?}");
    }
    assert!(table[shm].super_options.contains("size=65536k"), "{out}");
    for (l, target) in [
        ("ptmx=", "pts/ptmx"),
        ("fd=", "/proc/self/fd"),
        ("stdin=", "/proc/self/fd/0"),
        ("stdout=", "/proc/self/fd/1"),
        ("stderr=", "/proc/self/fd/2"),
    ] {
        assert!(
            out.lines().any(|x| x == format!("{l}{target}")),
            "{l}: {out}"
        );
    }
    for l in ["ptmx-dev=yes", "null=yes", "tty1=yes", "null-writable=yes"] {
        assert!(out.lines().any(|x| x == l), "{l}: {out}");
    }
    // runc's default: the root mount shares nothing with anyone.
    let root = table.iter().find(|m| m.point == "/").unwrap();
    assert!(
        !root.optional.iter().any(|o| o.starts_with("shared:")),
        "{root:?}"
    );
}

#[test]
fn runc_default_mounts_privileged() {
    let node = Node::new();
    // A device in a directory of its own (Proxmox passes it through below
    // LXC's /dev) must be carried over too.
    let out = run_in(
        &node,
        "devp",
        json!({"mounts": runc_mounts(), "linux": {"devices": [
            {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438}
        ]}}),
        &SHOW.replace("echo END", "test -c /dev/net/tun && echo tun=yes; echo END"),
    );
    assert!(out.lines().any(|l| l == "tun=yes"), "{out}");
    check_runc_dev(&out);
}

#[test]
fn runc_default_mounts_unprivileged() {
    let node = Node::new();
    let mut patch = unprivileged();
    // The read-only root is remounted after /dev is built; /dev stays
    // writable.
    merge(
        &mut patch,
        json!({"mounts": runc_mounts(), "root": {"readonly": true}}),
    );
    let out = run_in(
        &node,
        "devu",
        patch,
        &SHOW.replace(
            "echo END",
            "touch /dev/shm/x && echo shm-rw=yes; touch /x 2>/dev/null || echo root-ro=yes; echo END",
        ),
    );
    for l in ["shm-rw=yes", "root-ro=yes"] {
        assert!(out.lines().any(|x| x == l), "{l}: {out}");
    }
    check_runc_dev(&out);
}

/// Without a /dev tmpfs in the bundle LXC's /dev stays, but /dev/ptmx is
/// still the symlink the spec requires, and a /dev/shm tmpfs (an LXC mount
/// entry then) shows the bundle's source.
#[test]
fn lxc_dev_gets_the_spec_symlinks_and_sources() {
    let node = Node::new();
    let out = run_in(
        &node,
        "devlxc",
        json!({"mounts": [
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "size=1m"]},
            {"destination": "/run", "type": "tmpfs", "source": "/not/a/name", "options": ["nosuid"]}
        ]}),
        SHOW,
    );
    let table = mountinfo(&out);
    position(&table, "/dev", "tmpfs", "none");
    position(&table, "/dev/shm", "tmpfs", "shm");
    position(&table, "/run", "tmpfs", "tmpfs");
    assert!(out.lines().any(|l| l == "ptmx=pts/ptmx"), "{out}");
    assert!(out.lines().any(|l| l == "ptmx-dev=yes"), "{out}");
    assert!(
        !table.iter().any(|m| m.point == "/dev/ptmx"),
        "LXC's bind of pts/ptmx is gone: {out}"
    );
}

/// linux.rootfsPropagation reaches the process's `/` (mountinfo's optional
/// fields), privileged and unprivileged. The node's root is a shared mount,
/// as systemd makes a node's `/`, so the guest's `/` (LXC's bind of the
/// rootfs volume the node mounted for it) starts as a slave of the node's
/// mount: rslave and shared keep it one, and a mount the node makes in the
/// guest's rootfs after the start shows inside; private and unbindable cut
/// it off.
#[test]
fn root_propagation_is_applied() {
    let node = Node::new();
    let mut mounts = Mounts::default();
    mounts.share(node.root());
    for unpriv in [false, true] {
        for (p, shared, unbindable, slave) in [
            ("private", false, false, false),
            ("rslave", false, false, true),
            ("shared", true, false, true),
            ("unbindable", false, true, false),
        ] {
            let name = format!("prop-{p}-{}", if unpriv { "u" } else { "p" });
            let mut patch = if unpriv { unprivileged() } else { json!({}) };
            // runtime-tools' check: does a mount made after a recursive bind
            // of / show through that bind? (The profile allows binding / only
            // in an unprivileged guest.)
            let probe = if unpriv {
                "mkdir -p /t /m /s && touch /s/f; \
                 if mount -o rbind / /t 2>/dev/null; then mount -o bind /s /m; \
                 test -e /t/m/f && echo exposed=yes || echo exposed=no; \
                 else echo exposed=nobind; fi; "
            } else {
                ""
            };
            // The guest waits for the node's mount on /hm, then reports; it
            // stays up until deleted so that the node's mount goes first.
            let script = format!(
                "mkdir /hm && touch /ready; until test -e /go; do sleep 0.05; done; \
                 cat /proc/self/mountinfo; echo --; \
                 test -e /hm/f && echo node-mount=seen || echo node-mount=unseen; \
                 {probe}echo END; sleep 600"
            );
            merge(
                &mut patch,
                json!({"mounts": runc_mounts(), "linux": {"rootfsPropagation": p},
                       "process": {"args": ["sh", "-c", script]}}),
            );
            let bundle = node.bundle(&name, patch);
            let out_path = node.create_logged(&bundle, &name).out;
            let start = node.run(["start", &name]);
            assert!(start.status.success(), "start: {}", stderr(&start));
            let vmid = node.vmids()[0];
            let rootfs = node.root().join(format!("var/lib/lxc/{vmid}/rootfs"));
            wait_until("the guest's /ready", Duration::from_secs(20), || {
                rootfs.join("ready").exists()
            });
            let hm = rootfs.join("hm");
            mounts.mount("tmpfs", &hm, Some("tmpfs"), Some("size=1m"));
            std::fs::write(hm.join("f"), "").unwrap();
            std::fs::write(rootfs.join("go"), "").unwrap();
            let out = wait_for_file_content(&out_path, "END\n");
            mounts.unmount_last();
            assert!(node.run(["delete", "--force", &name]).status.success());

            let want = if slave {
                "node-mount=seen"
            } else {
                "node-mount=unseen"
            };
            assert!(out.lines().any(|l| l == want), "{p}: {want}: {out}");
            if unpriv {
                let want = match p {
                    "shared" => "exposed=yes",
                    "unbindable" => "exposed=nobind",
                    _ => "exposed=no",
                };
                assert!(out.lines().any(|l| l == want), "{p}: {want}: {out}");
            }
            let table = mountinfo(&out);
            let root = table.iter().find(|m| m.point == "/").unwrap();
            let has = |prefix: &str| root.optional.iter().any(|o| o.starts_with(prefix));
            assert_eq!(has("shared:"), shared, "{p}: {root:?}");
            assert_eq!(has("unbindable"), unbindable, "{p}: {root:?}");
            assert_eq!(has("master:"), slave, "{p}: {root:?}");
        }
    }
    drop(mounts);
    assert_clean(&node);
}

#[test]
fn unknown_root_propagation_is_refused() {
    let node = Node::new();
    let bundle = node.bundle(
        "badprop",
        json!({"linux": {"rootfsPropagation": "sideways"}}),
    );
    let out = node.create(&bundle, "badprop", &[]);
    fails_with(&out, "linux.rootfsPropagation");
    assert_clean(&node);
}

/// `exec` joins the init's mount namespace, so it sees the /dev the init
/// built, and its terminal-less stdio works through it.
#[test]
fn exec_sees_the_rebuilt_dev() {
    let node = Node::new();
    let mut patch = unprivileged();
    merge(
        &mut patch,
        json!({"mounts": runc_mounts(), "process": {"args": ["sleep", "1000"]}}),
    );
    start_bundle(&node, "devexec", patch);
    let out = node.run(["exec", "devexec", "sh", "-c", SHOW]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    check_runc_dev(&stdout(&out));
    assert!(node.run(["delete", "--force", "devexec"]).status.success());
}

/// podman binds a host directory on /dev/shm and kubelet a file on
/// /dev/termination-log: LXC mounts them into its /dev, the init carries
/// them over into the one it builds.
#[test]
fn binds_below_dev_survive_the_rebuild() {
    let node = Node::new();
    let shm = node.root().join("shm-dir");
    std::fs::create_dir(&shm).unwrap();
    std::fs::write(shm.join("seen"), "from-host-dir\n").unwrap();
    let log = node.root().join("termination-log");
    std::fs::write(&log, "from-host-file\n").unwrap();
    let mut mounts: Vec<serde_json::Value> = runc_mounts()
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["destination"] != "/dev/shm")
        .cloned()
        .collect();
    mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rw"]}));
    mounts.push(json!({"destination": "/dev/termination-log", "type": "bind", "source": log, "options": ["bind"]}));
    let out = run_in(
        &node,
        "devbind",
        json!({"mounts": mounts}),
        "cat /dev/shm/seen /dev/termination-log; echo END",
    );
    assert!(out.contains("from-host-dir\nfrom-host-file\n"), "{out}");
}
