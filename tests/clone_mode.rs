//! Root mode `clone`: one base guest per template, made a Proxmox template,
//! and every container a linked clone of it, over the simulated node's
//! LVM-thin storage.

mod common;

use std::path::PathBuf;

use common::{assert_clean, fails_with, namespaces, stderr, stdout, Node};
use serde_json::json;

fn clone_bundle(node: &Node, id: &str, user: bool, script: &str) -> PathBuf {
    node.bundle(
        id,
        json!({
            "process": {"args": ["sh", "-c", script]},
            "annotations": {"org.proxmox.root": "clone"},
            "linux": {"namespaces": namespaces(user),
                      "resources": {"memory": {"limit": 300 * 1024 * 1024}}},
        }),
    )
}

/// The VMIDs whose conf says `template: 1`.
fn bases(node: &Node) -> Vec<u32> {
    node.vmids()
        .into_iter()
        .filter(|v| {
            std::fs::read_to_string(node.root().join(format!("etc/pve/lxc/{v}.conf")))
                .unwrap()
                .lines()
                .any(|l| l == "template: 1")
        })
        .collect()
}

fn conf(node: &Node, id: &str) -> String {
    let vmid = common::record(node, id)["backendData"]["vmid"]
        .as_u64()
        .unwrap();
    std::fs::read_to_string(node.root().join(format!("etc/pve/lxc/{vmid}.conf"))).unwrap()
}

/// `nexcage run` of `bundle` as `id`, which must exit 0.
#[track_caller]
fn run_ok(node: &Node, bundle: &std::path::Path, id: &str) -> std::process::Output {
    let out = node.run_bundle(bundle, id);
    assert_eq!(out.status.code(), Some(0), "{id}: {}", stderr(&out));
    out
}

fn prune_all(node: &Node) {
    let out = node.run(["template", "prune", "--all"]);
    assert!(out.status.success(), "prune: {}", stderr(&out));
}

#[test]
fn containers_of_one_image_are_clones_of_one_base() {
    let node = Node::new();
    let script = "cat /etc/os-release >/dev/null && echo mine > /own && \
                  ls /own /other 2>/dev/null; echo ok";
    for id in ["c1", "c2"] {
        let bundle = clone_bundle(&node, id, false, script);
        let out = node.create(&bundle, id, &[]);
        assert!(out.status.success(), "create {id}: {}", stderr(&out));
        let text = conf(&node, id);
        // The clone's own options were set on it; the base's are kept.
        assert!(text.contains("memory: 300"), "{text}");
        assert!(text.contains(&format!("hostname: {id}")), "{text}");
        assert!(text.contains("ostype: unmanaged"), "{text}");
        assert!(!text.contains("template:"), "{text}");
    }
    assert_eq!(bases(&node).len(), 1, "one base for one image");
    let base = bases(&node)[0];
    let base_conf =
        std::fs::read_to_string(node.root().join(format!("etc/pve/lxc/{base}.conf"))).unwrap();
    assert!(base_conf.contains("base-"), "{base_conf}");
    assert_eq!(node.templates().len(), 1);
    for id in ["c1", "c2"] {
        assert!(node.run(["start", id]).status.success());
        node.wait_status(id, "stopped");
    }
    let out = node.run(["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    let out = node.run(["delete", "c2"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    // The base outlives its clones, as the template does.
    assert_eq!(bases(&node), [base]);
    prune_all(&node);
    assert!(node.templates().is_empty(), "{:?}", node.templates());
    assert_clean(&node);
}

#[test]
fn a_clone_runs_the_image_and_writes_only_its_own_root() {
    let node = Node::new();
    let a = clone_bundle(&node, "wa", true, "echo a > /mark; cat /mark; ls /");
    let out = run_ok(&node, &a, "wa");
    assert!(stdout(&out).starts_with("a\n"), "{}", stdout(&out));
    assert!(stdout(&out).contains("bin"), "{}", stdout(&out));
    let b = clone_bundle(&node, "wb", true, "cat /mark 2>&1; echo done");
    let out = run_ok(&node, &b, "wb");
    assert!(stdout(&out).contains("No such file"), "{}", stdout(&out));
    assert_eq!(bases(&node).len(), 1);
    // A privileged container of the same image needs a base of its own
    // (an unprivileged base's files are shifted).
    let p = clone_bundle(&node, "wp", false, "true");
    run_ok(&node, &p, "wp");
    assert_eq!(bases(&node).len(), 2);
    prune_all(&node);
    assert_clean(&node);
}

#[test]
fn clone_mode_on_a_storage_without_linked_clones_is_refused_with_nothing_made() {
    // `local` is a dir storage; give it root volumes for this test.
    let node = Node::with_config("storage = \"local\"");
    let cfg = node.root().join("etc/pve/storage.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen(
            "content iso,vztmpl,backup,import",
            "content iso,vztmpl,backup,import,rootdir",
            1,
        ),
    )
    .unwrap();
    let bundle = clone_bundle(&node, "d", false, "true");
    let out = node.create(&bundle, "d", &[]);
    fails_with(&out, "root mode clone needs a storage with linked clones");
    fails_with(&out, "storage 'local' is dir");
    assert!(bases(&node).is_empty());
    prune_all(&node);
    assert_clean(&node);
}

/// Points nexcage's `pct` at `path`.
fn use_pct(node: &Node, path: &std::path::Path) {
    let cfg = std::fs::read_to_string(&node.config).unwrap();
    let (before, rest) = cfg.split_once("pct = ").unwrap();
    let (_, after) = rest.split_once('\n').unwrap();
    std::fs::write(&node.config, format!("{before}pct = {path:?}\n{after}")).unwrap();
}

#[test]
fn a_failed_set_destroys_the_clone_and_keeps_only_a_base_made_before() {
    let node = Node::new();
    // pct as the node has it, except that `pct set` fails.
    let wrapper = node.root().join("pct-failing-set");
    let real = node.root().join("bin/pct");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = set ]; then echo 'unable to set: simulated' >&2; exit 255; fi\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    use_pct(&node, &wrapper);
    let bundle = clone_bundle(&node, "s", false, "true");
    // The create that converted the template discards it, and so its base.
    let out = node.create(&bundle, "s", &[]);
    fails_with(&out, "unable to set: simulated");
    assert!(node.vmids().is_empty(), "{:?}", node.vmids());
    assert!(node.templates().is_empty(), "{:?}", node.templates());
    assert_clean(&node);

    // With the template and its base made by a create that succeeded, a
    // failed one leaves the base for the next create, and nothing else.
    use_pct(&node, &real);
    run_ok(&node, &bundle, "ok");
    let base = bases(&node);
    assert_eq!(base.len(), 1);
    use_pct(&node, &wrapper);
    let out = node.create(&bundle, "s", &[]);
    fails_with(&out, "unable to set: simulated");
    assert_eq!(node.vmids(), base);
    prune_all(&node);
    assert_clean(&node);
}

#[test]
fn concurrent_creates_of_one_image_clone_its_base_in_turn() {
    let node = Node::new();
    // The base first, so that the creates below meet only at the clone,
    // which takes the base's `disk` lock for its duration.
    let first = clone_bundle(&node, "k0", false, "true");
    run_ok(&node, &first, "k0");
    let ids: Vec<String> = (1..=4).map(|i| format!("k{i}")).collect();
    let bundles: Vec<PathBuf> = ids
        .iter()
        .map(|id| clone_bundle(&node, id, false, "true"))
        .collect();
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .zip(&bundles)
            .map(|(id, b)| s.spawn(|| node.create(b, id, &["--debug"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, out) in ids.iter().zip(&outs) {
        assert!(out.status.success(), "create {id}: {}", stderr(out));
        // Not one clone met another's lock (then taken for a VMID taken).
        assert!(!stderr(out).contains("is locked"), "{id}: {}", stderr(out));
    }
    assert_eq!(bases(&node).len(), 1);
    for id in &ids {
        let out = node.run(["delete", id]);
        assert!(out.status.success(), "delete {id}: {}", stderr(&out));
    }
    prune_all(&node);
    assert_clean(&node);
}

#[test]
fn a_base_destroyed_behind_nexcages_back_is_made_again() {
    let node = Node::new();
    let bundle = clone_bundle(&node, "r1", false, "true");
    run_ok(&node, &bundle, "r1");
    let old = bases(&node);
    assert_eq!(old.len(), 1);
    let out = node.pct(["destroy", &old[0].to_string()]);
    assert!(out.status.success(), "pct destroy: {}", stderr(&out));
    run_ok(&node, &bundle, "r2");
    let new = bases(&node);
    assert_eq!(new.len(), 1);
    // Its VMID reservation went with it: only the new base holds one.
    assert_eq!(node.reservations().len(), 1, "{:?}", node.reservations());
    prune_all(&node);
    assert_clean(&node);
}
