//! The OCI features document (`nexcage features`): what this build really
//! implements, no more. Update it together with the translation.

use serde_json::{json, Value};

use crate::router;
use crate::state::OCI_VERSION;

/// Every mount option the translation accepts on some mount (bind, tmpfs,
/// mqueue or the container's standard filesystems); kept in step by hand
/// with translate/mounts.rs (bind_mount, kernel_fs_options).
pub const MOUNT_OPTIONS: &[&str] = &[
    "bind",
    "dev",
    "discard",
    "exec",
    "gid",
    "lazytime",
    "mode",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nosuid",
    "nr_inodes",
    "private",
    "rbind",
    "relatime",
    "ro",
    "rprivate",
    "rw",
    "size",
    "strictatime",
    "suid",
    "uid",
];

pub fn document() -> Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": crate::hooks::Kind::ALL.map(|k| k.name()),
        // Options a mount in config.json may carry (docs/translation.md).
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            // LXC gives every guest these; "user" when unprivileged.
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            // Applied to the process by the in-container init.
            "capabilities": crate::bridge::init::capabilities::capability_names(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            // Compiled at create, loaded by the init (docs/translation.md).
            "seccomp": {
                "enabled": true,
                "actions": crate::bridge::seccomp::ACTIONS,
                "operators": crate::bridge::seccomp::OPERATORS,
                "archs": crate::bridge::seccomp::ARCHS,
                "knownFlags": crate::bridge::seccomp::KNOWN_FLAGS,
                "supportedFlags": crate::bridge::seccomp::SUPPORTED_FLAGS
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false}
        },
        "annotations": annotations(),
    })
}

/// The backends, and per backend the annotations it reads
/// (`org.nexcage.<section>.annotations`).
fn annotations() -> Value {
    let mut a = serde_json::Map::new();
    a.insert(
        "org.nexcage.backends".into(),
        router::names().join(",").into(),
    );
    for reg in router::registry() {
        if !reg.annotations.is_empty() {
            a.insert(
                format!("org.nexcage.{}.annotations", reg.section),
                reg.annotations.join(",").into(),
            );
        }
    }
    Value::Object(a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_claims_nothing_unimplemented() {
        let d = super::document();
        assert_eq!(
            d["hooks"],
            serde_json::json!([
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ])
        );
        assert_eq!(d["linux"]["seccomp"]["enabled"], true);
        assert!(!d["linux"]["seccomp"]["actions"]
            .as_array()
            .unwrap()
            .contains(&"SCMP_ACT_NOTIFY".into()));
        assert_eq!(d["ociVersionMin"], "1.0.0");
        assert_eq!(d["linux"]["apparmor"]["enabled"], false);
        assert_eq!(d["linux"]["capabilities"].as_array().unwrap().len(), 41);
        assert!(d["mountOptions"]
            .as_array()
            .unwrap()
            .contains(&"nodev".into()));
    }
}
