//! Loading and validating an OCI bundle: `config.json` (through oci-spec) and
//! the root filesystem it names.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// A loaded bundle whose paths are absolute and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    /// `root.path` resolved against the bundle directory.
    pub rootfs: PathBuf,
}

impl Bundle {
    pub fn process(&self) -> &Process {
        self.spec.process().as_ref().expect("validated at load")
    }
}

/// The runtime spec versions whose config.json nexcage understands.
pub const SUPPORTED_MAJOR: u64 = 1;

pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let dir = std::fs::canonicalize(dir).map_err(|source| BundleError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| BundleError::Read {
        path: config_path.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|e| BundleError::Parse {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    let field = |field: &'static str, message: String| BundleError::Field {
        path: config_path.clone(),
        field,
        message,
    };

    let version = spec.version();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok())
        .ok_or_else(|| field("ociVersion", format!("{version:?} is not a version")))?;
    if major != SUPPORTED_MAJOR {
        return Err(field(
            "ociVersion",
            format!("version {version} is not supported (need 1.x)"),
        ));
    }

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| field("root", "missing".into()))?;
    if root.path().as_os_str().is_empty() {
        return Err(field("root.path", "empty".into()));
    }
    let rootfs = dir.join(root.path());
    let meta = std::fs::metadata(&rootfs)
        .map_err(|e| field("root.path", format!("{}: {e}", rootfs.display())))?;
    if !meta.is_dir() {
        return Err(field(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| field("process", "missing".into()))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(field("process.args", "must name a program".into())),
    }
    if !process.cwd().is_absolute() {
        return Err(field(
            "process.cwd",
            format!("{} is not an absolute path", process.cwd().display()),
        ));
    }
    Ok(Bundle { dir, spec, rootfs })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bundles/reference");

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        std::fs::write(tmp.path().join("config.json"), config).unwrap();
        tmp
    }

    fn minimal(version: &str) -> String {
        format!(
            r#"{{"ociVersion":"{version}","root":{{"path":"rootfs"}},"process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}}}}"#
        )
    }

    #[test]
    fn minimal_bundle_loads_with_rootfs_resolved() {
        let b = bundle_with(&minimal("1.0.2"));
        let loaded = load(b.path()).unwrap();
        assert_eq!(
            loaded.rootfs,
            b.path().canonicalize().unwrap().join("rootfs")
        );
        assert_eq!(loaded.process().args().as_ref().unwrap()[0], "sh");
    }

    #[test]
    fn every_captured_client_config_is_accepted() {
        // Real config.json files from podman and containerd; their rootfs paths
        // point elsewhere, so only parsing and validation up to root.path matter.
        let mut seen = 0;
        for entry in std::fs::read_dir(REFERENCE).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
            value["root"]["path"] = "rootfs".into();
            let b = bundle_with(&value.to_string());
            load(b.path()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 5, "reference bundles missing ({seen})");
    }

    #[test]
    fn bad_bundles_are_refused_naming_file_and_field() {
        let cases = [
            (minimal("2.0.0"), "ociVersion"),
            (
                r#"{"ociVersion":"1.0.0","process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}}"#.to_string(),
                "root",
            ),
            (
                r#"{"ociVersion":"1.0.0","root":{"path":"rootfs"}}"#.to_string(),
                "process",
            ),
            (
                r#"{"ociVersion":"1.0.0","root":{"path":"nope"},"process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}}"#
                    .to_string(),
                "root.path",
            ),
            (
                r#"{"ociVersion":"1.0.0","root":{"path":"rootfs"},"process":{"cwd":"/","args":[],"user":{"uid":0,"gid":0}}}"#
                    .to_string(),
                "process.args",
            ),
            (
                r#"{"ociVersion":"1.0.0","root":{"path":"rootfs"},"process":{"cwd":"rel","args":["sh"],"user":{"uid":0,"gid":0}}}"#
                    .to_string(),
                "process.cwd",
            ),
        ];
        for (config, field) in cases {
            let b = bundle_with(&config);
            let err = load(b.path()).unwrap_err().to_string();
            assert!(err.contains("config.json"), "{err}");
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn malformed_json_and_missing_bundle_are_clear() {
        let b = bundle_with("{ not json");
        let err = load(b.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid ") && err.contains("config.json"),
            "{err}"
        );
        let err = load(Path::new("/nonexistent/bundle"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/bundle"), "{err}");
    }
}
