//! The router: rules in config.toml send containers to runc or crun, which
//! nexcage runs as they are (under their own root below nexcage's), while
//! the rest become Proxmox guests of the simulated node.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SANDBOX_RULE: &str = r#"
[[router.rule]]
backend = "runc"
annotations = { "io.kubernetes.cri.container-type" = "sandbox" }
"#;

/// The proc mount runc needs (it closes inherited descriptors through
/// /proc/self/fd); the Proxmox backend mounts /proc itself. And a tmpfs on
/// /dev, as every client gives runc: without it runc makes /dev/ptmx and
/// device nodes in the rootfs itself, which is shared by all the tests, and
/// two runc creates at once race there ("symlink pts/ptmx ...: file exists").
fn runc_bundle(node: &Node, name: &str, patch: Value) -> PathBuf {
    let mut p = json!({"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
    ]});
    merge(&mut p, patch);
    node.bundle(name, p)
}

fn delegate_root(node: &Node, name: &str) -> PathBuf {
    node.state_root().join("~nexcage/delegate").join(name)
}

/// runc's own record of `id` under the delegate root nexcage gave it.
fn runc_state(node: &Node, id: &str) -> Option<Value> {
    let text =
        std::fs::read_to_string(delegate_root(node, "runc").join(id).join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn backend_of(node: &Node, id: &str) -> String {
    record(node, id)["backend"].as_str().unwrap().to_string()
}

/// Nothing of any backend left: no guest, no nexcage state, no delegate state.
#[track_caller]
fn assert_all_clean(node: &Node) {
    assert_clean(node);
    for name in ["runc", "crun"] {
        let left: Vec<_> = std::fs::read_dir(delegate_root(node, name))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name} state left: {left:?}");
    }
}

/// Create with stdio in files; returns (stdout file, pid).
fn create_logged(node: &Node, bundle: &Path, id: &str) -> (PathBuf, i32) {
    let logged = node.create_logged(bundle, id);
    let pid = std::fs::read_to_string(&logged.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (logged.out, pid)
}

#[test]
fn a_sandbox_container_runs_its_whole_lifecycle_under_runc() {
    let node = Node::with_config(SANDBOX_RULE);
    let id = "router-sandbox";
    let bundle = runc_bundle(
        &node,
        id,
        json!({
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "process": {"args": ["sh", "-c", "echo started; exec sleep 1000"]}
        }),
    );
    let (out, pid) = create_logged(&node, &bundle, id);
    assert_eq!(backend_of(&node, id), "runc");
    let runc = runc_state(&node, id).expect("runc holds the container");
    assert_eq!(runc["init_process_pid"], pid, "{runc}");
    assert!(
        node.vmids().is_empty(),
        "no guest for a delegated container"
    );

    // `state` is runc's document, as runc prints it.
    let state = node.state(id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
    assert_eq!(
        state["ociVersion"], "1.0.2-dev",
        "runc's own ociVersion: {state}"
    );

    let start = node.run(["start", id]);
    assert!(start.status.success(), "start: {}", stderr(&start));
    wait_for_file_content(&out, "started\n");
    assert_eq!(node.status(id), "running");

    let exec = node.run(["exec", id, "sh", "-c", "echo in-$$; exit 3"]);
    assert_eq!(exec.status.code(), Some(3), "exec: {}", stderr(&exec));
    assert!(stdout(&exec).starts_with("in-"), "{}", stdout(&exec));

    let ps = node.run(["ps", "--format", "json", id]);
    assert!(ps.status.success(), "ps: {}", stderr(&ps));
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, [pid]);

    let pause = node.run(["pause", id]);
    assert!(pause.status.success(), "pause: {}", stderr(&pause));
    assert_eq!(node.status(id), "paused");
    assert_eq!(runc_state(&node, id).unwrap()["id"], id);
    let resume = node.run(["resume", id]);
    assert!(resume.status.success(), "resume: {}", stderr(&resume));
    assert_eq!(node.status(id), "running");

    let update = node.run(["update", "--pids-limit", "77", id]);
    assert!(update.status.success(), "update: {}", stderr(&update));
    let stats = node.run(["events", "--stats", id]);
    assert!(stats.status.success(), "events: {}", stderr(&stats));
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["data"]["pids"]["limit"], 77, "{stats}");

    // A second create of the id is refused by nexcage, whatever backend.
    let again = node.create(&node.bundle("plain", json!({})), id, &[]);
    fails_with(
        &again,
        &format!("container with given ID already exists: {id}"),
    );

    let kill = node.run(["kill", id, "KILL"]);
    assert!(kill.status.success(), "kill: {}", stderr(&kill));
    reap(pid, Duration::from_secs(10));
    node.wait_status(id, "stopped");
    let delete = node.run(["delete", id]);
    assert!(delete.status.success(), "delete: {}", stderr(&delete));
    assert!(runc_state(&node, id).is_none());
    assert_all_clean(&node);
    fails_with(&node.run(["state", id]), "container does not exist");
}

/// An executable shell script `<node>/<name>`.
fn script(node: &Node, name: &str, body: &str) -> PathBuf {
    let path = node.root().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// runc behind a script that logs each command line it is given, one a
/// line, to `<node>/runc.log`.
fn logged_runc(node: &Node) -> (PathBuf, PathBuf) {
    let log = node.root().join("runc.log");
    let body = format!("echo \"$*\" >> '{}'\nexec runc \"$@\"\n", log.display());
    (script(node, "runc-logged", &body), log)
}

/// The subcommands (first word after `--root DIR`) runc was run with since
/// the log was last emptied.
fn runc_runs(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    std::fs::write(log, "").unwrap();
    text.lines()
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn an_id_rule_sends_matching_ids_to_runc_and_others_to_proxmox() {
    let node = Node::new();
    let (runc, log) = logged_runc(&node);
    node.write_config(&format!(
        "[runc]\npath = {runc:?}\n[[router.rule]]\nbackend = \"runc\"\nid = \"^router-test-\"\n"
    ));
    let bundle = runc_bundle(
        &node,
        "idrule",
        json!({"process": {"args": ["sh", "-c", "echo by-id"]}}),
    );
    let id = "router-test-1";
    let (out, pid) = create_logged(&node, &bundle, id);
    assert_eq!(backend_of(&node, id), "runc");
    assert!(runc_state(&node, id).is_some());
    assert!(node.run(["start", id]).status.success());
    wait_for_file_content(&out, "by-id\n");
    reap(pid, Duration::from_secs(10));
    node.wait_status(id, "stopped");

    let id2 = "router-test-2";
    let (_, pid2) = create_logged(&node, &bundle, id2);
    assert_eq!(backend_of(&node, id2), "runc");

    // Another id of the same bundle is a Proxmox guest.
    let guest = "router-other";
    let (_, _) = create_logged(&node, &node.bundle("plain", json!({})), guest);
    assert_eq!(backend_of(&node, guest), "proxmox-lxc");
    assert_eq!(node.vmids().len(), 1);
    runc_runs(&log);

    // list: both, each with its backend, the delegated one's status runc's.
    let list = node.run(["list"]);
    assert!(list.status.success(), "list: {}", stderr(&list));
    let text = stdout(&list);
    let header = text.lines().next().unwrap();
    assert!(header.ends_with("OWNER   BACKEND"), "{text}");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    assert!(
        row(id).ends_with("runc") && row(id).contains("stopped"),
        "{text}"
    );
    assert!(
        row(id2).ends_with("runc") && row(id2).contains(&format!(" {pid2} ")),
        "{text}"
    );
    assert!(
        row(guest).ends_with("proxmox-lxc") && row(guest).contains("created"),
        "{text}"
    );
    // Both delegated containers from one run of runc's own list.
    assert_eq!(runc_runs(&log), ["list --format json"]);
    let json = node.run(["list", "--format", "json"]);
    let all: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap();
    let backends: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["backend"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        backends,
        [
            (guest, "created", "proxmox-lxc"),
            (id, "stopped", "runc"),
            (id2, "created", "runc")
        ]
    );
    assert_eq!(all[2]["pid"], pid2);
    assert_eq!(runc_runs(&log), ["list --format json"]);

    for c in [id, id2, guest] {
        let d = node.run(["delete", "--force", c]);
        assert!(d.status.success(), "delete {c}: {}", stderr(&d));
    }
    assert_all_clean(&node);
}

#[test]
fn a_bundle_proxmox_cannot_express_falls_back_to_runc() {
    let node = Node::with_config("[[router.rule]]\nbackend = \"runc\"\nunexpressible = true\n");
    // The host's network namespace: no Proxmox guest can share it.
    let host_net = json!({
        "process": {"args": ["sh", "-c", "echo host-net"]},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    });
    let bundle = runc_bundle(&node, "hostnet", host_net);
    let route = node
        .nexcage(["route", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(route.status.success(), "{}", stderr(&route));
    let text = stdout(&route);
    assert!(
        text.starts_with("runc router.rule[0] (unexpressible: ")
            && text.contains("host's network namespace"),
        "{text}"
    );
    let id = "router-hostnet";
    let (out, pid) = create_logged(&node, &bundle, id);
    assert_eq!(backend_of(&node, id), "runc");
    assert!(node.vmids().is_empty());
    assert!(node.run(["start", id]).status.success());
    wait_for_file_content(&out, "host-net\n");
    reap(pid, Duration::from_secs(10));
    node.wait_status(id, "stopped");
    assert!(node.run(["delete", id]).status.success());
    assert_all_clean(&node);

    // What Proxmox can express stays a guest.
    let plain = node.bundle("plain", json!({}));
    let r = node
        .nexcage(["route", "--format", "json", "--bundle"])
        .arg(&plain)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        doc,
        json!({"backend": "proxmox-lxc", "chosenBy": "default", "rule": null, "refusal": null})
    );
}

#[test]
fn route_names_the_backend_and_the_rule_that_chose_it() {
    let node = Node::with_config(&format!(
        "{SANDBOX_RULE}\n[[router.rule]]\nbackend = \"crun\"\nimage = \"docker.io/library/busybox:*\"\nid = \"^k8s-\"\n"
    ));
    let busybox = node.bundle(
        "busybox",
        json!({"annotations": {"io.kubernetes.cri.image-name": "docker.io/library/busybox:1.36"}}),
    );
    let route = |args: &[&str], bundle: &Path| {
        let out = node
            .nexcage(["route"])
            .args(args)
            .arg("--bundle")
            .arg(bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(route(&["k8s-1"], &busybox), "crun router.rule[1]\n");
    assert_eq!(route(&["other"], &busybox), "proxmox-lxc default\n");
    assert_eq!(
        route(&[], &busybox),
        "proxmox-lxc default\n",
        "no id: id rules do not match"
    );
    let json: Value =
        serde_json::from_str(&route(&["--format", "json", "k8s-1"], &busybox)).unwrap();
    assert_eq!(
        json,
        json!({"backend": "crun", "chosenBy": "rule", "rule": 1, "refusal": null})
    );
    let named = node.bundle(
        "named",
        json!({"annotations": {"io.kubernetes.cri.container-type": "sandbox", "org.nexcage.backend": "proxmox-lxc"}}),
    );
    assert_eq!(
        route(&[], &named),
        "proxmox-lxc annotation org.nexcage.backend\n"
    );
    let sandbox = node.bundle(
        "sandbox",
        json!({"annotations": {"io.kubernetes.cri.container-type": "sandbox"}}),
    );
    assert_eq!(route(&[], &sandbox), "runc router.rule[0]\n");
    // route makes nothing.
    assert_all_clean(&node);
}

#[test]
fn a_bad_rule_fails_every_command_with_its_index() {
    let node = Node::with_config(&format!(
        "{SANDBOX_RULE}\n[[router.rule]]\nbackend = \"runc\"\nid = \"(unclosed\"\n"
    ));
    fails_with(
        &node.run(["list"]),
        "router.rule[1]: id: bad regular expression \"(unclosed\"",
    );
    let bundle = node.bundle("bad", json!({}));
    let out = node.create(&bundle, "bad", &[]);
    fails_with(&out, "router.rule[1]");
    node.write_config("[[router.rule]]\nbackend = \"youki\"\nid = \"x\"\n");
    fails_with(
        &node.run(["list"]),
        "router.rule[0]: backend: unknown backend \"youki\"",
    );
    node.write_config("[[router.rule]]\nbackend = \"runc\"\n");
    fails_with(&node.run(["list"]), "router.rule[0]: no condition");
    assert_all_clean(&node);
}

#[test]
fn a_missing_delegate_fails_create_naming_it() {
    let node = Node::with_config(
        "[crun]\npath = \"/nonexistent/crun\"\n[[router.rule]]\nbackend = \"crun\"\nid = \"^router-\"\n",
    );
    let bundle = runc_bundle(&node, "missing", json!({}));
    let out = node.create(&bundle, "router-missing", &[]);
    fails_with(
        &out,
        "backend crun: runtime binary \"/nonexistent/crun\" not found",
    );
    assert_all_clean(&node);
}

#[test]
fn delete_force_cleans_a_delegated_container_whose_record_is_lost() {
    let node = Node::with_config(SANDBOX_RULE);
    let id = "router-lost";
    let bundle = runc_bundle(
        &node,
        id,
        json!({
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "process": {"args": ["sleep", "1000"]}
        }),
    );
    let (_, pid) = create_logged(&node, &bundle, id);
    assert!(node.run(["start", id]).status.success());
    std::fs::remove_dir_all(node.state_root().join(id)).unwrap();
    let d = node.run(["delete", "--force", id]);
    assert!(d.status.success(), "delete --force: {}", stderr(&d));
    reap(pid, Duration::from_secs(10));
    assert!(runc_state(&node, id).is_none(), "runc's state is gone too");
    assert_all_clean(&node);

    // The other way round: runc lost the container, nexcage's record stays
    // (listed as stopped) until delete --force.
    let (_, pid) = create_logged(&node, &bundle, id);
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(delegate_root(&node, "runc"))
        .args(["delete", "--force", id])
        .status()
        .unwrap();
    assert!(runc.success());
    reap(pid, Duration::from_secs(10));
    let list = node.run(["list", "--format", "json"]);
    let all: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        (all[0]["id"].as_str(), all[0]["status"].as_str()),
        (Some(id), Some("stopped"))
    );
    let d = node.run(["delete", "--force", id]);
    assert!(d.status.success(), "delete --force: {}", stderr(&d));
    assert_all_clean(&node);
}

/// crun 1.8 refuses a hybrid cgroup host whose v2 hierarchy has controllers
/// (src/libcrun/cgroup.c, libcrun_cgroup_enter), which some CI machines
/// are; there this wrapper, configured as crun's `path`, runs it in a mount
/// namespace without the v2 hierarchy, so it uses the v1 controllers as on
/// a legacy host. Elsewhere it is crun itself.
fn crun_wrapper(node: &Node) -> PathBuf {
    script(
        node,
        "crun-wrapper",
        "if mountpoint -q /sys/fs/cgroup/unified && grep -q . /sys/fs/cgroup/unified/cgroup.controllers; then\n  exec unshare -m sh -c 'umount /sys/fs/cgroup/unified && exec crun \"$@\"' crun \"$@\"\nfi\nexec crun \"$@\"\n",
    )
}

#[test]
fn crun_runs_what_its_rule_sends_it() {
    let node = Node::new();
    node.write_config(&format!(
        "[crun]\npath = {:?}\n[[router.rule]]\nbackend = \"crun\"\nid = \"^router-crun\"\n",
        crun_wrapper(&node)
    ));
    let id = "router-crun";
    let bundle = runc_bundle(
        &node,
        id,
        json!({"process": {"args": ["sh", "-c", "echo from-crun; exec sleep 1000"]}}),
    );
    let out = node.root().join("crun.out");
    let pid_file = node.root().join("crun.pid");
    let create = node
        .nexcage(["create", "--pid-file"])
        .arg(&pid_file)
        .arg("--bundle")
        .arg(&bundle)
        .arg(id)
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(node.root().join("crun.err")).unwrap())
        .status()
        .unwrap();
    assert!(
        create.success(),
        "create: {}",
        std::fs::read_to_string(node.root().join("crun.err")).unwrap()
    );
    assert_eq!(backend_of(&node, id), "crun");
    assert!(
        delegate_root(&node, "crun").join(id).is_dir(),
        "crun holds it under its own root"
    );
    assert!(node.vmids().is_empty());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(node.state(id)["pid"], pid);
    assert!(node.run(["start", id]).status.success());
    wait_for_file_content(&out, "from-crun\n");
    let exec = node.run(["exec", id, "sh", "-c", "echo crun-exec; exit 5"]);
    assert_eq!(exec.status.code(), Some(5), "exec: {}", stderr(&exec));
    assert_eq!(stdout(&exec), "crun-exec\n");
    let d = node.run(["delete", "--force", id]);
    assert!(d.status.success(), "delete: {}", stderr(&d));
    reap(pid, Duration::from_secs(10));
    assert_all_clean(&node);
}

#[test]
fn run_through_a_delegate_returns_its_exit_status_and_leaves_nothing() {
    let node = Node::with_config(SANDBOX_RULE);
    let bundle = runc_bundle(
        &node,
        "run",
        json!({
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "process": {"args": ["sh", "-c", "echo ran; exit 7"]}
        }),
    );
    let out = node.run_bundle(&bundle, "router-run");
    assert_eq!(out.status.code(), Some(7), "run: {}", stderr(&out));
    assert_eq!(stdout(&out), "ran\n");
    assert_all_clean(&node);
}

#[test]
fn a_delegate_as_default_takes_what_no_rule_matches_and_reports_its_features() {
    let node = Node::with_config("[router]\ndefault = \"runc\"\n");
    let features = node.run(["features"]);
    assert!(features.status.success(), "{}", stderr(&features));
    let ours: Value = serde_json::from_slice(&features.stdout).unwrap();
    let runc = std::process::Command::new("runc")
        .arg("features")
        .output()
        .unwrap();
    let theirs: Value = serde_json::from_slice(&runc.stdout).unwrap();
    assert_eq!(ours, theirs);
    let bundle = runc_bundle(&node, "dflt", json!({}));
    let route = node
        .nexcage(["route", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(stdout(&route), "runc default\n");
    // The annotation still reaches the Proxmox backend.
    let named = node.bundle(
        "named",
        json!({"annotations": {"org.nexcage.backend": "proxmox-lxc"}}),
    );
    let route = node
        .nexcage(["route", "--bundle"])
        .arg(&named)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&route),
        "proxmox-lxc annotation org.nexcage.backend\n"
    );
}
