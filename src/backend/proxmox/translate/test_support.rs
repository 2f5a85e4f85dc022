//! What the section tests share: a minimal bundle to patch and a host.

use oci_spec::runtime::Spec;

use super::{HostFacts, PctPlan};
use crate::backend::proxmox::settings::CgroupVersion;

pub(super) const HOST: HostFacts = HostFacts {
    mem_total_mib: 24000,
    swap_total_mib: 0,
    cgroup: CgroupVersion::V1,
};

pub(super) fn spec(json: serde_json::Value) -> Spec {
    let mut base = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
    });
    merge(&mut base, json);
    serde_json::from_value(base).unwrap()
}

pub(super) fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub(super) fn opt<'a>(p: &'a PctPlan, k: &str) -> Option<&'a str> {
    p.options
        .iter()
        .find(|(n, _)| *n == k)
        .map(|(_, v)| v.as_str())
}
