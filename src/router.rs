//! Which backend runs a container: the registry of backends this build
//! has, and the choice among them. The choice is made once, at create, and
//! stored in the state so every later command reaches the same backend.

use std::path::Path;

use crate::backend::{self, Backend, Registration};
use crate::bundle::Bundle;
use crate::config::{ConfigError, Section, Settings};
use crate::error::{Error, Result};
use crate::state::Record;

/// Every backend this build has, the default first, in the order
/// `delete --force` asks them for leftovers.
pub fn registry() -> Vec<&'static Registration> {
    #[allow(unused_mut)]
    let mut r = vec![&backend::proxmox::REGISTRATION];
    #[cfg(test)]
    r.push(&backend::fake::REGISTRATION);
    r
}

/// The backend a bundle gets when nothing chooses another.
pub fn default_name() -> &'static str {
    registry()[0].name
}

/// Names of the registered backends.
pub fn names() -> Vec<&'static str> {
    registry().iter().map(|r| r.name).collect()
}

fn find(name: &str) -> Option<&'static Registration> {
    registry().into_iter().find(|r| r.name == name)
}

/// config.toml, with each backend's table checked by that backend.
pub fn load_settings() -> Result<Settings, ConfigError> {
    Settings::load(&sections())
}

/// The config.toml tables the backends own.
pub fn sections() -> Vec<Section> {
    registry()
        .iter()
        .map(|r| Section {
            name: r.section,
            check: r.check,
        })
        .collect()
}

/// Annotation that names a backend explicitly.
pub const BACKEND_ANNOTATION: &str = "org.nexcage.backend";

/// Pick the backend for a new container: the annotation if present, else the default.
pub fn select(bundle: &Bundle, settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    let named = bundle
        .spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(BACKEND_ANNOTATION));
    match named {
        Some(name) => open(name, settings, state_root),
        None => open_default(settings, state_root),
    }
}

/// The backend called `name`, configured from its config.toml table.
pub fn open(name: &str, settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    let reg = find(name).ok_or_else(|| Error::UnknownBackend {
        name: name.to_string(),
        known: names().join(", "),
    })?;
    Ok((reg.open)(settings.section(reg.section), state_root)?)
}

/// The default backend (for what is not about one container: `template`).
pub fn open_default(settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    open(default_name(), settings, state_root)
}

/// The backend that manages `record`.
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

    #[test]
    fn a_registered_backend_gets_the_bundles_that_name_it() {
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::default();
        let (_t, fake) = bundle_with(r#"{"org.nexcage.backend": "fake"}"#);
        let b = select(&fake, &settings, root.path()).unwrap();
        assert_eq!(b.name(), "fake");
        let (_t, plain) = bundle_with("{}");
        assert_eq!(
            select(&plain, &settings, root.path()).unwrap().name(),
            "proxmox-lxc"
        );
        let (_t, bad) = bundle_with(r#"{"org.nexcage.backend": "nope"}"#);
        let err = select(&bad, &settings, root.path()).err().unwrap();
        assert!(
            err.to_string().contains("unknown backend \"nope\"")
                && err.to_string().contains("proxmox-lxc"),
            "{err}"
        );
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
        let backend = select(&bundle, &settings, root.path()).unwrap();
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
