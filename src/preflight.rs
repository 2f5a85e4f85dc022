//! `nexcage check`: whether this node can run containers. What holds for
//! any backend is checked here (the state root, the cgroup layout); the
//! backend checks its own needs (`Backend::check_node`).

use std::path::Path;

use nix::sys::statfs::{self, FsType};

use crate::backend::{Backend, Check, CheckStatus};

/// Every check, the runtime's first.
pub fn run(state_root: &Path, cgroup_root: &Path, backend: &dyn Backend) -> Vec<Check> {
    let mut out = vec![state_root_check(state_root), cgroup_check(cgroup_root)];
    out.extend(backend.check_node());
    out
}

/// Exit status: 1 when anything failed, as warnings still let creates work.
pub fn exit_code(checks: &[Check]) -> i32 {
    i32::from(checks.iter().any(|c| c.status == CheckStatus::Fail))
}

/// The state root (or the directory it would be made in) should be a
/// tmpfs, as runc's /run/runc is: after a reboot every guest is stopped,
/// and records on disk would still say otherwise.
fn state_root_check(root: &Path) -> Check {
    let name = "state root";
    let Some((existing, fs)) = root
        .ancestors()
        .find_map(|p| statfs::statfs(p).ok().map(|s| (p, s.filesystem_type())))
    else {
        return Check::fail(
            name,
            format!("{}: no directory above it exists", root.display()),
            "use an absolute --root",
        );
    };
    let shown = if existing == root {
        root.display().to_string()
    } else {
        format!("{} (to be made in {})", root.display(), existing.display())
    };
    if is_memory_fs(fs) {
        Check::ok(name, format!("{shown} on tmpfs"))
    } else {
        Check::warn(
            name,
            format!("{shown} is not on a tmpfs"),
            "use a --root under /run: records would outlive a reboot that stopped their guests",
        )
    }
}

fn is_memory_fs(fs: FsType) -> bool {
    fs == statfs::TMPFS_MAGIC
}

/// A unified hierarchy is what Proxmox VE 8 and later boot with; limits
/// nexcage writes as `lxc.cgroup2.*` keys need it.
fn cgroup_check(root: &Path) -> Check {
    let name = "cgroup";
    match statfs::statfs(root).map(|s| s.filesystem_type()) {
        Ok(fs) if fs == statfs::CGROUP2_SUPER_MAGIC => {
            Check::ok(name, format!("version 2 (unified) at {}", root.display()))
        }
        Ok(fs) if fs == statfs::TMPFS_MAGIC => Check::warn(
            name,
            format!("version 1 (legacy or hybrid) at {}", root.display()),
            "boot with systemd.unified_cgroup_hierarchy=1: Proxmox VE 9 supports only version 2",
        ),
        Ok(_) => Check::fail(
            name,
            format!("{} holds no cgroup hierarchy", root.display()),
            "mount cgroup2 on /sys/fs/cgroup",
        ),
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", root.display()),
            "mount cgroup2 on /sys/fs/cgroup",
        ),
    }
}

/// One line per check: status, name, what was found, and what to do.
pub fn text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        };
        out.push_str(&format!("{status:<5} {:<width$}  {}", c.name, c.detail));
        if let Some(h) = &c.hint {
            out.push_str(&format!(" -> {h}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_fails_the_command_and_warnings_do_not() {
        let ok = Check::ok("a", "fine");
        let warn = Check::warn("bb", "meh", "do x");
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 0);
        assert_eq!(exit_code(&[ok.clone(), Check::fail("c", "bad", "do y")]), 1);
        assert_eq!(text(&[ok, warn]), "ok    a   fine\nwarn  bb  meh -> do x\n");
    }

    #[test]
    fn the_state_root_is_checked_where_it_would_be_made() {
        let c = state_root_check(Path::new("/dev/shm/nexcage-check-test/x"));
        assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
        assert!(c.detail.contains("to be made in /dev/shm"), "{}", c.detail);
        let c = state_root_check(Path::new("/proc/self"));
        assert_eq!(c.status, CheckStatus::Warn);
        assert_eq!(cgroup_check(Path::new("/proc")).status, CheckStatus::Fail);
    }
}
