//! `lxc.apparmor.raw` rules for the mounts the in-guest init makes.
//!
//! Every guest on a stock Proxmox VE node runs under the AppArmor profile
//! LXC generates (`lxc.apparmor.profile = generated`, written by
//! pve-container's make_apparmor_config; the rules are lxc's
//! src/lxc/lsm/apparmor.c plus Proxmox's `deny mount -> /proc/,` and
//! `/sys/`). It lets a guest ro-remount binds anywhere except under /proc,
//! /sys and the root itself, and bind from /proc or /sys only when
//! unprivileged. The init's read-only binds of `linux.readonlyPaths` under
//! /proc and /sys and its ro remount of `/` for `root.readonly` are exactly
//! those, so each gets an allow rule naming that one path and the exact
//! flags the init uses (see src/bridge/init/linux.rs, readonly_bind). Masked
//! paths need none: tmpfs mounts and binds of /dev/null are allowed.

use crate::bridge::init::linux::{in_kernel_dir, KERNEL_DIR_LOCKED};
use crate::bridge::settings::InitSettings;

/// A path the rules can name literally: AppArmor globbing and rule syntax
/// characters (`*?[]{}^,"\` and blanks) would change what the rule means.
fn literal(p: &str) -> bool {
    p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+'))
}

#[derive(Debug, PartialEq, Eq)]
pub enum RuleError {
    /// Proxmox denies every mount on /proc and /sys themselves.
    KernelDirItself,
    NotLiteral,
}

impl RuleError {
    pub fn reason(&self, p: &str) -> String {
        match self {
            RuleError::KernelDirItself => format!(
                "{p:?}: Proxmox's AppArmor profile denies mounts on {p} itself (deny mount -> {p}/)"
            ),
            RuleError::NotLiteral => {
                format!("{p:?}: only letters, digits and '/._-+' can be named in an AppArmor rule")
            }
        }
    }
}

/// The raw rule values (without the key) for one read-only path, or why
/// none can be written.
pub fn readonly_path_rules(p: &str) -> Result<Vec<String>, RuleError> {
    if !in_kernel_dir(p) {
        return Ok(Vec::new());
    }
    if p == "/proc" || p == "/sys" {
        return Err(RuleError::KernelDirItself);
    }
    if !literal(p) {
        return Err(RuleError::NotLiteral);
    }
    // `{,/}`: a directory's name ends in '/', a file's does not.
    Ok(vec![
        format!("mount options=(rw,rbind) {p}{{,/}} -> {p}{{,/}},"),
        format!("mount options=(ro,remount,bind,{KERNEL_DIR_LOCKED}) -> {p}{{,/}},"),
    ])
}

/// The rule for `root.readonly`: a ro bind remount of `/`.
pub const READONLY_ROOT_RULE: &str = "mount options=(ro,remount,bind) -> /,";

/// The rules for root mode `bundle` (src/bridge/init/root.rs): the
/// generated profile lets a guest move any mount but /proc, /sys and /dev,
/// and pivot_root only when unprivileged. Each rule names the one call the
/// init makes.
pub fn root_switch_rules(new_root: &str) -> Result<Vec<String>, RuleError> {
    if !literal(new_root) || !new_root.starts_with('/') {
        return Err(RuleError::NotLiteral);
    }
    let mut out: Vec<String> = ["proc", "sys", "dev"]
        .iter()
        .map(|d| format!("mount options=(rw,move) /{d}/ -> {new_root}/{d}/,"))
        .collect();
    out.push(format!("pivot_root oldroot={new_root}/ {new_root}/,"));
    Ok(out)
}

/// All rules for the init's settings, with the field each comes from.
pub fn rules(init: &InitSettings) -> Result<Vec<(String, String)>, (String, String)> {
    let mut out = Vec::new();
    if let Some(r) = &init.new_root {
        let f = "annotations.org.proxmox.root".to_string();
        match root_switch_rules(r) {
            Ok(rules) => out.extend(rules.into_iter().map(|r| (f.clone(), r))),
            Err(e) => return Err((f, e.reason(r))),
        }
    }
    for (i, p) in init.readonly_paths.iter().enumerate() {
        let f = format!("linux.readonlyPaths[{i}]");
        match readonly_path_rules(p) {
            Ok(rules) => out.extend(rules.into_iter().map(|r| (f.clone(), r))),
            Err(e) => return Err((f, e.reason(p))),
        }
    }
    if init.readonly_root {
        out.push(("root.readonly".to_string(), READONLY_ROOT_RULE.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_proc_and_sys_get_rules() {
        assert!(readonly_path_rules("/guarded").unwrap().is_empty());
        assert!(readonly_path_rules("/processes").unwrap().is_empty());
        assert!(readonly_path_rules("/system/x").unwrap().is_empty());
        assert_eq!(
            readonly_path_rules("/proc/bus").unwrap(),
            [
                "mount options=(rw,rbind) /proc/bus{,/} -> /proc/bus{,/},",
                "mount options=(ro,remount,bind,nosuid,nodev,noexec) -> /proc/bus{,/},",
            ]
        );
        assert_eq!(readonly_path_rules("/sys/fs/x").unwrap().len(), 2);
    }

    #[test]
    fn unnameable_paths_are_refused() {
        assert_eq!(
            readonly_path_rules("/proc"),
            Err(RuleError::KernelDirItself)
        );
        for p in [
            "/proc/a*",
            "/proc/{a,b}",
            "/proc/a,b",
            "/sys/a b",
            "/proc/a\"",
            "/proc/[x]",
        ] {
            assert_eq!(readonly_path_rules(p), Err(RuleError::NotLiteral), "{p}");
        }
    }

    #[test]
    fn the_root_switch_gets_exactly_its_moves_and_pivot() {
        assert_eq!(
            root_switch_rules("/.nexcage-root").unwrap(),
            [
                "mount options=(rw,move) /proc/ -> /.nexcage-root/proc/,",
                "mount options=(rw,move) /sys/ -> /.nexcage-root/sys/,",
                "mount options=(rw,move) /dev/ -> /.nexcage-root/dev/,",
                "pivot_root oldroot=/.nexcage-root/ /.nexcage-root/,",
            ]
        );
        assert!(root_switch_rules("/a*").is_err());
    }

    #[test]
    fn root_readonly_gets_its_rule() {
        let init = InitSettings {
            readonly_root: true,
            readonly_paths: vec!["/proc/sys".into(), "/etc".into()],
            ..InitSettings::default()
        };
        let r = rules(&init).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], ("root.readonly".into(), READONLY_ROOT_RULE.into()));
        assert!(r[0].0 == "linux.readonlyPaths[0]");
    }
}
