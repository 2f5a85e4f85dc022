//! `org.proxmox.*` annotations: Proxmox settings a bundle may ask for,
//! each validated for its pct format. Other annotations are the client's.

use serde_json::{Map, Value};

use super::check::{check_text, is_dns_name, is_ipv4_cidr};
use super::{field, TranslateError, Translator};
use crate::backend::proxmox::settings::{is_bridge_name, is_storage_id, ProxmoxSettings, RootMode};

/// Proxmox settings a bundle may ask for through `org.proxmox.*`
/// annotations; every value is validated for its pct format.
#[derive(Debug, Default)]
pub(super) struct Annotations {
    storage: Option<String>,
    rootfs_size: Option<String>,
    pub(super) bridge: Option<String>,
    pub(super) tag: Option<String>,
    pub(super) ip: Option<String>,
    pub(super) gw: Option<String>,
    nameserver: Option<String>,
    searchdomain: Option<String>,
    onboot: Option<String>,
    tags: Option<String>,
    description: Option<String>,
    features: Option<String>,
    pub(super) unprivileged: Option<bool>,
    pub(super) root: Option<RootMode>,
}

pub const ANNOTATION_PREFIX: &str = "org.proxmox.";

/// Every annotation nexcage understands (docs/translation.md lists them).
pub const ANNOTATIONS: &[&str] = &[
    "org.proxmox.storage",
    "org.proxmox.rootfs.size",
    "org.proxmox.net0.bridge",
    "org.proxmox.net0.tag",
    "org.proxmox.net0.ip",
    "org.proxmox.net0.gw",
    "org.proxmox.nameserver",
    "org.proxmox.searchdomain",
    "org.proxmox.onboot",
    "org.proxmox.tags",
    "org.proxmox.description",
    "org.proxmox.features",
    "org.proxmox.unprivileged",
    "org.proxmox.root",
];

impl Annotations {
    pub(super) fn parse(
        all: &Map<String, Value>,
        _settings: &ProxmoxSettings,
    ) -> Result<Annotations, TranslateError> {
        let mut a = Annotations::default();
        let mut keys: Vec<_> = all.iter().collect();
        keys.sort_by(|x, y| x.0.cmp(y.0));
        for (k, v) in keys {
            let f = format!("annotations.{k}");
            check_text("annotations", k)?;
            if !k.starts_with(ANNOTATION_PREFIX) {
                // Other annotations are the client's metadata (OCI: opaque).
                continue;
            }
            let v = v.as_str().unwrap_or("");
            check_text(&f, v)?;
            let bad = |what: &str| field(&f, format!("{v:?} is not {what}"));
            let flag = |v: &str| match v {
                "1" | "true" => Some(true),
                "0" | "false" => Some(false),
                _ => None,
            };
            match k.as_str() {
                "org.proxmox.storage" => {
                    if !is_storage_id(v) {
                        return Err(bad("a storage id"));
                    }
                    a.storage = Some(v.into());
                }
                "org.proxmox.rootfs.size" => {
                    a.rootfs_size = Some(parse_rootfs_size(v).ok_or_else(|| {
                        bad("a positive size in GiB (a number, or one with M, MiB, G or GiB)")
                    })?);
                }
                "org.proxmox.net0.bridge" => {
                    if !is_bridge_name(v) {
                        return Err(bad("a bridge name"));
                    }
                    a.bridge = Some(v.into());
                }
                "org.proxmox.net0.tag" => match v.parse::<u16>() {
                    Ok(t) if (1..=4094).contains(&t) => a.tag = Some(t.to_string()),
                    _ => return Err(bad("a VLAN tag 1..4094")),
                },
                "org.proxmox.net0.ip" => {
                    if !(matches!(v, "dhcp" | "manual") || is_ipv4_cidr(v)) {
                        return Err(bad("an IPv4 CIDR, dhcp or manual"));
                    }
                    a.ip = Some(v.into());
                }
                "org.proxmox.net0.gw" => {
                    if v.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(bad("an IPv4 address"));
                    }
                    a.gw = Some(v.into());
                }
                "org.proxmox.nameserver" => {
                    let list: Vec<&str> =
                        v.split([' ', ',', ';']).filter(|s| !s.is_empty()).collect();
                    if list.is_empty()
                        || list.iter().any(|s| s.parse::<std::net::IpAddr>().is_err())
                    {
                        return Err(bad("a list of IP addresses"));
                    }
                    a.nameserver = Some(list.join(" "));
                }
                "org.proxmox.searchdomain" => {
                    let list: Vec<&str> =
                        v.split([' ', ',', ';']).filter(|s| !s.is_empty()).collect();
                    if list.is_empty() || list.iter().any(|s| !is_dns_name(s)) {
                        return Err(bad("a list of DNS domains"));
                    }
                    a.searchdomain = Some(list.join(" "));
                }
                "org.proxmox.onboot" => {
                    // Started by the node at boot, the guest would find no
                    // bridge directory (it lives under /run) and no runtime
                    // client waiting for it: its init could only fail.
                    if flag(v).ok_or_else(|| bad("0 or 1"))? {
                        return Err(field(
                            &f,
                            "guests started at boot are not supported: their runtime client starts them",
                        ));
                    }
                    a.onboot = Some("0".into());
                }
                "org.proxmox.tags" => {
                    let list: Vec<&str> =
                        v.split([' ', ',', ';']).filter(|s| !s.is_empty()).collect();
                    let tag_ok = |t: &str| {
                        t.len() <= 64
                            && t.bytes()
                                .next()
                                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                            && t.bytes()
                                .all(|c| c.is_ascii_alphanumeric() || b"_+.-".contains(&c))
                    };
                    if list.is_empty() || !list.iter().all(|t| tag_ok(t)) {
                        return Err(bad("a list of Proxmox tags"));
                    }
                    a.tags = Some(list.join(";"));
                }
                "org.proxmox.description" => {
                    if v.len() > 8192 {
                        return Err(field(&f, "longer than 8 KiB"));
                    }
                    a.description = Some(v.into());
                }
                "org.proxmox.features" => {
                    let mut out = Vec::new();
                    for item in v.split(',').filter(|s| !s.is_empty()) {
                        let (name, val) = item.split_once('=').unwrap_or((item, "1"));
                        if !matches!(name, "nesting" | "keyctl" | "fuse") {
                            return Err(field(
                                &f,
                                format!("{name:?} is not one of nesting, keyctl, fuse"),
                            ));
                        }
                        let b = flag(val).ok_or_else(|| bad("a list of feature=0|1"))?;
                        out.push(format!("{name}={}", u8::from(b)));
                    }
                    if out.is_empty() {
                        return Err(bad("a list of features"));
                    }
                    a.features = Some(out.join(","));
                }
                "org.proxmox.unprivileged" => {
                    a.unprivileged = Some(flag(v).ok_or_else(|| bad("0 or 1"))?);
                }
                "org.proxmox.root" => {
                    a.root =
                        Some(RootMode::parse(v).ok_or_else(|| bad("template, bundle or clone"))?);
                }
                _ => {
                    return Err(field(
                        &f,
                        format!(
                            "unknown Proxmox annotation; known: {}",
                            ANNOTATIONS.join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(a)
    }
}

impl Translator<'_> {
    /// Last, after every section: the options annotations set, and ostype.
    pub(super) fn annotation_options(&mut self) {
        let a = &self.ann;
        let mut opts = Vec::new();
        for (k, v) in [
            ("nameserver", &a.nameserver),
            ("searchdomain", &a.searchdomain),
            ("onboot", &a.onboot),
            ("tags", &a.tags),
            ("description", &a.description),
            ("features", &a.features),
        ] {
            if let Some(v) = v {
                opts.push((k.to_string(), v.clone()));
            }
        }
        self.plan.options.extend(opts);
        self.plan.storage = a.storage.clone();
        self.plan.rootfs_size = a.rootfs_size.clone();
        // ostype last: nexcage's init is the container's PID 1, so Proxmox must
        // not touch the guest's files as it would for a distribution it manages.
        let at = self
            .plan
            .options
            .iter()
            .position(|(k, _)| k == "swap")
            .map_or(0, |i| i + 1);
        self.plan
            .options
            .insert(at, ("ostype".into(), "unmanaged".into()));
    }
}

/// `org.proxmox.rootfs.size`: a positive size in GiB as pct takes it
/// (`4`, `0.5`), or with a unit `M`/`MiB`/`G`/`GiB`; pct's size format in
/// GiB, at MiB granularity as pct allocates.
fn parse_rootfs_size(v: &str) -> Option<String> {
    let (number, unit_mib) = if let Some(n) = v.strip_suffix("MiB").or_else(|| v.strip_suffix('M'))
    {
        (n, 1u64)
    } else if let Some(n) = v.strip_suffix("GiB").or_else(|| v.strip_suffix('G')) {
        (n, 1024)
    } else {
        (v, 1024)
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty()
        || int.len() > 9
        || frac.len() > 6
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || (number.contains('.') && frac.is_empty())
    {
        return None;
    }
    // Exact decimal arithmetic in millionths of a unit.
    let millionths: u64 =
        int.parse::<u64>().ok()? * 1_000_000 + format!("{frac:0<6}").parse::<u64>().ok()?;
    let mib = millionths * unit_mib / 1_000_000;
    if mib == 0 {
        return None;
    }
    // MiB / 1024 always ends within ten decimals.
    let gib = format!("{}.{:010}", mib / 1024, (mib % 1024) * 9_765_625);
    Some(gib.trim_end_matches('0').trim_end_matches('.').to_string())
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::test_support::{spec, HOST};
    use super::*;

    #[test]
    fn rootfs_size_annotation_overrides_the_measure_and_refuses_garbage() {
        for (given, gib) in [
            ("2", "2"),
            ("0.5", "0.5"),
            ("1.25G", "1.25"),
            ("3GiB", "3"),
            ("512M", "0.5"),
            ("100MiB", "0.09765625"),
            ("1536M", "1.5"),
        ] {
            assert_eq!(parse_rootfs_size(given).as_deref(), Some(gib), "{given}");
        }
        for bad in [
            "",
            "0",
            "0M",
            "-1",
            "1.",
            ".5",
            "1e3",
            "1T",
            "2 G",
            "0.0000001",
            "abc",
        ] {
            assert_eq!(parse_rootfs_size(bad), None, "{bad:?}");
        }
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.rootfs.size": "512M"}}));
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        let args = p.create_args(100, "local:vztmpl/t.tar.zst", "local-lvm", 7);
        assert!(
            args.windows(2).any(|w| w == ["--rootfs", "local-lvm:0.5"]),
            "{args:?}"
        );
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.rootfs.size": "lots"}}));
        let err = plan(&s, &ProxmoxSettings::default(), HOST)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("org.proxmox.rootfs.size") && err.contains("\"lots\""),
            "{err}"
        );
    }

    #[test]
    fn root_annotation_overrides_the_node_s_mode_and_brings_its_rules() {
        let mut node = ProxmoxSettings::default();
        let p = plan(&spec(serde_json::json!({})), &node, HOST).unwrap();
        assert_eq!(p.root, RootMode::Template);
        assert_eq!(p.init.new_root, None);
        assert!(!p
            .raw_lines
            .iter()
            .any(|l| l.render().contains("pivot_root")));
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.root": "bundle"}}));
        let p = plan(&s, &node, HOST).unwrap();
        assert_eq!(p.root, RootMode::Bundle);
        assert_eq!(p.init.new_root.as_deref(), Some("/.nexcage-root"));
        let raw: Vec<String> = p.raw_lines.iter().map(|l| l.render()).collect();
        assert!(
            raw.contains(
                &"lxc.apparmor.raw: pivot_root oldroot=/.nexcage-root/ /.nexcage-root/,".into()
            ),
            "{raw:?}"
        );
        node.root = RootMode::Bundle;
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.root": "template"}}));
        assert_eq!(plan(&s, &node, HOST).unwrap().root, RootMode::Template);
        let s = spec(serde_json::json!({"annotations": {"org.proxmox.root": "copy"}}));
        let err = plan(&s, &node, HOST).unwrap_err().to_string();
        assert_eq!(
            err,
            "config.json: annotations.org.proxmox.root: \"copy\" is not template, bundle or clone"
        );
    }
}
