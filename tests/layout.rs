//! The source tree keeps the shape docs/architecture.md describes: the core
//! reaches the Proxmox backend only through the router's registry line, the
//! backend reaches the core only through the seam (`crate::backend`) and
//! shared leaf modules, the module graph has no cycle, and no file holds
//! more than 700 lines of code (tests apart), the simulator's included.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_CODE_LINES: usize = 700;

/// Modules of the core a backend must not import.
const CORE: &[&str] = &[
    "cli",
    "commands",
    "config",
    "delegate",
    "error",
    "exec",
    "features",
    "forward",
    "lifecycle",
    "manual",
    "preflight",
    "router",
    "state",
    "terminal",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The simulator's sources (fixtures/pve-sim, the second workspace crate).
fn sim_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pve-sim/src")
}

/// `backend/proxmox/driver.rs` -> `backend::proxmox`, `lifecycle.rs` ->
/// `lifecycle`: the unit the graph is drawn between.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [b, sub, ..] if b == "backend" && sub != "mod" => format!("backend::{sub}"),
        [first, ..] => first.clone(),
        [] => unreachable!(),
    }
}

/// Files that are test code as a whole: declared `#[cfg(test)] mod x;`.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = fs::read_to_string(f).unwrap();
        let dir = match f.file_name().unwrap().to_str().unwrap() {
            "mod.rs" | "main.rs" => f.parent().unwrap().to_path_buf(),
            _ => f.with_extension(""),
        };
        let lines: Vec<&str> = text.lines().collect();
        for w in lines.windows(2) {
            if w[0].trim() != "#[cfg(test)]" {
                continue;
            }
            let decl = w[1].trim().trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                out.insert(dir.join(format!("{name}.rs")));
                out.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// The code of a file before its test module, comment lines dropped.
fn code(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::to_string)
        .collect()
}

/// `crate::x` and `crate::backend::y` names used in `lines`, grouped
/// imports (`use crate::{a, b::{c}}`, across lines too) included.
fn imports(lines: &[String]) -> BTreeSet<String> {
    let text = lines.join("\n");
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let (paths, _) = use_tree(rest);
        for p in paths {
            let mut seg = p.split("::");
            let first = seg.next().unwrap_or("").to_string();
            let second = seg.next().unwrap_or("");
            if first == "backend" && ["proxmox", "fake"].contains(&second) {
                out.insert(format!("backend::{second}"));
            } else if !first.is_empty() {
                out.insert(first);
            }
        }
    }
    out
}

/// The paths a use tree (or a plain path) at the start of `s` names, each
/// flattened to `a::b::c`, and how many bytes it took.
fn use_tree(s: &str) -> (Vec<String>, usize) {
    let ident = |t: &str| {
        t.char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(t.len(), |(i, _)| i)
    };
    let ws = |t: &str| t.len() - t.trim_start().len();
    let mut pos = ws(s);
    if s[pos..].starts_with('{') {
        pos += 1;
        let mut paths = Vec::new();
        loop {
            pos += ws(&s[pos..]);
            if pos >= s.len() || s[pos..].starts_with('}') {
                return (paths, (pos + 1).min(s.len()));
            }
            let (sub, n) = use_tree(&s[pos..]);
            paths.extend(sub);
            pos += n.max(1);
            // `as Name`, `*`, then the separator.
            while pos < s.len() && !s[pos..].starts_with(',') && !s[pos..].starts_with('}') {
                pos += 1;
            }
            if s[pos..].starts_with(',') {
                pos += 1;
            }
        }
    }
    let n = ident(&s[pos..]);
    let seg = &s[pos..pos + n];
    pos += n;
    if seg.is_empty() {
        return (Vec::new(), pos);
    }
    if s[pos..].starts_with("::") {
        let (sub, m) = use_tree(&s[pos + 2..]);
        let paths = if sub.is_empty() {
            vec![seg.to_string()]
        } else {
            sub.into_iter().map(|p| format!("{seg}::{p}")).collect()
        };
        return (paths, pos + 2 + m);
    }
    (vec![seg.to_string()], pos)
}

fn production_files() -> Vec<PathBuf> {
    production_files_in(&src())
}

/// The files under `dir` apart from whole test modules.
fn production_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let tests = test_only_files(&files);
    files.retain(|f| !tests.contains(f));
    files.sort();
    files
}

#[test]
fn only_the_registry_line_reaches_into_the_proxmox_backend() {
    for f in production_files() {
        let m = module_of(&f);
        if m.starts_with("backend") {
            continue;
        }
        let lines = code(&f);
        assert!(
            !imports(&lines).contains("backend::proxmox"),
            "{} imports from backend::proxmox",
            f.display()
        );
        let uses: Vec<String> = lines
            .into_iter()
            .filter(|l| l.contains("backend::proxmox"))
            .collect();
        let allowed = m == "router" && uses.len() == 1 && uses[0].contains("REGISTRATION");
        assert!(
            uses.is_empty() || allowed,
            "{} reaches into backend::proxmox: {uses:?}",
            f.display()
        );
    }
}

#[test]
fn backends_import_only_the_seam_and_shared_modules() {
    for f in production_files() {
        if !module_of(&f).starts_with("backend") {
            continue;
        }
        let core: Vec<String> = imports(&code(&f))
            .into_iter()
            .filter(|i| CORE.contains(&i.as_str()))
            .collect();
        assert!(
            core.is_empty(),
            "{} imports core modules {core:?}",
            f.display()
        );
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in production_files() {
        let m = module_of(&f);
        let deps = graph.entry(m.clone()).or_default();
        deps.extend(imports(&code(&f)).into_iter().filter(|i| *i != m));
    }
    // Depth-first search with colours: grey on the stack, black done.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) {
        match state.get(n) {
            Some(2) => return,
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap();
                panic!("module cycle: {} -> {n}", path[at..].join(" -> "));
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, state, path);
        }
        path.pop();
        state.insert(n.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        visit(n, &graph, &mut state, &mut Vec::new());
    }
}

#[test]
fn grouped_imports_are_seen() {
    let lines = vec![
        "use crate::{state, router::{self, Route}};".to_string(),
        "use crate::backend::{".to_string(),
        "    proxmox::Driver, Backend as B,".to_string(),
        "};".to_string(),
        "let x = crate::logging::now_rfc3339();".to_string(),
    ];
    let got = imports(&lines);
    let want: BTreeSet<String> = ["state", "router", "backend::proxmox", "backend", "logging"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn no_file_holds_more_than_700_lines_of_code() {
    let sim = production_files_in(&sim_src());
    assert!(!sim.is_empty(), "no sources in {}", sim_src().display());
    for f in production_files().into_iter().chain(sim) {
        let n = fs::read_to_string(&f)
            .unwrap()
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .count();
        assert!(
            n <= MAX_CODE_LINES,
            "{}: {n} lines before its tests",
            f.display()
        );
    }
}
