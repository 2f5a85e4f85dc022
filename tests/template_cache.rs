//! The template cache kept in bounds: `template list|prune` and LRU
//! eviction after a conversion, always through `pveam list/remove`, never
//! touching a template a create is using or one that is not nexcage's.

mod common;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{fails_with, sim_binary, stderr, stdout, Node};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};

/// Wrap the node's pveam so that every call is logged to `<root>/pveam.log`.
fn log_pveam(node: &Node) -> PathBuf {
    let log = node.root().join("pveam.log");
    let tool = node.root().join("bin/pveam");
    let _ = std::fs::remove_file(&tool);
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' pveam \"$@\"\n",
            log.display(),
            sim_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

fn pveam_list(node: &Node) -> String {
    let out = std::process::Command::new(sim_binary())
        .args(["pveam", "list", "local"])
        .env("PVE_SIM_ROOT", node.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn json_of(node: &Node, args: &[&str]) -> Value {
    let out = node.run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn list(node: &Node) -> Vec<Value> {
    json_of(node, &["template", "list", "--format", "json"])["templates"]
        .as_array()
        .unwrap()
        .clone()
}

/// A copy of the busybox rootfs with one extra file: another image.
fn other_rootfs(node: &Node, tag: &str) -> PathBuf {
    let dir = node.rootfs_copy(&format!("rootfs-{tag}"));
    std::fs::write(dir.join(format!("etc/{tag}")), tag).unwrap();
    dir
}

fn create(node: &Node, id: &str, root: Option<&Path>) {
    let patch = match root {
        Some(r) => json!({"process": {"args": ["sleep", "30"]}, "root": {"path": r}}),
        None => json!({"process": {"args": ["sleep", "30"]}}),
    };
    let bundle = node.bundle(id, patch);
    let out = node.create(&bundle, id, &[]);
    assert!(out.status.success(), "create {id}: {}", stderr(&out));
}

fn delete(node: &Node, id: &str) {
    let out = node.run(["delete", "--force", id]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn hold_shared(node: &Node, name: &str) -> Flock<File> {
    let dir = node.state_root().join("~nexcage/cache/templates");
    std::fs::create_dir_all(&dir).unwrap();
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(format!("{name}.lock")))
        .unwrap();
    Flock::lock(f, FlockArg::LockSharedNonblock).unwrap()
}

#[test]
fn list_shows_the_template_a_create_made_and_its_container() {
    let node = Node::new();
    create(&node, "c1", None);
    let names = node.templates();
    assert_eq!(names.len(), 1);
    let got = list(&node);
    assert_eq!(got.len(), 1, "{got:?}");
    let t = &got[0];
    assert_eq!(t["name"], names[0].as_str());
    assert_eq!(t["volid"], format!("local:vztmpl/{}", names[0]));
    let size = std::fs::metadata(node.template_dir().join(&names[0]))
        .unwrap()
        .len();
    assert_eq!(t["bytes"], size);
    assert_eq!(t["containers"], json!(["c1"]));
    assert_eq!(t["busy"], false);
    assert_eq!(t["lastUsedRecorded"], true);
    assert!(t["lastUsed"].as_str().unwrap().ends_with('Z'), "{t}");
    // The table names it too.
    let out = node.run(["template", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("VOLID"), "{text}");
    assert!(text.contains(&names[0]) && text.contains("c1"), "{text}");
    delete(&node, "c1");
}

#[test]
fn prune_removes_unused_templates_through_pveam_and_never_the_admins() {
    let node = Node::new();
    let log = log_pveam(&node);
    // An admin's own template on the same storage is not nexcage's.
    let admin = node
        .template_dir()
        .join("debian-12-standard_12.7-1_amd64.tar.zst");
    std::fs::write(&admin, b"not ours").unwrap();
    create(&node, "c1", None);
    delete(&node, "c1");
    let name = node.templates()[0].clone();
    assert!(pveam_list(&node).contains(&name));
    assert_eq!(list(&node).len(), 1, "only nexcage's own are listed");
    // Its use record and lock under the state root, which prune must take.
    let meta = node.state_root().join("~nexcage/cache/templates");
    assert!(meta.join(&name).exists());
    assert!(meta.join(format!("{name}.lock")).exists());

    let out = json_of(&node, &["template", "prune", "--all", "--format", "json"]);
    assert_eq!(out["removed"][0]["name"], name.as_str(), "{out}");
    assert_eq!(out["removed"].as_array().unwrap().len(), 1, "{out}");
    assert!(out["bytesFreed"].as_u64().unwrap() > 0, "{out}");
    assert!(!pveam_list(&node).contains(&name));
    assert!(node.templates().is_empty());
    assert!(admin.exists(), "the admin's template was removed");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("remove local:vztmpl/{name}")),
        "{calls}"
    );
    // What was kept about it under the state root is gone with it.
    assert!(!meta.join(&name).exists());
    assert!(!meta.join(format!("{name}.lock")).exists());
}

#[test]
fn a_template_a_container_was_created_from_is_kept_unless_all() {
    let node = Node::new();
    create(&node, "live", None);
    let name = node.templates()[0].clone();
    let out = json_of(&node, &["template", "prune", "--format", "json"]);
    assert_eq!(out["removed"], json!([]), "{out}");
    assert_eq!(out["kept"][0]["reason"], "in use", "{out}");
    assert_eq!(node.templates(), std::slice::from_ref(&name));
    // The guest has its own copy of the root: --all may take the template.
    let out = json_of(&node, &["template", "prune", "--all", "--format", "json"]);
    assert_eq!(out["removed"][0]["name"], name.as_str(), "{out}");
    assert!(node.templates().is_empty());
    let out = node.run(["start", "live"]);
    assert!(out.status.success(), "{}", stderr(&out));
    delete(&node, "live");
}

#[test]
fn a_template_a_create_is_using_is_never_removed() {
    let node = Node::new();
    create(&node, "c1", None);
    delete(&node, "c1");
    let name = node.templates()[0].clone();
    let held = hold_shared(&node, &name);
    assert_eq!(list(&node)[0]["busy"], true);
    let out = json_of(&node, &["template", "prune", "--all", "--format", "json"]);
    assert_eq!(out["removed"], json!([]), "{out}");
    assert_eq!(out["kept"][0]["reason"], "busy", "{out}");
    assert_eq!(node.templates(), std::slice::from_ref(&name));
    drop(held);
    let out = json_of(&node, &["template", "prune", "--format", "json"]);
    assert_eq!(out["removed"][0]["name"], name.as_str(), "{out}");
}

#[test]
fn older_than_keeps_recently_used_templates() {
    let node = Node::new();
    create(&node, "c1", None);
    delete(&node, "c1");
    let out = json_of(
        &node,
        &[
            "template",
            "prune",
            "--older-than",
            "1h",
            "--format",
            "json",
        ],
    );
    assert_eq!(out["kept"][0]["reason"], "recent", "{out}");
    assert_eq!(node.templates().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = json_of(
        &node,
        &[
            "template",
            "prune",
            "--older-than",
            "1s",
            "--format",
            "json",
        ],
    );
    assert_eq!(out["removed"].as_array().unwrap().len(), 1, "{out}");
    assert!(node.templates().is_empty());
}

#[test]
fn a_bad_duration_is_refused_before_anything_is_removed() {
    let node = Node::new();
    create(&node, "c1", None);
    delete(&node, "c1");
    for bad in ["7x", "d", "1.5h", "-1d"] {
        let out = node.run(["template", "prune", &format!("--older-than={bad}")]);
        fails_with(&out, "--older-than");
    }
    assert_eq!(node.templates().len(), 1);
}

#[test]
fn a_limit_of_one_template_evicts_the_older_one() {
    let node = Node::with_config("template_cache_max_count = 1");
    let log = log_pveam(&node);
    let a = other_rootfs(&node, "a");
    let b = other_rootfs(&node, "b");
    create(&node, "a", Some(&a));
    let first = node.templates();
    assert_eq!(first.len(), 1);
    create(&node, "b", Some(&b));
    let second = node.templates();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(first, second, "the newer template was evicted");
    assert!(!pveam_list(&node).contains(&first[0]));
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("remove local:vztmpl/{}", first[0])),
        "{calls}"
    );
    // A hit converts nothing, so evicts nothing.
    create(&node, "b2", Some(&b));
    assert_eq!(node.templates(), second);
    for id in ["a", "b", "b2"] {
        delete(&node, id);
    }
}

#[test]
fn eviction_skips_a_template_a_create_is_using() {
    let node = Node::with_config("template_cache_max_count = 1");
    let a = other_rootfs(&node, "a");
    let b = other_rootfs(&node, "b");
    create(&node, "a", Some(&a));
    let first = node.templates()[0].clone();
    let held = hold_shared(&node, &first);
    create(&node, "b", Some(&b));
    // Over the limit while it is busy, rather than pulled from under a create.
    assert_eq!(node.templates().len(), 2);
    assert!(node.templates().contains(&first));
    drop(held);
    delete(&node, "a");
    delete(&node, "b");
}

#[test]
fn a_zero_limit_is_refused() {
    let node = Node::with_config("template_cache_max_count = 0");
    let out = node.run(["template", "list"]);
    fails_with(&out, "template_cache_max_count");
}

#[test]
fn a_failed_create_removes_the_template_it_made_through_pveam() {
    let node = Node::new();
    let log = log_pveam(&node);
    // pct create refuses the storage after the template is converted.
    let bundle = node.bundle(
        "bad",
        json!({"annotations": {"org.proxmox.storage": "nosuch"}}),
    );
    let out = node.create(&bundle, "bad", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    assert!(node.templates().is_empty(), "{:?}", node.templates());
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.contains("remove local:vztmpl/nexcage-"), "{calls}");
}

#[test]
fn a_hit_counts_as_a_use_for_eviction() {
    let node = Node::with_config("template_cache_max_count = 2");
    let [a, b, c] = ["a", "b", "c"].map(|t| other_rootfs(&node, t));
    create(&node, "a", Some(&a));
    let ta = node.templates();
    create(&node, "b", Some(&b));
    let tb: Vec<String> = node
        .templates()
        .into_iter()
        .filter(|n| !ta.contains(n))
        .collect();
    // A hit on a's template makes b's the least recently used.
    create(&node, "a2", Some(&a));
    create(&node, "c", Some(&c));
    let now = node.templates();
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.contains(&ta[0]),
        "the template just hit was evicted: {now:?}"
    );
    assert!(!now.contains(&tb[0]), "{now:?}");
    for id in ["a", "b", "a2", "c"] {
        delete(&node, id);
    }
}
