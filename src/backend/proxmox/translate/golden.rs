//! fixtures/bundles/golden/<name>/config.json -> pct-args.txt, raw-lines.txt
//! and init.json, or error.txt. UPDATE_GOLDEN=1 rewrites them.

use super::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bundles/golden");

fn outputs(config: &Path) -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(config).unwrap();
    let spec: Spec = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => return vec![("error.txt", format!("invalid config.json: {e}\n"))],
    };
    let host = HostFacts {
        mem_total_mib: 2048,
        swap_total_mib: 0,
        cgroup: CgroupVersion::V1,
    };
    match plan(&spec, &ProxmoxSettings::default(), host) {
        Err(e) => vec![("error.txt", format!("{e}\n"))],
        Ok(p) => {
            let lines = |v: Vec<String>| v.iter().map(|l| format!("{l}\n")).collect::<String>();
            vec![
                (
                    "pct-args.txt",
                    lines(p.create_args(100, "local:vztmpl/T.tar.zst", "local-lvm", 1)),
                ),
                (
                    "raw-lines.txt",
                    lines(p.raw_lines.iter().map(RawLine::render).collect()),
                ),
                (
                    "init.json",
                    format!("{}\n", serde_json::to_string_pretty(&p.init).unwrap()),
                ),
            ]
        }
    }
}

#[test]
fn golden_bundles_translate_as_recorded() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut dirs: Vec<_> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 12, "only {} golden bundles", dirs.len());
    let mut failures = Vec::new();
    for dir in dirs {
        let outs = outputs(&dir.join("config.json"));
        if update {
            for f in ["error.txt", "pct-args.txt", "raw-lines.txt", "init.json"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        for (file, got) in outs {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != got {
                failures.push(format!(
                    "{}:\n--- want\n{want}--- got\n{got}",
                    path.display()
                ));
            }
        }
        if dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("hostile-")
        {
            assert!(
                dir.join("error.txt").exists() || update,
                "{} must be refused",
                dir.display()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
