//! config.json -> `pct create` options. Proxmox-native settings first, so the
//! Proxmox UI and backups show the truth; the process itself never travels
//! through the LXC config but as JSON to the in-container init (see bridge).
//! Fields without a translation yet are refused here rather than dropped.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::config::{ProxmoxSettings, UnprivilegedPolicy};

const MIB: u64 = 1024 * 1024;
/// pct refuses less memory than this.
const MIN_MEMORY_MIB: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("config.json: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> TranslateError {
    TranslateError::Field {
        field,
        message: message.into(),
    }
}

/// What the node's host offers, for settings whose OCI meaning is "no limit".
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    pub mem_total_mib: u64,
    pub swap_total_mib: u64,
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
        }
    }
}

/// The `pct create` options for one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PctPlan {
    /// `--name value` pairs, in a fixed order (golden files compare them).
    pub options: Vec<(&'static str, String)>,
    pub unprivileged: bool,
}

impl PctPlan {
    /// The complete argument vector for `pct create`.
    pub fn create_args(&self, vmid: u32, volid: &str, storage: &str) -> Vec<String> {
        let mut args = vec!["create".to_string(), vmid.to_string(), volid.to_string()];
        for (k, v) in &self.options {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        args.push("--storage".into());
        args.push(storage.into());
        args
    }
}

pub fn plan(
    spec: &Spec,
    settings: &ProxmoxSettings,
    host: HostFacts,
) -> Result<PctPlan, TranslateError> {
    let mut options: Vec<(&'static str, String)> = Vec::new();

    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !is_dns_name(h) {
            return Err(field("hostname", format!("{h:?} is not a valid DNS name")));
        }
        options.push(("hostname", h.to_string()));
    }

    let (memory, swap) = memory_mib(spec, host)?;
    options.push(("memory", memory.to_string()));
    options.push(("swap", swap.to_string()));
    // nexcage's init is the container's PID 1; Proxmox must not touch the
    // guest's files as it would for a distribution it manages.
    options.push(("ostype", "unmanaged".into()));

    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let has = |t: LinuxNamespaceType| namespaces.is_some_and(|ns| ns.iter().any(|n| n.typ() == t));
    let unprivileged = match settings.unprivileged {
        UnprivilegedPolicy::Always => true,
        UnprivilegedPolicy::Auto => has(LinuxNamespaceType::User),
    };
    options.push(("unprivileged", if unprivileged { "1" } else { "0" }.into()));

    let net = namespaces.and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    match net {
        None => {
            return Err(field(
                "linux.namespaces",
                "sharing the host's network namespace is not possible for a Proxmox container; add a network namespace",
            ))
        }
        Some(n) if n.path().is_some() => {
            return Err(field(
                "linux.namespaces",
                "joining an existing network namespace by path is not supported yet",
            ))
        }
        Some(_) => options.push(("net0", format!("name=eth0,bridge={}", settings.bridge))),
    }

    if let Some(p) = spec.process() {
        if p.terminal().unwrap_or(false) {
            return Err(field(
                "process.terminal",
                "terminal mode is not supported yet",
            ));
        }
    }
    Ok(PctPlan {
        options,
        unprivileged,
    })
}

/// OCI gives bytes (and -1 or nothing for "no limit"); pct takes MiB, at
/// least 16. Without a limit the container may use what the host has.
fn memory_mib(spec: &Spec, host: HostFacts) -> Result<(u64, u64), TranslateError> {
    let mem = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref());
    let limit = mem.and_then(|m| m.limit()).filter(|&l| l > 0);
    let Some(limit) = limit else {
        return Ok((host.mem_total_mib, host.swap_total_mib));
    };
    let limit = limit as u64;
    let memory = limit.div_ceil(MIB).max(MIN_MEMORY_MIB);
    // OCI's swap is memory+swap; Proxmox's is swap alone.
    let swap = match mem.and_then(|m| m.swap()) {
        Some(s) if s > 0 => {
            let s = s as u64;
            if s < limit {
                return Err(field(
                    "linux.resources.memory.swap",
                    format!("{s} is below the memory limit {limit}"),
                ));
            }
            (s - limit).div_ceil(MIB)
        }
        Some(-1) => host.swap_total_mib,
        _ => 0,
    };
    Ok((memory, swap))
}

/// Proxmox's hostname format: DNS labels of letters, digits and '-'.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 255
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostFacts = HostFacts {
        mem_total_mib: 24000,
        swap_total_mib: 0,
    };

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
        });
        merge(&mut base, json);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn opt<'a>(p: &'a PctPlan, k: &str) -> Option<&'a str> {
        p.options
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn minimal_bundle_gives_unmanaged_privileged_guest_on_the_bridge() {
        let p = plan(
            &spec(serde_json::json!({})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        assert_eq!(
            p.create_args(150, "local:vztmpl/t.tar.zst", "local"),
            [
                "create",
                "150",
                "local:vztmpl/t.tar.zst",
                "--memory",
                "24000",
                "--swap",
                "0",
                "--ostype",
                "unmanaged",
                "--unprivileged",
                "0",
                "--net0",
                "name=eth0,bridge=vmbr0",
                "--storage",
                "local"
            ]
        );
    }

    #[test]
    fn memory_is_rounded_up_to_mib_with_a_floor_of_16() {
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 268435457, "swap": 536870912}}}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(opt(&p, "memory"), Some("257"));
        assert_eq!(opt(&p, "swap"), Some("256"));
        let s = spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 1000}}}}));
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(opt(&p, "memory"), Some("16"));
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 100_000_000, "swap": 10}}}}),
        );
        assert!(plan(&s, &ProxmoxSettings::default(), HOST).is_err());
    }

    #[test]
    fn user_namespace_makes_the_guest_unprivileged() {
        let s = spec(
            serde_json::json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}]}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert!(p.unprivileged);
        assert_eq!(opt(&p, "unprivileged"), Some("1"));
        let forced = ProxmoxSettings {
            unprivileged: UnprivilegedPolicy::Always,
            ..Default::default()
        };
        assert!(
            plan(&spec(serde_json::json!({})), &forced, HOST)
                .unwrap()
                .unprivileged
        );
    }

    #[test]
    fn hostname_must_be_a_dns_name() {
        let p = plan(
            &spec(serde_json::json!({"hostname": "web-1.example"})),
            &ProxmoxSettings::default(),
            HOST,
        )
        .unwrap();
        assert_eq!(opt(&p, "hostname"), Some("web-1.example"));
        for bad in [
            "a b",
            "x\nlxc.init.cmd=/evil",
            "-a",
            "a..b",
            "a_b",
            &"a".repeat(64),
        ] {
            let err = plan(
                &spec(serde_json::json!({"hostname": bad})),
                &ProxmoxSettings::default(),
                HOST,
            )
            .unwrap_err();
            assert!(err.to_string().contains("hostname"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unsupported_namespaces_and_terminal_are_refused_clearly() {
        let host_net = spec(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}));
        assert!(plan(&host_net, &ProxmoxSettings::default(), HOST)
            .unwrap_err()
            .to_string()
            .contains("network namespace"));
        let by_path = spec(
            serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}}),
        );
        assert!(plan(&by_path, &ProxmoxSettings::default(), HOST).is_err());
        let tty = spec(serde_json::json!({"process": {"terminal": true}}));
        assert!(plan(&tty, &ProxmoxSettings::default(), HOST)
            .unwrap_err()
            .to_string()
            .contains("process.terminal"));
    }
}
