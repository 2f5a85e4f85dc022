//! /etc/nexcage/config.toml (or $NEXCAGE_CONFIG). Keys at the top are the
//! runtime's own; each backend has a table named for it (`[proxmox]`),
//! checked by that backend when the file is loaded. No file is needed on a
//! stock node: every key has a default.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/nexcage/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A table of the file that another module owns and checks (a backend's).
pub struct Section {
    pub name: &'static str,
    pub check: Check,
}

/// What an owner makes of its table, once, when the file is loaded.
pub type Parsed = Arc<dyn Any + Send + Sync>;

pub enum Check {
    /// Checked; the owner reads the table itself ([`Settings::section`]).
    Table(fn(&toml::Table) -> Result<(), String>),
    /// Parsed into the owner's own type and kept ([`Settings::parsed`]),
    /// for a table whose parse costs more than a look at its keys.
    Parse(fn(&toml::Table) -> Result<Parsed, String>),
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub runtime: RuntimeSettings,
    /// Each backend's table, by section name, as checked at load.
    sections: BTreeMap<String, toml::Table>,
    /// What [`Check::Parse`] sections made of their tables, by name.
    parsed: BTreeMap<String, Parsed>,
}

/// The keys at the top of the file: what holds whatever the backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// How long create waits for the container's init to report ready, and
    /// exec for the init to take the process.
    pub start_timeout_secs: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            start_timeout_secs: 60,
        }
    }
}

impl RuntimeSettings {
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_secs)
    }
}

impl Settings {
    /// Load from $NEXCAGE_CONFIG, else the default path; a missing default file
    /// means "all defaults", a missing explicitly named file is an error.
    pub fn load(sections: &[Section]) -> Result<Settings, ConfigError> {
        match std::env::var_os("NEXCAGE_CONFIG") {
            Some(p) => Settings::from_file(Path::new(&p), sections),
            None if Path::new(DEFAULT_PATH).exists() => {
                Settings::from_file(Path::new(DEFAULT_PATH), sections)
            }
            None => Ok(Settings::default()),
        }
    }

    pub fn from_file(path: &Path, sections: &[Section]) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text, sections).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The file's text; each of `sections` is taken out and checked, and
    /// what is left must be the runtime's own keys.
    pub fn parse(text: &str, sections: &[Section]) -> Result<Settings, String> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut tables = BTreeMap::new();
        let mut parsed = BTreeMap::new();
        for s in sections {
            let table = match doc.remove(s.name) {
                None => toml::Table::new(),
                Some(toml::Value::Table(t)) => t,
                Some(_) => return Err(format!("{} must be a table ([{0}])", s.name)),
            };
            match s.check {
                Check::Table(check) => check(&table)?,
                Check::Parse(parse) => {
                    parsed.insert(s.name.to_string(), parse(&table)?);
                }
            }
            tables.insert(s.name.to_string(), table);
        }
        let runtime = RuntimeSettings::deserialize(toml::Value::Table(doc))
            .map_err(|e| e.message().to_string())?;
        Ok(Settings {
            runtime,
            sections: tables,
            parsed,
        })
    }

    /// What section `name` was parsed into at load; None when it was not
    /// loaded (default settings) or is not a `T`.
    pub fn parsed<T: Any>(&self, name: &str) -> Option<&T> {
        self.parsed.get(name)?.downcast_ref()
    }

    /// The table of backend section `name` (empty when the file has none).
    pub fn section(&self, name: &str) -> &toml::Table {
        static EMPTY: std::sync::OnceLock<toml::Table> = std::sync::OnceLock::new();
        self.sections
            .get(name)
            .unwrap_or_else(|| EMPTY.get_or_init(toml::Table::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        let sections = [Section {
            name: "proxmox",
            check: Check::Table(|t| match t.get("bridge") {
                Some(b) if b.as_str().is_none() => Err("bridge: not a string".into()),
                _ if t.contains_key("bogus") => Err("bogus".into()),
                _ => Ok(()),
            }),
        }];
        Settings::parse(text, &sections)
    }

    /// The conffile scripts/package.sh installs as /etc/nexcage/config.toml.
    const EXAMPLE: &str = include_str!("../packaging/config.toml");

    #[test]
    fn the_packaged_example_is_the_readmes_and_holds_the_defaults() {
        let readme = include_str!("../README.md");
        let body = EXAMPLE
            .split_once("\n\n")
            .map(|(_header, body)| body)
            .unwrap();
        assert!(
            readme.contains(&format!("```toml\n{body}```")),
            "README.md's configuration example differs from packaging/config.toml"
        );
        let s = parse(EXAMPLE).unwrap();
        assert_eq!(s.runtime, RuntimeSettings::default());
        let top = EXAMPLE.split("[proxmox]").next().unwrap();
        assert!(top.contains("start_timeout_secs = 60"), "{top}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.runtime.start_timeout_secs, 60);
        assert!(s.section("proxmox").is_empty());
    }

    #[test]
    fn runtime_keys_sit_at_the_top_and_backend_tables_are_checked_at_load() {
        let s = parse("start_timeout_secs = 5\n[proxmox]\nbridge = \"vmbr1\"\n").unwrap();
        assert_eq!(s.runtime.start_timeout(), Duration::from_secs(5));
        assert_eq!(s.section("proxmox")["bridge"].as_str(), Some("vmbr1"));
        for bad in [
            "bogus = 1\n",
            "start_timeout_secs = \"x\"\n",
            "[proxmox]\nbogus = 1\n",
            "[proxmox]\nbridge = 5\n",
            "proxmox = 3\n",
            "[elsewhere]\nx = 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
