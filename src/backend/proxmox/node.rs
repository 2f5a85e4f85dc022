//! What nexcage needs to know about the node it runs on, asked of the
//! node's tools once and remembered under the state root: the storages for
//! root volumes and templates (`pvesm status`), the template directory
//! (`pvesm path`), and whether pct knows `host-managed` networks.

use std::path::{Path, PathBuf};

use super::driver::DriverError;
use super::pct::{PctError, Tools};
use super::settings::{is_storage_id, ProxmoxSettings};
use crate::fsutil::{own_path, write_atomic};

pub struct Node<'a> {
    pub settings: &'a ProxmoxSettings,
    pub tools: &'a Tools,
    pub state_root: &'a Path,
}

impl Node<'_> {
    /// A fact about the node remembered under the state root, so that
    /// `pvesm` runs once per node rather than once per container.
    fn cache_file(&self, name: &str) -> PathBuf {
        own_path(self.state_root, "cache").join(name)
    }

    fn remember(&self, cache: &Path, value: &[u8]) {
        if let Some(parent) = cache.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // Only a shortcut: if it cannot be written, the node is asked again.
        let _ = write_atomic(cache, value, 0o600);
    }

    /// The storage config.toml names for `usage`, if it does.
    pub fn configured(&self, usage: StorageUse) -> Option<&str> {
        match usage {
            StorageUse::Root => self.settings.storage.as_deref(),
            StorageUse::Templates => self.settings.template_storage.as_deref(),
        }
    }

    /// The node's enabled storages with `usage`'s content, as
    /// `pvesm status --content C --enabled 1` lists them.
    pub fn storages(&self, usage: StorageUse) -> Result<Vec<StorageRow>, DriverError> {
        let key = usage.key();
        let out = self
            .tools
            .pvesm(["status", "--content", usage.content(), "--enabled", "1"])
            .map_err(|e| DriverError::StorageList {
                key,
                message: e.to_string(),
            })?;
        storage_rows(&out).map_err(|message| DriverError::StorageList { key, message })
    }

    /// The storage a create uses for `usage`: the configured one, else the
    /// one remembered, else the only one `list` gives (then remembered).
    /// `list` runs only when the choice needs the node's storages.
    fn choose_storage(
        &self,
        usage: StorageUse,
        list: impl FnOnce() -> Result<Vec<StorageRow>, DriverError>,
    ) -> Result<String, DriverError> {
        if let Some(id) = self.configured(usage) {
            return Ok(id.to_string());
        }
        let cache = self.cache_file(&format!("storage.{}", usage.content()));
        if let Ok(id) = std::fs::read_to_string(&cache) {
            let id = id.trim();
            if is_storage_id(id) {
                return Ok(id.to_string());
            }
        }
        let (key, content) = (usage.key(), usage.content());
        match list()?.as_slice() {
            [] => Err(DriverError::NoStorage { key, content }),
            [one] => {
                self.remember(&cache, one.id.as_bytes());
                Ok(one.id.clone())
            }
            many => Err(DriverError::AmbiguousStorage {
                key,
                content,
                candidates: many.iter().map(|r| r.id.clone()).collect(),
            }),
        }
    }

    /// The storage a create would use for `usage`, chosen as a create
    /// chooses it, and the node's listing it was looked up in: `nexcage
    /// check` reports its state and space, with `pvesm` asked once.
    pub fn storage_in_use(
        &self,
        usage: StorageUse,
    ) -> Result<(String, Vec<StorageRow>), DriverError> {
        let rows = self.storages(usage)?;
        let id = self.choose_storage(usage, || Ok(rows.clone()))?;
        Ok((id, rows))
    }

    /// Where converted templates go (`template_storage`).
    pub fn template_storage(&self) -> Result<String, DriverError> {
        self.choose_storage(StorageUse::Templates, || {
            self.storages(StorageUse::Templates)
        })
    }

    /// Where root volumes go (`storage`).
    pub fn root_storage(&self) -> Result<String, DriverError> {
        self.choose_storage(StorageUse::Root, || self.storages(StorageUse::Root))
    }

    /// The type of root storage `id` (`pvesm status`), asked once and then
    /// remembered under the state root: root mode clone needs one whose
    /// volumes pve-storage can clone linked.
    pub fn storage_type(&self, id: &str) -> Result<String, DriverError> {
        let cache = self.cache_file(&format!("storage-type.{id}"));
        if let Ok(kind) = std::fs::read_to_string(&cache) {
            if !kind.trim().is_empty() {
                return Ok(kind.trim().to_string());
            }
        }
        let rows = self.storages(StorageUse::Root)?;
        let row = rows
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| DriverError::StorageList {
                key: StorageUse::Root.key(),
                message: format!("storage '{id}' is not an enabled storage for root volumes"),
            })?;
        self.remember(&cache, row.kind.as_bytes());
        Ok(row.kind.clone())
    }

    /// The template storage's directory, asked of `pvesm` once and then
    /// remembered under the state root.
    pub fn template_dir(&self, storage: &str) -> Result<PathBuf, DriverError> {
        let cache = self.cache_file(&format!("template-dir.{storage}"));
        if let Ok(dir) = std::fs::read_to_string(&cache) {
            let dir = PathBuf::from(dir.trim());
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        let err = |message: String| DriverError::TemplateDir {
            storage: storage.to_string(),
            message,
        };
        let out = self
            .tools
            .pvesm(["path", &format!("{storage}:vztmpl/nexcage-probe.tar.zst")])?;
        let file = PathBuf::from(out.trim());
        let dir = file
            .parent()
            .filter(|d| d.is_absolute())
            .ok_or_else(|| err(format!("pvesm printed {:?}", out.trim())))?
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        self.remember(&cache, dir.as_os_str().as_encoded_bytes());
        Ok(dir)
    }

    /// Whether the node's pct knows `host-managed` on netN (pve-container
    /// 6.0.15+). Asked once by a `pct create` that can only fail parameter
    /// verification (VMID 0), whose errors name `host-managed` only where
    /// the schema lacks it; remembered under the state root like the
    /// template directory.
    pub fn host_managed(&self) -> Result<bool, DriverError> {
        let cache = self.cache_file("host-managed");
        match std::fs::read_to_string(&cache).as_deref().map(str::trim) {
            Ok("1") => Ok(true),
            Ok("0") => Ok(false),
            _ => self.probe_host_managed(),
        }
    }

    /// The node's answer now, remembered for later creates (`nexcage
    /// check` asks afresh: pve-container may have been upgraded since).
    pub fn probe_host_managed(&self) -> Result<bool, DriverError> {
        let cache = self.cache_file("host-managed");
        let probe = format!("name=eth0,bridge={},host-managed=1", self.settings.bridge);
        // Never looked at: VMID 0 fails verification, so nothing is made.
        let volid = "local:vztmpl/nexcage-probe.tar.zst";
        let err = match self.tools.pct(["create", "0", volid, "--net0", &probe]) {
            Ok(out) => return Err(DriverError::HostManagedProbe(out)),
            // Not an answer about host-managed: pct itself cannot run.
            Err(e @ PctError::Spawn { .. }) => return Err(e.into()),
            Err(e) => e,
        };
        let stderr = err.stderr();
        let supported = probe_says_host_managed(stderr)
            .ok_or_else(|| DriverError::HostManagedProbe(stderr.trim().to_string()))?;
        self.remember(&cache, if supported { b"1" } else { b"0" });
        Ok(supported)
    }

    /// A remembered root storage may have gone from storage.cfg since: the
    /// next create asks the node again rather than failing the same way
    /// until someone deletes the file.
    pub fn forget_root_storage(&self) {
        let _ = std::fs::remove_file(self.cache_file("storage.rootdir"));
    }
}

/// What a storage is for, and so its content type and config.toml key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageUse {
    /// Root volumes: `rootdir`, `storage`.
    Root,
    /// Converted templates: `vztmpl`, `template_storage`.
    Templates,
}

impl StorageUse {
    pub fn content(self) -> &'static str {
        match self {
            StorageUse::Root => "rootdir",
            StorageUse::Templates => "vztmpl",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            StorageUse::Root => "storage",
            StorageUse::Templates => "template_storage",
        }
    }
}

/// One row of `pvesm status` (pvesm.pm print_status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRow {
    pub id: String,
    /// The plugin type (`dir`, `lvmthin`, `zfspool`, ...).
    pub kind: String,
    /// `active`, or why not (`inactive`, `disabled`).
    pub status: String,
    pub total_kib: u64,
    pub available_kib: u64,
}

/// The rows of a `pvesm status` table: a header line starting with `Name`,
/// then `Name Type Status Total Used Available %` per storage.
fn storage_rows(out: &str) -> Result<Vec<StorageRow>, String> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        Some(h) if h.split_whitespace().next() == Some("Name") => {}
        other => {
            return Err(format!(
                "pvesm status printed {:?} as its header",
                other.unwrap_or("")
            ))
        }
    }
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [id, kind, status, total, _used, avail, ..] if is_storage_id(id) => {
                    Ok(StorageRow {
                        id: id.to_string(),
                        kind: kind.to_string(),
                        status: status.to_string(),
                        // Sizes only inform `nexcage check`; a create must
                        // not fail over them.
                        total_kib: total.parse().unwrap_or(0),
                        available_kib: avail.parse().unwrap_or(0),
                    })
                }
                _ => Err(format!("pvesm status printed {l:?}")),
            }
        })
        .collect()
}

/// What pct's parameter verification of the probe says: every failing
/// parameter gets a line, so `host-managed` is named only where netN lacks
/// it, and `vmid` always. Anything else is not an answer.
fn probe_says_host_managed(stderr: &str) -> Option<bool> {
    if stderr.contains("host-managed") {
        Some(false)
    } else if stderr.contains("vmid: ") {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvesm_status_rows_give_state_and_space() {
        let out = "Name             Type     Status     Total (KiB)      Used (KiB) Available (KiB)        %\nlocal-lvm     lvmthin     active        20971520         1048576        19922944    5.00%\nold            dir   inactive               0               0               0    0.00%\n";
        let rows = storage_rows(out).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "local-lvm");
        assert_eq!(rows[0].kind, "lvmthin");
        assert_eq!(rows[0].available_kib, 19922944);
        assert_eq!(rows[0].total_kib, 20971520);
        assert_eq!(rows[1].status, "inactive");
        assert!(storage_rows("garbage\n").is_err());
        assert!(storage_rows("Name Type\nlocal dir\n").is_err());
    }

    #[test]
    fn the_host_managed_probe_reads_pcts_verification_errors() {
        let new =
            "400 Parameter verification failed.\nvmid: value does not look like a valid VM ID\n";
        let old = "400 Parameter verification failed.\nnet0: invalid format - invalid key in comma-separated list property: host-managed\nvmid: value does not look like a valid VM ID\n";
        assert_eq!(probe_says_host_managed(new), Some(true));
        assert_eq!(probe_says_host_managed(old), Some(false));
        assert_eq!(probe_says_host_managed("permission denied"), None);
        // As PctError hands it over: lines joined.
        assert_eq!(
            probe_says_host_managed(&new.trim().replace('\n', "; ")),
            Some(true)
        );
    }
}
