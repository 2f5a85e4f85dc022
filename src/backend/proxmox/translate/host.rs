//! Facts about the node's host that the translation depends on: the memory
//! and swap "no limit" means, and which cgroup layout its LXC writes to.

use std::path::Path;

use super::resources::MIN_MEMORY_MIB;
use crate::backend::proxmox::settings::CgroupVersion;

/// What the node's host offers, for settings whose OCI meaning is "no limit",
/// and which cgroup keys its LXC understands.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    pub mem_total_mib: u64,
    pub swap_total_mib: u64,
    /// The host's layout, as detected (the configuration may override it).
    pub cgroup: CgroupVersion,
}

impl HostFacts {
    pub fn read() -> HostFacts {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        HostFacts {
            mem_total_mib: (kib("MemTotal:") / 1024).max(MIN_MEMORY_MIB),
            swap_total_mib: kib("SwapTotal:") / 1024,
            cgroup: detect_cgroup(Path::new("/sys/fs/cgroup")),
        }
    }
}

/// A unified hierarchy has cgroup.controllers at its root; a legacy or hybrid
/// one (controllers under /sys/fs/cgroup/<ctrl>) has not, and LXC then
/// ignores every `lxc.cgroup2.*` key.
pub fn detect_cgroup(root: &Path) -> CgroupVersion {
    if root.join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}
