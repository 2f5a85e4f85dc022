//! What scripts/bench.sh reads off nexcage's debug log: a template hit
//! says how long it took (the fingerprint walk and the lookup), so the
//! bench can compare a hit with a plain metadata walk of the same tree.

mod common;

use common::{stderr, Node};
use serde_json::json;

/// `--debug create`, stdio in files (the container's process holds them).
fn debug_create(node: &Node, bundle: &std::path::Path, id: &str) -> String {
    let err = node.root().join(format!("{id}.stderr"));
    let status = node
        .nexcage(["--debug", "create", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdout(std::fs::File::create(node.root().join(format!("{id}.stdout"))).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "create {id}: {log}");
    log
}

/// The `seconds=` of the "reusing template" line, if there is one.
fn hit_seconds(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("msg=\"reusing template"))?;
    let rest = &line[line.find(" seconds=")? + " seconds=".len()..];
    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
    Some(rest[..end].parse().expect("seconds is a number"))
}

#[test]
fn a_template_hit_logs_its_duration_at_debug_level() {
    let node = Node::new();
    let bundle = node.bundle("b", json!({"process": {"args": ["true"]}}));

    let first = debug_create(&node, &bundle, "first");
    assert!(first.contains("converted rootfs to template"), "{first}");
    assert_eq!(hit_seconds(&first), None, "{first}");
    let out = node.run(["delete", "--force", "first"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let second = debug_create(&node, &bundle, "second");
    let secs = hit_seconds(&second).unwrap_or_else(|| panic!("no timed hit in {second}"));
    assert!(secs > 0.0 && secs < 60.0, "{secs} in {second}");
    let out = node.run(["delete", "--force", "second"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
