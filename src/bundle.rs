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
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
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

/// The clients' configs are tens of KiB (a default seccomp profile is the
/// bulk); anything near this is not a container's config but a mistake or
/// an attempt to make every later command slow.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Kubernetes' bound on a pod's annotations (keys and values together);
/// they reach the runtime as the bundle's annotations.
pub const MAX_ANNOTATION_BYTES: usize = 256 << 10;

/// The hooks as JSON; each is a path, args, env and a timeout.
pub const MAX_HOOKS_BYTES: usize = 256 << 10;

/// config.json, refused unread beyond [`MAX_CONFIG_BYTES`].
fn read_bounded(path: &Path) -> Result<String, BundleError> {
    use std::io::Read;
    let read_err = |source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    // Reading one byte past the bound tells "at most" from "more", whatever
    // the file's size says (a fifo or a growing file has none that holds).
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(text)
}

/// config.json as oci-spec's Spec; a refusal names the field it is about
/// (`process.user.uid: invalid type: ...`), which serde alone leaves to a
/// line and column.
fn parse_spec(text: &str) -> Result<Spec, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let spec: Spec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            e.inner().to_string()
        } else {
            format!("{field}: {}", e.inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(spec)
}

pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let dir = std::fs::canonicalize(dir).map_err(|source| BundleError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join("config.json");
    let text = read_bounded(&config_path)?;
    let spec = parse_spec(&text).map_err(|message| BundleError::Parse {
        path: config_path.clone(),
        message,
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

    // Annotations and hooks are kept in state.json, which every later
    // command reads: their size is bounded so the record stays small.
    if let Some(a) = spec.annotations() {
        let bytes: usize = a.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_ANNOTATION_BYTES {
            return Err(field(
                "annotations",
                format!("{bytes} bytes in all, more than {MAX_ANNOTATION_BYTES}"),
            ));
        }
    }
    if let Some(h) = spec.hooks() {
        let bytes = serde_json::to_vec(h).map(|v| v.len()).unwrap_or(usize::MAX);
        if bytes > MAX_HOOKS_BYTES {
            return Err(field(
                "hooks",
                format!("{bytes} bytes in all, more than {MAX_HOOKS_BYTES}"),
            ));
        }
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
    refuse_host_paths(&rootfs).map_err(|m| field("root.path", m))?;

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

/// The kernel's own file systems, by statfs type: a template of one would
/// be a copy of the host's processes, devices or cgroups, not an image.
const KERNEL_FILE_SYSTEMS: &[(nix::sys::statfs::FsType, &str)] = {
    use nix::sys::statfs as f;
    &[
        (f::PROC_SUPER_MAGIC, "proc"),
        (f::SYSFS_MAGIC, "sysfs"),
        (f::CGROUP_SUPER_MAGIC, "cgroup"),
        (f::CGROUP2_SUPER_MAGIC, "cgroup2"),
        (f::DEVPTS_SUPER_MAGIC, "devpts"),
        (f::DEBUGFS_MAGIC, "debugfs"),
        (f::TRACEFS_MAGIC, "tracefs"),
        (f::SECURITYFS_MAGIC, "securityfs"),
        (f::BPF_FS_MAGIC, "bpf"),
        (f::NSFS_MAGIC, "nsfs"),
        (f::SELINUX_MAGIC, "selinuxfs"),
        (f::SMACK_MAGIC, "smackfs"),
        (f::HUGETLBFS_MAGIC, "hugetlbfs"),
        (f::RDTGROUP_SUPER_MAGIC, "resctrl"),
        (f::FsType(0x1980_0202), "mqueue"),
    ]
};

/// Where the host's kernel file systems are mounted: everything below them
/// is one, whatever else is mounted there (binfmt_misc, fusectl, ...).
const KERNEL_MOUNTS: &[&str] = &["/proc", "/sys"];

/// Refuses a rootfs that is the host's root directory (itself, or the same
/// directory reached another way: `..`, a symlink, a bind mount), or lies on
/// or under the host's kernel file systems. Both would be archived into a
/// template: the whole host, or its live kernel state.
fn refuse_host_paths(rootfs: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let shown = rootfs.display();
    let real = std::fs::canonicalize(rootfs).map_err(|e| format!("{shown}: {e}"))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{shown}: {e}"))?;
    // Our own root and pid 1's: they differ when nexcage runs chrooted or
    // in a mount namespace of its own, and either is the host's.
    for host_root in ["/", "/proc/1/root"] {
        if let Ok(h) = std::fs::metadata(host_root) {
            if (h.dev(), h.ino()) == (meta.dev(), meta.ino()) {
                return Err(format!("{shown} is the host's root directory"));
            }
        }
    }
    if let Some(top) = KERNEL_MOUNTS.iter().find(|t| real.starts_with(t)) {
        return Err(format!("{shown} is under the host's {top}"));
    }
    // /dev is devtmpfs, which statfs reports as tmpfs: it is known by its
    // device (a tmpfs mounted below it, /dev/shm, is an ordinary one).
    if let Ok(dev) = std::fs::metadata("/dev") {
        if real.starts_with("/dev") && dev.dev() == meta.dev() {
            return Err(format!("{shown} is under the host's /dev"));
        }
    }
    let fs = nix::sys::statfs::statfs(&real).map_err(|e| format!("{shown}: {e}"))?;
    if let Some((_, name)) = KERNEL_FILE_SYSTEMS
        .iter()
        .find(|(t, _)| *t == fs.filesystem_type())
    {
        return Err(format!("{shown} is on a {name} file system"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_its_field() {
        let mut v: serde_json::Value = serde_json::from_str(&minimal("1.0.0")).unwrap();
        v["process"]["user"]["uid"] = serde_json::json!("0");
        let e = parse_spec(&v.to_string()).unwrap_err();
        assert!(e.starts_with("process.user.uid: invalid type"), "{e}");
        let e = parse_spec(&format!("{} x", minimal("1.0.0"))).unwrap_err();
        assert!(e.contains("trailing characters"), "{e}");
    }

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

    fn with_root(path: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.0","root":{{"path":"{path}"}},"process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}}}}"#
        )
    }

    fn root_path_error(b: &tempfile::TempDir) -> String {
        let err = load(b.path()).unwrap_err().to_string();
        assert!(err.contains("config.json: root.path: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    }

    #[test]
    fn the_hosts_root_is_refused_however_it_is_named() {
        for path in ["/", "/.", "/usr/..", "../../../../../../../../../.."] {
            let b = bundle_with(&with_root(path));
            let err = root_path_error(&b);
            assert!(
                err.contains("is the host's root directory"),
                "{path}: {err}"
            );
        }
        // A symlink to it, and a bind mount of it.
        let b = bundle_with(&with_root("hostroot"));
        std::os::unix::fs::symlink("/", b.path().join("hostroot")).unwrap();
        assert!(root_path_error(&b).contains("host's root directory"));
        let b = bundle_with(&minimal("1.0.0"));
        let rootfs = b.path().join("rootfs");
        nix::mount::mount(
            Some("/"),
            &rootfs,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let err = load(b.path()).map(drop).map_err(|e| e.to_string());
        nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let err = err.unwrap_err();
        assert!(err.contains("host's root directory"), "{err}");
    }

    #[test]
    fn the_hosts_kernel_file_systems_are_refused() {
        for (path, want) in [
            ("/proc", "under the host's /proc"),
            ("/proc/self", "under the host's /proc"),
            ("/sys/fs/cgroup", "under the host's /sys"),
            ("/dev", "under the host's /dev"),
        ] {
            let b = bundle_with(&with_root(path));
            let err = root_path_error(&b);
            assert!(err.contains(want), "{path}: {err}");
        }
        // Mounted elsewhere, they are known by their type.
        for (fstype, want) in [("proc", "proc"), ("cgroup2", "cgroup2"), ("sysfs", "sysfs")] {
            let b = bundle_with(&minimal("1.0.0"));
            let rootfs = b.path().join("rootfs");
            nix::mount::mount(
                Some(fstype),
                &rootfs,
                Some(fstype),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            let err = load(b.path()).map(drop).map_err(|e| e.to_string());
            nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).unwrap();
            let err = err.unwrap_err();
            assert!(
                err.contains(&format!("is on a {want} file system")),
                "{fstype}: {err}"
            );
        }
        // An ordinary tmpfs below /dev is not /dev.
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::create_dir(shm.path().join("rootfs")).unwrap();
        std::fs::write(shm.path().join("config.json"), minimal("1.0.0")).unwrap();
        load(shm.path()).unwrap();
    }

    #[test]
    fn oversized_configs_and_annotations_are_refused() {
        let mut big: serde_json::Value = serde_json::from_str(&minimal("1.0.0")).unwrap();
        big["annotations"] = serde_json::json!({"x": "a".repeat(MAX_CONFIG_BYTES as usize)});
        let b = bundle_with(&big.to_string());
        let err = load(b.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: larger than {MAX_CONFIG_BYTES} bytes",
                b.path()
                    .canonicalize()
                    .unwrap()
                    .join("config.json")
                    .display()
            )
        );

        let mut many: serde_json::Value = serde_json::from_str(&minimal("1.0.0")).unwrap();
        let annotations: serde_json::Map<String, serde_json::Value> = (0..300)
            .map(|i| (format!("k{i}"), "v".repeat(1024).into()))
            .collect();
        many["annotations"] = annotations.into();
        let b = bundle_with(&many.to_string());
        let err = load(b.path()).unwrap_err().to_string();
        assert!(err.contains("config.json: annotations: "), "{err}");
        assert!(
            err.contains(&format!("more than {MAX_ANNOTATION_BYTES}")),
            "{err}"
        );

        let mut hooks: serde_json::Value = serde_json::from_str(&minimal("1.0.0")).unwrap();
        let one = serde_json::json!({"path": "/bin/true", "args": ["x".repeat(1024)]});
        hooks["hooks"] = serde_json::json!({"prestart": vec![one; 300]});
        let b = bundle_with(&hooks.to_string());
        let err = load(b.path()).unwrap_err().to_string();
        assert!(err.contains("config.json: hooks: "), "{err}");

        // Just within the bounds loads.
        let mut ok: serde_json::Value = serde_json::from_str(&minimal("1.0.0")).unwrap();
        ok["annotations"] = serde_json::json!({"k": "v".repeat(MAX_ANNOTATION_BYTES - 1)});
        let b = bundle_with(&ok.to_string());
        load(b.path()).unwrap();
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
