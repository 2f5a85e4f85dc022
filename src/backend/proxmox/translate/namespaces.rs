//! `linux.namespaces`, the id maps and the UTS names: privileged or not,
//! the guest's own NIC (net0) or a network namespace the bridge joins, and
//! who configures net0 once the node is known.

use serde_json::{Map, Value};

use super::check::{check_text, is_dns_name, is_ipv4_cidr, list};
use super::{field, PctPlan, TranslateError, Translator};
use crate::backend::proxmox::settings::UnprivilegedPolicy;
use crate::bridge::settings::InitNet;

/// Proxmox's default unprivileged map (`u/g 0 100000 65536`).
pub const DEFAULT_IDMAP: (u64, u64, u64) = (0, 100_000, 65_536);

impl PctPlan {
    /// Who configures the guest's own link (net0), once the node is known:
    /// pct with `host-managed=1` where it has it, else the init. DHCP needs
    /// a client on the host side, which only host-managed gives.
    pub fn manage_net0(&mut self, host_managed: bool) -> Result<(), TranslateError> {
        let Some((_, net0)) = self.options.iter_mut().find(|(k, _)| k == "net0") else {
            return Ok(());
        };
        let get = |key: &str| {
            net0.split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (ip, gw) = (get("ip"), get("gw"));
        let addressed = ip.as_deref().is_some_and(is_ipv4_cidr);
        if gw.is_some() && !addressed {
            return Err(field(
                "annotations.org.proxmox.net0.gw",
                "a gateway needs an address: set org.proxmox.net0.ip to a CIDR",
            ));
        }
        if host_managed {
            net0.push_str(",host-managed=1");
            return Ok(());
        }
        if ip.as_deref() == Some("dhcp") {
            return Err(field(
                "annotations.org.proxmox.net0.ip",
                "dhcp needs a node whose pct manages the guest's network (host-managed, pve-container 6.0.15 or later); this node's does not: give an address (CIDR)",
            ));
        }
        self.init.net = Some(InitNet {
            link: "eth0".into(),
            address: ip.filter(|_| addressed),
            gateway: gw,
        });
        Ok(())
    }
}

impl Translator<'_> {
    /// hostname becomes pct's; domainname has no pct option and is set by
    /// the init in the guest's UTS namespace.
    pub(super) fn uts(&mut self, v: &Value) -> Result<(), TranslateError> {
        if let Some(h) = v
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
        {
            if !is_dns_name(h) {
                return Err(field("hostname", format!("{h:?} is not a valid DNS name")));
            }
            self.plan.opt("hostname", h);
        }
        if let Some(d) = v
            .get("domainname")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        {
            if !is_dns_name(d) || d.len() > 64 {
                return Err(field(
                    "domainname",
                    format!("{d:?} is not a valid domain name"),
                ));
            }
            self.plan.init.domainname = Some(d.to_string());
        }
        Ok(())
    }

    pub(super) fn namespaces(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        let ns: Vec<&Value> = l
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let mut user = false;
        let mut net = None;
        let mut joined: Vec<(&str, &str)> = Vec::new();
        for (i, n) in ns.iter().enumerate() {
            let f = format!("linux.namespaces[{i}]");
            let typ = n.get("type").and_then(Value::as_str).unwrap_or("");
            let path = n
                .get("path")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty());
            match typ {
                "network" => net = Some(path),
                // A Kubernetes pod's app containers share its sandbox's ipc
                // and uts namespaces (containerd's CRI names
                // /proc/<sandbox pid>/ns/{ipc,uts}): the bridge joins them as
                // it joins a network namespace.
                "ipc" | "uts" if path.is_some() => {
                    joined.push((typ, path.unwrap_or_default()));
                }
                "user" | "pid" | "mount" | "cgroup" if path.is_some() => {
                    return Err(field(f, format!("joining an existing {typ} namespace is not possible for a Proxmox container")))
                }
                "user" => user = true,
                "pid" | "ipc" | "uts" | "mount" | "cgroup" => {}
                other => return Err(field(f, format!("{other:?} namespaces are not supported"))),
            }
        }
        let policy_unpriv = match self.settings.unprivileged {
            UnprivilegedPolicy::Always => true,
            UnprivilegedPolicy::Auto => user,
        };
        self.plan.unprivileged = match self.ann.unprivileged {
            Some(false) if self.settings.unprivileged == UnprivilegedPolicy::Always => {
                return Err(field(
                    "annotations.org.proxmox.unprivileged",
                    "this node's policy makes every container unprivileged",
                ))
            }
            Some(u) => u,
            None => policy_unpriv,
        };
        self.plan.opt(
            "unprivileged",
            if self.plan.unprivileged { "1" } else { "0" },
        );
        for (typ, p) in joined {
            let f = "linux.namespaces";
            self.check_joinable(typ, p)?;
            if typ == "uts" {
                // As runc: the names belong to whoever made that namespace.
                let named = self.plan.options.iter().any(|(k, _)| k == "hostname");
                if named || self.plan.init.domainname.is_some() {
                    return Err(field(f, format!("hostname and domainname cannot be set in the uts namespace {p:?} the container joins")));
                }
                self.plan.init.utsns = Some(p.to_string());
            } else {
                self.plan.init.ipcns = Some(p.to_string());
            }
        }
        match net {
            None => Err(field("linux.namespaces", "sharing the host's network namespace is not possible for a Proxmox container; add a network namespace")),
            // LXC can share a namespace only with a process (pid) or another
            // container, not a namespace file such as /run/netns/X: the
            // bridge joins it instead (src/bridge/netns.rs), so the guest
            // needs no Proxmox NIC. Only a privileged guest's root may join
            // a namespace owned by the host's user namespace.
            Some(Some(p)) => {
                self.check_joinable("network", p)?;
                if self.ann.bridge.is_some() || self.ann.ip.is_some() || self.ann.gw.is_some() || self.ann.tag.is_some() {
                    return Err(field("annotations", format!("org.proxmox.net0.* configure the guest's own network card, which a guest joining {p:?} does not get")));
                }
                self.plan.init.netns = Some(p.to_string());
                Ok(())
            }
            Some(None) => {
                let mut net0 = format!("name=eth0,bridge={}", self.ann.bridge.as_deref().unwrap_or(&self.settings.bridge));
                for (k, v) in [("ip", &self.ann.ip), ("gw", &self.ann.gw), ("tag", &self.ann.tag)] {
                    if let Some(v) = v {
                        net0.push_str(&format!(",{k}={v}"));
                    }
                }
                self.plan.opt("net0", net0);
                Ok(())
            }
        }
    }

    /// A namespace joined by path: the host's, so only a privileged guest's
    /// root may enter it; the path is read on the host by the monitor.
    fn check_joinable(&self, typ: &str, p: &str) -> Result<(), TranslateError> {
        let f = "linux.namespaces";
        if self.plan.unprivileged {
            return Err(field(f, format!("joining the host {typ} namespace {p:?} requires a privileged guest (no user namespace)")));
        }
        if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return Err(field(
                f,
                format!("{typ} namespace path {p:?} must be absolute, without .."),
            ));
        }
        check_text(f, p)
    }

    pub(super) fn idmaps(&mut self, l: &Map<String, Value>) -> Result<(), TranslateError> {
        let read = |k: &str| -> Result<Vec<(u64, u64, u64)>, TranslateError> {
            let mut out = Vec::new();
            for (i, m) in list(l.get(k)).iter().enumerate() {
                let f = format!("linux.{k}[{i}]");
                let n = |x: &str| {
                    m.get(x)
                        .and_then(Value::as_u64)
                        .ok_or_else(|| field(format!("{f}.{x}"), "must be a number"))
                };
                let (c, h, s) = (n("containerID")?, n("hostID")?, n("size")?);
                if s == 0 || c + s > 1 << 32 || h + s > 1 << 32 {
                    return Err(field(
                        &f,
                        "size must be positive and the range within 32-bit ids",
                    ));
                }
                if h == 0 {
                    return Err(field(
                        &f,
                        "mapping the host's root user into a container is refused",
                    ));
                }
                out.push((c, h, s));
            }
            Ok(out)
        };
        let (uids, gids) = (read("uidMappings")?, read("gidMappings")?);
        if uids.is_empty() && gids.is_empty() {
            return Ok(());
        }
        if !self.plan.unprivileged {
            return Err(field(
                "linux.uidMappings",
                "id mappings need a user namespace (an unprivileged container)",
            ));
        }
        let default = vec![DEFAULT_IDMAP];
        let uids = if uids.is_empty() {
            default.clone()
        } else {
            uids
        };
        let gids = if gids.is_empty() {
            default.clone()
        } else {
            gids
        };
        // pct create unpacks the root filesystem with Proxmox's map, and an
        // lxc.idmap added afterwards cannot change who owns those files: the
        // guest would see its own files as nobody's.
        for (maps, k) in [(&uids, "uidMappings"), (&gids, "gidMappings")] {
            if *maps != default {
                let (c, h, s) = DEFAULT_IDMAP;
                return Err(field(
                    format!("linux.{k}"),
                    format!("only Proxmox's map {c} {h} {s} is supported: pct unpacks the root filesystem with it"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::test_support::{opt, spec, HOST};
    use super::*;
    use crate::backend::proxmox::settings::ProxmoxSettings;

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
    fn host_network_is_refused_and_a_netns_path_is_joined_by_the_bridge() {
        let d = ProxmoxSettings::default();
        let err = |j: serde_json::Value| plan(&spec(j), &d, HOST).unwrap_err().to_string();
        let host_net = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert!(err(host_net).contains("network namespace"));
        let by_path = spec(
            serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}}),
        );
        let p = plan(&by_path, &d, HOST).unwrap();
        assert_eq!(p.init.netns.as_deref(), Some("/run/netns/x"));
        assert!(opt(&p, "net0").is_none(), "no Proxmox NIC when joining");
        let e = err(
            serde_json::json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network", "path": "/run/netns/x"}]}}),
        );
        assert!(
            e.contains("linux.namespaces") && e.contains("privileged guest"),
            "{e}"
        );
        for bad in ["run/netns/x", "/run/netns/../x", "/run/netns/x\ny"] {
            let e = err(
                serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": bad}]}}),
            );
            assert!(e.contains("linux.namespaces"), "{bad}: {e}");
        }
        let e = err(serde_json::json!({
            "annotations": {"org.proxmox.net0.ip": "dhcp"},
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}
        }));
        assert!(e.contains("annotations"), "{e}");
    }

    #[test]
    fn a_pods_ipc_and_uts_namespaces_are_joined_by_the_bridge() {
        let d = ProxmoxSettings::default();
        let pod = |extra: serde_json::Value| {
            let mut j = serde_json::json!({"linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/proc/7/ns/net"}
            ]}});
            if let (Some(o), Some(e)) = (j.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            plan(&spec(j), &d, HOST)
        };
        let p = pod(serde_json::json!({})).unwrap();
        assert_eq!(p.init.ipcns.as_deref(), Some("/proc/7/ns/ipc"));
        assert_eq!(p.init.utsns.as_deref(), Some("/proc/7/ns/uts"));
        assert_eq!(p.init.netns.as_deref(), Some("/proc/7/ns/net"));
        let e = pod(serde_json::json!({"hostname": "app"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux.namespaces") && e.contains("hostname"),
            "{e}"
        );
        let e = pod(serde_json::json!({"domainname": "example"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("domainname"), "{e}");
        let err = |j: serde_json::Value| plan(&spec(j), &d, HOST).unwrap_err().to_string();
        let e = err(serde_json::json!({"linux": {"namespaces": [
            {"type": "user"}, {"type": "network"}, {"type": "ipc", "path": "/proc/7/ns/ipc"}
        ]}}));
        assert!(e.contains("ipc") && e.contains("privileged guest"), "{e}");
        let e = err(serde_json::json!({"linux": {"namespaces": [
            {"type": "network"}, {"type": "uts", "path": "proc/7/ns/uts"}
        ]}}));
        assert!(e.contains("must be absolute"), "{e}");
        for typ in ["pid", "mount", "cgroup", "user"] {
            let e = err(serde_json::json!({"linux": {"namespaces": [
                {"type": "network"}, {"type": typ, "path": "/proc/7/ns/x"}
            ]}}));
            assert!(
                e.contains("not possible for a Proxmox container"),
                "{typ}: {e}"
            );
        }
    }

    #[test]
    fn net0_is_host_managed_where_pct_can_and_else_configured_by_the_init() {
        let d = ProxmoxSettings::default();
        let with = |ann: serde_json::Value| {
            plan(&spec(serde_json::json!({ "annotations": ann })), &d, HOST).unwrap()
        };
        let addressed = serde_json::json!({"org.proxmox.net0.ip": "10.1.2.3/24", "org.proxmox.net0.gw": "10.1.2.1"});
        let mut p = with(addressed.clone());
        p.manage_net0(true).unwrap();
        assert_eq!(
            opt(&p, "net0"),
            Some("name=eth0,bridge=vmbr0,ip=10.1.2.3/24,gw=10.1.2.1,host-managed=1")
        );
        assert_eq!(p.init.net, None);

        let mut p = with(addressed);
        p.manage_net0(false).unwrap();
        assert!(!opt(&p, "net0").unwrap().contains("host-managed"));
        let net = p.init.net.clone().unwrap();
        assert_eq!(
            (
                net.link.as_str(),
                net.address.as_deref(),
                net.gateway.as_deref()
            ),
            ("eth0", Some("10.1.2.3/24"), Some("10.1.2.1"))
        );

        // No address: the init still brings the link (and lo) up.
        let mut p = with(serde_json::json!({}));
        p.manage_net0(false).unwrap();
        assert_eq!(p.init.net.as_ref().map(|n| n.address.clone()), Some(None));

        let mut p = with(serde_json::json!({"org.proxmox.net0.ip": "dhcp"}));
        let e = p.manage_net0(false).unwrap_err().to_string();
        assert!(
            e.contains("org.proxmox.net0.ip") && e.contains("host-managed"),
            "{e}"
        );
        let mut p = with(serde_json::json!({"org.proxmox.net0.ip": "dhcp"}));
        p.manage_net0(true).unwrap();
        assert!(opt(&p, "net0").unwrap().ends_with("ip=dhcp,host-managed=1"));

        let mut p = with(serde_json::json!({"org.proxmox.net0.gw": "10.1.2.1"}));
        let e = p.manage_net0(true).unwrap_err().to_string();
        assert!(e.contains("org.proxmox.net0.gw"), "{e}");
    }
}
