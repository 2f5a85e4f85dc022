//! Root mode `clone`: one base guest per template, made a Proxmox template
//! (`pct template`), of which every container is a linked clone (`pct
//! clone`): a thin snapshot of the base's root volume instead of an unpack
//! of the archive per container (docs/architecture.md, "Root modes").
//!
//! A base is fixed by what `pct clone` cannot change afterwards: the
//! template it was unpacked from, `unprivileged` (the unpack shifts the
//! files' owners), the root storage and the root volume's size. Each base has
//! a directory under `<state root>/~nexcage/bases/<key>/`: its VMID
//! reservation names it (so the allocator never takes it over while it
//! exists), `base.json` holds its VMID, and `lock` is flocked while it is
//! made or removed. Creates run under the template's shared lock and removal
//! (prune, eviction, a failed create's discard) under its exclusive lock, so
//! a base never goes while a create clones it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::pct::{PctError, Tools};
use super::vmid::{Allocator, VmidError};
use crate::fsutil::{own_path, write_atomic, FileError};

/// Storage types whose container volumes pve-storage can clone linked
/// (`volume_has_feature(clone)` for a base volume): LVM-thin, ZFS, Ceph RBD
/// and btrfs. Not dir, NFS, CIFS or LVM (thick).
pub const LINKED_CLONE_TYPES: &[&str] = &["lvmthin", "zfspool", "rbd", "btrfs"];

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("base guest {vmid} for template {template}: {source}")]
    Pct {
        vmid: u32,
        template: String,
        source: PctError,
    },
    #[error(transparent)]
    Vmid(#[from] VmidError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("base guest {vmid} for template {template}: pct template left it no template")]
    NotTemplate { vmid: u32, template: String },
}

/// What a base is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseKey {
    /// The template's file name (`nexcage-<fingerprint>.tar.zst`).
    pub template: String,
    pub volid: String,
    pub unprivileged: bool,
    pub storage: String,
    /// The root volume's size as pct takes it (GiB).
    pub size: String,
}

impl BaseKey {
    /// A directory name: the template's fingerprint and the fixed settings.
    /// Storage ids and sizes are `[a-zA-Z0-9._-]` (pve's storage-id format
    /// and a number), so the name needs no escaping.
    fn dir_name(&self) -> String {
        let stem = self.template.trim_end_matches(".tar.zst");
        let u = if self.unprivileged { "u" } else { "p" };
        format!("{stem}.{u}.{}.{}", self.storage, self.size)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    vmid: u32,
    template: String,
}

pub struct Bases<'a> {
    pub tools: &'a Tools,
    pub alloc: Allocator<'a>,
    pub state_root: &'a Path,
    /// Where `<vmid>.conf` is: a base whose conf is gone (an admin's
    /// destroy) is made again.
    pub conf_dir: &'a Path,
}

impl Bases<'_> {
    fn root(&self) -> PathBuf {
        own_path(self.state_root, "bases")
    }

    /// The VMID of the base for `key`, made now if there is none:
    /// `create_args(vmid)` is its `pct create`, then `pct template`. A
    /// failure destroys what was made and frees the VMID. The base's lock
    /// comes with it, to be held while the caller clones it: `pct clone`
    /// takes the source's `disk` lock, so a second clone of the same base
    /// at the same time would fail with "CT is locked (disk)".
    pub fn ensure(
        &self,
        key: &BaseKey,
        create_args: impl Fn(u32) -> Vec<String>,
    ) -> Result<(u32, Flock<File>), BaseError> {
        let dir = self.root().join(key.dir_name());
        mkdir(&dir)?;
        let lock = lock(&dir)?;
        let record = dir.join("base.json");
        if let Some(vmid) = read(&record).map(|r| r.vmid) {
            if is_template(&self.conf_dir.join(format!("{vmid}.conf"))) {
                return Ok((vmid, lock));
            }
            // Made by us, then destroyed or never finished: make it again.
            self.destroy(vmid, &key.template)?;
            let _ = fs::remove_file(&record);
        }
        let owner = dir
            .strip_prefix(self.state_root)
            .unwrap_or(&dir)
            .to_string_lossy()
            .into_owned();
        let reservation = self.alloc.reserve(&owner, &Default::default())?;
        let vmid = reservation.vmid;
        let conf = self.conf_dir.join(format!("{vmid}.conf"));
        let made = (|| {
            // Recorded before it exists: a create killed from here on leaves
            // a record the next one (or prune) destroys the guest by.
            let text = serde_json::to_vec(&Record {
                vmid,
                template: key.template.clone(),
            })
            .expect("record serializes");
            write_atomic(&record, &text, 0o600)?;
            self.pct(vmid, &key.template, create_args(vmid))?;
            self.pct(
                vmid,
                &key.template,
                vec!["template".into(), vmid.to_string()],
            )?;
            // pct template runs its work as a task: a failure there is
            // printed, but pct still exits 0 (API2 `template` returns undef).
            if !is_template(&conf) {
                return Err(BaseError::NotTemplate {
                    vmid,
                    template: key.template.clone(),
                });
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok((reservation.keep(), lock)),
            Err(e) => {
                match self.destroy(vmid, &key.template) {
                    Ok(()) => {
                        let _ = fs::remove_file(&record);
                    }
                    Err(undo) => {
                        // The record stays, so the next create or prune
                        // destroys the guest; the VMID stays ours till then.
                        reservation.keep();
                        tracing::warn!(vmid, error = %undo, "cannot destroy the failed base");
                    }
                }
                Err(e)
            }
        }
    }

    /// The bases made from template `name`.
    pub fn of_template(&self, name: &str) -> Vec<(PathBuf, u32)> {
        let Ok(rd) = fs::read_dir(self.root()) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, u32)> = rd
            .flatten()
            .filter_map(|e| {
                let r = read(&e.path().join("base.json"))?;
                (r.template == name).then_some((e.path(), r.vmid))
            })
            .collect();
        out.sort_by_key(|(_, v)| *v);
        out
    }

    /// Destroy every base of template `name`; the caller holds the
    /// template's exclusive lock, so no create clones them meanwhile.
    /// Ok(false) if pve-storage keeps one (ZFS refuses to free a base
    /// volume its linked clones still use): the template stays too.
    pub fn remove_template(&self, name: &str) -> Result<bool, BaseError> {
        let mut all = true;
        for (dir, vmid) in self.of_template(name) {
            let _lock = lock(&dir)?;
            match self.destroy(vmid, name) {
                Ok(()) => {
                    let _ = fs::remove_dir_all(&dir);
                }
                Err(BaseError::Pct { source, .. })
                    if source.stderr().contains("in use by linked clone") =>
                {
                    tracing::debug!(vmid, "base kept: its linked clones use it");
                    all = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }

    fn destroy(&self, vmid: u32, template: &str) -> Result<(), BaseError> {
        self.tools
            .destroy(vmid)
            .map_err(pct_error(vmid, template))?;
        self.alloc.release(vmid);
        Ok(())
    }

    fn pct(&self, vmid: u32, template: &str, args: Vec<String>) -> Result<(), BaseError> {
        self.tools
            .pct(args)
            .map(drop)
            .map_err(pct_error(vmid, template))
    }
}

fn pct_error(vmid: u32, template: &str) -> impl FnOnce(PctError) -> BaseError + '_ {
    move |source| BaseError::Pct {
        vmid,
        template: template.to_string(),
        source,
    }
}

fn mkdir(dir: &Path) -> Result<(), BaseError> {
    fs::create_dir_all(dir).map_err(|source| BaseError::Io {
        what: "create",
        path: dir.to_path_buf(),
        source,
    })
}

fn lock(dir: &Path) -> Result<Flock<File>, BaseError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BaseError::Io {
            what: "open",
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| BaseError::Io {
        what: "lock",
        path,
        source: e.into(),
    })
}

fn read(record: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(record).ok()?).ok()
}

/// `template: 1` in a guest's conf (before any snapshot section).
fn is_template(conf: &Path) -> bool {
    fs::read_to_string(conf).is_ok_and(|text| {
        text.lines().take_while(|l| !l.starts_with('[')).any(|l| {
            l.split_once(':')
                .is_some_and(|(k, v)| k.trim() == "template" && v.trim() == "1")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_is_named_by_what_a_clone_cannot_change() {
        let key = BaseKey {
            template: "nexcage-0123abcd.tar.zst".into(),
            volid: "local:vztmpl/nexcage-0123abcd.tar.zst".into(),
            unprivileged: true,
            storage: "local-lvm".into(),
            size: "2".into(),
        };
        assert_eq!(key.dir_name(), "nexcage-0123abcd.u.local-lvm.2");
        let privileged = BaseKey {
            unprivileged: false,
            ..key.clone()
        };
        assert_ne!(privileged.dir_name(), key.dir_name());
    }

    #[test]
    fn only_a_conf_saying_template_1_is_a_template() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("100.conf");
        assert!(!is_template(&conf));
        fs::write(&conf, "arch: amd64\ntemplate: 1\n").unwrap();
        assert!(is_template(&conf));
        fs::write(&conf, "arch: amd64\n\n[snap]\ntemplate: 1\n").unwrap();
        assert!(!is_template(&conf));
        fs::write(&conf, "template: 0\n").unwrap();
        assert!(!is_template(&conf));
    }
}
