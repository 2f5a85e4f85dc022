//! linux.json: what the host could not express (network link, /dev,
//! sysctls, maskedPaths, readonlyPaths, domainname, readonly root, root
//! propagation), applied by the init in the guest before it forks.

use std::path::Path;

use nix::libc;

use super::error::InitError;
use crate::bridge::settings::InitSettings;

/// The container-side settings the host could not express (maskedPaths,
/// readonlyPaths, readonly root, domainname), applied in the init while it
/// still has every capability, before the process is forked. A missing file
/// means nothing to do.
pub(super) fn load_linux_settings(path: &Path) -> Result<InitSettings, InitError> {
    Ok(match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text).map_err(|source| InitError::Parse {
            path: path.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => InitSettings::default(),
        Err(source) => {
            return Err(InitError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    })
}

/// Everything of linux.json but the root switch (super::root), which comes
/// first.
pub(super) fn apply_linux_settings(settings: &InitSettings) -> Result<(), InitError> {
    if let Some(net) = &settings.net {
        configure_link(net)?;
    }
    // Before any other mount: moves need parents that are not shared.
    crate::bridge::devfs::make_root_rslave().map_err(InitError::Bridge)?;
    match &settings.dev {
        Some(dev) => crate::bridge::devfs::rebuild(dev).map_err(InitError::Bridge)?,
        None => crate::bridge::devfs::fix_lxc_dev().map_err(InitError::Bridge)?,
    }
    // Before readonlyPaths, which usually include /proc/sys.
    for (key, value) in &settings.sysctl {
        write_sysctl(key, value).map_err(|source| InitError::Sysctl {
            key: key.clone(),
            source,
        })?;
    }
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    for p in &settings.masked_paths {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            // Masking what does not exist needs nothing (as runc does).
            Err(_) => continue,
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            mount(Some("/dev/null"), p.as_str(), none, MsFlags::MS_BIND, none)
        };
        r.map_err(|source| InitError::Mask {
            path: p.clone(),
            source,
        })?;
    }
    for p in &settings.readonly_paths {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        readonly_bind(p).map_err(|source| InitError::ReadonlyPath {
            path: p.clone(),
            source,
        })?;
    }
    if let Some(d) = &settings.domainname {
        // nix wraps sethostname but not setdomainname.
        // SAFETY: the kernel reads d.len() bytes from d's own buffer.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(InitError::Domainname(std::io::Error::last_os_error()));
        }
    }
    if settings.readonly_root {
        // Only the root mount itself: /.nexcage and the mount points keep
        // their own flags, as with runc's readonly root.
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(none, "/", none, flags, none).map_err(InitError::ReadonlyRoot)?;
    }
    // Last: an unbindable `/` would refuse the binds above.
    if let Some(p) = &settings.root_propagation {
        crate::bridge::devfs::apply_root_propagation(p).map_err(InitError::Bridge)?;
    }
    Ok(())
}

/// The guest's link as pct would have configured it with host-managed=1
/// (and as LXC does then, lo comes up with it).
fn configure_link(net: &crate::bridge::settings::InitNet) -> Result<(), InitError> {
    use crate::bridge::netlink;
    let fail = |e: netlink::NetlinkError| InitError::Network(e.to_string());
    netlink::link_up("lo").map_err(fail)?;
    netlink::link_up(&net.link).map_err(fail)?;
    if let Some(cidr) = &net.address {
        let (ip, len) = cidr
            .split_once('/')
            .and_then(|(ip, len)| Some((ip.parse().ok()?, len.parse::<u8>().ok()?)))
            .filter(|(_, len)| *len <= 32)
            .ok_or_else(|| InitError::Network(format!("{cidr:?} is not an IPv4 CIDR")))?;
        netlink::add_ipv4(&net.link, ip, len).map_err(fail)?;
    }
    if let Some(gw) = &net.gateway {
        let gw = gw
            .parse()
            .map_err(|_| InitError::Network(format!("{gw:?} is not an IPv4 address")))?;
        netlink::add_default_route(&net.link, gw).map_err(fail)?;
    }
    Ok(())
}

/// Only the guest's own network namespace is writable under /proc/sys in a
/// Proxmox guest; the name is checked again here so that it can only ever
/// name a file below /proc/sys/net.
fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let valid = key.starts_with("net.")
        && key.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !valid {
        return Err(std::io::Error::other("not a net.* sysctl name"));
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(value.as_bytes())
}

/// The flags the init adds to every read-only bind under /proc and /sys,
/// whatever the mount had, so that a rule naming exact flags (the Proxmox
/// backend's AppArmor allow rules) matches it. Kept in step with
/// `readonly_bind`.
pub const KERNEL_DIR_LOCKED: &str = "nosuid,nodev,noexec";

/// Whether `p` is /proc, /sys or below them.
pub fn in_kernel_dir(p: &str) -> bool {
    ["/proc", "/sys"]
        .iter()
        .any(|d| p == *d || p.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
}

/// Bind a path onto itself, then make that mount read-only, keeping the
/// flags the kernel locked (nosuid, nodev, noexec) so the remount is allowed
/// in an unprivileged guest. The bind is recursive (rbind) and the remount
/// flags are fixed under /proc and /sys: the node's AppArmor profile allows
/// exactly those (see backend::proxmox::apparmor).
fn readonly_bind(p: &str) -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    mount(Some(p), p, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)?;
    let locked = nix::sys::statvfs::statvfs(p)
        .map(|s| {
            use nix::sys::statvfs::FsFlags;
            let f = s.flags();
            let mut m = MsFlags::empty();
            for (a, b) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if f.contains(a) {
                    m |= b;
                }
            }
            m
        })
        .unwrap_or(MsFlags::empty());
    // Under /proc and /sys the remount always carries nosuid, nodev and
    // noexec (harmless there), because the AppArmor rule translate writes
    // for it names its flags exactly (backend::proxmox::apparmor).
    let locked = if in_kernel_dir(p) {
        locked | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
    } else {
        locked
    };
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
    mount(none, p, none, flags, none)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_linux_settings_file_means_nothing_to_apply() {
        let s = load_linux_settings(Path::new("/nonexistent/linux.json")).unwrap();
        assert_eq!(s, InitSettings::default());
    }
}
