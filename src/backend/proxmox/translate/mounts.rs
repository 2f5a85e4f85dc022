//! `mounts`, and the guest's own view of its mounts (`root.readonly`,
//! `linux.rootfsPropagation`, masked and read-only paths): bind mounts as
//! Proxmox mount points (`--mpN`) or raw bind lines, tmpfs/mqueue as raw
//! lines, /dev and what lies below it rebuilt by the init.

use std::path::{Component, Path};

use serde_json::{Map, Value};

use super::check::{check_container_path, check_property_value, check_text, list, strings, unset};
use super::{conf_err, field, TranslateError, Translator};
use crate::backend::proxmox::conf::RawLine;
use crate::bridge::settings::{InitDev, InitDevMount};
use crate::bridge::MOUNT_POINT;

/// Host trees a bind mount may never expose, whatever `bind_allow` says: the
/// host's kernel interfaces, its boot files, the cluster configuration and
/// guest volumes.
const BIND_DENY: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/etc/pve",
    "/var/lib/vz",
    "/var/lib/lxc",
    "/run/nexcage",
    "/etc/nexcage",
];

impl Translator<'_> {
    /// rootfsPropagation and the masked and read-only paths: applied by the
    /// init inside the guest, after LXC has mounted everything.
    pub(super) fn guest_paths(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        if let Some(p) = l
            .get("rootfsPropagation")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            if !ROOT_PROPAGATIONS.contains(&p) {
                return Err(field(
                    "linux.rootfsPropagation",
                    format!("{p:?} is not a mount propagation"),
                ));
            }
            self.plan.init.root_propagation = Some(p.to_string());
        }
        for (k, target) in [("maskedPaths", 0), ("readonlyPaths", 1)] {
            for (i, p) in list(l.get(k)).iter().enumerate() {
                let f = format!("linux.{k}[{i}]");
                let s = p.as_str().ok_or_else(|| field(&f, "must be a string"))?;
                check_container_path(&f, s)?;
                if target == 0 {
                    self.plan.init.masked_paths.push(s.to_string());
                } else {
                    self.plan.init.readonly_paths.push(s.to_string());
                }
            }
        }
        Ok(())
    }

    pub(super) fn mounts(&mut self, mounts: &[Value]) -> Result<(), TranslateError> {
        let mut mp = 0;
        // A /dev tmpfs in the bundle means the init builds /dev, and with
        // it every tmpfs, mqueue and devpts mount below it, in this order.
        for (i, m) in mounts.iter().enumerate() {
            let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
            if s("destination") == "/dev" && s("type") == "tmpfs" {
                let f = format!("mounts[{i}].options");
                let opts = strings(m.get("options"));
                if opts.iter().any(|o| o == "bind" || o == "rbind") {
                    continue;
                }
                for o in &opts {
                    check_text(&f, o)?;
                }
                self.plan.init.dev = Some(InitDev {
                    source: fs_source(s("source"), "tmpfs"),
                    options: kernel_fs_options(&f, "tmpfs", &opts)?,
                    mounts: Vec::new(),
                });
            }
        }
        for (i, m) in mounts.iter().enumerate() {
            let f = format!("mounts[{i}]");
            let dst = m.get("destination").and_then(Value::as_str).unwrap_or("");
            check_container_path(&format!("{f}.destination"), dst)?;
            let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
            let opts = strings(m.get("options"));
            for o in &opts {
                check_text(&format!("{f}.options"), o)?;
            }
            if !unset(m.get("uidMappings")) || !unset(m.get("gidMappings")) {
                return Err(field(&f, "id-mapped mounts are not supported"));
            }
            let bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
            // Rootless specs bind the host's /sys where they cannot mount sysfs;
            // LXC gives the guest its own.
            let src = m.get("source").and_then(Value::as_str).unwrap_or("");
            if bind && src == dst && system_mount(dst, "sysfs").is_some() {
                continue;
            }
            if !bind {
                if let Some(handled) = system_mount(dst, typ) {
                    if handled {
                        if dst == "/dev/pts" {
                            if let Some(dev) = &mut self.plan.init.dev {
                                dev.mounts.push(InitDevMount {
                                    destination: dst.into(),
                                    fstype: "devpts".into(),
                                    source: "devpts".into(),
                                    options: Vec::new(),
                                });
                            }
                        }
                        continue;
                    }
                    return Err(field(
                        format!("{f}.type"),
                        format!("{typ:?} at {dst}: LXC sets up {dst} itself"),
                    ));
                }
            }
            if dst == MOUNT_POINT || dst.starts_with(&format!("{MOUNT_POINT}/")) {
                return Err(field(
                    format!("{f}.destination"),
                    "reserved for nexcage's process bridge",
                ));
            }
            self.check_destination(&format!("{f}.destination"), dst)?;
            let target = dst.trim_start_matches('/');
            if bind {
                mp += self.bind_mount(&f, m, dst, &opts, mp)?;
            } else if matches!(typ, "tmpfs" | "mqueue") {
                let mut o = kernel_fs_options(&format!("{f}.options"), typ, &opts)?;
                let source = fs_source(src, typ);
                if let Some(dev) = self
                    .plan
                    .init
                    .dev
                    .as_mut()
                    .filter(|_| dst.starts_with("/dev/"))
                {
                    dev.mounts.push(InitDevMount {
                        destination: dst.into(),
                        fstype: typ.into(),
                        source,
                        options: o,
                    });
                    continue;
                }
                o.push("create=dir".into());
                let line = RawLine::fs_mount(typ, &source, target, &o).map_err(conf_err(&f))?;
                self.plan.raw_lines.push(line);
            } else {
                return Err(field(format!("{f}.type"), format!("{typ:?} mounts are not supported (only bind, tmpfs, mqueue and the container's standard filesystems)")));
            }
        }
        Ok(())
    }

    /// A directory becomes `--mpN` (shown and backed up by Proxmox); a file,
    /// which Proxmox mount points cannot be, a raw bind line. Returns how
    /// many mount points it used.
    fn bind_mount(
        &mut self,
        f: &str,
        m: &Value,
        dst: &str,
        opts: &[String],
        mp: usize,
    ) -> Result<usize, TranslateError> {
        let src = m.get("source").and_then(Value::as_str).unwrap_or("");
        let sf = format!("{f}.source");
        check_text(&sf, src)?;
        check_property_value(&sf, src)?;
        let src_path = Path::new(src);
        if !src_path.is_absolute()
            || src_path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(field(
                &sf,
                format!("{src:?} must be an absolute host path without '.' or '..'"),
            ));
        }
        let real =
            std::fs::canonicalize(src_path).map_err(|e| field(&sf, format!("{src}: {e}")))?;
        self.check_bind_source(&sf, &real)?;
        let real_str = real.to_str().ok_or_else(|| field(&sf, "not UTF-8"))?;
        check_property_value(&sf, real_str)?;
        let mut ro = false;
        let mut extra: Vec<&str> = Vec::new();
        for o in opts {
            match o.as_str() {
                "bind" | "rbind" | "rw" | "private" | "rprivate" | "relatime" | "dev" | "exec"
                | "suid" => {}
                "ro" => ro = true,
                "nodev" | "noexec" | "nosuid" | "noatime" | "lazytime" | "discard" => extra.push(o),
                other => {
                    return Err(field(
                        format!("{f}.options"),
                        format!("{other:?} is not a bind mount option Proxmox supports"),
                    ))
                }
            }
        }
        if real.is_dir() {
            if mp > 255 {
                return Err(field(f, "more than 256 mount points"));
            }
            let mut value = format!("{real_str},mp={dst}");
            if ro {
                value.push_str(",ro=1");
            }
            if !extra.is_empty() {
                value.push_str(&format!(",mountoptions={}", extra.join(";")));
            }
            self.plan.opt(format!("mp{mp}"), value);
            Ok(1)
        } else {
            let mut o: Vec<&str> = vec!["create=file"];
            if ro {
                o.push("ro");
            }
            o.extend(extra);
            let line =
                RawLine::bind_mount(&real, dst.trim_start_matches('/'), &o).map_err(conf_err(f))?;
            self.plan.raw_lines.push(line);
            Ok(0)
        }
    }

    fn check_bind_source(&self, f: &str, real: &Path) -> Result<(), TranslateError> {
        let under = |p: &Path, prefix: &Path| p.starts_with(prefix);
        if real == Path::new("/") || BIND_DENY.iter().any(|d| under(real, Path::new(d))) {
            return Err(field(
                f,
                format!(
                    "{}: host system paths cannot be bind-mounted",
                    real.display()
                ),
            ));
        }
        let allow = &self.settings.bind_allow;
        if !allow.is_empty() && !allow.iter().any(|a| under(real, a)) {
            return Err(field(
                f,
                format!("{} is outside this node's bind_allow", real.display()),
            ));
        }
        Ok(())
    }

    /// No component of the destination inside the rootfs may be a symlink:
    /// LXC and Proxmox would follow it, possibly out of the container.
    fn check_destination(&self, f: &str, dst: &str) -> Result<(), TranslateError> {
        let Some(root) = self.rootfs else {
            return Ok(());
        };
        let mut p = root.to_path_buf();
        for c in Path::new(dst).components().skip(1) {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(field(
                        f,
                        format!(
                            "{dst}: {} is a symlink in the rootfs",
                            p.strip_prefix(root).unwrap_or(&p).display()
                        ),
                    ));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// The filesystems every container gets from LXC itself (lxc.mount.auto,
/// autodev, its own devpts): Some(true) when `dst` is one of them and `typ`
/// is what it should be, Some(false) when the type is wrong, None otherwise.
fn system_mount(dst: &str, typ: &str) -> Option<bool> {
    let ok = match dst {
        "/proc" => typ == "proc",
        "/sys" => typ == "sysfs",
        "/sys/fs/cgroup" => matches!(typ, "cgroup" | "cgroup2"),
        "/dev" => matches!(typ, "tmpfs" | "devtmpfs"),
        "/dev/pts" => typ == "devpts",
        _ => return None,
    };
    Some(ok)
}

/// The values linux.rootfsPropagation may take (runc's).
const ROOT_PROPAGATIONS: &[&str] = &[
    "private",
    "rprivate",
    "slave",
    "rslave",
    "shared",
    "rshared",
    "unbindable",
    "runbindable",
];

/// The source a tmpfs or mqueue mount shows in the guest's mount table: the
/// bundle's when it is a plain name (`shm`, `tmpfs`, `mqueue`), otherwise
/// the type's name, as there is no device behind it to name.
fn fs_source(source: &str, typ: &str) -> String {
    if crate::backend::proxmox::conf::is_plain_fs_source(source) {
        source.to_string()
    } else {
        typ.to_string()
    }
}

/// Options a tmpfs/mqueue mount may carry, validated one by one.
fn kernel_fs_options(f: &str, typ: &str, opts: &[String]) -> Result<Vec<String>, TranslateError> {
    let mut out = Vec::new();
    for o in opts {
        let (k, v) = o
            .split_once('=')
            .map_or((o.as_str(), None), |(k, v)| (k, Some(v)));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        // podman --privileged marks its tmpfs mounts rprivate: a new mount in
        // the guest's own mount namespace receives no events from the host
        // either way, so these need no option of their own.
        if v.is_none() && matches!(k, "private" | "rprivate" | "slave" | "rslave") {
            continue;
        }
        let ok = match (k, v) {
            (
                "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "noatime" | "relatime"
                | "strictatime" | "nodiratime" | "suid" | "dev" | "exec",
                None,
            ) => true,
            ("mode", Some(m)) if typ == "tmpfs" => {
                (3..=4).contains(&m.len()) && m.bytes().all(|c| (b'0'..=b'7').contains(&c))
            }
            ("size" | "nr_inodes", Some(s)) if typ == "tmpfs" => {
                let n = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
                digits(n) && s.len() - n.len() <= 1
            }
            ("uid" | "gid", Some(n)) if typ == "tmpfs" => digits(n),
            _ => false,
        };
        if !ok {
            return Err(field(
                f,
                format!("{o:?} is not a {typ} option nexcage supports"),
            ));
        }
        out.push(o.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::test_support::{spec, HOST};
    use super::*;
    use crate::backend::proxmox::settings::ProxmoxSettings;

    #[test]
    fn readonly_mounts_get_apparmor_rules_or_are_refused_by_name() {
        let p = plan(
            &spec(serde_json::json!({"root": {"readonly": true},
                "linux": {"readonlyPaths": ["/etc", "/proc/bus"]}})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        let raw: Vec<String> = p.raw_lines.iter().map(RawLine::render).collect();
        let aa: Vec<&String> = raw
            .iter()
            .filter(|l| l.starts_with("lxc.apparmor.raw"))
            .collect();
        assert_eq!(aa.len(), 3, "{raw:?}");
        assert!(aa.iter().all(|l| !l.contains("/etc")), "{aa:?}");
        for (path, text) in [
            ("/proc", "denies mounts on /proc itself"),
            ("/sys/a*b", "can be named in an AppArmor rule"),
        ] {
            let e = plan(
                &spec(serde_json::json!({"linux": {"readonlyPaths": ["/etc", path]}})),
                &ProxmoxSettings::default(),
                HOST,
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("linux.readonlyPaths[1]") && e.contains(text),
                "{e}"
            );
        }
    }

    #[test]
    fn propagation_flags_on_a_tmpfs_are_accepted_and_not_written() {
        // As podman --privileged writes its tmpfs mounts.
        let tmpfs = |opt: &str| {
            spec(
                serde_json::json!({"mounts": [{"destination": "/run", "type": "tmpfs",
                "source": "tmpfs", "options": ["nosuid", opt, "mode=755"]}]}),
            )
        };
        let p = plan(&tmpfs("rprivate"), &ProxmoxSettings::default(), HOST).unwrap();
        let raw: Vec<String> = p.raw_lines.iter().map(RawLine::render).collect();
        assert!(
            raw.contains(&"lxc.mount.entry: tmpfs run tmpfs nosuid,mode=755,create=dir 0 0".into()),
            "{raw:?}"
        );
        // Sharing with the host is not something a guest's mount can do.
        assert!(plan(&tmpfs("rshared"), &ProxmoxSettings::default(), HOST).is_err());
    }
}
