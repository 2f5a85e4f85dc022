//! process.capabilities: converted and checked against the guest's bounding
//! set before fork, applied after setuid.

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::Process;

use super::error::InitError;

/// The five OCI capability sets, limited to what this kernel knows (others
/// cannot be set, and runc skips them too). Built before fork so that
/// applying them allocates nothing after a seccomp filter is loaded.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Caps {
    /// Capabilities to drop from the bounding set (all known ones not
    /// listed), by number.
    pub(super) drop_bounding: Vec<Capability>,
    pub(super) effective: CapsHashSet,
    pub(super) permitted: CapsHashSet,
    pub(super) inheritable: CapsHashSet,
    pub(super) ambient: Vec<Capability>,
}

/// The capability names nexcage can apply (for `nexcage features`), in
/// kernel order.
pub fn capability_names() -> Vec<String> {
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    all.iter().map(|c| c.to_string()).collect()
}

fn cap_from_name(name: &str) -> Result<Capability, InitError> {
    name.parse()
        .map_err(|_| InitError::UnknownCapability(name.to_string()))
}

impl Caps {
    pub(super) fn from_process(p: &Process) -> Result<Option<Caps>, InitError> {
        let Some(c) = p.capabilities() else {
            return Ok(None);
        };
        // Those the kernel does not know (PR_CAPBSET_READ says EINVAL).
        let supported = caps::runtime::thread_all_supported();
        // oci-spec's names are its serde names ("CAP_CHOWN").
        let list = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut v: Vec<Capability> = Vec::new();
            for cap in set.iter().flatten() {
                let name = serde_json::to_value(cap)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let cap = cap_from_name(&name)?;
                if supported.contains(&cap) {
                    v.push(cap);
                }
            }
            v.sort_by_key(|c| c.index());
            v.dedup();
            Ok::<_, InitError>(v)
        };
        let set = |v: &[Capability]| v.iter().copied().collect::<CapsHashSet>();
        let bounding = list(c.bounding())?;
        let effective = list(c.effective())?;
        let permitted = list(c.permitted())?;
        let inheritable = list(c.inheritable())?;
        let ambient = list(c.ambient())?;
        // The spec makes a capability that cannot be granted an error. A
        // guest never holds what Proxmox drops (lxc.cap.drop: sys_module,
        // sys_time, mac_*...), so say which, instead of capset's EPERM.
        let mut wanted: Vec<Capability> = [&effective, &permitted, &inheritable, &ambient]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        wanted.sort_by_key(|c| c.index());
        wanted.dedup();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|&&c| !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false))
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(InitError::CapabilitiesUnavailable(missing.join(", ")));
        }
        let mut drop_bounding: Vec<Capability> = supported
            .into_iter()
            .filter(|c| !bounding.contains(c))
            .collect();
        drop_bounding.sort_by_key(|c| c.index());
        Ok(Some(Caps {
            drop_bounding,
            effective: set(&effective),
            permitted: set(&permitted),
            inheritable: set(&inheritable),
            ambient,
        }))
    }
}

/// The inheritable, effective and permitted sets, then the ambient set,
/// whose members must already be permitted and inheritable. One capset per
/// set (the caps crate's way), in the order that checks each against the
/// same sets a single capset would: inheritable first, while the old
/// permitted set (and, for root, CAP_SETPCAP) still stands; effective
/// before permitted, so that effective stays within permitted throughout.
pub(super) fn set_caps(c: &Caps) -> Result<(), InitError> {
    caps::set(None, CapSet::Inheritable, &c.inheritable)
        .map_err(InitError::caps("set capabilities"))?;
    caps::set(None, CapSet::Effective, &c.effective)
        .map_err(InitError::caps("set capabilities"))?;
    caps::set(None, CapSet::Permitted, &c.permitted)
        .map_err(InitError::caps("set capabilities"))?;
    caps::clear(None, CapSet::Ambient).map_err(InitError::caps("set capabilities"))?;
    for &cap in &c.ambient {
        caps::raise(None, CapSet::Ambient, cap).map_err(InitError::caps("set capabilities"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::init::process::Prepared;

    #[test]
    fn capabilities_are_converted_before_fork() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}, "oomScoreAdj": -17,
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "inheritable": ["CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_NET_BIND_SERVICE"]
            }
        }))
        .unwrap();
        let prep = Prepared::from_process(&p).unwrap();
        let c = prep.caps.unwrap();
        use Capability::*;
        let set = |v: &[Capability]| v.iter().copied().collect::<CapsHashSet>();
        assert_eq!(c.effective, set(&[CAP_CHOWN, CAP_KILL]));
        assert_eq!(
            c.permitted,
            set(&[CAP_CHOWN, CAP_KILL, CAP_NET_BIND_SERVICE])
        );
        assert_eq!(c.inheritable, set(&[CAP_NET_BIND_SERVICE]));
        assert_eq!(c.ambient, [CAP_NET_BIND_SERVICE]);
        assert!(!c.drop_bounding.contains(&CAP_CHOWN) && c.drop_bounding.contains(&CAP_SYS_ADMIN));
        assert!(c
            .drop_bounding
            .windows(2)
            .all(|w| w[0].index() < w[1].index()));
        assert_eq!(prep.oom_score_adj.as_deref(), Some(&b"-17"[..]));
        assert_eq!(cap_from_name("CAP_SYS_ADMIN").unwrap().index(), 21);
        assert_eq!(cap_from_name("CAP_CHECKPOINT_RESTORE").unwrap().index(), 40);
        assert_eq!(
            cap_from_name("CAP_BOGUS").unwrap_err().to_string(),
            "unknown capability CAP_BOGUS"
        );
        let names = capability_names();
        assert_eq!(names.len(), 41);
        assert_eq!(
            (names[0].as_str(), names[21].as_str()),
            ("CAP_CHOWN", "CAP_SYS_ADMIN")
        );
        let none: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert!(Prepared::from_process(&none).unwrap().caps.is_none());
    }
}
