//! Commands that need no node: --version, spec, features, list on an empty root.

use std::process::Command;

const NEXCAGE: &str = env!("CARGO_BIN_EXE_nexcage");

fn nexcage(args: &[&str]) -> std::process::Output {
    Command::new(NEXCAGE).args(args).output().unwrap()
}

#[test]
fn version_has_runc_shaped_lines() {
    let out = nexcage(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("nexcage version "));
    assert!(lines[1].starts_with("commit: "));
    assert!(lines[2].starts_with("spec: 1."));
}

#[test]
fn spec_writes_a_loadable_default_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert!(nexcage(&["spec", "--bundle", dir]).status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["process"]["args"][0], "sh");
    let again = nexcage(&["spec", "--bundle", dir]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let rootless = tempfile::tempdir().unwrap();
    assert!(nexcage(&[
        "spec",
        "--rootless",
        "--bundle",
        rootless.path().to_str().unwrap()
    ])
    .status
    .success());
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rootless.path().join("config.json")).unwrap())
            .unwrap();
    let ns = v["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.iter().any(|n| n["type"] == "user"), "{ns:?}");
    assert!(v["linux"]["uidMappings"].is_array());
}

#[test]
fn features_is_json_only() {
    let out = nexcage(&["features"]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["linux"]["namespaces"].as_array().unwrap().len() >= 5);
}

#[test]
fn list_on_an_empty_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let out = nexcage(&["--root", root, "list", "--format", "json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "[]");
    let out = nexcage(&["--root", root, "list", "-q"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "");
    let out = nexcage(&["--root", root, "list"]);
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("ID"));
}

#[test]
fn global_flags_come_before_the_subcommand_as_clients_send_them() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log.json");
    let out = nexcage(&[
        "--root",
        tmp.path().to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--log-format=json",
        "--systemd-cgroup",
        "list",
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn usage_errors_are_one_line_even_after_double_dash() {
    for args in [
        &["create", "c1", "--", "-x"][..],
        &["create", "--bogus", "c1"],
        &["create"],
        &["delete", "a", "b"],
    ] {
        let out = nexcage(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("nexcage: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = nexcage(&["create", "c1", "--", "-x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'-x'"), "{err}");
    let out = nexcage(&["create"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("<ID>"), "{err}");
    // Help still prints whole, on stdout.
    let out = nexcage(&["create", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() > 3);
}
