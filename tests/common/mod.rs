//! A fresh simulated Proxmox node per test (fixtures/pve-sim), with real LXC
//! containers, and helpers to drive the real nexcage binary over it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const NEXCAGE: &str = env!("CARGO_BIN_EXE_nexcage");

/// pve-sim is built beside nexcage by `cargo build --workspace`.
pub fn sim_binary() -> PathBuf {
    let p = Path::new(NEXCAGE).with_file_name("pve-sim");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The busybox rootfs shared by all test bundles (built once per machine).
pub fn rootfs() -> PathBuf {
    static BUILD: Once = Once::new();
    let dir = repo().join("target/fixtures");
    BUILD.call_once(|| {
        std::fs::create_dir_all(&dir).unwrap();
        // Several test binaries run at once: the script builds under a lock.
        let status = Command::new("flock")
            .arg(dir.join(".lock"))
            .arg(repo().join("fixtures/bundles/make-rootfs.sh"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "make-rootfs.sh failed");
    });
    dir.join("rootfs")
}

/// Make this test process the subreaper of the monitors its nexcage calls
/// leave behind, as containerd's shim and conmon are.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| nix::sys::prctl::set_child_subreaper(true).unwrap());
}

/// Where [`Node::create_logged`] put the process's output and pid.
pub struct Logged {
    pub out: PathBuf,
    pub err: PathBuf,
    pub pid_file: PathBuf,
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Node {
    pub fn new() -> Node {
        Node::with_config("")
    }

    /// `extra` is appended to the [proxmox] section of nexcage's config.
    pub fn with_config(extra: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("nexcage-node-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        // Unprivileged guests (mapped root = an "other" uid) must traverse it.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = Command::new(sim_binary())
            .arg("node-init")
            .arg(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "node-init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = root.join("nexcage.toml");
        let node = Node { dir, config };
        node.write_config(extra);
        node
    }

    pub fn write_config(&self, extra: &str) {
        let root = self.root();
        let bin = root.join("bin");
        let text = format!(
            "[proxmox]\npct = {:?}\npveam = {:?}\npvesm = {:?}\npvesh = {:?}\nconf_dir = {:?}\nvmlist = {:?}\ndatacenter_cfg = {:?}\nlock_dir = {:?}\n{extra}\n",
            bin.join("pct"),
            bin.join("pveam"),
            bin.join("pvesm"),
            bin.join("pvesh"),
            root.join("etc/pve/lxc"),
            root.join("etc/pve/.vmlist"),
            root.join("etc/pve/datacenter.cfg"),
            root.join("run/lock/lxc"),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A private copy of the busybox rootfs, `<node>/<name>`, that a test
    /// may change.
    pub fn rootfs_copy(&self, name: &str) -> PathBuf {
        let dir = self.root().join(name);
        let st = Command::new("cp")
            .arg("-a")
            .arg(rootfs())
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "cp -a of the busybox rootfs to {}",
            dir.display()
        );
        dir
    }

    pub fn state_root(&self) -> PathBuf {
        self.root().join("run/nexcage")
    }

    fn env(&self, cmd: &mut Command) {
        let path = format!(
            "{}:{}",
            self.root().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PVE_SIM_ROOT", self.root())
            .env("NEXCAGE_CONFIG", &self.config)
            .env("PATH", path);
    }

    /// `nexcage --root <node state> args...`, stdin closed.
    pub fn nexcage<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        become_subreaper();
        let mut cmd = Command::new(NEXCAGE);
        self.env(&mut cmd);
        cmd.arg("--root")
            .arg(self.state_root())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.nexcage(args).output().unwrap()
    }

    /// `create` with its stdio in files: the container's process inherits
    /// them and holds them until it exits, so a pipe would never see EOF.
    /// Returns create's own result with stdout/stderr as written so far.
    pub fn create(&self, bundle: &Path, id: &str, extra: &[&str]) -> Output {
        // Ids under test may hold '/' or newlines: name the files by counter.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.root().join(format!("create-{n}.stdout"));
        let err = self.root().join(format!("create-{n}.stderr"));
        let status = self
            .nexcage(["create", "--bundle"])
            .arg(bundle)
            .args(extra)
            .arg(id)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(&out).unwrap(),
            stderr: std::fs::read(&err).unwrap(),
        }
    }

    /// `nexcage run --bundle <bundle> <id>`, its output collected.
    pub fn run_bundle(&self, bundle: &Path, id: &str) -> Output {
        self.nexcage(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .output()
            .unwrap()
    }

    pub fn pct<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(self.root().join("bin/pct"));
        self.env(&mut cmd);
        cmd.args(args).output().unwrap()
    }

    /// `nexcage create --pid-file` with the process's stdout and stderr in
    /// files it keeps (`<root>/<id>.out|.err|.pid`); panics on failure.
    pub fn create_logged(&self, bundle: &Path, id: &str) -> Logged {
        let logged = Logged {
            out: self.root().join(format!("{id}.out")),
            err: self.root().join(format!("{id}.err")),
            pid_file: self.root().join(format!("{id}.pid")),
        };
        let status = self
            .nexcage(["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&logged.pid_file)
            .arg(id)
            .stdout(std::fs::File::create(&logged.out).unwrap())
            .stderr(std::fs::File::create(&logged.err).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "create {id}: {}",
            std::fs::read_to_string(&logged.err).unwrap()
        );
        logged
    }

    /// VMIDs nexcage holds reserved under its state root (files named by
    /// their VMID; the allocator's cursor is not one).
    pub fn reservations(&self) -> Vec<String> {
        std::fs::read_dir(self.state_root().join("~nexcage/vmids"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<u32>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's network namespace (`pve-sim node-init` records its name),
    /// where vmbr0 and the guests' host-side veths are.
    pub fn netns(&self) -> String {
        std::fs::read_to_string(self.root().join("run/pve-sim/netns"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `program` run in the node's network namespace.
    pub fn in_netns(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(), program]);
        cmd
    }

    /// Make the node play an older pve-container release (e.g. "6.0.14",
    /// before netN had `host-managed`).
    pub fn set_pve_container_version(&self, version: &str) {
        let dir = self.root().join("etc/pve-sim");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pve-container-version"), version).unwrap();
    }

    /// VMIDs the node has, from `pct list`.
    pub fn vmids(&self) -> Vec<u32> {
        let out = self.pct(["list"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// A bundle over the shared busybox rootfs; `patch` is merged into a
    /// minimal config.json.
    pub fn bundle(&self, name: &str, patch: serde_json::Value) -> PathBuf {
        let dir = self.root().join("bundles").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["sh", "-c", "echo hello"],
                "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/"
            },
            "root": {"path": rootfs()},
            "hostname": name.replace('_', "-"),
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ]}
        });
        merge(&mut config, patch);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        dir
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        let out = self.run(["state", id]);
        assert!(
            out.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Poll until the container reaches `want` (processes end asynchronously).
    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.status(id);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: status {got}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `local` storage's template directory, where pveam puts archives.
    pub fn template_dir(&self) -> PathBuf {
        self.root().join("var/lib/vz/template/cache")
    }

    pub fn templates(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.template_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("nexcage-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Node {
    /// A test that failed midway leaves its containers: remove them, so
    /// that none outlives the node (delegated ones run in host cgroups
    /// named by their id, where the next run of the test would see them).
    fn drop(&mut self) {
        let ids: Vec<_> = std::fs::read_dir(self.state_root())
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        for id in ids {
            if !id.to_string_lossy().starts_with('~') {
                let _ = self.run([std::ffi::OsStr::new("delete"), "--force".as_ref(), &id]);
            }
        }
        let _ = Command::new(sim_binary())
            .arg("node-cleanup")
            .arg(self.root())
            .output();
    }
}

pub fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Wait for a child of this (subreaper) process and return its wait status.
pub fn reap(pid: i32, within: Duration) -> nix::sys::wait::WaitStatus {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + within;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::StillAlive => {
                assert!(Instant::now() < deadline, "pid {pid} still running");
                std::thread::sleep(Duration::from_millis(20));
            }
            s => return s,
        }
    }
}

/// Poll `ok` until it holds; panics naming `what` after `within`.
#[track_caller]
pub fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for_file_content(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(want) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {got:?}, wanted {want:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Create and start a container running `args`; returns nothing, panics on failure.
pub fn start_running(node: &Node, id: &str, args: serde_json::Value) {
    start_bundle(node, id, serde_json::json!({"process": {"args": args}}));
}

/// Create and start a container from [`Node::bundle`]`(id, patch)`; panics
/// on failure.
pub fn start_bundle(node: &Node, id: &str, patch: serde_json::Value) {
    let bundle = node.bundle(id, patch);
    let out = node.create(&bundle, id, &[]);
    assert!(out.status.success(), "create {id}: {}", stderr(&out));
    let out = node.run(["start", id]);
    assert!(out.status.success(), "start {id}: {}", stderr(&out));
}

/// Create and start a container from `patch` running `sh -c script`, which
/// must print `END` last; returns its stdout once it has stopped (the
/// caller deletes it).
pub fn run_script(node: &Node, id: &str, patch: serde_json::Value, script: &str) -> String {
    run_script_conf(node, id, patch, script).0
}

/// [`run_script`], and the node's guest configurations as they were after
/// create: once the process has ended the guest is destroyed (the reaper),
/// so they cannot be read afterwards.
pub fn run_script_conf(
    node: &Node,
    id: &str,
    mut patch: serde_json::Value,
    script: &str,
) -> (String, String) {
    merge(
        &mut patch,
        serde_json::json!({"process": {"args": ["sh", "-c", script]}}),
    );
    let bundle = node.bundle(id, patch);
    let out_path = node.create_logged(&bundle, id).out;
    let confs: String = std::fs::read_dir(node.root().join("etc/pve/lxc"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    let start = node.run(["start", id]);
    assert!(start.status.success(), "start: {}", stderr(&start));
    let out = wait_for_file_content(&out_path, "END\n");
    node.wait_status(id, "stopped");
    (out, confs)
}

/// The default bundle's namespaces (pid, network, ipc, uts, mount), with a
/// user namespace after them when `user`.
pub fn namespaces(user: bool) -> serde_json::Value {
    let mut ns = serde_json::json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
    ]);
    if user {
        ns.as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
    }
    ns
}

/// The record nexcage keeps of `id` (its state.json), as JSON.
pub fn record(node: &Node, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(node.state_root().join(id).join("state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The host pid of a container's init (nexcage's PID 1 in the guest), from
/// the state file nexcage keeps.
pub fn init_pid(node: &Node, id: &str) -> i32 {
    record(node, id)["init"]["pid"].as_i64().unwrap() as i32
}

/// The host path of a cgroup file of `pid`: the v1 `controller` hierarchy
/// when the host has one, else the unified one.
pub fn cgroup_file(pid: i32, controller: &str, v1: &str, v2: &str) -> PathBuf {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut unified = None;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if ctrls.split(',').any(|c| c == controller) {
            let dir = Path::new("/sys/fs/cgroup").join(ctrls);
            let dir = if dir.exists() {
                dir
            } else {
                Path::new("/sys/fs/cgroup").join(controller)
            };
            return dir.join(path.trim_start_matches('/')).join(v1);
        }
        if ctrls.is_empty() {
            unified = Some(path.to_string());
        }
    }
    let base = if Path::new("/sys/fs/cgroup/unified").exists() {
        Path::new("/sys/fs/cgroup/unified")
    } else {
        Path::new("/sys/fs/cgroup")
    };
    base.join(unified.unwrap().trim_start_matches('/')).join(v2)
}

/// The same file at the guest's limiting cgroup: Proxmox keeps the guest's
/// processes in `lxc/<vmid>/ns` and its limits one level up, in `lxc/<vmid>`.
pub fn limit_file(pid: i32, controller: &str, v1: &str, v2: &str) -> PathBuf {
    let own = cgroup_file(pid, controller, v1, v2);
    let dir = own.parent().unwrap();
    assert!(
        dir.ends_with("ns"),
        "not in an inner ns cgroup: {}",
        own.display()
    );
    dir.parent().unwrap().join(own.file_name().unwrap())
}

/// Hand `fd` to the command as its descriptor 3 (for --preserve-fds 1).
pub fn with_fd3(cmd: &mut Command, fd: std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 between fork and exec; `fd` lives in the closure until then.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let rc = if fd.as_raw_fd() == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One `nexcage: ...` line naming `needle` on stderr, exit 1, nothing on stdout.
#[track_caller]
pub fn fails_with(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert!(err.starts_with("nexcage: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "wanted {needle:?} in {err}");
    assert_eq!(stdout(out), "");
}

/// Nothing half-made is left: no guest, no container state, no VMID
/// reservation, no root volume.
#[track_caller]
pub fn assert_clean(node: &Node) {
    assert!(node.vmids().is_empty(), "guest left: {:?}", node.vmids());
    let left: Vec<String> = std::fs::read_dir(node.state_root())
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "~nexcage")
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
    assert!(
        node.reservations().is_empty(),
        "VMID reservation left: {:?}",
        node.reservations()
    );
    let volumes: Vec<_> = std::fs::read_dir(node.root().join("dev/pve"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(volumes.is_empty(), "volumes left: {volumes:?}");
}

/// Unmounts (lazily, innermost first) when dropped, so a failing test
/// leaves no mount behind on the host.
#[derive(Default)]
pub struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Mounts {
    /// A bind of `src` when `fstype` is None, else a new `fstype` mount.
    pub fn mount(&mut self, src: &str, target: &Path, fstype: Option<&str>, data: Option<&str>) {
        let flags = if fstype.is_none() {
            nix::mount::MsFlags::MS_BIND
        } else {
            nix::mount::MsFlags::empty()
        };
        nix::mount::mount(Some(src), target, fstype, flags, data).unwrap();
        self.0.push(target.to_path_buf());
    }

    /// Makes `dir` a shared mount of its own (a recursive bind onto itself),
    /// as systemd makes a node's `/`: mounts made below it are then shared
    /// too, and new mount namespaces get them as peers.
    pub fn share(&mut self, dir: &Path) {
        use nix::mount::MsFlags;
        let none: Option<&str> = None;
        nix::mount::mount(
            Some(dir),
            dir,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .unwrap();
        self.0.push(dir.to_path_buf());
        nix::mount::mount(none, dir, none, MsFlags::MS_SHARED, none).unwrap();
    }

    /// Unmounts the last mount made now, not at drop.
    pub fn unmount_last(&mut self) {
        let p = self.0.pop().expect("nothing mounted");
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}

/// The mounts of `runc spec` (cgroup v1 form), in its order.
pub fn runc_mounts() -> serde_json::Value {
    serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ])
}
