//! nexcage on a stock node's storages: root and template storage found
//! without config keys, one-line refusals when that is not possible, and
//! root volumes sized from the rootfs.

mod common;

use common::{assert_clean, fails_with, rootfs, stderr, Node};
use serde_json::json;

fn set_storage_cfg(node: &Node, text: &str) {
    std::fs::write(node.root().join("etc/pve/storage.cfg"), text).unwrap();
}

#[test]
fn without_storage_keys_root_volumes_go_to_the_nodes_rootdir_storage() {
    let node = Node::new();
    let bundle = node.bundle("auto", json!({"process": {"args": ["sleep", "30"]}}));
    let out = node.create(&bundle, "auto", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vmid = node.vmids()[0];
    let conf =
        std::fs::read_to_string(node.root().join(format!("etc/pve/lxc/{vmid}.conf"))).unwrap();
    // The busybox rootfs is a few MiB: the smallest volume, 1 GiB.
    assert!(
        conf.contains(&format!("rootfs: local-lvm:vm-{vmid}-disk-0,size=1G\n")),
        "{conf}"
    );
    // Templates went to `local`, the node's vztmpl storage.
    assert_eq!(node.templates().len(), 1);
    // pvesm was asked once; the answers are remembered.
    let cache = node.state_root().join("~nexcage/cache");
    assert_eq!(
        std::fs::read_to_string(cache.join("storage.rootdir")).unwrap(),
        "local-lvm"
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("storage.vztmpl")).unwrap(),
        "local"
    );
    assert!(node.run(["delete", "--force", "auto"]).status.success());
    assert_clean(&node);
}

#[test]
fn a_node_without_a_rootdir_storage_is_refused_naming_the_key() {
    let node = Node::new();
    set_storage_cfg(
        &node,
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,import\n",
    );
    let bundle = node.bundle("none", json!({}));
    let out = node.create(&bundle, "none", &[]);
    fails_with(&out, "set storage in config.toml");
    assert!(stderr(&out).contains("'rootdir'"), "{}", stderr(&out));
    assert_clean(&node);
    assert!(node.templates().is_empty(), "template converted anyway");
}

#[test]
fn several_rootdir_storages_are_refused_listing_them() {
    let node = Node::new();
    set_storage_cfg(
        &node,
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,import\n\n\
         lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n\
         lvmthin: fast\n\tthinpool data\n\tvgname fast\n\tcontent rootdir\n",
    );
    let bundle = node.bundle("two", json!({}));
    let out = node.create(&bundle, "two", &[]);
    fails_with(
        &out,
        "(fast, local-lvm): set storage in config.toml to one of them",
    );
    assert_clean(&node);

    // The configured storage wins over discovery.
    node.write_config("storage = \"fast\"");
    let out = node.create(&bundle, "two", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vmid = node.vmids()[0];
    let conf =
        std::fs::read_to_string(node.root().join(format!("etc/pve/lxc/{vmid}.conf"))).unwrap();
    assert!(
        conf.contains(&format!("rootfs: fast:vm-{vmid}-disk-0,size=1G\n")),
        "{conf}"
    );
    assert!(node.run(["delete", "--force", "two"]).status.success());
}

#[test]
fn a_rootfs_larger_than_its_volume_fails_with_enospc_and_leaves_nothing() {
    let node = Node::new();
    // The busybox tree plus 120 MiB that does not compress, for 100 MiB.
    let big = node.root().join("big-rootfs");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&big)
        .status()
        .unwrap();
    assert!(status.success());
    let status = std::process::Command::new("head")
        .args(["-c", "125829120", "/dev/urandom"])
        .stdout(std::fs::File::create(big.join("blob")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = node.bundle(
        "big",
        json!({"root": {"path": big}, "annotations": {"org.proxmox.rootfs.size": "100M"}}),
    );
    let out = node.create(&bundle, "big", &[]);
    fails_with(&out, "No space left on device");
    assert_clean(&node);
    // The template converted for it is not kept for a guest that never was.
    assert!(node.templates().is_empty(), "{:?}", node.templates());
}

#[test]
fn a_bad_rootfs_size_annotation_is_refused_by_name() {
    let node = Node::new();
    let bundle = node.bundle(
        "bad",
        json!({"annotations": {"org.proxmox.rootfs.size": "-3G"}}),
    );
    let out = node.create(&bundle, "bad", &[]);
    fails_with(&out, "org.proxmox.rootfs.size");
    assert_clean(&node);
}

#[test]
fn a_remembered_storage_that_is_gone_is_asked_for_again() {
    let node = Node::new();
    let bundle = node.bundle("again", json!({}));
    let out = node.create(&bundle, "again", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.run(["delete", "--force", "again"]).status.success());
    // The admin renames the rootdir storage.
    set_storage_cfg(
        &node,
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,import\n\n\
         lvmthin: thin\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n",
    );
    let out = node.create(&bundle, "again", &[]);
    fails_with(&out, "storage 'local-lvm' does not exist");
    assert_clean(&node);
    let out = node.create(&bundle, "again", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vmid = node.vmids()[0];
    let conf =
        std::fs::read_to_string(node.root().join(format!("etc/pve/lxc/{vmid}.conf"))).unwrap();
    assert!(
        conf.contains(&format!("rootfs: thin:vm-{vmid}-disk-0,size=1G\n")),
        "{conf}"
    );
    assert!(node.run(["delete", "--force", "again"]).status.success());
}
