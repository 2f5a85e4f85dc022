//! Issue 15's hostile bundles and bad luck, over the simulator: a rootfs
//! that is the host, mounts inside a rootfs, temporaries of killed creates
//! filling the template storage, secrets in templates, negative limits and
//! oversized configs. Each is refused with one line and leaves nothing, or
//! handled without leaking.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_clean, fails_with, sim_binary, stderr, stdout, Mounts, Node};
use serde_json::{json, Value};

/// The host part nexcage puts in its temp names, read from a temp it made:
/// a create on a full template storage fails writing its temp, and the
/// one-line error names it (`.nexcage-<fp>.tmp-<host>_<pid>_<start>_<n>`).
/// The failed create leaves nothing, its temp included. `dir` is the
/// template storage, on a file system of its own.
fn temp_host(node: &Node, dir: &Path) -> String {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0x5a; 64 * 1024]).is_ok() {}
    drop(f);
    let bundle = node.bundle("full", json!({"process": {"args": ["true"]}}));
    let out = node.create(&bundle, "full", &[]);
    fails_with(&out, "No space left on device");
    assert_clean(node);
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["filler"], "the failed create left its temp");
    std::fs::remove_file(&filler).unwrap();
    let err = stderr(&out);
    let name = err
        .split(&format!("{}/", dir.display()))
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no temp named in {err}"));
    // The host part holds no `_`: the writer's ids follow the last three.
    let ids = name.split_once(".tmp-").expect(name).1;
    let host = ids.rsplitn(4, '_').nth(3).expect(name);
    assert!(name.starts_with(".nexcage-") && !host.is_empty(), "{name}");
    host.to_string()
}

/// A temp left by a create killed mid-conversion: its writer (a pid above
/// pid_max) is provably gone.
fn stale_temp(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!(
        ".nexcage-{}.tmp-{host}_2147483000_5_0",
        "a".repeat(32)
    ))
}

fn template_list(node: &Node) -> Value {
    let out = node.run(["template", "list", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn delete(node: &Node, id: &str) {
    let out = node.run(["delete", "--force", id]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn archive_names(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn the_hosts_root_and_kernel_file_systems_are_refused_as_root_path() {
    let node = Node::new();
    for (path, want) in [
        ("/", "is the host's root directory"),
        ("/usr/..", "is the host's root directory"),
        ("/proc", "is under the host's /proc"),
        ("/sys/fs/cgroup", "is under the host's /sys"),
        ("/dev", "is under the host's /dev"),
    ] {
        let bundle = node.bundle("c1", json!({"root": {"path": path}}));
        let out = node.create(&bundle, "c1", &[]);
        fails_with(&out, &format!("root.path: {path} {want}"));
        assert_clean(&node);
        assert!(node.templates().is_empty(), "{path}: a template was made");
    }
}

#[test]
fn mounts_inside_the_rootfs_stay_out_of_the_template() {
    let node = Node::new();
    let root = node.rootfs_copy("rootfs-mounts");
    let host = node.root().join("host-dir");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret"), "host secret").unwrap();
    std::fs::create_dir_all(root.join("mnt/host")).unwrap();
    let mut mounts = Mounts::default();
    mounts.mount(host.to_str().unwrap(), &root.join("mnt/host"), None, None);
    // A proc inside the rootfs used to fail the create at /proc/1/auxv.
    mounts.mount("proc", &root.join("proc"), Some("proc"), None);

    let bundle = node.bundle(
        "c1",
        json!({"root": {"path": root}, "process": {"args": ["ls", "-A", "/mnt/host"]}}),
    );
    let out = node.create(&bundle, "c1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = node.templates();
    assert_eq!(names.len(), 1);
    let listed = archive_names(&node.template_dir().join(&names[0]));
    assert!(listed.iter().any(|n| n == "./mnt/host/"), "{listed:?}");
    assert!(listed.iter().any(|n| n == "./proc/"), "{listed:?}");
    assert!(
        !listed
            .iter()
            .any(|n| n.starts_with("./mnt/host/") && n != "./mnt/host/"),
        "{listed:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|n| n.starts_with("./proc/") && n != "./proc/"),
        "{listed:?}"
    );
    delete(&node, "c1");
    drop(mounts);
    assert_clean(&node);
}

#[test]
fn templates_are_root_only_and_still_listed_by_pveam() {
    let node = Node::new();
    let bundle = node.bundle("c1", json!({"process": {"args": ["true"]}}));
    let out = node.create(&bundle, "c1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = node.templates();
    assert_eq!(names.len(), 1);
    let meta = std::fs::metadata(node.template_dir().join(&names[0])).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let out = Command::new(sim_binary())
        .args(["pveam", "list", "local"])
        .env("PVE_SIM_ROOT", node.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("local:vztmpl/{}", names[0])),
        "{}",
        stdout(&out)
    );
    delete(&node, "c1");
    assert_clean(&node);
}

#[test]
fn stale_temps_are_counted_and_swept_before_converting_on_a_full_storage() {
    let node = Node::new();
    let dir = node.template_dir();
    // The template storage on a file system of its own, filled to the brim
    // by a temp of a create killed while converting.
    let mut mounts = Mounts::default();
    mounts.mount("tmpfs", &dir, Some("tmpfs"), Some("size=8m,mode=0755"));
    let stale = stale_temp(&dir, &temp_host(&node, &dir));
    let mut f = std::fs::File::create(&stale).unwrap();
    while f.write_all(&[0x5a; 64 * 1024]).is_ok() {}
    drop(f);
    let stale_bytes = std::fs::metadata(&stale).unwrap().len();
    // Another node's temp on shared storage is not ours to judge.
    let other = dir.join(format!(
        ".nexcage-{}.tmp-elsewhere_2147483000_5_0",
        "b".repeat(32)
    ));
    std::fs::write(&other, "").unwrap();

    let listed = template_list(&node);
    assert_eq!(listed["templates"], json!([]), "{listed}");
    assert_eq!(
        listed["temporaries"],
        json!({"stale": 1, "staleBytes": stale_bytes, "other": 1, "otherBytes": 0}),
        "{listed}"
    );
    let out = node.run(["template", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains(&format!(
            "temporaries: 1 stale ({stale_bytes} bytes, removed by the next conversion)"
        )),
        "{table}"
    );

    let bundle = node.bundle("c1", json!({"process": {"args": ["true"]}}));
    let out = node.create(&bundle, "c1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stale.exists(), "stale temp left");
    assert!(other.exists(), "another node's temp removed");
    let listed = template_list(&node);
    assert_eq!(listed["templates"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["temporaries"]["stale"], 0, "{listed}");
    delete(&node, "c1");
    // pveam removes templates through the storage; the mount goes before
    // the node is cleaned up.
    drop(mounts);
    assert_clean(&node);
}

#[test]
fn negative_memory_limits_other_than_minus_one_are_refused() {
    let node = Node::new();
    let bundle = node.bundle(
        "c1",
        json!({"linux": {"resources": {"memory": {"limit": -5}}}}),
    );
    let out = node.create(&bundle, "c1", &[]);
    fails_with(&out, "linux.resources.memory.limit: -5 is not a limit");
    assert_clean(&node);
}

#[test]
fn oversized_configs_are_refused_before_anything_is_made() {
    let node = Node::new();
    // 50 MB of annotations, as a hostile client could pass.
    let bundle = node.bundle("c1", json!({"annotations": {"x": "y".repeat(50 << 20)}}));
    let out = node.create(&bundle, "c1", &[]);
    fails_with(&out, "config.json: larger than 4194304 bytes");
    assert_clean(&node);
    let bundle = node.bundle("c2", json!({"annotations": {"x": "y".repeat(300 << 10)}}));
    let out = node.create(&bundle, "c2", &[]);
    fails_with(&out, "config.json: annotations: ");
    assert_clean(&node);
    // Within the bound, annotations are kept for state, whole.
    let bundle = node.bundle(
        "c3",
        json!({"process": {"args": ["true"]}, "annotations": {"x": "y".repeat(200 << 10)}}),
    );
    let out = node.create(&bundle, "c3", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        node.state("c3")["annotations"]["x"].as_str().unwrap().len(),
        200 << 10
    );
    delete(&node, "c3");
    assert_clean(&node);
}
