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

/// The phases of the one `create ID: ...` message in `msgs`, as (name,
/// milliseconds, note), and the total.
fn phases(msgs: &[String], id: &str) -> (Vec<(String, u64, Option<String>)>, u64) {
    let prefix = format!("create {id}: ");
    let lines: Vec<&String> = msgs.iter().filter(|m| m.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one timing line: {msgs:#?}");
    let mut parts: Vec<(String, u64, Option<String>)> = lines[0][prefix.len()..]
        .split(", ")
        .map(|p| {
            let (head, note) = match p.split_once(" (") {
                Some((h, n)) => (h, Some(n.trim_end_matches(')').to_string())),
                None => (p, None),
            };
            let head = head.strip_suffix(" ms").unwrap_or_else(|| panic!("{p}"));
            let (name, ms) = head.rsplit_once(' ').unwrap();
            (name.to_string(), ms.parse().unwrap(), note)
        })
        .collect();
    let (name, total, _) = parts.pop().unwrap();
    assert_eq!(name, "total");
    (parts, total)
}

#[test]
fn a_debug_create_says_where_its_time_went_on_one_line() {
    let node = Node::new();
    let bundle = node.bundle("b", json!({"process": {"args": ["true"]}}));
    let names = [
        "bundle",
        "translate",
        "template",
        "pct create",
        "start",
        "ready",
    ];
    for (id, format, note) in [("c1", "json", "converted"), ("c2", "text", "hit")] {
        let log = node.root().join(format!("{id}.log"));
        let status = node
            .nexcage(["--debug", "--log-format", format, "--log"])
            .arg(&log)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdout(std::fs::File::create(node.root().join(format!("{id}.stdout"))).unwrap())
            .stderr(std::fs::File::create(node.root().join(format!("{id}.stderr"))).unwrap())
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "create {id}: {text}");
        let msgs: Vec<String> = text
            .lines()
            .filter_map(|l| match format {
                "json" => serde_json::from_str::<serde_json::Value>(l).ok()?["msg"]
                    .as_str()
                    .map(str::to_string),
                _ => {
                    let m = &l[l.find(" msg=\"")? + 6..];
                    Some(m.trim_end_matches('"').to_string())
                }
            })
            .collect();
        let (parts, total) = phases(&msgs, id);
        let got: Vec<&str> = parts.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(got, names, "{msgs:#?}");
        assert_eq!(parts[2].2.as_deref(), Some(note), "{parts:?}");
        let sum: u64 = parts.iter().map(|(_, ms, _)| ms).sum();
        assert!(sum <= total && total > 0, "{parts:?} total {total}");
        let out = node.run(["delete", "--force", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
