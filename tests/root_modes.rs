//! Root modes: `template` (the rootfs converted and unpacked into the
//! guest's volume) and `bundle` (the bundle's rootfs itself mounted into a
//! guest booted from a shared stub, the init pivoting into it).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{assert_clean, fails_with, namespaces, rootfs, stderr, stdout, Node};
use serde_json::json;

/// A private copy of the busybox rootfs, with `/owned` belonging to host
/// uid 0 and `/data` to host uid 1000.
fn own_rootfs(node: &Node, tag: &str) -> PathBuf {
    let dir = node.root().join(format!("rootfs-{tag}"));
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(dir.join("owned"), "from the image\n").unwrap();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::os::unix::fs::chown(dir.join("data"), Some(1000), Some(1000)).unwrap();
    dir
}

fn bundle_with(node: &Node, id: &str, root: &Path, user: bool, patch: serde_json::Value) -> PathBuf {
    let mut p = json!({
        "root": {"path": root},
        "linux": {"namespaces": namespaces(user)},
    });
    common::merge(&mut p, patch);
    node.bundle(id, p)
}

/// Only the stub was converted: one template, and no other.
fn only_the_stub(node: &Node) {
    let t = node.templates();
    assert_eq!(t.len(), 1, "{t:?}");
}

fn bundle_mode_runs_on_the_rootfs_itself(user: bool) {
    let node = Node::with_config("root = \"bundle\"");
    let tag = if user { "unpriv" } else { "priv" };
    let root = own_rootfs(&node, tag);
    let script = "stat -c '%u %n' /owned /data /bin/busybox; cat /owned; \
                  echo written > /from-guest; mkdir -p /tmp/d; echo ok";
    let bundle = bundle_with(
        &node,
        tag,
        &root,
        user,
        json!({"process": {"args": ["sh", "-c", script]}}),
    );
    let out = node.run_bundle(&bundle, tag);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text,
        "0 /owned\n1000 /data\n0 /bin/busybox\nfrom the image\nok\n",
        "{}",
        stderr(&out)
    );
    // The write is in the bundle, owned by host root as with runc.
    let f = root.join("from-guest");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "written\n");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), 0);
    assert!(root.join("tmp/d").is_dir());
    only_the_stub(&node);
    // Nothing of nexcage's stays in the rootfs, nor anywhere else.
    assert!(!root.join(".nexcage").exists());
    assert_clean(&node);
}

#[test]
fn privileged_bundle_mode_runs_on_the_rootfs_itself() {
    bundle_mode_runs_on_the_rootfs_itself(false);
}

#[test]
fn unprivileged_bundle_mode_sees_host_root_files_as_root() {
    bundle_mode_runs_on_the_rootfs_itself(true);
}
