//! The OCI features document (`nexcage features`): what this build really
//! implements, no more. Update it together with the translation.

use serde_json::{json, Value};

use crate::lifecycle::OCI_VERSION;
use crate::router::BACKENDS;

pub fn document() -> Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        // OCI hooks are not run yet.
        "hooks": [],
        // config.json mounts are not translated yet.
        "mountOptions": [],
        "linux": {
            // LXC gives every guest these; "user" when unprivileged.
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false}
        },
        "annotations": {
            "org.nexcage.backends": BACKENDS.join(","),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_claims_nothing_unimplemented() {
        let d = super::document();
        assert_eq!(d["hooks"], serde_json::json!([]));
        assert_eq!(d["linux"]["seccomp"]["enabled"], false);
        assert_eq!(d["ociVersionMin"], "1.0.0");
    }
}
