//! Delegation: containers nexcage hands to another OCI runtime (runc, crun)
//! as they are. Such a runtime runs its own containers; nexcage only finds
//! its binary, gives it a state root of its own below nexcage's and forwards
//! the command line, so that its behaviour is exactly that runtime's.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::fsutil::{own_path, write_atomic, DEFAULT_PATH};

/// The runtimes nexcage can delegate to, in the order `delete --force`
/// asks them for leftovers. Each has a config.toml table of the same name
/// (`[runc] path = "/usr/sbin/runc"`); without one, its binary is looked
/// up in PATH.
pub const NAMES: [&str; 2] = ["runc", "crun"];

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("backend {name}: runtime binary {binary:?} not found{where_}")]
    Missing {
        name: String,
        binary: String,
        where_: &'static str,
    },
    #[error("backend {name}: cannot run {}: {source}", binary.display())]
    Spawn {
        name: String,
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("backend {name}: {} --version said nothing nexcage can read: {said:?}", binary.display())]
    Version {
        name: String,
        binary: PathBuf,
        said: String,
    },
    #[error("backend {name}: cannot create its state root {}: {source}", path.display())]
    Root {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The config.toml table of a delegate: only `path`, absolute.
pub fn check_section(table: &toml::Table) -> Result<(), String> {
    for (k, v) in table {
        match (k.as_str(), v.as_str()) {
            ("path", Some(p)) if Path::new(p).is_absolute() => {}
            ("path", _) => return Err(format!("path: {v:?} is not an absolute path")),
            _ => return Err(format!("unknown key {k:?} (known: path)")),
        }
    }
    Ok(())
}

/// One runtime nexcage delegates to, found and its version known.
#[derive(Debug, Clone)]
pub struct Delegate {
    pub name: &'static str,
    pub binary: PathBuf,
    /// Its `--root`: `<nexcage root>/~nexcage/delegate/<name>`.
    pub root: PathBuf,
    pub version: String,
}

/// What `--version` said of one binary, remembered under `~nexcage/cache`
/// so that it is asked once per installed binary, not per command.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct VersionCache {
    binary: PathBuf,
    size: u64,
    mtime: i64,
    version: String,
}

/// The state root a delegate gets below nexcage's.
pub fn root_of(name: &str, state_root: &Path) -> PathBuf {
    own_path(state_root, "delegate").join(name)
}

/// Whether runtime `name` under `state_root` still has container `id`.
pub fn holds_in(name: &str, state_root: &Path, id: &str) -> bool {
    root_of(name, state_root).join(id).exists()
}

impl Delegate {
    /// Find `name`'s binary (`configured` path, else PATH) and its version.
    pub fn open(
        name: &'static str,
        configured: Option<&str>,
        state_root: &Path,
    ) -> Result<Delegate, DelegateError> {
        let binary = match configured {
            Some(p) if is_executable(Path::new(p)) => PathBuf::from(p),
            Some(p) => {
                return Err(DelegateError::Missing {
                    name: name.into(),
                    binary: p.into(),
                    where_: " (config.toml)",
                })
            }
            None => in_path(name).ok_or_else(|| DelegateError::Missing {
                name: name.into(),
                binary: name.into(),
                where_: " in PATH",
            })?,
        };
        let version = version(name, &binary, state_root)?;
        Ok(Delegate {
            name,
            binary,
            root: root_of(name, state_root),
            version,
        })
    }

    /// `BINARY --root ROOT GLOBALS... ARGS...` with the caller's stdio.
    pub fn command(&self, globals: &[OsString], args: &[OsString]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).args(globals).args(args);
        c
    }

    /// Make sure the state root exists (0700: runc's own default root is
    /// private, and so is this one).
    pub fn prepare_root(&self) -> Result<(), DelegateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|source| DelegateError::Root {
                name: self.name.into(),
                path: self.root.clone(),
                source,
            })
    }

    /// Become the runtime: for commands after which nexcage has nothing
    /// left to do, so that pid, signals, stdio and exit status are the
    /// runtime's own. Returns only if the exec failed.
    pub fn replace_process(&self, globals: &[OsString], args: &[OsString]) -> DelegateError {
        let source = self.command(globals, args).exec();
        DelegateError::Spawn {
            name: self.name.into(),
            binary: self.binary.clone(),
            source,
        }
    }

    /// `list --format json`: the document of each container under its
    /// root, by id; None when the runtime fails or says something else
    /// (runc says `null` for no container, crun `[]`).
    pub fn list(&self) -> Option<BTreeMap<String, serde_json::Value>> {
        let out = self
            .command(&[], &["list".into(), "--format".into(), "json".into()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let all: Option<Vec<serde_json::Value>> = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            all.unwrap_or_default()
                .into_iter()
                .filter_map(|c| Some((c["id"].as_str()?.to_string(), c)))
                .collect(),
        )
    }

    /// `delete --force ID`, quietly: for `delete --force` of a container
    /// whose record is lost.
    pub fn delete_force(&self, id: &str) -> std::io::Result<std::process::ExitStatus> {
        self.command(&[], &["delete".into(), "--force".into(), id.into()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }

    /// Whether the runtime has a state directory for `id` under its root.
    pub fn holds(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The binary's version, from the cache while the file is unchanged.
fn version(name: &str, binary: &Path, state_root: &Path) -> Result<String, DelegateError> {
    let meta = binary.metadata().map_err(|source| DelegateError::Spawn {
        name: name.into(),
        binary: binary.into(),
        source,
    })?;
    let cache = own_path(state_root, "cache").join(format!("delegate-{name}.json"));
    let fresh =
        |c: &VersionCache| c.binary == binary && c.size == meta.size() && c.mtime == meta.mtime();
    if let Some(c) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<VersionCache>(&b).ok())
        .filter(fresh)
    {
        return Ok(c.version);
    }
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| DelegateError::Spawn {
            name: name.into(),
            binary: binary.into(),
            source,
        })?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = parse_version(&said).ok_or_else(|| DelegateError::Version {
        name: name.into(),
        binary: binary.into(),
        said: said.lines().next().unwrap_or("").to_string(),
    })?;
    let entry = VersionCache {
        binary: binary.into(),
        size: meta.size(),
        mtime: meta.mtime(),
        version: version.clone(),
    };
    // A cache: failing to keep it costs the next command one --version.
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let body = serde_json::to_vec(&entry).expect("serializes");
    if let Err(e) = write_atomic(&cache, &body, 0o644) {
        tracing::debug!("{e}");
    }
    Ok(version)
}

/// `runc version 1.1.5+ds1` / `crun version 1.8.1`: the word after
/// "version" on the first line.
fn parse_version(said: &str) -> Option<String> {
    let first = said.lines().next()?;
    let mut words = first.split_whitespace();
    words.find(|w| *w == "version")?;
    words
        .next()
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

/// nexcage's global flags that are forwarded, and whether each takes a
/// value. `--root` is replaced by the delegate's own; `--rootless` is not
/// forwarded (nexcage runs as root on the node, so does its delegate).
const FORWARDED: [(&str, bool); 4] = [
    ("--log", true),
    ("--log-format", true),
    ("--debug", false),
    ("--systemd-cgroup", false),
];
const DROPPED: [(&str, bool); 2] = [("--root", true), ("--rootless", false)];

/// Splits nexcage's command line (without argv[0]) into the global flags to
/// forward and the rest (the subcommand first). Global flags may come
/// before the subcommand (runc's form) or after it (clap's `global`): both
/// are moved before it, as runc only reads them there. After the
/// subcommand, only flags before `stop` (the container id) or `--` are
/// looked at: what follows the id belongs to the container (exec's command,
/// ps's options).
pub fn split_args(argv: &[OsString], stop: &str) -> (Vec<OsString>, Vec<OsString>) {
    let mut globals = Vec::new();
    let mut rest = Vec::new();
    let mut it = argv.iter().peekable();
    let mut seen_subcommand = false;
    let mut stopped = false;
    while let Some(arg) = it.next() {
        if stopped {
            rest.push(arg.clone());
            continue;
        }
        let s = arg.to_string_lossy();
        let (flag, inline) = match s.split_once('=') {
            Some((f, _)) if f.starts_with("--") => (f.to_string(), true),
            _ => (s.to_string(), false),
        };
        let forwarded = FORWARDED.iter().find(|(f, _)| *f == flag);
        let dropped = DROPPED.iter().find(|(f, _)| *f == flag);
        if let Some((_, takes)) = forwarded.or(dropped) {
            let keep = forwarded.is_some();
            if keep {
                globals.push(arg.clone());
            }
            if *takes && !inline {
                if let Some(v) = it.next() {
                    if keep {
                        globals.push(v.clone());
                    }
                }
            }
            continue;
        }
        if seen_subcommand && (arg == OsStr::new(stop) || arg == "--") {
            stopped = true;
        }
        if !s.starts_with('-') {
            seen_subcommand = true;
        }
        rest.push(arg.clone());
    }
    (globals, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn globals_move_before_the_subcommand_and_root_is_dropped() {
        let (g, r) = split_args(
            &os(&[
                "--root",
                "/run/nexcage",
                "--log",
                "/l",
                "create",
                "--bundle",
                "/b",
                "--debug",
                "--log-format=json",
                "--pid-file",
                "/p",
                "c1",
            ]),
            "c1",
        );
        assert_eq!(g, os(&["--log", "/l", "--debug", "--log-format=json"]));
        assert_eq!(
            r,
            os(&["create", "--bundle", "/b", "--pid-file", "/p", "c1"])
        );
    }

    #[test]
    fn what_follows_the_id_belongs_to_the_container() {
        let (g, r) = split_args(
            &os(&[
                "--root=/x",
                "exec",
                "-t",
                "c1",
                "sh",
                "--debug",
                "--root",
                "y",
            ]),
            "c1",
        );
        assert!(g.is_empty());
        assert_eq!(r, os(&["exec", "-t", "c1", "sh", "--debug", "--root", "y"]));
        let (_, r) = split_args(&os(&["ps", "c1", "--", "-ef"]), "c1");
        assert_eq!(r, os(&["ps", "c1", "--", "-ef"]));
    }

    #[test]
    fn versions_as_runc_and_crun_print_them() {
        let runc = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(parse_version(runc).as_deref(), Some("1.1.5+ds1"));
        assert_eq!(
            parse_version("crun version 1.8.1\ncommit: f8a0\n").as_deref(),
            Some("1.8.1")
        );
        assert_eq!(parse_version("usage: x"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn the_version_is_asked_once_per_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("fake-runtime");
        let count = tmp.path().join("count");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho x >> {}\necho 'fake version 2.0'\n",
                count.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("root");
        for _ in 0..3 {
            let d = Delegate::open("runc", Some(bin.to_str().unwrap()), &root).unwrap();
            assert_eq!(d.version, "2.0");
            assert_eq!(d.root, root.join("~nexcage/delegate/runc"));
        }
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
        let missing = Delegate::open("crun", Some("/nonexistent/crun"), &root)
            .unwrap_err()
            .to_string();
        assert_eq!(
            missing,
            "backend crun: runtime binary \"/nonexistent/crun\" not found (config.toml)"
        );
    }

    #[test]
    fn a_delegate_table_holds_only_an_absolute_path() {
        let t = |s: &str| s.parse::<toml::Table>().unwrap();
        assert!(check_section(&t("path = \"/usr/sbin/runc\"")).is_ok());
        assert!(check_section(&t("path = \"runc\"")).is_err());
        assert!(check_section(&t("path = 3")).is_err());
        assert!(check_section(&t("root = \"/x\"")).is_err());
    }
}
