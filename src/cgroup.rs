//! The guest's cgroups, read and written directly on the host. `ps`,
//! `kill --all`, `pause`/`resume`, `events --stats` and the pids limit of
//! `update` go here instead of through pct: a pct run starts a Perl
//! interpreter (hundreds of ms), a cgroup file costs microseconds.
//!
//! The guest is found from its init's host pid: /proc/<pid>/cgroup names its
//! cgroup in every hierarchy, and /proc/self/mountinfo says where each
//! hierarchy is mounted. Legacy (v1), hybrid and unified (v2) layouts work.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs::unescape_mount_field;
use crate::procfs::ProcRef;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read the cgroups of pid {pid}: {source}")]
    Discover { pid: i32, source: std::io::Error },
    #[error("container {0}: its init is not running")]
    NoInit(String),
    #[error("pid {pid} has no {what} cgroup on this host")]
    Missing { pid: i32, what: &'static str },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the freezer did not reach {want} within {secs} s")]
    FreezeTimeout {
        path: PathBuf,
        want: &'static str,
        secs: u64,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How long a freeze or thaw may take before we give up.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// One guest's cgroup directories on the host.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pid: i32,
    /// v1 hierarchies: the controllers (or `name=...`) of each, and the
    /// guest's directory in it.
    v1: Vec<(Vec<String>, PathBuf)>,
    /// The guest's directory in the unified hierarchy, if mounted.
    unified: Option<PathBuf>,
}

/// A cgroup mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    v2: bool,
    /// Super options of a v1 mount (controller names among them).
    options: Vec<String>,
}

impl Cgroup {
    /// The cgroups of the guest whose init has host pid `pid`.
    pub fn of(pid: i32) -> Result<Cgroup, CgroupError> {
        let discover = |source| CgroupError::Discover { pid, source };
        let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(discover)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(discover)?;
        Ok(Cgroup::from_tables(
            pid,
            &table,
            &parse_mountinfo(&mountinfo),
        ))
    }

    fn from_tables(pid: i32, table: &str, mounts: &[Mount]) -> Cgroup {
        let mut cg = Cgroup {
            pid,
            v1: Vec::new(),
            unified: None,
        };
        for line in table.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = container_path(path);
            if controllers.is_empty() {
                if let Some(m) = mounts.iter().find(|m| m.v2) {
                    cg.unified = m.locate(path);
                }
                continue;
            }
            let names: Vec<String> = controllers.split(',').map(str::to_string).collect();
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && names.iter().all(|n| m.options.contains(n)));
            if let Some(dir) = mount.and_then(|m| m.locate(path)) {
                cg.v1.push((names, dir));
            }
        }
        cg
    }

    /// The guest's directory of a v1 controller.
    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(names, _)| names.iter().any(|n| n == controller))
            .map(|(_, d)| d.as_path())
    }

    /// A controller file: the v1 one if that controller is mounted on its
    /// own hierarchy, else the unified one when the controller is enabled there.
    fn file(&self, controller: &str, v1: &str, v2: &str) -> Option<PathBuf> {
        if let Some(dir) = self.v1_dir(controller) {
            return Some(dir.join(v1));
        }
        let dir = self.unified.as_ref()?;
        let p = dir.join(v2);
        p.exists().then_some(p)
    }

    /// Host pids of every process in the guest, sorted. Read from the pids
    /// hierarchy (or any other one holding the guest) and every cgroup below.
    pub fn procs(&self) -> Vec<i32> {
        let dir = self
            .v1_dir("pids")
            .or_else(|| self.v1_dir("freezer"))
            .or(self.unified.as_deref())
            .or_else(|| self.v1.first().map(|(_, d)| d.as_path()));
        let mut pids = Vec::new();
        if let Some(dir) = dir {
            collect_procs(dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Freeze every process of the guest; returns once the kernel says frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    /// v1's freezer when the host has it (LXC's own lxc-freeze uses that one
    /// on a hybrid host), else v2's cgroup.freeze.
    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        match self.set_frozen_inner(frozen) {
            // A thawed guest may end at once (a pending SIGKILL) and LXC
            // removes its cgroup: gone is as thawed as it gets.
            Err(CgroupError::Io { source, .. })
                if !frozen && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            r => r,
        }
    }

    fn set_frozen_inner(&self, frozen: bool) -> Result<(), CgroupError> {
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        if let Some(dir) = self.v1_dir("freezer") {
            let path = dir.join("freezer.state");
            let want = if frozen { "FROZEN" } else { "THAWED" };
            loop {
                // Writing again is how v1 retries a FREEZING that got stuck
                // on a task in the middle of a fork (runc does the same).
                std::fs::write(&path, want).map_err(io("write", &path))?;
                let now = std::fs::read_to_string(&path).map_err(io("read", &path))?;
                if now.trim() == want {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(CgroupError::FreezeTimeout {
                        path,
                        want,
                        secs: FREEZE_TIMEOUT.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let dir = self.unified.as_ref().ok_or(CgroupError::Missing {
            pid: self.pid,
            what: "freezer",
        })?;
        let path = dir.join("cgroup.freeze");
        std::fs::write(&path, if frozen { "1" } else { "0" }).map_err(io("write", &path))?;
        let events = dir.join("cgroup.events");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        loop {
            let text = std::fs::read_to_string(&events).map_err(io("read", &events))?;
            if text.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout {
                    path,
                    want: if frozen { "frozen" } else { "thawed" },
                    secs: FREEZE_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Set pids.max; None (or a limit <= 0, as runc reads it) means no limit.
    pub fn set_pids_max(&self, limit: Option<i64>) -> Result<(), CgroupError> {
        let path = self
            .file("pids", "pids.max", "pids.max")
            .ok_or(CgroupError::Missing {
                pid: self.pid,
                what: "pids",
            })?;
        let value = match limit {
            Some(n) if n > 0 => n.to_string(),
            _ => "max".to_string(),
        };
        std::fs::write(&path, value).map_err(io("write", &path))
    }

    /// runc's `events --stats` figures that a Proxmox guest has.
    pub fn stats(&self) -> Stats {
        let num = |p: Option<PathBuf>| -> Option<u64> {
            let text = std::fs::read_to_string(p?).ok()?;
            parse_limit(text.trim())
        };
        let keyed = |p: Option<PathBuf>, key: &str| -> Option<u64> {
            let text = std::fs::read_to_string(p?).ok()?;
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        };
        let cpu = if self.v1_dir("cpuacct").is_some() {
            let ticks = |key| {
                // cpuacct.stat counts USER_HZ ticks (100 per second).
                keyed(self.file("cpuacct", "cpuacct.stat", ""), key).map(|t| t * 10_000_000)
            };
            CpuUsage {
                total: num(self.file("cpuacct", "cpuacct.usage", "")).unwrap_or(0),
                kernel: ticks("system").unwrap_or(0),
                user: ticks("user").unwrap_or(0),
            }
        } else {
            let stat = self.unified.as_ref().map(|d| d.join("cpu.stat"));
            let usec = |key| keyed(stat.clone(), key).map(|u| u * 1000).unwrap_or(0);
            CpuUsage {
                total: usec("usage_usec"),
                kernel: usec("system_usec"),
                user: usec("user_usec"),
            }
        };
        let memory = MemoryEntry {
            usage: num(self.file("memory", "memory.usage_in_bytes", "memory.current")).unwrap_or(0),
            max: num(self.file("memory", "memory.max_usage_in_bytes", "memory.peak")).unwrap_or(0),
            limit: num(self.file("memory", "memory.limit_in_bytes", "memory.max"))
                .unwrap_or(u64::MAX),
            failcnt: num(self.file("memory", "memory.failcnt", "")).unwrap_or(0),
        };
        let pids = Pids {
            current: num(self.file("pids", "pids.current", "pids.current"))
                .unwrap_or_else(|| self.procs().len() as u64),
            // runc reports "max" (no limit) as 0.
            limit: num(self.file("pids", "pids.max", "pids.max"))
                .filter(|&l| l != u64::MAX)
                .unwrap_or(0),
        };
        Stats {
            cpu: Cpu {
                usage: cpu,
                throttling: Throttling::default(),
            },
            memory: Memory { usage: memory },
            pids,
        }
    }
}

/// The cgroups of container `id`'s guest, found from its init.
pub fn of_init(id: &str, init: Option<ProcRef>) -> Result<Cgroup, CgroupError> {
    let init = init
        .filter(|i| i.is_alive())
        .ok_or_else(|| CgroupError::NoInit(id.to_string()))?;
    Cgroup::of(init.pid)
}

/// Proxmox puts a guest's processes into `/lxc/<vmid>/ns` (LXC's inner
/// cgroup, `lxc.cgroup.dir.container.inner`) while lxc-attach sessions land
/// beside it; the guest is the parent, `/lxc/<vmid>`.
fn container_path(path: &str) -> &str {
    path.strip_suffix("/ns")
        .filter(|p| !p.is_empty())
        .unwrap_or(path)
}

impl Mount {
    /// The host directory of cgroup `path` in this hierarchy.
    fn locate(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str())?
        };
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rel.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rel)
        })
    }
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (pre.get(3), pre.get(4), post.first()) else {
            continue;
        };
        let v2 = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        mounts.push(Mount {
            root: unescape(root),
            point: unescape_mount_field(point),
            v2,
            options: post
                .get(2)
                .map(|o| o.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        });
    }
    mounts
}

/// A mount root as text (cgroup paths are compared as strings).
fn unescape(s: &str) -> String {
    unescape_mount_field(s).to_string_lossy().into_owned()
}

/// A number, or "max" (no limit) as u64::MAX.
fn parse_limit(s: &str) -> Option<u64> {
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

/// cgroup.procs of `dir` and of every cgroup below it.
fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        // Cgroup directories are real directories, never symlinks.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&entry.path(), out);
        }
    }
}

/// The `data` of runc's stats event (the parts a Proxmox guest has).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds, as runc reports them.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUsage {
    pub total: u64,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Throttling {}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub usage: MemoryEntry,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pids {
    pub current: u64,
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid shared:15 - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/freezer rw,nosuid shared:16 - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/systemd rw shared:17 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn hybrid_layout_maps_each_controller_to_its_mount() {
        let table = "\
9:name=systemd:/lxc/150
8:pids:/lxc/150
6:freezer:/lxc/150
1:cpu,cpuacct:/lxc/150
0::/lxc/150/ns
";
        let cg = Cgroup::from_tables(7, table, &parse_mountinfo(HYBRID));
        assert_eq!(
            cg.v1_dir("pids"),
            Some(Path::new("/sys/fs/cgroup/pids/lxc/150"))
        );
        assert_eq!(
            cg.v1_dir("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/lxc/150"))
        );
        assert_eq!(
            cg.v1_dir("name=systemd"),
            Some(Path::new("/sys/fs/cgroup/systemd/lxc/150"))
        );
        // Proxmox's inner "ns" cgroup: the guest is its parent.
        assert_eq!(
            cg.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/lxc/150"))
        );
        assert_eq!(cg.v1_dir("memory"), None);
    }

    /// A PVE 9 node: cgroup v2 only, the guest's processes in lxc/<vmid>/ns.
    /// This development host has v1 controllers, so the v2 paths are proven
    /// over a tree of plain files laid out as the kernel's.
    #[test]
    fn pure_v2_node_uses_the_limiting_cgroup_above_ns() {
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path();
        let guest = mnt.join("lxc/150");
        std::fs::create_dir_all(guest.join("ns")).unwrap();
        let put = |rel: &str, text: &str| std::fs::write(guest.join(rel), text).unwrap();
        put("cgroup.procs", "");
        put("ns/cgroup.procs", "4242\n4243\n");
        put("cgroup.freeze", "0\n");
        put("cgroup.events", "populated 1\nfrozen 1\n");
        put("pids.max", "max\n");
        put("pids.current", "2\n");
        put("memory.current", "1000\n");
        put("memory.peak", "2000\n");
        put("memory.max", "268435456\n");
        put("cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\n");
        let mountinfo = format!(
            "30 25 0:26 / {} rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n",
            mnt.display()
        );
        let cg = Cgroup::from_tables(4242, "0::/lxc/150/ns\n", &parse_mountinfo(&mountinfo));
        assert_eq!(cg.unified.as_deref(), Some(guest.as_path()));

        assert_eq!(cg.procs(), vec![4242, 4243], "the inner level's processes");
        let st = cg.stats();
        assert_eq!(st.memory.usage.limit, 268435456);
        assert_eq!((st.memory.usage.usage, st.memory.usage.max), (1000, 2000));
        assert_eq!(st.cpu.usage.total, 5000);
        assert_eq!((st.pids.current, st.pids.limit), (2, 0));

        cg.set_pids_max(Some(77)).unwrap();
        assert_eq!(
            std::fs::read_to_string(guest.join("pids.max")).unwrap(),
            "77"
        );
        assert!(
            !guest.join("ns/pids.max").exists(),
            "not the guest's own level"
        );

        cg.freeze().unwrap();
        assert_eq!(
            std::fs::read_to_string(guest.join("cgroup.freeze")).unwrap(),
            "1"
        );
        put("cgroup.events", "populated 1\nfrozen 0\n");
        cg.thaw().unwrap();
        assert_eq!(
            std::fs::read_to_string(guest.join("cgroup.freeze")).unwrap(),
            "0"
        );
    }

    #[test]
    fn mount_roots_other_than_slash_are_stripped_and_dotdot_refused() {
        let m = Mount {
            root: "/a".into(),
            point: "/mnt/cg".into(),
            v2: true,
            options: vec![],
        };
        assert_eq!(m.locate("/a/b/c"), Some(PathBuf::from("/mnt/cg/b/c")));
        assert_eq!(m.locate("/a"), Some(PathBuf::from("/mnt/cg")));
        assert_eq!(m.locate("/other"), None);
        assert_eq!(m.locate("/a/../etc"), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"\05"), r"\05");
    }

    #[test]
    fn limits_read_max_as_unlimited() {
        assert_eq!(parse_limit("max"), Some(u64::MAX));
        assert_eq!(parse_limit("42"), Some(42));
        assert_eq!(parse_limit("x"), None);
    }

    #[test]
    fn stats_serialize_as_runc_names_them() {
        let s = Stats {
            cpu: Cpu {
                usage: CpuUsage {
                    total: 1,
                    kernel: 2,
                    user: 3,
                },
                throttling: Throttling::default(),
            },
            memory: Memory {
                usage: MemoryEntry {
                    limit: 4,
                    usage: 5,
                    max: 6,
                    failcnt: 0,
                },
            },
            pids: Pids {
                current: 7,
                limit: 0,
            },
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cpu"]["usage"]["total"], 1);
        assert_eq!(v["memory"]["usage"]["usage"], 5);
        assert_eq!(v["memory"]["usage"]["limit"], 4);
        assert_eq!(v["pids"]["current"], 7);
        assert_eq!(v["pids"]["limit"], 0);
    }

    #[test]
    fn own_cgroups_are_found_and_list_ourselves() {
        let me = std::process::id() as i32;
        let cg = Cgroup::of(me).unwrap();
        // Our cgroup holds us (and possibly other test threads' children).
        if cg.v1_dir("pids").is_some() || cg.unified.is_some() {
            assert!(cg.procs().contains(&me), "{cg:?}");
        }
    }
}
