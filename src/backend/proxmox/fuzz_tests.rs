//! Property test: config.json variants (valid, truncated, wrong types,
//! huge, deep, control characters) through bundle loading and translation,
//! as `create` runs them. Whatever the input: no panic; every `pct create`
//! argument and every raw line produced passes the validators that guard
//! the command line and `<vmid>.conf`; every refusal names what it refuses.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use super::conf::RawLine;
use super::settings::{CgroupVersion, ProxmoxSettings};
use super::translate::{self, HostFacts, TranslateError};
use crate::bundle::{self, BundleError};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bundles/golden");
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bundles/reference");

/// The recorded configs (golden bundles, hostile ones included, and the
/// clients' captured ones) with root.path pointing at the bundle's rootfs.
fn seeds() -> &'static [Value] {
    static SEEDS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(GOLDEN).unwrap() {
            files.push(entry.unwrap().path().join("config.json"));
        }
        for entry in std::fs::read_dir(REFERENCE).unwrap() {
            files.push(entry.unwrap().path());
        }
        files.sort();
        let seeds: Vec<Value> = files
            .iter()
            .filter_map(|f| serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok())
            .map(|mut v: Value| {
                if v.get("root").is_some_and(Value::is_object) {
                    v["root"]["path"] = "rootfs".into();
                }
                v
            })
            .collect();
        assert!(seeds.len() >= 20, "only {} seed configs", seeds.len());
        seeds
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Valid,
    /// The text cut at a fraction of its length.
    Truncate(Index),
    /// A node replaced by a value of another JSON type.
    WrongType(Index, u8),
    /// A string replaced by a long one.
    HugeString(Index, usize),
    /// A node replaced by an array of many copies of itself.
    HugeArray(Index, usize),
    /// A node wrapped in `depth` arrays or objects.
    Deep(Index, usize, bool),
    /// A control character inserted into one string (value or key).
    Control(Index, Index, char),
    /// The same control character appended to every string value.
    ControlEverywhere(char),
}

fn control_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('\n'),
        Just('\r'),
        Just('\0'),
        Just('\t'),
        Just('\u{1b}'),
        Just('\u{7f}'),
        Just('\u{85}'),
        (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::Valid),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 0u8..6).prop_map(|(i, k)| Mutation::WrongType(i, k)),
        1 => (any::<Index>(), 1000usize..200_000).prop_map(|(i, n)| Mutation::HugeString(i, n)),
        1 => (any::<Index>(), 100usize..5000).prop_map(|(i, n)| Mutation::HugeArray(i, n)),
        1 => (any::<Index>(), 1usize..600, any::<bool>()).prop_map(|(i, d, a)| Mutation::Deep(i, d, a)),
        4 => (any::<Index>(), any::<Index>(), control_char()).prop_map(|(i, p, c)| Mutation::Control(i, p, c)),
        2 => control_char().prop_map(Mutation::ControlEverywhere),
    ]
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    At(usize),
}

/// Paths to every node of the tree, the root first.
fn paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    here.push(Seg::Key(k.clone()));
                    walk(child, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    here.push(Seg::At(i));
                    walk(child, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn pick<'a>(i: &Index, all: &'a [Vec<Seg>]) -> &'a [Seg] {
    i.get::<Vec<Seg>>(all)
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, seg| match seg {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::At(i) => &mut v[*i],
    })
}

fn other_type(old: &Value, kind: u8) -> Value {
    let candidates = [
        Value::Null,
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(1.5e300),
        serde_json::json!("x"),
        serde_json::json!([1, "a"]),
        serde_json::json!({"k": 1}),
    ];
    let same = |c: &Value| std::mem::discriminant(c) == std::mem::discriminant(old);
    let others: Vec<&Value> = candidates.iter().filter(|c| !same(c)).collect();
    others[kind as usize % others.len()].clone()
}

fn insert_at(s: &str, pos: &Index, c: char) -> String {
    let boundaries: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let at = *pos.get(&boundaries);
    format!("{}{c}{}", &s[..at], &s[at..])
}

fn control_everywhere(v: &mut Value, c: char) {
    match v {
        Value::String(s) => s.push(c),
        Value::Array(a) => a.iter_mut().for_each(|x| control_everywhere(x, c)),
        Value::Object(m) => m.values_mut().for_each(|x| control_everywhere(x, c)),
        _ => {}
    }
}

/// config.json's text for `seed` under `m`.
fn config_text(seed: &Value, m: &Mutation) -> String {
    let mut v = seed.clone();
    let all = paths(&v);
    match m {
        Mutation::Valid => {}
        Mutation::Truncate(at) => {
            let text = serde_json::to_string_pretty(&v).unwrap();
            let mut cut = at.index(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            return text[..cut].to_string();
        }
        Mutation::WrongType(i, kind) => {
            let node = node_mut(&mut v, pick(i, &all));
            *node = other_type(node, *kind);
        }
        Mutation::HugeString(i, n) => {
            let strings: Vec<&Vec<Seg>> = all
                .iter()
                .filter(|p| node_mut(&mut seed.clone(), p).is_string())
                .collect();
            if let Some(p) = (!strings.is_empty()).then(|| *i.get(&strings)) {
                *node_mut(&mut v, p) = Value::String("A".repeat(*n));
            }
        }
        Mutation::HugeArray(i, n) => {
            let node = node_mut(&mut v, pick(i, &all));
            *node = Value::Array(vec![node.clone(); *n]);
        }
        Mutation::Deep(i, depth, array) => {
            let node = node_mut(&mut v, pick(i, &all));
            let mut inner = node.take();
            for _ in 0..*depth {
                inner = if *array {
                    Value::Array(vec![inner])
                } else {
                    serde_json::json!({ "d": inner })
                };
            }
            *node = inner;
        }
        Mutation::Control(i, pos, c) => {
            // A string value or an object key, picked among all of them.
            let mut spots: Vec<(Vec<Seg>, Option<String>)> = Vec::new();
            for p in &all {
                match node_mut(&mut v, p) {
                    Value::String(_) => spots.push((p.clone(), None)),
                    Value::Object(m) => {
                        spots.extend(m.keys().map(|k| (p.clone(), Some(k.clone()))))
                    }
                    _ => {}
                }
            }
            if !spots.is_empty() {
                let (p, key) = i.get(&spots).clone();
                match (node_mut(&mut v, &p), key) {
                    (Value::String(s), None) => *s = insert_at(s, pos, *c),
                    (Value::Object(m), Some(k)) => {
                        let val = m.remove(&k).unwrap();
                        m.insert(insert_at(&k, pos, *c), val);
                    }
                    _ => unreachable!("spots are strings or keys"),
                }
            }
        }
        Mutation::ControlEverywhere(c) => control_everywhere(&mut v, *c),
    }
    serde_json::to_string(&v).unwrap()
}

/// What the command line and `<vmid>.conf` accept, checked on the output
/// rather than trusted from the translation.
fn check_outputs(args: &[String], lines: &[RawLine]) -> Result<(), TestCaseError> {
    prop_assert!(args.len() >= 3, "{args:?}");
    for a in args {
        prop_assert!(!a.chars().any(char::is_control), "pct argument {a:?}");
    }
    for pair in args[3..].chunks(2) {
        let name = pair[0].strip_prefix("--");
        prop_assert!(
            name.is_some_and(|n| !n.is_empty()
                && n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())),
            "pct option {:?}",
            pair[0]
        );
        prop_assert_eq!(pair.len(), 2, "option {:?} has no value", pair[0]);
    }
    for line in lines {
        let text = line.render();
        let (key, value) = text.split_once(": ").expect("rendered as `key: value`");
        let again = RawLine::new(key, value);
        prop_assert!(again.is_ok(), "raw line {text:?}: {:?}", again.err());
        prop_assert_eq!(&again.unwrap(), line);
        prop_assert!(!text.contains('\n'), "{text:?}");
        if key == "lxc.mount.entry" {
            let fields: Vec<&str> = value.split_ascii_whitespace().collect();
            prop_assert_eq!(fields.len(), 6, "fstab entry {:?}", value);
            prop_assert!(
                !fields[1].starts_with('/') && !fields[1].split('/').any(|c| c == ".."),
                "mount target {:?} leaves the container's root",
                fields[1]
            );
        }
    }
    Ok(())
}

/// A refusal names the file and what in it is wrong: a field, or for text
/// that is not a config at all, serde's line and column.
fn check_refusal(e: &BundleError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    // As the command prints it: serde quotes the refused input whole.
    let printed = crate::logging::one_line(&text);
    prop_assert!(
        !printed.chars().any(char::is_control),
        "refusal prints as {printed:?}"
    );
    match e {
        BundleError::Field { field, .. } => {
            prop_assert!(!field.is_empty() && text.contains(field), "{text}");
        }
        BundleError::Parse { message, .. } => {
            prop_assert!(
                message.contains(" line ") && message.contains(" column "),
                "{text}"
            );
            // A value of the wrong type or out of range names its field
            // (`process.user.uid: invalid type: ...`); only a document that
            // is not a Spec at all is left to the line and column.
            let about_a_value = [
                "invalid type",
                "invalid value",
                "unknown variant",
                "invalid length",
            ]
            .iter()
            .any(|k| message.contains(k));
            let field = message.split(": ").next().unwrap_or("");
            let names_field = !field.is_empty() && !field.contains(' ');
            prop_assert!(
                !about_a_value || names_field || message.contains("struct Spec"),
                "{text}"
            );
        }
        // The whole file is refused unread: no field to name.
        BundleError::TooLarge { .. } => {}
        BundleError::Dir { .. } | BundleError::Read { .. } => {
            prop_assert!(false, "the bundle itself is fine: {text}");
        }
    }
    prop_assert!(text.contains("config.json"), "{text}");
    Ok(())
}

fn run_case(dir: &Path, text: &str, host: HostFacts) -> Result<(), TestCaseError> {
    std::fs::write(dir.join("config.json"), text).unwrap();
    let b = match bundle::load(dir) {
        Ok(b) => b,
        Err(e) => return check_refusal(&e),
    };
    if let Some(h) = b.spec.hooks() {
        if let Err(e) = crate::hooks::validate(h) {
            let text = e.to_string();
            prop_assert!(
                text.contains("hooks"),
                "hook refusal names no field: {text}"
            );
            return Ok(());
        }
    }
    let settings = ProxmoxSettings::default();
    match translate::plan_bundle(&b.spec, Some(&b.rootfs), &settings, host) {
        Err(TranslateError::Field { field, message }) => {
            prop_assert!(
                !field.is_empty() && field.chars().any(|c| c.is_ascii_alphabetic()),
                "refusal names no field: {message}"
            );
            prop_assert!(!message.contains('\n'), "{message:?}");
        }
        Ok(plan) => {
            for host_managed in [true, false] {
                let mut plan = plan.clone();
                if plan.manage_net0(host_managed).is_err() {
                    continue;
                }
                let args = plan.create_args(100, "local:vztmpl/t.tar.zst", "local-lvm", 1);
                check_outputs(&args, &plan.raw_lines)?;
            }
        }
    }
    Ok(())
}

fn host(v2: bool) -> HostFacts {
    HostFacts {
        mem_total_mib: 4096,
        swap_total_mib: 1024,
        cgroup: if v2 {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn any_config_json_is_translated_safely_or_refused_by_field(
        seed in any::<Index>(),
        m in mutation(),
        v2 in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        let seed = seed.get(seeds());
        run_case(tmp.path(), &config_text(seed, &m), host(v2))?;
    }
}

/// A path with its array positions left out: the field it names.
fn shape(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.as_str(),
            Seg::At(_) => "[]",
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Every seed unmutated, and every seed with a control character in each
/// of its fields in turn: exhaustive where the random walk is thin.
#[test]
fn a_control_character_in_any_one_string_is_refused_or_kept_out() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
    for seed in seeds() {
        run_case(
            tmp.path(),
            &serde_json::to_string(seed).unwrap(),
            host(false),
        )
        .unwrap();
        let all = paths(seed);
        // One string per field: the 300 names of a seccomp profile's
        // syscall list are one field, and each costs a filter compilation.
        let mut shapes = std::collections::BTreeSet::new();
        let strings: Vec<&Vec<Seg>> = all
            .iter()
            .filter(|p| node_mut(&mut seed.clone(), p).is_string())
            .filter(|p| shapes.insert(shape(p)))
            .collect();
        for p in strings {
            for c in ['\n', '\u{1b}'] {
                let mut v = seed.clone();
                if let Value::String(s) = node_mut(&mut v, p) {
                    s.insert(s.len() / 2, c);
                }
                let text = serde_json::to_string(&v).unwrap();
                if let Err(e) = run_case(tmp.path(), &text, host(true)) {
                    panic!("{p:?} with {c:?}: {e}");
                }
            }
        }
    }
}
