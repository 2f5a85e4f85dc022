//! The rest of `linux`: device nodes passed through (`--devN`), sysctls,
//! seccomp (compiled here for the init), and the fields Proxmox cannot give.

use serde_json::{Map, Value};

use super::check::{check_container_path, check_property_value, check_text, refuse_if_set};
use super::{field, TranslateError, Translator};

impl Translator<'_> {
    /// Every `linux` field but `resources`: namespaces and id maps
    /// (namespaces.rs), the guest's view of its mounts (mounts.rs), and the
    /// rest here.
    pub(super) fn linux(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        self.namespaces(l)?;
        self.idmaps(l)?;
        if let Some(devices) = l.get("devices").and_then(Value::as_array) {
            for (i, d) in devices.iter().enumerate() {
                self.device(i, d)?;
            }
        }
        if let Some(sysctl) = l.get("sysctl").and_then(Value::as_object) {
            let mut keys: Vec<_> = sysctl.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in keys {
                let f = format!("linux.sysctl.{k}");
                let val = val.as_str().ok_or_else(|| field(&f, "must be a string"))?;
                check_sysctl(&f, k)?;
                check_text(&f, val)?;
                self.plan.init.sysctl.insert(k.clone(), val.to_string());
            }
        }
        // Compiled here, on the host, so that a profile nexcage cannot apply
        // fails create by name; the init stacks it on LXC's own policy.
        if let Some(s) = l.get("seccomp").filter(|s| !s.is_null()) {
            let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(s.clone())
                .map_err(|e| field("linux.seccomp", e.to_string()))?;
            let filter = crate::bridge::seccomp::compile(&profile).map_err(|e| match e {
                crate::bridge::seccomp::SeccompError::Profile { field: f, message } => {
                    field(f, message)
                }
                other => field("linux.seccomp", other.to_string()),
            })?;
            self.plan.seccomp = Some(filter);
        }
        self.guest_paths(l)?;
        refuse_if_set(
            l,
            "linux.",
            "mountLabel",
            "SELinux is not available on Proxmox VE",
        )?;
        refuse_if_set(l, "linux.", "intelRdt", "Intel RDT is not supported")?;
        refuse_if_set(
            l,
            "linux.",
            "timeOffsets",
            "time namespaces are not supported by Proxmox containers",
        )?;
        // A device entry may be empty ({"eth1": {}}): its key alone asks for it.
        if l.get("netDevices")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(field("linux.netDevices", "moving host network devices into a guest is not supported; use org.proxmox.net0.* annotations"));
        }
        refuse_if_set(
            l,
            "linux.",
            "memoryPolicy",
            "NUMA memory policies are not supported",
        )?;
        if let Some(p) = l.get("personality").and_then(Value::as_object) {
            match p.get("domain").and_then(Value::as_str) {
                None | Some("LINUX") => {}
                Some(d) => {
                    return Err(field(
                        "linux.personality.domain",
                        format!("{d:?}: only LINUX is supported"),
                    ))
                }
            }
            refuse_if_set(
                p,
                "linux.personality.",
                "flags",
                "personality flags are not supported",
            )?;
        }
        // cgroupsPath: Proxmox places every guest under its own /lxc/<vmid>.
        let _ = l.get("cgroupsPath");
        Ok(())
    }

    /// A device node: Proxmox passes host devices through (`--devN`), so the
    /// host must have the same node at the same path.
    fn device(&mut self, i: usize, d: &Value) -> Result<(), TranslateError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let f = format!("linux.devices[{i}]");
        let path = d.get("path").and_then(Value::as_str).unwrap_or("");
        check_container_path(&format!("{f}.path"), path)?;
        check_property_value(&format!("{f}.path"), path)?;
        if lxc_provides_device(path) {
            return Ok(());
        }
        let typ = d.get("type").and_then(Value::as_str).unwrap_or("");
        let meta = std::fs::metadata(path).map_err(|e| {
            field(
                format!("{f}.path"),
                format!("{path}: the host has no such device to pass through ({e})"),
            )
        })?;
        let ft = meta.file_type();
        let host_type = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            ""
        };
        let want_type = if typ == "u" { "c" } else { typ };
        let (major, minor) = (libc_major(meta.rdev()), libc_minor(meta.rdev()));
        let num = |k: &str| d.get(k).and_then(Value::as_u64);
        if host_type != want_type || num("major") != Some(major) || num("minor") != Some(minor) {
            return Err(field(
                &f,
                format!(
                    "the host's {path} is not the device {typ} {:?}:{:?}",
                    num("major"),
                    num("minor")
                ),
            ));
        }
        let mut value = path.to_string();
        if let Some(mode) = num("fileMode") {
            value.push_str(&format!(",mode=0{:o}", mode & 0o7777));
        }
        for k in ["uid", "gid"] {
            if let Some(n) = num(k) {
                value.push_str(&format!(",{k}={n}"));
            }
        }
        let n = self
            .plan
            .options
            .iter()
            .filter(|(k, _)| k.starts_with("dev"))
            .count();
        self.plan.opt(format!("dev{n}"), value);
        Ok(())
    }
}

/// Device nodes every guest gets from LXC itself (autodev, its own devpts,
/// the `lxc.tty.max` consoles). podman --privileged lists all of the
/// host's; passing these through too would cover LXC's own (LXC then fails
/// to set up the guest's devpts over a bound /dev/ptmx).
fn lxc_provides_device(path: &str) -> bool {
    let tty_n = |p: &str| {
        p.strip_prefix("/dev/tty")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    };
    matches!(
        path,
        "/dev/null"
            | "/dev/zero"
            | "/dev/full"
            | "/dev/random"
            | "/dev/urandom"
            | "/dev/tty"
            | "/dev/console"
            | "/dev/ptmx"
    ) || path.starts_with("/dev/pts/")
        || tty_n(path)
}

/// Only sysctls that belong to the container's own namespaces (as runc
/// allows): LXC would otherwise change the Proxmox host itself.
fn check_sysctl(f: &str, k: &str) -> Result<(), TranslateError> {
    let well_formed = !k.is_empty()
        && k.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if !well_formed {
        return Err(field(f, "not a sysctl name (lowercase dotted names only)"));
    }
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if k.starts_with("net.") {
        return Ok(());
    }
    if IPC.contains(&k) || k.starts_with("fs.mqueue.") {
        // LXC writes sysctls after mounting /proc with proc:mixed, which
        // leaves only /proc/sys/net writable: lxc-start would fail.
        return Err(field(
            f,
            "a Proxmox guest's /proc/sys is read-only except net.*",
        ));
    }
    if matches!(k, "kernel.hostname" | "kernel.domainname") {
        return Err(field(f, "set hostname/domainname instead"));
    }
    Err(field(
        f,
        "not a namespaced sysctl: it would change the Proxmox host",
    ))
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::test_support::{spec, HOST};
    use super::*;
    use crate::backend::proxmox::settings::ProxmoxSettings;

    #[test]
    fn devices_lxc_makes_itself_are_not_passed_through() {
        // podman --privileged lists every host device, these among them.
        let dev = |path: &str, major: u64, minor: u64| serde_json::json!({"path": path, "type": "c", "major": major, "minor": minor});
        let devices = serde_json::json!({"linux": {"devices": [
            dev("/dev/ptmx", 5, 2), dev("/dev/null", 1, 3), dev("/dev/tty", 5, 0),
            dev("/dev/tty1", 4, 1), dev("/dev/console", 5, 1), dev("/dev/pts/0", 136, 0)]}});
        let p = plan(&spec(devices), &ProxmoxSettings::default(), HOST).unwrap();
        assert!(
            !p.options.iter().any(|(k, _)| k.starts_with("dev")),
            "{:?}",
            p.options
        );
        // Others still must exist on the host as the same node.
        let other = serde_json::json!({"linux": {"devices": [dev("/dev/nexcage-none", 1, 1)]}});
        assert!(plan(&spec(other), &ProxmoxSettings::default(), HOST).is_err());
        assert!(!lxc_provides_device("/dev/ttyS0"));
        assert!(!lxc_provides_device("/dev/tty_"));
    }
}
