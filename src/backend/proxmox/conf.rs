//! Raw `lxc.*` lines in `<vmid>.conf`. Proxmox has no API for them, so they
//! are added to the file; every key and value is validated first, because one
//! line is one setting and a forged line could mount or run anything.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("refusing raw LXC key {0:?}")]
    BadKey(String),
    #[error("refusing value for {key}: {reason}")]
    BadValue { key: String, reason: &'static str },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("can't lock file '{0}' - got timeout")]
    LockTimeout(PathBuf),
}

/// One validated `lxc.key: value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    key: String,
    value: String,
}

/// Keys Proxmox refuses because they would bypass its own rootfs handling.
const FORBIDDEN_KEYS: &[&str] = &["lxc.rootfs.path", "lxc.rootfs.options"];

impl RawLine {
    pub fn new(key: &str, value: &str) -> Result<RawLine, ConfError> {
        let valid_key = key.starts_with("lxc.")
            && key.len() > 4
            && key.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            })
            && !key.ends_with('.')
            && !key.contains("..");
        if !valid_key || FORBIDDEN_KEYS.contains(&key) {
            return Err(ConfError::BadKey(key.to_string()));
        }
        check_value(key, value)?;
        Ok(RawLine {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// `lxc.mount.entry` for a bind mount of a host path at a path relative to
    /// the container's root. Fields are separated by blanks, so neither path
    /// may hold any.
    pub fn bind_mount(source: &Path, target: &str, options: &[&str]) -> Result<RawLine, ConfError> {
        let key = "lxc.mount.entry";
        let bad = |reason| ConfError::BadValue {
            key: key.into(),
            reason,
        };
        let source = source.to_str().ok_or_else(|| bad("source is not UTF-8"))?;
        if !source.starts_with('/') {
            return Err(bad("source must be an absolute path"));
        }
        if source
            .bytes()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(bad("paths may not contain blanks"));
        }
        if source.split('/').any(|c| c == "..") {
            return Err(bad("paths may not contain '..'"));
        }
        check_mount_target(target).map_err(bad)?;
        check_mount_options(options.iter().copied()).map_err(bad)?;
        let mut opts = vec!["bind"];
        opts.extend_from_slice(options);
        RawLine::new(
            key,
            &format!("{source} {target} none {} 0 0", opts.join(",")),
        )
    }

    /// `lxc.mount.entry` for a kernel filesystem (tmpfs, mqueue) that has no
    /// host source. The fstab fields are blank-separated and the options
    /// comma-separated, so none of them may hold blanks, commas in an
    /// option, or anything but a plain relative target.
    /// `source` is the name the guest's mount table shows (runc's default
    /// spec names /dev/shm's tmpfs `shm`); it must be a plain word.
    pub fn fs_mount(
        fstype: &str,
        source: &str,
        target: &str,
        options: &[String],
    ) -> Result<RawLine, ConfError> {
        let key = "lxc.mount.entry";
        let bad = |reason| ConfError::BadValue {
            key: key.into(),
            reason,
        };
        if !matches!(fstype, "tmpfs" | "mqueue") {
            return Err(bad("only tmpfs and mqueue mounts have no host source"));
        }
        if !is_plain_fs_source(source) {
            return Err(bad("a tmpfs or mqueue source must be a plain name"));
        }
        check_mount_target(target).map_err(bad)?;
        check_mount_options(options.iter().map(String::as_str)).map_err(bad)?;
        let opts = if options.is_empty() {
            "defaults".to_string()
        } else {
            options.join(",")
        };
        RawLine::new(key, &format!("{source} {target} {fstype} {opts} 0 0"))
    }

    /// The line as Proxmox writes it in `<vmid>.conf`.
    pub fn render(&self) -> String {
        format!("{}: {}", self.key, self.value)
    }
}

/// A source name for a filesystem without a device (tmpfs, mqueue): one
/// fstab field that neither LXC nor the kernel reads as a path or option.
pub fn is_plain_fs_source(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// An fstab target: relative to the container root, one plain path whose
/// components are neither `.` nor `..`, with no blank that would split the
/// fstab fields.
fn check_mount_target(target: &str) -> Result<(), &'static str> {
    if target.starts_with('/') || target.is_empty() {
        return Err("target must be relative to the container root");
    }
    if target
        .bytes()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err("paths may not contain blanks");
    }
    if target.split('/').any(|c| c == ".." || c == ".") {
        return Err("paths may not contain '..'");
    }
    Ok(())
}

/// Options are comma-separated in one fstab field: each is a plain word,
/// optionally `key=value`.
fn check_mount_options<'a>(options: impl IntoIterator<Item = &'a str>) -> Result<(), &'static str> {
    for o in options {
        if o.is_empty()
            || !o
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"=_-".contains(&c))
        {
            return Err("invalid mount option");
        }
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), ConfError> {
    let bad = |reason| ConfError::BadValue {
        key: key.to_string(),
        reason,
    };
    if value.bytes().any(|c| c.is_ascii_control()) {
        return Err(bad(
            "control characters (newline, NUL, ...) are not allowed",
        ));
    }
    if value.trim() != value {
        return Err(bad("leading or trailing blanks would be lost"));
    }
    if value.is_empty() {
        return Err(bad("empty"));
    }
    Ok(())
}

/// Add `lines` to `<vmid>.conf` under pct's own config lock, keeping
/// Proxmox's layout: raw lines after the `key: value` lines and before any
/// `[snapshot]` section. The file is replaced atomically.
pub fn append(conf: &Path, lock_dir: &Path, vmid: u32, lines: &[RawLine]) -> Result<(), ConfError> {
    let _lock = lock_config(lock_dir, vmid)?;
    let text = fs::read_to_string(conf).map_err(|source| ConfError::Io {
        what: "read",
        path: conf.to_path_buf(),
        source,
    })?;
    let updated = insert_raw_lines(&text, lines);
    write_atomic(conf, updated.as_bytes(), 0o640).map_err(|e| ConfError::Io {
        what: "write",
        path: conf.to_path_buf(),
        source: e.into_io(),
    })
}

fn insert_raw_lines(text: &str, lines: &[RawLine]) -> String {
    let (main, sections) = match text.find("\n[") {
        Some(i) => text.split_at(i + 1),
        None => (text, ""),
    };
    let mut out = String::with_capacity(text.len() + lines.len() * 64);
    out.push_str(main);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for l in lines {
        out.push_str(&l.render());
        out.push('\n');
    }
    if !sections.is_empty() {
        out.push('\n');
        out.push_str(sections.trim_start_matches('\n'));
    }
    out
}

/// pct's per-guest lock: `<lock_dir>/pve-config-<vmid>.lock`.
fn lock_config(lock_dir: &Path, vmid: u32) -> Result<Flock<File>, ConfError> {
    fs::create_dir_all(lock_dir).map_err(|source| ConfError::Io {
        what: "create",
        path: lock_dir.to_path_buf(),
        source,
    })?;
    let path = lock_dir.join(format!("pve-config-{vmid}.lock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ConfError::Io {
            what: "open",
            path: path.clone(),
            source,
        })?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, _)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return Err(ConfError::LockTimeout(path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_plain_lxc_keys() {
        assert!(RawLine::new("lxc.init.cmd", "/x init").is_ok());
        for bad in [
            "lxc",
            "lxc.",
            "lxc.Init.cmd",
            "lxc.init.cmd: x\nlxc.hook.pre",
            "lxc.init cmd",
            "lxc.a=b",
            "lxc.a:b",
            "lxc..x",
            "lxc.rootfs.path",
            "lxc.rootfs.options",
            "memory",
        ] {
            assert!(RawLine::new(bad, "v").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_cannot_forge_a_second_line() {
        for bad in [
            "a\nlxc.hook.pre: /evil",
            "a\rb",
            "a\0b",
            "a\tb",
            " a",
            "a ",
            "",
        ] {
            assert!(RawLine::new("lxc.init.cmd", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bind_mount_lines_are_fixed_format() {
        let l = RawLine::bind_mount(
            Path::new("/run/nexcage/c1/bridge"),
            ".nexcage",
            &["ro", "create=dir"],
        )
        .unwrap();
        assert_eq!(
            l.render(),
            "lxc.mount.entry: /run/nexcage/c1/bridge .nexcage none bind,ro,create=dir 0 0"
        );
        for (src, dst) in [
            ("relative", ".x"),
            ("/a b", ".x"),
            ("/a", "/abs"),
            ("/a/../b", ".x"),
            ("/a", "x/../../y"),
            ("/a\n", ".x"),
        ] {
            assert!(
                RawLine::bind_mount(Path::new(src), dst, &[]).is_err(),
                "{src:?} {dst:?}"
            );
        }
        assert!(RawLine::bind_mount(Path::new("/a"), ".x", &["ro,rw"]).is_err());
    }

    #[test]
    fn kernel_fs_mount_lines_are_fixed_format() {
        let l = RawLine::fs_mount(
            "tmpfs",
            "tmpfs",
            "run",
            &["nosuid".into(), "size=65536k".into()],
        )
        .unwrap();
        assert_eq!(
            l.render(),
            "lxc.mount.entry: tmpfs run tmpfs nosuid,size=65536k 0 0"
        );
        let shm = RawLine::fs_mount("tmpfs", "shm", "dev/shm", &[]).unwrap();
        assert_eq!(
            shm.render(),
            "lxc.mount.entry: shm dev/shm tmpfs defaults 0 0"
        );
        for source in ["", "/dev/shm", "a b", "-o", "x,y", ".", "a\nb", "a=b"] {
            assert!(
                RawLine::fs_mount("tmpfs", source, "x", &[]).is_err(),
                "{source:?}"
            );
        }

        for (t, d, o) in [
            ("proc", "x", ""),
            ("tmpfs", "/abs", ""),
            ("tmpfs", "a b", ""),
            ("tmpfs", "a/../../b", ""),
            ("tmpfs", "x", "a,b"),
            ("tmpfs", "x", "a\nlxc.hook.pre-start=/evil"),
        ] {
            let opts: Vec<String> = if o.is_empty() { vec![] } else { vec![o.into()] };
            assert!(
                RawLine::fs_mount(t, t, d, &opts).is_err(),
                "{t} {d:?} {o:?}"
            );
        }
    }

    #[test]
    fn raw_lines_go_before_snapshot_sections() {
        let line = RawLine::new("lxc.init.cmd", "/.nexcage/init init").unwrap();
        assert_eq!(
            insert_raw_lines("arch: amd64\nmemory: 512\n", std::slice::from_ref(&line)),
            "arch: amd64\nmemory: 512\nlxc.init.cmd: /.nexcage/init init\n"
        );
        assert_eq!(
            insert_raw_lines(
                "arch: amd64\n\n[snap1]\narch: amd64\n",
                std::slice::from_ref(&line)
            ),
            "arch: amd64\n\nlxc.init.cmd: /.nexcage/init init\n\n[snap1]\narch: amd64\n"
        );
    }

    #[test]
    fn append_rewrites_the_file_under_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("150.conf");
        fs::write(&conf, "hostname: a\n").unwrap();
        let lines = [RawLine::new("lxc.init.cmd", "/.nexcage/init init").unwrap()];
        append(&conf, &tmp.path().join("lock"), 150, &lines).unwrap();
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            "hostname: a\nlxc.init.cmd: /.nexcage/init init\n"
        );
        assert!(tmp.path().join("lock/pve-config-150.lock").exists());
    }
}
