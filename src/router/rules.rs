//! The `[router]` table of config.toml: the default backend and the rules
//! that choose another, first match wins. Checked whole when the file is
//! loaded, so a bad rule fails every command up front, with its index.

use std::collections::BTreeMap;

use regex::Regex;

/// Annotations clients write with the image a container was made from:
/// containerd's CRI plugin, CRI-O, and the OCI image annotations (podman
/// 4.3 and `ctr` write none of these: an image rule never matches their
/// bundles).
pub const IMAGE_ANNOTATIONS: [&str; 4] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
    "org.opencontainers.image.ref.name",
    "org.opencontainers.image.base.name",
];

const RULE_KEYS: &str = "backend, annotations, image, id, unexpressible";

/// The parsed `[router]` table.
#[derive(Debug, Default)]
pub struct Rules {
    /// `default = "..."`, when set.
    pub default: Option<String>,
    pub rules: Vec<Rule>,
}

/// One `[[router.rule]]`: every condition it has must hold.
#[derive(Debug)]
pub struct Rule {
    pub backend: String,
    /// Annotation name -> glob on its value.
    pub annotations: BTreeMap<String, Glob>,
    /// Glob on any of [`IMAGE_ANNOTATIONS`].
    pub image: Option<Glob>,
    /// Regular expression searched in the container id (anchor it with ^
    /// and $ to match the whole id).
    pub id: Option<Regex>,
    /// The default guest backend refuses the bundle.
    pub unexpressible: bool,
}

/// A shell-style pattern on a whole value: `*` any run of characters
/// (slashes included), `?` one character, anything else itself.
#[derive(Debug, Clone)]
pub struct Glob {
    re: Regex,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let mut re = String::from("^");
        for c in text.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| format!("bad pattern {text:?}: {e}"))?;
        Ok(Glob { re })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.re.is_match(value)
    }
}

#[cfg(test)]
thread_local! {
    /// How many times this thread parsed a `[router]` table.
    pub static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Rules {
    /// The `[router]` table; `known` are the backends a rule may name.
    pub fn parse(table: &toml::Table, known: &[&str]) -> Result<Rules, String> {
        #[cfg(test)]
        PARSES.with(|n| n.set(n.get() + 1));
        let backend = |v: &toml::Value, what: &str| -> Result<String, String> {
            let name = v.as_str().ok_or_else(|| format!("{what}: not a string"))?;
            if !known.contains(&name) {
                return Err(format!(
                    "{what}: unknown backend {name:?} (known: {})",
                    known.join(", ")
                ));
            }
            Ok(name.to_string())
        };
        let mut out = Rules::default();
        for (k, v) in table {
            match k.as_str() {
                "default" => out.default = Some(backend(v, "router.default")?),
                "rule" => {
                    let list = v
                        .as_array()
                        .ok_or("router.rule: not an array of tables ([[router.rule]])")?;
                    for (i, r) in list.iter().enumerate() {
                        let t = r
                            .as_table()
                            .ok_or_else(|| format!("router.rule[{i}]: not a table"))?;
                        let rule = Rule::parse(t, &backend)
                            .map_err(|m| format!("router.rule[{i}]: {m}"))?;
                        out.rules.push(rule);
                    }
                }
                _ => return Err(format!("router: unknown key {k:?} (known: default, rule)")),
            }
        }
        Ok(out)
    }
}

type BackendCheck<'a> = dyn Fn(&toml::Value, &str) -> Result<String, String> + 'a;

impl Rule {
    fn parse(t: &toml::Table, backend: &BackendCheck) -> Result<Rule, String> {
        let mut rule = Rule {
            backend: String::new(),
            annotations: BTreeMap::new(),
            image: None,
            id: None,
            unexpressible: false,
        };
        let string = |v: &toml::Value, k: &str| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{k}: not a string"))
        };
        for (k, v) in t {
            match k.as_str() {
                "backend" => {
                    rule.backend = backend(v, "backend")?;
                }
                "annotations" => {
                    let a = v
                        .as_table()
                        .ok_or("annotations: not a table of name = pattern")?;
                    for (name, pattern) in a {
                        let p = string(pattern, &format!("annotations.{name}"))?;
                        let g = Glob::new(&p).map_err(|m| format!("annotations.{name}: {m}"))?;
                        rule.annotations.insert(name.clone(), g);
                    }
                }
                "image" => {
                    rule.image = Some(Glob::new(&string(v, k)?).map_err(|m| format!("image: {m}"))?)
                }
                "id" => {
                    let p = string(v, k)?;
                    let re = Regex::new(&p).map_err(|e| {
                        let first = e.to_string();
                        let last = first.lines().last().unwrap_or("").trim().to_string();
                        format!("id: bad regular expression {p:?}: {last}")
                    })?;
                    rule.id = Some(re);
                }
                "unexpressible" => {
                    rule.unexpressible = v.as_bool().ok_or("unexpressible: not true or false")?
                }
                _ => return Err(format!("unknown key {k:?} (known: {RULE_KEYS})")),
            }
        }
        if rule.backend.is_empty() {
            return Err("no backend".into());
        }
        if rule.annotations.is_empty()
            && rule.image.is_none()
            && rule.id.is_none()
            && !rule.unexpressible
        {
            return Err(
                "no condition (annotations, image, id or unexpressible = true): it would take every bundle; set router.default instead".into(),
            );
        }
        Ok(rule)
    }

    /// Whether the rule takes this container. `refusal` is asked last, and
    /// only by an `unexpressible` rule whose other conditions hold: it runs
    /// the default backend's check and says why it refused, if it did.
    /// Returns None when the rule does not match, else the refusal (if any).
    pub fn matches(
        &self,
        annotations: &BTreeMap<String, String>,
        id: Option<&str>,
        refusal: &mut dyn FnMut() -> Option<String>,
    ) -> Option<Option<String>> {
        for (name, glob) in &self.annotations {
            if !annotations.get(name).is_some_and(|v| glob.matches(v)) {
                return None;
            }
        }
        if let Some(glob) = &self.image {
            let named = IMAGE_ANNOTATIONS
                .iter()
                .filter_map(|a| annotations.get(*a))
                .any(|v| glob.matches(v));
            if !named {
                return None;
            }
        }
        if let Some(re) = &self.id {
            if !id.is_some_and(|id| re.is_match(id)) {
                return None;
            }
        }
        if self.unexpressible {
            return refusal().map(Some);
        }
        Some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["proxmox-lxc", "runc", "crun"];

    fn parse(text: &str) -> Result<Rules, String> {
        let doc: toml::Table = text.parse().unwrap();
        let t = doc
            .get("router")
            .and_then(|r| r.as_table())
            .cloned()
            .unwrap_or_default();
        Rules::parse(&t, KNOWN)
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn globs_match_whole_values() {
        let g = Glob::new("docker.io/library/busybox*").unwrap();
        assert!(g.matches("docker.io/library/busybox:latest"));
        assert!(g.matches("docker.io/library/busybox"));
        assert!(!g.matches("xdocker.io/library/busybox"));
        assert!(!g.matches("docker.io/library/alpine"));
        let q = Glob::new("a?c.d").unwrap();
        assert!(q.matches("abc.d") && !q.matches("abcxd") && !q.matches("ac.d"));
        assert!(Glob::new("sandbox").unwrap().matches("sandbox"));
        assert!(!Glob::new("sandbox").unwrap().matches("sandbox2"));
    }

    #[test]
    fn rules_parse_with_every_condition() {
        let r = parse(
            r#"
            [router]
            default = "proxmox-lxc"
            [[router.rule]]
            backend = "runc"
            annotations = { "io.kubernetes.cri.container-type" = "sandbox" }
            [[router.rule]]
            backend = "crun"
            image = "docker.io/library/busybox*"
            [[router.rule]]
            backend = "runc"
            id = "^test-"
            [[router.rule]]
            backend = "runc"
            unexpressible = true
            "#,
        )
        .unwrap();
        assert_eq!(r.default.as_deref(), Some("proxmox-lxc"));
        assert_eq!(r.rules.len(), 4);
        assert_eq!(r.rules[1].backend, "crun");
        assert!(r.rules[3].unexpressible);
    }

    #[test]
    fn bad_rules_are_refused_with_their_index() {
        for (text, want) in [
            (
                "[[router.rule]]\nbackend = \"runc\"\nid = \"x\"\n[[router.rule]]\nbackend = \"nope\"\nid = \"x\"\n",
                "router.rule[1]: backend: unknown backend \"nope\" (known: proxmox-lxc, runc, crun)",
            ),
            (
                "[[router.rule]]\nbackend = \"runc\"\nid = \"(\"\n",
                "router.rule[0]: id: bad regular expression \"(\"",
            ),
            (
                "[[router.rule]]\nbackend = \"runc\"\n",
                "router.rule[0]: no condition",
            ),
            (
                "[[router.rule]]\nbackend = \"runc\"\nunexpressible = false\n",
                "router.rule[0]: no condition",
            ),
            (
                "[[router.rule]]\nbackend = \"runc\"\nid = \"x\"\nimages = \"y\"\n",
                "router.rule[0]: unknown key \"images\"",
            ),
            ("[[router.rule]]\nid = \"x\"\n", "router.rule[0]: no backend"),
            (
                "[[router.rule]]\nbackend = \"runc\"\nannotations = { a = 1 }\n",
                "router.rule[0]: annotations.a: not a string",
            ),
            (
                "[router]\ndefault = \"lxd\"\n",
                "router.default: unknown backend \"lxd\"",
            ),
            ("[router]\nrules = []\n", "router: unknown key \"rules\""),
            ("[router]\nrule = 1\n", "router.rule: not an array"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn every_condition_of_a_rule_must_hold() {
        let r = parse(
            r#"
            [[router.rule]]
            backend = "runc"
            annotations = { "io.kubernetes.cri.container-type" = "sandbox" }
            id = "^k8s-"
            "#,
        )
        .unwrap();
        let rule = &r.rules[0];
        let sandbox = ann(&[("io.kubernetes.cri.container-type", "sandbox")]);
        let none = &mut || None;
        assert_eq!(rule.matches(&sandbox, Some("k8s-1"), none), Some(None));
        assert_eq!(rule.matches(&sandbox, Some("other"), none), None);
        assert_eq!(rule.matches(&sandbox, None, none), None);
        let app = ann(&[("io.kubernetes.cri.container-type", "container")]);
        assert_eq!(rule.matches(&app, Some("k8s-1"), none), None);
    }

    #[test]
    fn image_rules_look_at_each_clients_image_annotation() {
        let r = parse("[[router.rule]]\nbackend = \"crun\"\nimage = \"*/busybox:*\"\n").unwrap();
        let none = &mut || None;
        for a in IMAGE_ANNOTATIONS {
            let m = ann(&[(a, "docker.io/library/busybox:1.36")]);
            assert!(r.rules[0].matches(&m, None, none).is_some(), "{a}");
        }
        let other = ann(&[("io.kubernetes.cri.image-name", "docker.io/library/alpine:3")]);
        assert!(r.rules[0].matches(&other, None, none).is_none());
        assert!(r.rules[0].matches(&ann(&[]), None, none).is_none());
    }

    #[test]
    fn an_unexpressible_rule_asks_the_check_only_when_the_rest_holds() {
        let r = parse("[[router.rule]]\nbackend = \"runc\"\nid = \"^x\"\nunexpressible = true\n")
            .unwrap();
        let mut asked = 0;
        let mut refuse = || {
            asked += 1;
            Some("linux.namespaces: host network".to_string())
        };
        assert_eq!(r.rules[0].matches(&ann(&[]), Some("y1"), &mut refuse), None);
        assert_eq!(
            r.rules[0].matches(&ann(&[]), Some("x1"), &mut refuse),
            Some(Some("linux.namespaces: host network".into()))
        );
        assert_eq!(asked, 1);
        assert_eq!(
            r.rules[0].matches(&ann(&[]), Some("x1"), &mut || None),
            None
        );
    }
}
