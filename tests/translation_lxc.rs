//! The translation takes effect in real LXC containers on the simulated node:
//! limits in the guest's cgroups, mounts, read-only root, capabilities,
//! sysctls, hostname, masked paths.

mod common;

use common::*;
use serde_json::json;

/// Run `script` in a container made from `patch`; returns its stdout.
fn run_in(node: &Node, name: &str, patch: serde_json::Value, script: &str) -> String {
    // The configuration as create wrote it: the guest is gone once the
    // process has ended (the reaper destroys it).
    let (out, confs) = run_script_conf(node, name, patch, script);
    let out = format!("{out}--- conf\n{confs}");
    let _ = node.run(["delete", "--force", name]);
    out
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
}

#[test]
fn limits_reach_the_guest_cgroups() {
    let node = Node::new();
    start_bundle(
        &node,
        "limits",
        json!({"process": {"args": ["sleep", "1000"]},
               "linux": {"resources": {
            "memory": {"limit": 268435456},
            "cpu": {"quota": 50000, "period": 100000},
            "pids": {"limit": 77}
        }}}),
    );
    // As on Proxmox, the limits sit on lxc/<vmid>, above the guest's own
    // cgroup root (lxc/<vmid>/ns), where the guest cannot raise them.
    let init = init_pid(&node, "limits");
    let read = |c: &str, v1: &str, v2: &str| {
        std::fs::read_to_string(limit_file(init, c, v1, v2))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes", "memory.max"),
        "268435456"
    );
    assert!(read("cpu", "cpu.cfs_quota_us", "cpu.max").starts_with("50000"));
    assert_eq!(read("pids", "pids.max", "pids.max"), "77");
    assert!(node.run(["delete", "--force", "limits"]).status.success());
}

#[test]
fn mounts_root_and_sysctl_take_effect() {
    let node = Node::new();
    let src = node.root().join("shared");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), "from-host\n").unwrap();
    let out = run_in(
        &node,
        "mounts",
        json!({
            "root": {"readonly": true},
            "hostname": "trans-host",
            "mounts": [
                {"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "ro"]},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]},
                {"destination": "/guarded", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}
            ],
            "linux": {"sysctl": {"net.ipv4.ip_forward": "1", "net.ipv4.tcp_syncookies": "0"}, "maskedPaths": ["/proc/version"], "readonlyPaths": ["/proc/sysrq-trigger", "/guarded"]}
        }),
        "echo data=$(cat /data/file); touch /data/x 2>/dev/null && echo bindrw=yes || echo bindrw=no; \
         touch /rootfile 2>/dev/null && echo rootrw=yes || echo rootrw=no; \
         touch /scratch/x && echo scratch=ok; \
         touch /guarded/x 2>/dev/null && echo guarded=rw || echo guarded=ro; \
         echo host=$(hostname); echo kcore=$(stat -c %t,%T /proc/version 2>&1); echo END",
    );
    assert_eq!(line(&out, "data="), "from-host");
    assert_eq!(line(&out, "bindrw="), "no");
    assert_eq!(line(&out, "rootrw="), "no");
    assert_eq!(line(&out, "scratch="), "ok");
    assert_eq!(line(&out, "guarded="), "ro", "readonlyPaths: {out}");
    assert_eq!(line(&out, "host="), "trans-host");
    assert_eq!(line(&out, "kcore="), "1,3", "/dev/null masks it: {out}");
}

/// net.* sysctls are written by the init in the guest's own namespace.
#[test]
fn sysctl_takes_effect() {
    let node = Node::new();
    let out = run_in(
        &node,
        "sysctl",
        json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1", "net.ipv4.tcp_syncookies": "0"}}}),
        "echo fwd=$(cat /proc/sys/net/ipv4/ip_forward) syn=$(cat /proc/sys/net/ipv4/tcp_syncookies); echo END",
    );
    assert_eq!(line(&out, "fwd="), "1 syn=0", "{out}");
}

#[test]
fn capabilities_are_dropped_for_the_process() {
    let node = Node::new();
    let out = run_in(
        &node,
        "caps",
        json!({"process": {"user": {"uid": 1000, "gid": 1000}, "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_KILL"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_CHOWN", "CAP_KILL"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"]
        }, "oomScoreAdj": 333}}),
        "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status | tr -d '\\t' | sed 's/:/=/'; echo oom=$(cat /proc/self/oom_score_adj); echo END",
    );
    // A non-root process keeps across exec exactly its ambient set, and
    // nothing outside the bounding set.
    assert_eq!(line(&out, "CapBnd="), "0000000000000021");
    assert_eq!(line(&out, "CapAmb="), "0000000000000020");
    assert_eq!(line(&out, "CapPrm="), "0000000000000020");
    assert_eq!(line(&out, "CapEff="), "0000000000000020");
    assert_eq!(line(&out, "oom="), "333");
}

/// runc sets the effective, permitted and inheritable sets with one
/// capset, whose checks see the sets from before the call: a root process
/// may take an inheritable capability it is not permitted, since it still
/// holds CAP_SETPCAP. The init sets them one by one (the caps crate's
/// way) in an order that keeps those checks, inheritable first.
#[test]
fn root_process_gets_inheritable_capabilities_outside_permitted() {
    let node = Node::new();
    let out = run_in(
        &node,
        "rootcaps",
        json!({"process": {"user": {"uid": 0, "gid": 0}, "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_KILL"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"],
            "inheritable": ["CAP_CHOWN", "CAP_KILL"]
        }}}),
        "grep -E '^Cap(Inh|Bnd|Amb)' /proc/self/status | tr -d '\\t' | sed 's/:/=/'; echo END",
    );
    assert_eq!(line(&out, "CapInh="), "0000000000000021", "{out}");
    assert_eq!(line(&out, "CapBnd="), "0000000000000021", "{out}");
    assert_eq!(line(&out, "CapAmb="), "0000000000000000", "{out}");
}

#[test]
fn hostile_values_are_refused_before_anything_exists() {
    let node = Node::new();
    for (i, patch) in [
        json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1\nlxc.hook.pre-start: /bin/false"}}}),
        json!({"mounts": [{"destination": "/x", "type": "bind", "source": "/tmp,mp=/etc", "options": ["bind"]}]}),
        json!({"annotations": {"org.proxmox.tags": "a\nlxc.init.cmd: /evil"}}),
        json!({"linux": {"sysctl": {"kernel.core_pattern": "|/evil"}}}),
    ]
    .into_iter()
    .enumerate()
    {
        let bundle = node.bundle(&format!("bad{i}"), patch);
        let out = node.create(&bundle, &format!("bad{i}"), &[]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("config.json:"), "{}", stderr(&out));
    }
    assert!(node.vmids().is_empty(), "a refused bundle made a guest");
}

/// The readonlyPaths and maskedPaths every podman/containerd/`runc spec`
/// bundle lists, and a read-only root, under the node's AppArmor profile
/// (mediated by the simulator), for a privileged and an unprivileged guest.
#[test]
fn default_readonly_and_masked_paths_work_under_apparmor() {
    let node = Node::new();
    for (name, userns) in [("aa-priv", false), ("aa-unpriv", true)] {
        let namespaces = common::namespaces(userns);
        let out = run_in(
            &node,
            name,
            json!({
                "root": {"readonly": true},
                "linux": {
                    "namespaces": namespaces,
                    "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
                    "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                                    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                                    "/sys/devices/virtual/powercap"]
                }
            }),
            "for p in /proc/bus /proc/fs /proc/irq /proc/sys; do \
               echo \"$p=$(awk -v p=$p '$2 == p {split($4, o, \",\"); m = o[1]} END {print m}' /proc/mounts)\"; done; \
             touch /rootfile 2>/dev/null && echo rootrw=yes || echo rootrw=no; \
             echo acpi=$(ls /proc/acpi | wc -l); echo keys=$(stat -c %t,%T /proc/keys); echo END",
        );
        for p in ["/proc/bus=", "/proc/fs=", "/proc/irq=", "/proc/sys="] {
            assert_eq!(line(&out, p), "ro", "{name} {p}: {out}");
        }
        assert_eq!(line(&out, "rootrw="), "no", "{name}: {out}");
        assert_eq!(line(&out, "acpi="), "0", "{name}: {out}");
        assert_eq!(line(&out, "keys="), "1,3", "{name}: {out}");
        assert!(
            out.contains("lxc.apparmor.raw: mount options=(ro,remount,bind) -> /,")
                && out.contains(
                    "lxc.apparmor.raw: mount options=(ro,remount,bind,nosuid,nodev,noexec) -> /proc/bus{,/},"
                ),
            "{name}: {out}"
        );
    }
}
