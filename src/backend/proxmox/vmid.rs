//! VMID allocation. Proxmox ids are cluster-wide and `pvesh get /cluster/nextid`
//! does not reserve anything, so nexcage picks a candidate from the cluster's
//! own list (`/etc/pve/.vmlist`, read directly: no Perl start-up), reserves it
//! among nexcage processes with an exclusively created file, and lets
//! `pct create` arbitrate for the rest of the cluster: "already exists" means
//! "take the next one".

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::pct::{PctError, Tools};
use super::settings::ProxmoxSettings;
use crate::fsutil::{own_path, write_atomic};

/// Proxmox's own bounds for a guest id.
pub const MIN: u32 = 100;
pub const MAX: u32 = 999_999_999;
/// The file among the reservations that holds the last id handed out; not a number,
/// so never mistaken for a reservation.
const CURSOR_FILE: &str = "cursor";
/// The datacenter default for `next-id: upper=` (exclusive).
const DEFAULT_UPPER: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum VmidError {
    #[error("no free VMID in {lo}..={hi}")]
    Exhausted { lo: u32, hi: u32 },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find a free VMID: {0}")]
    NextId(#[from] PctError),
}

/// Inclusive range: the configuration's, else the datacenter's `next-id`.
pub fn range(settings: &ProxmoxSettings) -> (u32, u32) {
    let (mut lo, mut hi) = (MIN, DEFAULT_UPPER - 1);
    if let Ok(text) = fs::read_to_string(&settings.datacenter_cfg) {
        if let Some((l, u)) = parse_next_id(&text) {
            lo = l.unwrap_or(lo);
            hi = u.map(|u| u.saturating_sub(1)).unwrap_or(hi);
        }
    }
    let lo = settings.vmid_min.unwrap_or(lo).max(MIN);
    let hi = settings.vmid_max.unwrap_or(hi).min(MAX);
    (lo, hi)
}

/// `next-id: lower=100,upper=1000000` from datacenter.cfg (upper is exclusive).
fn parse_next_id(text: &str) -> Option<(Option<u32>, Option<u32>)> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("next-id:"))?;
    let (mut lo, mut hi) = (None, None);
    for kv in line.trim().split(',') {
        match kv.split_once('=') {
            Some(("lower", v)) => lo = v.trim().parse().ok(),
            Some(("upper", v)) => hi = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some((lo, hi))
}

/// Ids of every guest in the cluster, from `.vmlist`.
pub fn used_ids(vmlist: &Path) -> Result<BTreeSet<u32>, VmidError> {
    let text = fs::read_to_string(vmlist).map_err(|source| VmidError::Io {
        what: "read",
        path: vmlist.to_path_buf(),
        source,
    })?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| VmidError::Io {
        what: "parse",
        path: vmlist.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(doc
        .get("ids")
        .and_then(|ids| ids.as_object())
        .map(|ids| ids.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default())
}

/// A VMID held by one nexcage container: `<root>/~nexcage/vmids/<vmid>`
/// names it.
/// Dropped without `keep`, the reservation is released.
#[derive(Debug)]
pub struct Reservation {
    pub vmid: u32,
    path: PathBuf,
    kept: bool,
}

impl Reservation {
    /// The container now owns the id; `release` frees it at delete.
    pub fn keep(mut self) -> u32 {
        self.kept = true;
        self.vmid
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Where the reservations are, out of the container id namespace.
pub fn reservations_dir(state_root: &Path) -> PathBuf {
    own_path(state_root, "vmids")
}

/// The VMIDs reserved for container `id`: normally one; more only if
/// something went wrong between reserving and recording.
pub fn reserved_for(state_root: &Path, id: &str) -> Vec<u32> {
    let dir = reservations_dir(state_root);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let vmid: u32 = e.file_name().to_str()?.parse().ok()?;
            (fs::read(e.path()).ok()? == id.as_bytes()).then_some(vmid)
        })
        .collect();
    ids.sort_unstable();
    ids
}

pub struct Allocator<'a> {
    settings: &'a ProxmoxSettings,
    tools: &'a Tools,
    dir: PathBuf,
    state_root: PathBuf,
}

impl<'a> Allocator<'a> {
    pub fn new(settings: &'a ProxmoxSettings, tools: &'a Tools, state_root: &Path) -> Self {
        Allocator {
            settings,
            tools,
            dir: reservations_dir(state_root),
            state_root: state_root.to_path_buf(),
        }
    }

    /// Where the last id handed out is remembered.
    fn cursor_path(&self) -> PathBuf {
        self.dir.join(CURSOR_FILE)
    }

    /// The id after the last one handed out, as the kernel hands out pids:
    /// a guest whose start failed can leave LXC's monitor cgroup of its id
    /// busy for a while, so the very next create must not get that id again.
    fn first_candidate(&self, lo: u32, hi: u32) -> u32 {
        let last = fs::read_to_string(self.cursor_path())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        match last {
            Some(last) if last >= lo && last < hi => last + 1,
            _ => lo,
        }
    }

    fn remember(&self, vmid: u32) {
        // Only a hint: losing it costs nothing but the rotation.
        if let Err(e) = write_atomic(&self.cursor_path(), vmid.to_string().as_bytes(), 0o644) {
            tracing::debug!("cannot remember VMID {vmid}: {e}");
        }
    }

    /// Reserve the next free id not in `skip` for container `owner`,
    /// rotating through the range from the last id handed out.
    pub fn reserve(&self, owner: &str, skip: &BTreeSet<u32>) -> Result<Reservation, VmidError> {
        fs::create_dir_all(&self.dir).map_err(|source| VmidError::Io {
            what: "create",
            path: self.dir.clone(),
            source,
        })?;
        let (lo, hi) = range(self.settings);
        let mut used = match used_ids(&self.settings.vmlist) {
            Ok(ids) => ids,
            Err(e) => {
                // Not on a cluster filesystem we can read: ask the API (slow).
                tracing::debug!("{e}; asking pvesh");
                let next: u32 = self
                    .tools
                    .pvesh(["get", "/cluster/nextid"])?
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .unwrap_or(lo);
                (lo..next).collect()
            }
        };
        used.extend(skip);
        let start = self.first_candidate(lo, hi);
        for candidate in (start..=hi).chain(lo..start) {
            if used.contains(&candidate) {
                continue;
            }
            let path = self.dir.join(candidate.to_string());
            match self.try_claim(&path, owner) {
                Ok(true) => {
                    self.remember(candidate);
                    return Ok(Reservation {
                        vmid: candidate,
                        path,
                        kept: false,
                    });
                }
                Ok(false) => {}
                Err(source) => {
                    return Err(VmidError::Io {
                        what: "reserve",
                        path,
                        source,
                    })
                }
            }
        }
        Err(VmidError::Exhausted { lo, hi })
    }

    /// Exclusive creation is the lock. A reservation whose container directory
    /// is gone was left by a crash and is taken over.
    fn try_claim(&self, path: &Path, owner: &str) -> std::io::Result<bool> {
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    // An empty reservation names no container, so nothing
                    // would ever free it: a failed write (ENOSPC) takes the
                    // file back out.
                    if let Err(e) = f.write_all(owner.as_bytes()) {
                        drop(f);
                        let _ = fs::remove_file(path);
                        return Err(e);
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(path).unwrap_or_default();
                    if holder.is_empty() || self.state_root.join(&holder).is_dir() {
                        return Ok(false);
                    }
                    fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Free the id of a deleted container.
    pub fn release(&self, vmid: u32) {
        let _ = fs::remove_file(self.dir.join(vmid.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> ProxmoxSettings {
        ProxmoxSettings {
            vmlist: dir.join(".vmlist"),
            datacenter_cfg: dir.join("datacenter.cfg"),
            pvesh: "/nonexistent/pvesh".into(),
            ..Default::default()
        }
    }

    #[test]
    fn datacenter_range_is_honoured_and_upper_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path());
        assert_eq!(range(&s), (100, 999_999));
        fs::write(
            &s.datacenter_cfg,
            "keyboard: en-us\nnext-id: lower=5000,upper=6000\n",
        )
        .unwrap();
        assert_eq!(range(&s), (5000, 5999));
        s.vmid_min = Some(5500);
        assert_eq!(range(&s), (5500, 5999));
    }

    #[test]
    fn ids_rotate_through_the_range_instead_of_reusing_the_lowest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path());
        s.vmid_min = Some(300);
        s.vmid_max = Some(302);
        // pmxcfs writes no "ids" key at all when the cluster has no guest.
        fs::write(&s.vmlist, "{\n\"version\": 7\n}\n").unwrap();
        let tools = Tools::from_settings(&s);
        let root = tmp.path().join("state");
        fs::create_dir_all(root.join("c")).unwrap();
        let alloc = Allocator::new(&s, &tools, &root);
        let mut got = Vec::new();
        for _ in 0..4 {
            let r = alloc.reserve("c", &BTreeSet::new()).unwrap();
            got.push(r.vmid);
            // Dropped: released at once, as after a failed create.
        }
        assert_eq!(
            got,
            [300, 301, 302, 300],
            "a freed id is not handed out next"
        );
        // A cursor outside the range (the range was changed) starts over.
        fs::write(reservations_dir(&root).join("cursor"), "999").unwrap();
        assert_eq!(alloc.reserve("c", &BTreeSet::new()).unwrap().vmid, 300);
    }

    #[test]
    fn lowest_id_not_in_vmlist_nor_reserved_is_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        fs::write(
            &s.vmlist,
            r#"{"version":3,"ids":{"100":{"node":"a","type":"lxc","version":1},"101":{"node":"b","type":"qemu","version":2}}}"#,
        )
        .unwrap();
        let tools = Tools::from_settings(&s);
        let root = tmp.path().join("state");
        fs::create_dir_all(root.join("c1")).unwrap();
        fs::create_dir_all(root.join("c2")).unwrap();
        let alloc = Allocator::new(&s, &tools, &root);
        let a = alloc.reserve("c1", &BTreeSet::new()).unwrap();
        assert_eq!(a.vmid, 102);
        let b = alloc.reserve("c2", &BTreeSet::new()).unwrap();
        assert_eq!(b.vmid, 103, "a held reservation is not handed out twice");
        let c = alloc.reserve("c2", &BTreeSet::from([104, 105])).unwrap();
        assert_eq!(c.vmid, 106, "ids pct refused are skipped");
        drop(c);
        let kept = a.keep();
        assert!(reservations_dir(&root).join("102").exists());
        alloc.release(kept);
        assert!(!reservations_dir(&root).join("102").exists());
    }

    #[test]
    fn stale_reservation_of_a_vanished_container_is_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        fs::write(&s.vmlist, r#"{"version":1,"ids":{}}"#).unwrap();
        let tools = Tools::from_settings(&s);
        let root = tmp.path().join("state");
        fs::create_dir_all(reservations_dir(&root)).unwrap();
        fs::write(reservations_dir(&root).join("100"), "gone").unwrap();
        fs::create_dir_all(root.join("new")).unwrap();
        let alloc = Allocator::new(&s, &tools, &root);
        assert_eq!(alloc.reserve("new", &BTreeSet::new()).unwrap().vmid, 100);
    }

    #[test]
    fn a_reservation_that_cannot_be_written_is_not_left_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        fs::write(&s.vmlist, r#"{"version":1,"ids":{}}"#).unwrap();
        let tools = Tools::from_settings(&s);
        let root = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        // A full file system: a tiny tmpfs, filled up once .vmids exists.
        nix::mount::mount(
            Some("tmpfs"),
            &root,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _unmount = Unmount(&root);
        fs::create_dir_all(reservations_dir(&root)).unwrap();
        fs::create_dir(root.join("c1")).unwrap();
        let mut fill = fs::File::create(root.join("fill")).unwrap();
        while fill.write_all(&[0u8; 4096]).is_ok() {}
        drop(fill);

        let alloc = Allocator::new(&s, &tools, &root);
        let e = alloc.reserve("c1", &BTreeSet::new()).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        assert!(
            !reservations_dir(&root).join("100").exists(),
            "an empty reservation was left"
        );
    }

    #[test]
    fn reservations_are_found_by_the_container_they_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = reservations_dir(tmp.path());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("100"), "a").unwrap();
        fs::write(dir.join("101"), "ab").unwrap();
        fs::write(dir.join("102"), "a").unwrap();
        fs::write(dir.join(CURSOR_FILE), "a").unwrap();
        assert_eq!(reserved_for(tmp.path(), "a"), [100, 102]);
        assert!(reserved_for(tmp.path(), "b").is_empty());
    }

    #[test]
    fn exhausted_range_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path());
        s.vmid_min = Some(200);
        s.vmid_max = Some(201);
        fs::write(&s.vmlist, r#"{"version":1,"ids":{"200":{},"201":{}}}"#).unwrap();
        let tools = Tools::from_settings(&s);
        let alloc = Allocator::new(&s, &tools, tmp.path());
        let err = alloc.reserve("x", &BTreeSet::new()).unwrap_err();
        assert_eq!(err.to_string(), "no free VMID in 200..=201");
    }
}
