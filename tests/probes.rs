//! The probes of issue 15 that held, kept so they stay held: `create`
//! SIGKILLed inside each of its phases and then `delete --force` leaving
//! nothing; many parallel creates and deletes; racing creates of one id;
//! two state roots sharing one node.
//!
//! Each phase is entered deterministically: a wrapper in place of the
//! node's tool marks that create is inside it and holds there until the
//! test lets it go, so no sleep stands in for synchronisation.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Replace the node's `tool` by a gate: the first call whose first argument
/// is `sub` (and whose second is not VMID 0, pct's parameter probe) makes
/// `<gate>/entered`, waits for `<gate>/go`, runs the real tool and makes
/// `<gate>/done`. Every other call passes straight through.
fn gate(node: &Node, tool: &str, sub: &str) -> PathBuf {
    let dir = node.root().join(format!("gate-{tool}-{sub}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = node.root().join("bin").join(tool);
    std::fs::remove_file(&path).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = '{sub}' ] && [ \"$2\" != 0 ] && mkdir '{d}/entered' 2>/dev/null; then\n\
         \twhile [ ! -e '{d}/go' ]; do sleep 0.01; done\n\
         \t'{sim}' {tool} \"$@\"; rc=$?\n\
         \ttouch '{d}/done'\n\
         \texit $rc\n\
         fi\n\
         exec '{sim}' {tool} \"$@\"\n",
        d = dir.display(),
        sim = sim_binary().display(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn spawn_create(node: &Node, bundle: &Path, id: &str) -> Child {
    let log = node.root().join(format!("{id}.create.err"));
    node.nexcage(["create", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn sigkill(child: &mut Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "create ended before the kill");
}

fn delete_force(node: &Node, id: &str) {
    let out = node.run(["delete", "--force", id]);
    assert!(
        out.status.success(),
        "delete --force {id}: {}",
        stderr(&out)
    );
}

/// Processes whose command line names the node's directory: monitors,
/// guests' `[lxc monitor]`, wrappers, tools.
fn processes_of(node: &Node) -> Vec<String> {
    let needle = node.root().to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == me || name.parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.push(format!("{name}: {text}"));
        }
    }
    found
}

/// Everything create could have made is gone: guests, state, reservations,
/// root volumes (assert_clean), processes, loop devices and mounts of the
/// node, and temporary templates of a live writer.
#[track_caller]
fn assert_nothing_left(node: &Node) {
    assert_clean(node);
    // Processes end asynchronously after the guest's stop: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(node);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {left:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = node.root().to_string_lossy().into_owned();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&root))
        .map(String::from)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops: Vec<String> = String::from_utf8_lossy(&loops.stdout)
        .lines()
        .filter(|l| l.contains(&root))
        .map(String::from)
        .collect();
    assert!(loops.is_empty(), "loop devices left: {loops:#?}");
    for t in temps(node) {
        let pid = writer_pid(&t);
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "temporary template {t} of a live writer"
        );
    }
}

/// `.nexcage-*` temporaries in the template storage.
fn temps(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.template_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(".nexcage-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The writer's pid in a temp's name
/// (`.nexcage-<fp>.tmp-<host>_<pid>_<start time>_<n>`; a host name has no `_`).
fn writer_pid(temp: &str) -> i32 {
    let (_, writer) = temp
        .rsplit_once(".tmp-")
        .unwrap_or_else(|| panic!("not a temp: {temp}"));
    writer
        .split('_')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {temp}"))
}

fn monitor_pid(node: &Node, id: &str) -> i32 {
    let v = record(node, id);
    v["monitor"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no monitor in {v}")) as i32
}

/// Kill create while it holds in a gated tool call, let the call finish
/// (as a real node's would: the tool does not die with its caller), then
/// `delete --force`.
/// `left` checks what the killed create left behind for `delete --force`
/// to remove, so that each probe proves it cleaned something.
fn kill_inside_gate(node: &Node, tool: &str, sub: &str, id: &str, left: impl Fn(&Node)) {
    let dir = gate(node, tool, sub);
    let bundle = node.bundle(id, serde_json::json!({"process": {"args": ["true"]}}));
    let mut child = spawn_create(node, &bundle, id);
    wait_until(&format!("{tool} {sub}"), Duration::from_secs(30), || {
        dir.join("entered").exists()
    });
    sigkill(&mut child);
    std::fs::write(dir.join("go"), "").unwrap();
    wait_until("the gated call's end", Duration::from_secs(30), || {
        dir.join("done").exists()
    });
    assert!(
        node.state_root().join(id).join("state.json").exists(),
        "create was killed before it claimed {id}"
    );
    left(node);
    delete_force(node, id);
    assert_nothing_left(node);
}

#[test]
fn sigkill_while_loading_the_bundle_leaves_nothing() {
    let node = Node::new();
    let dir = node.root().join("bundles/fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("config.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = spawn_create(&node, &dir, "bundle-phase");
    // A non-blocking open for writing succeeds only once a reader is there:
    // create is then inside bundle loading. The writer stays open and
    // silent, so create stays blocked in its read until the kill (closing
    // it would hand create an empty config.json to refuse).
    let mut writer = None;
    wait_until(
        "create to open config.json",
        Duration::from_secs(30),
        || {
            writer = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags_nonblock()
                .open(&fifo)
                .ok();
            writer.is_some()
        },
    );
    sigkill(&mut child);
    drop(writer);
    delete_force(&node, "bundle-phase");
    assert_nothing_left(&node);
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_NONBLOCK)
    }
}

/// The first node tool create calls after the translation is `pvesm`
/// (storage discovery): held there, create has claimed its state and
/// prepared the bridge but made nothing on the node.
#[test]
fn sigkill_after_the_translation_leaves_nothing() {
    let node = Node::new();
    kill_inside_gate(&node, "pvesm", "status", "translate-phase", |node| {
        assert!(node.vmids().is_empty());
    });
}

#[test]
fn sigkill_during_template_conversion_leaves_nothing_but_a_dead_writers_temp() {
    let node = Node::new();
    // A rootfs of its own with incompressible bulk, so that the conversion
    // lasts long enough to be caught with its temporary file open.
    let big = node.root().join("big-rootfs");
    let status = Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&big)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=48", "status=none"])
        .arg(format!("of={}", big.join("bulk").display()))
        .status()
        .unwrap();
    assert!(status.success());
    let id = "template-phase";
    let bundle = node.bundle(
        id,
        serde_json::json!({"root": {"path": big}, "process": {"args": ["true"]}}),
    );
    let mut child = spawn_create(&node, &bundle, id);
    wait_until("a temporary template", Duration::from_secs(60), || {
        !temps(&node).is_empty()
    });
    sigkill(&mut child);
    assert_eq!(
        temps(&node)
            .iter()
            .map(|t| writer_pid(t))
            .collect::<Vec<_>>(),
        vec![child.id() as i32],
        "the temp is the killed create's"
    );
    delete_force(&node, id);
    assert_nothing_left(&node);
    // The dead writer's temp does not outlive the next conversion.
    let again = node.create(&bundle, id, &[]);
    assert!(again.status.success(), "create: {}", stderr(&again));
    delete_force(&node, id);
    assert_eq!(temps(&node), Vec::<String>::new());
    assert_nothing_left(&node);
}

/// Killed while `pct create` runs; the call completes after create died,
/// so the guest exists and only the state's VMID leads to it.
#[test]
fn sigkill_during_pct_create_leaves_nothing() {
    let node = Node::new();
    kill_inside_gate(&node, "pct", "create", "pct-create-phase", |node| {
        assert_eq!(node.vmids().len(), 1, "no guest to leak");
        assert_eq!(node.reservations().len(), 1, "no reservation to leak");
    });
}

/// Killed while `pct start` runs, which then boots the guest.
#[test]
fn sigkill_during_pct_start_leaves_nothing() {
    let node = Node::new();
    // The monitor gives up once create is gone, and the init after it
    // (its connect retries run out): the guest may be running or stopped.
    kill_inside_gate(&node, "pct", "start", "pct-start-phase", |node| {
        assert_eq!(node.vmids().len(), 1, "no guest to leak");
    });
}

/// Killed while waiting for the init: the monitor is held stopped until
/// `pct start` has returned, so the init cannot have reported yet, then
/// goes on after create is gone.
#[test]
fn sigkill_while_waiting_for_the_init_leaves_nothing() {
    let node = Node::new();
    let id = "init-phase";
    let dir = gate(&node, "pct", "start");
    let bundle = node.bundle(id, serde_json::json!({"process": {"args": ["true"]}}));
    let mut child = spawn_create(&node, &bundle, id);
    wait_until("pct start", Duration::from_secs(30), || {
        dir.join("entered").exists()
    });
    let monitor = Pid::from_raw(monitor_pid(&node, id));
    kill(monitor, Signal::SIGSTOP).unwrap();
    std::fs::write(dir.join("go"), "").unwrap();
    wait_until("pct start's end", Duration::from_secs(30), || {
        dir.join("done").exists()
    });
    let running = node.pct(["status", &node.vmids()[0].to_string()]);
    assert!(stdout(&running).contains("running"), "{}", stdout(&running));
    sigkill(&mut child);
    kill(monitor, Signal::SIGCONT).unwrap();
    delete_force(&node, id);
    assert_nothing_left(&node);
}

fn measure<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("{what}: {:?}", t.elapsed());
    r
}

#[test]
fn parallel_creates_get_distinct_vmids_and_parallel_deletes_leave_nothing() {
    const N: usize = 32;
    let node = Node::new();
    let bundle = node.bundle("par", serde_json::json!({"process": {"args": ["true"]}}));
    // One conversion first, so that the parallel creates race on VMIDs and
    // state, not on writing the same template 32 times.
    let warm = node.create(&bundle, "warm", &[]);
    assert!(warm.status.success(), "create: {}", stderr(&warm));
    delete_force(&node, "warm");
    let ids: Vec<String> = (0..N).map(|i| format!("par-{i}")).collect();
    measure("parallel creates", || {
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (node, bundle) = (&node, &bundle);
                    s.spawn(move || (id, node.create(bundle, id, &[])))
                })
                .collect();
            for h in handles {
                let (id, out) = h.join().unwrap();
                assert!(out.status.success(), "create {id}: {}", stderr(&out));
            }
        })
    });
    let mut vmids = node.vmids();
    assert_eq!(vmids.len(), N, "{vmids:?}");
    vmids.sort();
    vmids.dedup();
    assert_eq!(vmids.len(), N, "a VMID shared: {vmids:?}");
    assert_eq!(node.reservations().len(), N);
    for id in &ids {
        assert_eq!(node.status(id), "created");
    }
    measure("parallel deletes", || {
        std::thread::scope(|s| {
            for id in &ids {
                let node = &node;
                s.spawn(move || delete_force(node, id));
            }
        })
    });
    assert_nothing_left(&node);
}

#[test]
fn racing_creates_of_one_id_have_one_winner_and_losers_leave_nothing() {
    const N: usize = 8;
    let node = Node::new();
    let id = "contested";
    let bundle = node.bundle(id, serde_json::json!({"process": {"args": ["true"]}}));
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| s.spawn(|| node.create(&bundle, id, &[])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        winners,
        1,
        "{:#?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    for out in outs.iter().filter(|o| !o.status.success()) {
        fails_with(out, "container with given ID already exists: contested");
    }
    assert_eq!(node.vmids().len(), 1, "{:?}", node.vmids());
    assert_eq!(node.reservations().len(), 1);
    assert_eq!(node.status(id), "created");
    let out = node.run(["delete", id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert_nothing_left(&node);
}

/// `nexcage --root <root> args...` over the node, as a second engine with
/// its own state root would run it: node.nexcage's environment, our --root.
fn at_root(node: &Node, root: &Path, args: &[&str]) -> std::process::Output {
    let template = node.nexcage(std::iter::empty::<&str>());
    let mut cmd = Command::new(NEXCAGE);
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    // Files, not pipes: a created container's monitor inherits create's
    // stdio and would hold a pipe open.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = node.root().join(format!("at-root-{n}.out"));
    let err = node.root().join(format!("at-root-{n}.err"));
    let status = cmd
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

#[test]
fn two_state_roots_on_one_node_keep_to_their_own() {
    let node = Node::new();
    let other = node.root().join("run/other-engine");
    let bundle = node.bundle("two", serde_json::json!({"process": {"args": ["true"]}}));
    let b = bundle.to_str().unwrap();
    // The same ids in both roots: each root is its own id namespace.
    for id in ["a", "b"] {
        let out = node.create(&bundle, id, &[]);
        assert!(out.status.success(), "create {id}: {}", stderr(&out));
        let out = at_root(&node, &other, &["create", "--bundle", b, id]);
        assert!(
            out.status.success(),
            "create {id} (other): {}",
            stderr(&out)
        );
    }
    let mut vmids = node.vmids();
    assert_eq!(vmids.len(), 4, "{vmids:?}");
    vmids.sort();
    vmids.dedup();
    assert_eq!(vmids.len(), 4, "a VMID shared between roots: {vmids:?}");
    let out = at_root(&node, &other, &["list", "--format", "json"]);
    assert!(out.status.success(), "list: {}", stderr(&out));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.as_array().unwrap().len(), 2, "{theirs}");

    for id in ["a", "b"] {
        delete_force(&node, id);
    }
    assert_eq!(node.vmids().len(), 2, "the other root's guests went");
    assert!(node.reservations().is_empty());
    for id in ["a", "b"] {
        let out = at_root(&node, &other, &["state", id]);
        assert!(out.status.success(), "state {id}: {}", stderr(&out));
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["status"], "created", "{st}");
    }
    for id in ["a", "b"] {
        let out = at_root(&node, &other, &["delete", "--force", id]);
        assert!(out.status.success(), "delete {id}: {}", stderr(&out));
    }
    assert_nothing_left(&node);
    let left: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "~nexcage")
        .collect();
    assert!(left.is_empty(), "other root's state left: {left:?}");
    let reserved: Vec<_> = std::fs::read_dir(other.join("~nexcage/vmids"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<u32>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        reserved.is_empty(),
        "other root's reservations left: {reserved:?}"
    );
}
