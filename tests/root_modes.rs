//! Root modes: `template` (the rootfs converted and unpacked into the
//! guest's volume) and `bundle` (the bundle's rootfs itself mounted into a
//! guest booted from a shared stub, the init pivoting into it).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{assert_clean, fails_with, namespaces, runc_mounts, stderr, stdout, Node};
use serde_json::json;

/// A private copy of the busybox rootfs, with `/owned` belonging to host
/// uid 0 and `/data` to host uid 1000.
fn own_rootfs(node: &Node, tag: &str) -> PathBuf {
    let dir = node.rootfs_copy(&format!("rootfs-{tag}"));
    std::fs::write(dir.join("owned"), "from the image\n").unwrap();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::os::unix::fs::chown(dir.join("data"), Some(1000), Some(1000)).unwrap();
    dir
}

fn bundle_with(
    node: &Node,
    id: &str,
    root: &Path,
    user: bool,
    patch: serde_json::Value,
) -> PathBuf {
    let mut p = json!({
        "root": {"path": root},
        "linux": {"namespaces": namespaces(user)},
    });
    common::merge(&mut p, patch);
    node.bundle(id, p)
}

/// [`own_rootfs`] and a bundle of it named `tag`: (rootfs, bundle).
fn own_bundle(node: &Node, tag: &str, user: bool, patch: serde_json::Value) -> (PathBuf, PathBuf) {
    let root = own_rootfs(node, tag);
    let bundle = bundle_with(node, tag, &root, user, patch);
    (root, bundle)
}

/// Whether the node's one template is the stub (a few empty directories,
/// no busybox): a converted image would be far larger.
fn the_one_template_is_the_stub(node: &Node) -> bool {
    let t = node.templates();
    assert_eq!(t.len(), 1, "{t:?}");
    let size = std::fs::metadata(node.template_dir().join(&t[0]))
        .unwrap()
        .len();
    size < 4096
}

/// Only the stub was converted: one template, and no other.
fn only_the_stub(node: &Node) {
    assert!(the_one_template_is_the_stub(node), "{:?}", node.templates());
}

fn bundle_mode_runs_on_the_rootfs_itself(user: bool) {
    let node = Node::with_config("root = \"bundle\"");
    let tag = if user { "unpriv" } else { "priv" };
    let script = "stat -c '%u %n' /owned /data /bin/busybox; cat /owned; \
                  echo written > /from-guest; mkdir -p /tmp/d; echo ok";
    let (root, bundle) = own_bundle(
        &node,
        tag,
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

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

/// What podman and containerd bundles carry (a /dev tmpfs and its
/// mounts, read-only root, masked and read-only paths) plus a bind mount
/// and a tmpfs of the bundle's own, all landing in the bundle's rootfs.
fn bundle_mode_applies_the_bundle_s_mounts_and_paths(user: bool) {
    let node = Node::with_config("root = \"bundle\"");
    let tag = if user { "mounts-unpriv" } else { "mounts-priv" };
    let root = own_rootfs(&node, tag);
    let src = node.root().join("shared");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), "from-host\n").unwrap();
    let script = "echo data=$(cat /data/file); echo secret=$(cat /owned); \
         touch /rootfile 2>/dev/null && echo rootrw=yes || echo rootrw=no; \
         touch /scratch/x && echo scratch=ok; touch /dev/shm/x && echo shm=ok; \
         echo sys=$(awk '$2 == \"/proc/sys\" {split($4, o, \",\"); m = o[1]} END {print m}' /proc/mounts); \
         echo keys=$(stat -c %t,%T /proc/keys); echo stub=$(grep -c nexcage-root /proc/self/mountinfo); \
         echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline); echo END";
    // runc's own mounts but mqueue and the cgroup tree, plus a bind and a tmpfs.
    let mut mounts: Vec<serde_json::Value> = runc_mounts()
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            !matches!(
                m["destination"].as_str(),
                Some("/dev/mqueue" | "/sys/fs/cgroup")
            )
        })
        .cloned()
        .collect();
    mounts.push(
        json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "ro"]}),
    );
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}));
    let bundle = bundle_with(
        &node,
        tag,
        &root,
        user,
        json!({
            "root": {"readonly": true},
            "process": {"args": ["sh", "-c", script]},
            "mounts": mounts,
            "linux": {
                "readonlyPaths": ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/owned"]
            }
        }),
    );
    let logged = node.create_logged(&bundle, tag);
    let start = node.run(["start", tag]);
    assert!(start.status.success(), "start: {}", stderr(&start));
    let out = common::wait_for_file_content(&logged.out, "END\n");
    node.wait_status(tag, "stopped");
    assert_eq!(line(&out, "data="), "from-host", "{out}");
    assert_eq!(line(&out, "secret="), "", "masked: {out}");
    assert_eq!(line(&out, "rootrw="), "no", "{out}");
    assert_eq!(line(&out, "scratch="), "ok", "{out}");
    assert_eq!(line(&out, "shm="), "ok", "{out}");
    assert_eq!(line(&out, "sys="), "ro", "{out}");
    assert_eq!(line(&out, "keys="), "1,3", "{out}");
    assert_eq!(line(&out, "stub="), "0", "the stub is gone: {out}");
    assert_eq!(
        line(&out, "pid1="),
        "/.nexcage/init init",
        "the guest's own /proc: {out}"
    );
    assert!(!root.join("rootfile").exists());
    let out = node.run(["delete", tag]);
    assert!(out.status.success(), "{}", stderr(&out));
    only_the_stub(&node);
    assert!(!root.join(".nexcage").exists());
    assert_clean(&node);
}

#[test]
fn privileged_bundle_mode_applies_the_bundle_s_mounts_and_paths() {
    bundle_mode_applies_the_bundle_s_mounts_and_paths(false);
}

#[test]
fn unprivileged_bundle_mode_applies_the_bundle_s_mounts_and_paths() {
    bundle_mode_applies_the_bundle_s_mounts_and_paths(true);
}

/// `exec` enters the pivoted root; its writes land in the bundle too.
#[test]
fn exec_runs_in_the_bundle_s_rootfs() {
    let node = Node::with_config("root = \"bundle\"");
    for (tag, user) in [("ex-priv", false), ("ex-unpriv", true)] {
        let (root, bundle) = own_bundle(
            &node,
            tag,
            user,
            json!({"process": {"args": ["sleep", "100"]}}),
        );
        let out = node.create(&bundle, tag, &[]);
        assert!(out.status.success(), "create: {}", stderr(&out));
        let out = node.run(["start", tag]);
        assert!(out.status.success(), "start: {}", stderr(&out));
        let out = node.run([
            "exec",
            tag,
            "sh",
            "-c",
            "cat /owned; stat -c %u /owned; echo by-exec > /exec-file",
        ]);
        assert_eq!(out.status.code(), Some(0), "{tag}: {}", stderr(&out));
        assert_eq!(stdout(&out), "from the image\n0\n", "{tag}");
        assert_eq!(
            std::fs::read_to_string(root.join("exec-file")).unwrap(),
            "by-exec\n"
        );
        let out = node.run(["delete", "--force", tag]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!root.join(".nexcage").exists(), "{tag}");
    }
    only_the_stub(&node);
    assert_clean(&node);
}

/// Two guests of one rootfs: the first one's delete leaves the bridge's
/// mount point to the second, whose delete removes it.
#[test]
fn guests_sharing_a_rootfs_keep_the_bridge_mount_point_until_the_last_goes() {
    let node = Node::with_config("root = \"bundle\"");
    let root = own_rootfs(&node, "shared");
    for id in ["share-a", "share-b"] {
        let bundle = bundle_with(
            &node,
            id,
            &root,
            false,
            json!({"process": {"args": ["sleep", "100"]}}),
        );
        let out = node.create(&bundle, id, &[]);
        assert!(out.status.success(), "create: {}", stderr(&out));
    }
    let out = node.run(["delete", "--force", "share-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.join(".nexcage").is_dir());
    let out = node.run(["exec", "share-b", "cat", "/.nexcage/process.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = node.run(["delete", "--force", "share-b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.join(".nexcage").exists());
    assert_clean(&node);
}

/// The node's `root` key is the default; the annotation overrides it either way.
#[test]
fn the_annotation_chooses_the_root_mode_over_the_node_s_default() {
    for (config, annotation, bundle_mode) in [
        ("", None, false),
        ("", Some("bundle"), true),
        ("root = \"bundle\"", None, true),
        ("root = \"bundle\"", Some("template"), false),
    ] {
        let node = Node::with_config(config);
        let root = own_rootfs(&node, "mode");
        let mut patch = json!({"process": {"args": ["sh", "-c", "echo x > /mark"]}});
        if let Some(a) = annotation {
            patch["annotations"] = json!({"org.proxmox.root": a});
        }
        let bundle = bundle_with(&node, "mode", &root, false, patch);
        let out = node.run_bundle(&bundle, "mode");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(
            root.join("mark").exists(),
            bundle_mode,
            "{config:?} {annotation:?}"
        );
        // Template mode converts the image; bundle mode only the stub,
        // which holds no busybox.
        assert_eq!(
            the_one_template_is_the_stub(&node),
            bundle_mode,
            "{config:?} {annotation:?}"
        );
        assert_clean(&node);
    }
}

#[test]
fn a_bad_root_annotation_is_refused_and_nothing_is_made() {
    let node = Node::new();
    let (root, bundle) = own_bundle(
        &node,
        "bad",
        false,
        json!({"annotations": {"org.proxmox.root": "zero-copy"}}),
    );
    let out = node.create(&bundle, "bad", &[]);
    fails_with(
        &out,
        "annotations.org.proxmox.root: \"zero-copy\" is not template, bundle or clone",
    );
    assert!(node.templates().is_empty());
    assert!(!root.join(".nexcage").exists());
    assert_clean(&node);
}

/// An overlay mount (podman's rootfs) with `/etc` owned by host root.
struct Overlay {
    upper: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    fn new(node: &Node) -> Overlay {
        let lower = own_rootfs(node, "lower");
        let (upper, work, merged) = (
            node.root().join("upper"),
            node.root().join("work"),
            node.root().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(st.success());
        Overlay { upper, merged }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.merged)
            .status();
    }
}

/// podman's case: a privileged guest on an overlay rootfs; the writes land
/// in the upper directory, where `podman diff` looks.
#[test]
fn privileged_bundle_mode_on_an_overlay_rootfs() {
    let node = Node::with_config("root = \"bundle\"");
    let ovl = Overlay::new(&node);
    let bundle = bundle_with(
        &node,
        "ovl",
        &ovl.merged,
        false,
        json!({"process": {"args": ["sh", "-c", "stat -c %u /owned; echo new > /etc/new"]}}),
    );
    let out = node.run_bundle(&bundle, "ovl");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n");
    assert_eq!(
        std::fs::read_to_string(ovl.upper.join("etc/new")).unwrap(),
        "new\n"
    );
    assert!(!ovl.merged.join(".nexcage").exists());
    assert!(!ovl.upper.join(".nexcage").exists());
    assert_clean(&node);
}

/// overlayfs cannot be idmapped: an unprivileged guest of an overlay
/// rootfs owned by host root is refused in one line, nothing made.
#[test]
fn unprivileged_bundle_mode_refuses_an_unshifted_overlay_rootfs() {
    let node = Node::with_config("root = \"bundle\"");
    let ovl = Overlay::new(&node);
    let bundle = bundle_with(&node, "ovl", &ovl.merged, true, json!({}));
    let out = node.create(&bundle, "ovl", &[]);
    fails_with(&out, "cannot be idmapped");
    assert!(node.templates().is_empty());
    assert!(!ovl.upper.join(".nexcage").exists());
    assert_clean(&node);
}

/// A rootfs already owned by the guest's mapped ids (runc's expectation of
/// a bundle with a user namespace) is bound as it is, overlay or not.
#[test]
fn unprivileged_bundle_mode_binds_a_shifted_rootfs_as_it_is() {
    let node = Node::with_config("root = \"bundle\"");
    let ovl = Overlay::new(&node);
    let st = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(&ovl.merged)
        .status()
        .unwrap();
    assert!(st.success());
    let bundle = bundle_with(
        &node,
        "shifted",
        &ovl.merged,
        true,
        json!({"process": {"args": ["sh", "-c", "stat -c %u /owned; echo new > /etc/new"]}}),
    );
    let out = node.run_bundle(&bundle, "shifted");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n");
    let f = ovl.upper.join("etc/new");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), 100_000);
    assert!(!ovl.merged.join(".nexcage").exists());
    assert_clean(&node);
}

/// A create that fails once the guest runs (the program is checked in the
/// new root) rolls back everything, the bridge's mount point in the
/// rootfs included.
#[test]
fn a_failed_create_in_bundle_mode_leaves_the_rootfs_untouched() {
    let node = Node::with_config("root = \"bundle\"");
    for (tag, user) in [("fail-priv", false), ("fail-unpriv", true)] {
        let (root, bundle) = own_bundle(
            &node,
            tag,
            user,
            json!({"process": {"args": ["/no/such/program"]}}),
        );
        let out = node.create(&bundle, tag, &[]);
        fails_with(&out, "/no/such/program");
        assert!(!root.join(".nexcage").exists(), "{tag}");
        assert_clean(&node);
    }
}
