//! Which backend runs a container: the registry of backends this build
//! has (guest backends, which make a guest of nexcage's own, and the OCI
//! runtimes nexcage delegates to), and the choice among them. The choice is
//! made once, at create, by the `org.nexcage.backend` annotation, else the
//! first matching `[[router.rule]]` of config.toml, else the default; it is
//! stored in the state so every later command reaches the same backend.

pub mod rules;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::backend::{self, Backend, Registration};
use crate::bundle::Bundle;
use crate::config::{Check, ConfigError, Section, Settings};
use crate::delegate::{self, Delegate};
use crate::error::{Error, Result};
use crate::state::Record;

use rules::Rules;

/// Every guest backend this build has, the default first, in the order
/// `delete --force` asks them for leftovers.
pub fn registry() -> Vec<&'static Registration> {
    #[allow(unused_mut)]
    let mut r = vec![&backend::proxmox::REGISTRATION];
    #[cfg(test)]
    r.push(&backend::fake::REGISTRATION);
    r
}

/// The guest backend a bundle gets when nothing chooses another and
/// config.toml names no default; also the one `template` manages.
pub fn default_name() -> &'static str {
    registry()[0].name
}

/// Names of every backend: guest backends, then delegates.
pub fn names() -> Vec<&'static str> {
    let mut n: Vec<&'static str> = registry().iter().map(|r| r.name).collect();
    n.extend(delegate::NAMES);
    n
}

/// Whether `name` is a runtime nexcage delegates to rather than a guest
/// backend.
pub fn is_delegate(name: &str) -> bool {
    delegate::NAMES.contains(&name)
}

fn find(name: &str) -> Option<&'static Registration> {
    registry().into_iter().find(|r| r.name == name)
}

/// config.toml, with each backend's table checked by that backend and the
/// `[router]` table by the rules.
pub fn load_settings() -> Result<Settings, ConfigError> {
    Settings::load(&sections())
}

/// The config.toml tables the router and the backends own.
pub fn sections() -> Vec<Section> {
    let mut s: Vec<Section> = registry()
        .iter()
        .map(|r| Section {
            name: r.section,
            check: Check::Table(r.check),
        })
        .collect();
    // Parsed once, at load (its regular expressions are compiled then),
    // and kept for `rules`.
    s.push(Section {
        name: "router",
        check: Check::Parse(|t| Ok(Arc::new(Rules::parse(t, &names())?))),
    });
    for name in delegate::NAMES {
        s.push(Section {
            name,
            check: Check::Table(delegate::check_section),
        });
    }
    s
}

/// The `[router]` table, as parsed when the settings were loaded (none
/// for default settings, which no file gave).
pub fn rules(settings: &Settings) -> &Rules {
    static NONE: Rules = Rules {
        default: None,
        rules: Vec::new(),
    };
    settings.parsed::<Rules>("router").unwrap_or(&NONE)
}

/// Annotation that names a backend explicitly; it wins over the rules.
pub const BACKEND_ANNOTATION: &str = "org.nexcage.backend";

/// What chose a container's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChosenBy {
    Annotation,
    /// `router.rule[index]`; for an `unexpressible` rule, what the default
    /// backend refused.
    Rule {
        index: usize,
        refusal: Option<String>,
    },
    Default,
}

impl std::fmt::Display for ChosenBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChosenBy::Annotation => write!(f, "annotation {BACKEND_ANNOTATION}"),
            ChosenBy::Rule {
                index,
                refusal: None,
            } => write!(f, "router.rule[{index}]"),
            ChosenBy::Rule {
                index,
                refusal: Some(why),
            } => write!(f, "router.rule[{index}] (unexpressible: {why})"),
            ChosenBy::Default => f.write_str("default"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub backend: String,
    pub chosen_by: ChosenBy,
}

/// Choose the backend of a new container (`id` is None for `route`
/// without one: id rules then do not match).
pub fn route(
    bundle: &Bundle,
    id: Option<&str>,
    settings: &Settings,
    state_root: &Path,
) -> Result<Route> {
    let annotations: BTreeMap<String, String> = bundle
        .spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Some(name) = annotations.get(BACKEND_ANNOTATION) {
        if !names().contains(&name.as_str()) {
            return Err(unknown(name));
        }
        return Ok(Route {
            backend: name.clone(),
            chosen_by: ChosenBy::Annotation,
        });
    }
    let table = rules(settings);
    let default = table
        .default
        .clone()
        .unwrap_or_else(|| default_name().to_string());
    // The default guest backend's verdict on the bundle, asked at most once.
    let mut verdict: Option<Option<String>> = None;
    let mut failed: Option<Error> = None;
    let mut refusal = || -> Option<String> {
        if verdict.is_none() {
            verdict = Some(if is_delegate(&default) {
                None
            } else {
                match open(&default, settings, state_root) {
                    Ok(b) => b.check(bundle).err().map(|e| e.to_string()),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            });
        }
        verdict.clone().flatten()
    };
    for (index, rule) in table.rules.iter().enumerate() {
        if let Some(refusal) = rule.matches(&annotations, id, &mut refusal) {
            return Ok(Route {
                backend: rule.backend.clone(),
                chosen_by: ChosenBy::Rule { index, refusal },
            });
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Route {
        backend: default,
        chosen_by: ChosenBy::Default,
    })
}

/// What runs a container: a guest backend of nexcage's, or a runtime it
/// delegates to.
pub enum Runtime {
    Guest(Box<dyn Backend>),
    Delegate(Delegate),
}

/// The backend called `name`, ready to use.
pub fn runtime(name: &str, settings: &Settings, state_root: &Path) -> Result<Runtime> {
    if is_delegate(name) {
        return Ok(Runtime::Delegate(open_delegate(
            name, settings, state_root,
        )?));
    }
    Ok(Runtime::Guest(open(name, settings, state_root)?))
}

/// The delegate called `name`: its binary found and its version known.
pub fn open_delegate(name: &str, settings: &Settings, state_root: &Path) -> Result<Delegate> {
    let name = delegate::NAMES
        .into_iter()
        .find(|n| *n == name)
        .ok_or_else(|| unknown(name))?;
    let path = settings.section(name).get("path").and_then(|p| p.as_str());
    Ok(Delegate::open(name, path, state_root)?)
}

fn unknown(name: &str) -> Error {
    Error::UnknownBackend {
        name: name.to_string(),
        known: names().join(", "),
    }
}

/// The guest backend called `name`, configured from its config.toml table.
pub fn open(name: &str, settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    let reg = find(name).ok_or_else(|| unknown(name))?;
    Ok((reg.open)(settings.section(reg.section), state_root)?)
}

/// The default guest backend (for what is not about one container:
/// `template`).
pub fn open_default(settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    open(default_name(), settings, state_root)
}

/// The guest backend that manages `record`.
pub fn for_record(
    record: &Record,
    settings: &Settings,
    state_root: &Path,
) -> Result<Box<dyn Backend>> {
    open(&record.backend, settings, state_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(annotations: &str) -> (tempfile::TempDir, Bundle) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        let config = format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                "process": {{"args": ["/bin/true"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}}},
                "annotations": {annotations}}}"#
        );
        std::fs::write(tmp.path().join("config.json"), config).unwrap();
        let b = crate::bundle::load(tmp.path()).unwrap();
        (tmp, b)
    }

    fn settings(text: &str) -> Settings {
        Settings::parse(text, &sections()).unwrap()
    }

    fn backend_of(b: &Bundle, id: Option<&str>, s: &Settings, root: &Path) -> Route {
        route(b, id, s, root).unwrap()
    }

    #[test]
    fn a_registered_backend_gets_the_bundles_that_name_it() {
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::default();
        let (_t, fake) = bundle_with(r#"{"org.nexcage.backend": "fake"}"#);
        let r = backend_of(&fake, None, &settings, root.path());
        assert_eq!(
            (r.backend.as_str(), r.chosen_by),
            ("fake", ChosenBy::Annotation)
        );
        let (_t, plain) = bundle_with("{}");
        let r = backend_of(&plain, None, &settings, root.path());
        assert_eq!(
            (r.backend.as_str(), r.chosen_by),
            ("proxmox-lxc", ChosenBy::Default)
        );
        let (_t, bad) = bundle_with(r#"{"org.nexcage.backend": "nope"}"#);
        let err = route(&bad, None, &settings, root.path()).err().unwrap();
        assert!(
            err.to_string().contains("unknown backend \"nope\"")
                && err.to_string().contains("proxmox-lxc, fake, runc, crun"),
            "{err}"
        );
    }

    #[test]
    fn the_first_matching_rule_wins_and_the_annotation_wins_over_rules() {
        let root = tempfile::tempdir().unwrap();
        let s = settings(
            r#"
            [router]
            default = "fake"
            [[router.rule]]
            backend = "runc"
            annotations = { "io.kubernetes.cri.container-type" = "sandbox" }
            [[router.rule]]
            backend = "crun"
            id = "^test-"
            [[router.rule]]
            backend = "runc"
            id = "^test-"
            "#,
        );
        let (_t, sandbox) = bundle_with(r#"{"io.kubernetes.cri.container-type": "sandbox"}"#);
        let r = backend_of(&sandbox, Some("test-1"), &s, root.path());
        assert_eq!(r.backend, "runc");
        assert_eq!(r.chosen_by.to_string(), "router.rule[0]");
        let (_t, plain) = bundle_with("{}");
        let r = backend_of(&plain, Some("test-1"), &s, root.path());
        assert_eq!(
            (r.backend.as_str(), r.chosen_by.to_string()),
            ("crun", "router.rule[1]".into())
        );
        let r = backend_of(&plain, Some("prod-1"), &s, root.path());
        assert_eq!(
            (r.backend.as_str(), r.chosen_by),
            ("fake", ChosenBy::Default)
        );
        let r = backend_of(&plain, None, &s, root.path());
        assert_eq!(r.backend, "fake", "without an id, id rules do not match");
        let (_t, named) = bundle_with(
            r#"{"io.kubernetes.cri.container-type": "sandbox", "org.nexcage.backend": "proxmox-lxc"}"#,
        );
        let r = backend_of(&named, Some("test-1"), &s, root.path());
        assert_eq!(
            (r.backend.as_str(), r.chosen_by),
            ("proxmox-lxc", ChosenBy::Annotation)
        );
    }

    #[test]
    fn the_rules_are_parsed_once_when_the_settings_load() {
        let root = tempfile::tempdir().unwrap();
        let parses = || rules::PARSES.with(|n| n.get());
        let before = parses();
        let s = settings(
            "[router]\ndefault = \"fake\"\n[[router.rule]]\nbackend = \"runc\"\nid = \"^r-\"\n",
        );
        let (_t, plain) = bundle_with("{}");
        assert_eq!(
            backend_of(&plain, Some("r-1"), &s, root.path()).backend,
            "runc"
        );
        assert_eq!(
            backend_of(&plain, Some("g-1"), &s, root.path()).backend,
            "fake"
        );
        assert_eq!(rules(&s).default.as_deref(), Some("fake"));
        assert_eq!(parses() - before, 1, "parsed at load only");
        assert!(rules(&Settings::default()).rules.is_empty());
    }

    #[test]
    fn what_the_default_backend_refuses_goes_to_the_unexpressible_rule() {
        let root = tempfile::tempdir().unwrap();
        let s = settings(
            "[router]\ndefault = \"fake\"\n[[router.rule]]\nbackend = \"runc\"\nunexpressible = true\n",
        );
        let (_t, refused) = bundle_with(r#"{"fake.refuse": "host network"}"#);
        let r = backend_of(&refused, None, &s, root.path());
        assert_eq!(r.backend, "runc");
        assert_eq!(
            r.chosen_by.to_string(),
            "router.rule[0] (unexpressible: fake backend: host network)"
        );
        let (_t, fine) = bundle_with("{}");
        assert_eq!(
            backend_of(&fine, None, &s, root.path()).chosen_by,
            ChosenBy::Default
        );
    }

    #[test]
    fn a_bad_rule_fails_the_configuration_with_its_index() {
        let err = Settings::parse(
            "[[router.rule]]\nbackend = \"runc\"\nid = \"a\"\n[[router.rule]]\nbackend = \"podman\"\nid = \"b\"\n",
            &sections(),
        )
        .unwrap_err();
        assert!(
            err.starts_with("router.rule[1]: backend: unknown backend \"podman\""),
            "{err}"
        );
        assert!(Settings::parse("[runc]\npath = \"/usr/sbin/runc\"\n", &sections()).is_ok());
        assert!(Settings::parse("[crun]\nbinary = \"/x\"\n", &sections()).is_err());
    }

    #[test]
    fn each_backend_checks_its_own_table_when_the_configuration_loads() {
        let ok = Settings::parse(
            "start_timeout_secs = 5\n[proxmox]\nbridge = \"vmbr1\"\n",
            &sections(),
        )
        .unwrap();
        assert_eq!(ok.section("proxmox")["bridge"].as_str(), Some("vmbr1"));
        for bad in [
            "[proxmox]\nbridge = \"vmbr0\\nlxc.x=1\"\n",
            "[proxmox]\nstart_timeout_secs = 5\n",
            "[fake]\nanything = 1\n",
        ] {
            assert!(Settings::parse(bad, &sections()).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_commands_reach_the_backend_the_record_names_with_its_data() {
        use crate::backend::Provision;
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::default();
        let (t, bundle) = bundle_with(r#"{"org.nexcage.backend": "fake"}"#);
        let backend = open(
            &route(&bundle, None, &settings, root.path())
                .unwrap()
                .backend,
            &settings,
            root.path(),
        )
        .unwrap();
        let mut data = serde_json::Value::Null;
        let mut saved = Vec::new();
        let req = Provision {
            id: "c1",
            bundle: &bundle,
            bridge_dir: t.path(),
            init_binary: t.path(),
            phases: &Default::default(),
        };
        backend
            .provision(&req, &mut data, &mut |d| {
                saved.push(d.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(saved, [data.clone()], "provision persists its data");
        let record = Record {
            backend: backend.name().into(),
            backend_data: data,
            ..Record::sample("c1")
        };
        let again = for_record(&record, &settings, root.path()).unwrap();
        let argv = again.exec_command(&record.guest(), "/p.json").unwrap();
        assert_eq!(argv, ["fake-exec", "c1", "guest-of-c1", "/p.json"]);
    }
}
