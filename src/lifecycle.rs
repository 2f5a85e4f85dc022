//! The container lifecycle, independent of the backend: create, start, kill,
//! delete and the live status. `state` and `kill` never call a node tool:
//! they use the state file, the bridge's fifo and signals.

use crate::hooks::{self, Kind};
use oci_spec::runtime::Hooks;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::backend::{Backend, BackendError, Phases, Provision};
use crate::bridge::{self, BridgeDir};
use crate::bundle;
use crate::cgroup;
use crate::cli::{CreateArgs, GlobalOpts};
use crate::config::Settings;
use crate::delegate;
use crate::error::{Error, Result};
use crate::procfs::{self, ProcRef};
use crate::router;
use crate::state::{validate_id, ContainerLock, Record, Status, Store};

/// The config.json `nexcage spec` writes (runc's default: a shell in
/// ./rootfs), also the base `nexcage bundle` puts an image's settings on.
pub fn default_spec(rootless: bool) -> oci_spec::runtime::Spec {
    let mut spec = if rootless {
        oci_spec::runtime::Spec::rootless(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    } else {
        oci_spec::runtime::Spec::default()
    };
    spec.set_version(crate::state::OCI_VERSION.to_string());
    spec.set_hostname(Some("nexcage".into()));
    spec
}

pub fn check_id(id: &str) -> Result<()> {
    validate_id(id).map_err(|why| Error::InvalidId(id.to_string(), why))
}

/// The live status: a process can end at any moment, so it is derived from
/// the process itself, never trusted from the file alone.
pub fn status(store: &Store, record: &Record) -> Status {
    if record.status == Status::Creating {
        return Status::Creating;
    }
    if !record.process.is_some_and(|p| p.is_alive()) {
        return Status::Stopped;
    }
    // The monitor's pid is the container's for clients: once it is gone,
    // whoever reaped it has seen the container end, and the init is
    // already ending the process (bridge/init/supervise.rs).
    if record.monitor.is_some_and(|m| !m.is_alive()) {
        return Status::Stopped;
    }
    if BridgeDir::of(&store.dir(&record.id)).is_created() {
        return Status::Created;
    }
    match record.status {
        Status::Paused => Status::Paused,
        _ => Status::Running,
    }
}

pub fn load(store: &Store, id: &str) -> Result<Record> {
    check_id(id)?;
    store
        .load(id)?
        .ok_or_else(|| Error::NotFound(id.to_string()))
}

fn lock(store: &Store, id: &str) -> Result<(ContainerLock, Record)> {
    check_id(id)?;
    let lock = store
        .lock(id)?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    let record = store
        .load(id)?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    Ok((lock, record))
}

/// `create`: returns the monitor, a child of ours (`run` waits for it).
/// The bundle a create works on, loaded once (the router reads it first),
/// with when create began and how long the load took (its first phase).
pub struct LoadedBundle {
    pub bundle: bundle::Bundle,
    started: Instant,
    took: Duration,
}

pub fn load_bundle(dir: &Path) -> Result<LoadedBundle> {
    let started = Instant::now();
    let bundle = bundle::load(dir)?;
    Ok(LoadedBundle {
        bundle,
        started,
        took: started.elapsed(),
    })
}

pub fn create(
    store: &Store,
    settings: &Settings,
    global: &GlobalOpts,
    args: &CreateArgs,
    loaded: LoadedBundle,
    backend: Box<dyn Backend>,
) -> Result<Child> {
    create_with_console(store, settings, global, args, loaded, backend, None)
}

/// `create`, where `own_console` (a socket of `run`'s own, which relays the
/// terminal itself) stands in for --console-socket in terminal mode.
pub fn create_with_console(
    store: &Store,
    settings: &Settings,
    global: &GlobalOpts,
    args: &CreateArgs,
    loaded: LoadedBundle,
    backend: Box<dyn Backend>,
    own_console: Option<OwnedFd>,
) -> Result<Child> {
    let LoadedBundle {
        bundle,
        started,
        took,
    } = loaded;
    let phases = Phases::default();
    phases.add("bundle", took, None);
    // Terminal mode: connect to the caller's console socket now, as runc
    // does in create, so a missing flag or socket fails before anything
    // exists; the monitor sends the pty's master over it (bridge/pty.rs).
    let terminal = bundle.process().terminal().unwrap_or(false);
    let hooks = bundle.spec.hooks().clone();
    if let Some(h) = &hooks {
        hooks::validate(h)?;
    }
    let mut console = match own_console {
        Some(fd) if terminal => Some(fd),
        _ => bridge::pty::connect(terminal, args.console_socket.as_deref())?,
    };
    let lock = store
        .claim(&args.id)?
        .ok_or_else(|| Error::Exists(args.id.clone()))?;
    let mut record = Record {
        systemd_cgroup: global.systemd_cgroup,
        hooks,
        bridge_protocol: bridge::PROTOCOL,
        ..Record::new(&args.id, &bundle, backend.name(), Status::Creating)
    };
    store.save(&lock, &record)?;

    let mut monitor: Option<Child> = None;
    let result = (|| -> Result<()> {
        let bridge = BridgeDir::of(&store.dir(&args.id));
        let listener = bridge.prepare(bundle.process())?;
        let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
        let req = Provision {
            id: &args.id,
            bundle: &bundle,
            bridge_dir: bridge.path(),
            init_binary: &exe,
            phases: &phases,
        };
        let mut data = serde_json::Value::Null;
        let mut save = |d: &serde_json::Value| {
            record.backend_data = d.clone();
            store.save(&lock, &record).map_err(BackendError::new)
        };
        let provisioned = backend.provision(&req, &mut data, &mut save);
        record.backend_data = data;
        provisioned?;
        let mut launched = bridge::spawn_monitor(
            global,
            &args.id,
            &bridge,
            listener,
            args.preserve_fds,
            console.take(),
        )?;
        record.monitor = ProcRef::of(launched.child.id() as i32);
        let child_pid = launched.child.id();
        store.save(&lock, &record)?;
        let boot = phases.time("start", || {
            backend.boot(&record.guest()).map_err(Error::from)
        });
        let ready = boot.and_then(|()| {
            phases.time("ready", || {
                launched
                    .wait_ready(settings.runtime.start_timeout())
                    .map_err(Error::from)
            })
        });
        monitor = Some(launched.child);
        let (init, process) = ready?;
        record.init = Some(init);
        record.process = Some(process);
        if let Some(h) = &record.hooks {
            run_create_hooks(h, &record, &bridge, init.pid)?;
        }
        record.status = Status::Created;
        backend.created(&mut record.backend_data);
        store.save(&lock, &record)?;
        if let Some(pid_file) = &args.pid_file {
            write_pid_file(pid_file, child_pid)?;
        }
        Ok(())
    })();

    match result {
        Ok(()) => {
            tracing::debug!("create {}: {}", args.id, phases.summary(started.elapsed()));
            Ok(monitor.expect("monitor started"))
        }
        Err(e) => {
            tracing::debug!("create failed, rolling back: {e}");
            if let Some(mut m) = monitor {
                let _ = m.kill();
                let _ = m.wait();
            }
            if let Err(undo) = backend.destroy(&record.guest()) {
                // Keep the state so that `delete --force` can finish the job.
                record.status = Status::Stopped;
                let _ = store.save(&lock, &record);
                return Err(Error::Rollback {
                    error: Box::new(e),
                    undo,
                });
            }
            backend.discard(&record.guest());
            store.remove(lock)?;
            Err(e)
        }
    }
}

/// prestart and createRuntime on the host, createContainer in the guest's
/// namespaces, while the guest waits in "creating"; then leave the
/// startContainer ones for the init to run at `start`.
fn run_create_hooks(h: &Hooks, record: &Record, bridge: &BridgeDir, init_pid: i32) -> Result<()> {
    let state = hook_state(record, Status::Creating);
    hooks::run(Kind::Prestart, h, &state)?;
    hooks::run(Kind::CreateRuntime, h, &state)?;
    hooks::run_in_container(Kind::CreateContainer, h, &state, init_pid)?;
    let start = Kind::StartContainer.of(h);
    if !start.is_empty() {
        let created =
            serde_json::to_value(record.oci_state(Status::Created)).expect("state serializes");
        bridge.write_start_hooks(start, &created)?;
    }
    Ok(())
}

/// The state document hooks get on stdin: what `nexcage state` prints.
fn hook_state(record: &Record, status: Status) -> Vec<u8> {
    serde_json::to_vec(&record.oci_state(status)).expect("state serializes")
}

pub fn write_pid_file(path: &Path, pid: u32) -> Result<()> {
    let path: PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(".", e))?
            .join(path)
    };
    // write_atomic names whichever file failed, often its temp beside the
    // pid file: the caller only knows the pid file.
    crate::fsutil::write_atomic(&path, pid.to_string().as_bytes(), 0o644).map_err(|e| {
        Error::PidFile {
            path,
            source: e.into_io(),
        }
    })
}

pub fn start(store: &Store, settings: &Settings, id: &str) -> Result<()> {
    let (lock, mut record) = lock(store, id)?;
    let st = status(store, &record);
    if !st.can_start() {
        return Err(Error::Usage(match st {
            Status::Stopped => "cannot start a container that has stopped".into(),
            Status::Creating => format!("cannot start container {id}: it is still being created"),
            _ => "cannot start an already running container".into(),
        }));
    }
    BridgeDir::of(&store.dir(id)).release(settings.runtime.start_timeout())?;
    record.status = Status::Running;
    store.save(&lock, &record)?;
    if let Some(h) = &record.hooks {
        hooks::run_logged(Kind::Poststart, h, &hook_state(&record, Status::Running));
    }
    Ok(())
}

/// Signal numbers or names, with or without SIG, as runc accepts them.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let bad = || Error::Usage(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

pub fn kill(store: &Store, id: &str, signal: Signal, all: bool) -> Result<()> {
    let record = load(store, id)?;
    let st = status(store, &record);
    // runc: with --all, a stopped container is no error (containerd's shim
    // sends `kill --all` after every exit).
    if all && st == Status::Stopped {
        return Ok(());
    }
    if !st.can_kill() {
        return Err(Error::NotRunning(id.to_string()));
    }
    let process = record.process.expect("live containers have a process");
    let result = if all {
        // Every process of the guest but its init, whose end would stop
        // the guest before the others got the signal.
        let init = record.init.map(|i| i.pid);
        for pid in guest_pids(store, &record)? {
            if Some(pid) == init {
                continue;
            }
            if let Some(p) = ProcRef::of(pid) {
                let _ = p.signal(signal);
            }
        }
        Ok(())
    } else {
        process.signal(signal).map_err(|e| match e {
            nix::errno::Errno::ESRCH => Error::NotRunning(id.to_string()),
            source => Error::Signal {
                id: id.to_string(),
                source,
            },
        })
    };
    // A frozen process cannot act on SIGKILL (v1 freezer): thaw, as runc does.
    if signal == Signal::SIGKILL && status(store, &record) == Status::Paused {
        thaw_killed(store, &record)?;
    }
    result
}

/// Thaw a paused guest straight through its cgroup (kill never calls pct)
/// and record it as running again.
fn thaw_killed(store: &Store, record: &Record) -> Result<()> {
    cgroup::of_init(&record.id, record.init)?.thaw()?;
    if let Some(lock) = store.lock(&record.id)? {
        if let Some(mut r) = store.load(&record.id)? {
            r.status = Status::Running;
            store.save(&lock, &r)?;
        }
    }
    Ok(())
}

/// `pause`: freeze the guest; only a running container can be paused.
pub fn pause(store: &Store, settings: &Settings, id: &str) -> Result<()> {
    let (lock, mut record) = lock(store, id)?;
    let st = status(store, &record);
    if !st.can_pause() {
        return Err(match st {
            Status::Paused => Error::Usage(format!("container {id} is already paused")),
            _ => Error::NotRunning(id.to_string()),
        });
    }
    router::for_record(&record, settings, store.root())?.pause(&record.guest())?;
    record.status = Status::Paused;
    store.save(&lock, &record)?;
    Ok(())
}

/// `resume`: thaw a paused guest.
pub fn resume(store: &Store, settings: &Settings, id: &str) -> Result<()> {
    let (lock, mut record) = lock(store, id)?;
    if !status(store, &record).can_resume() {
        return Err(Error::Usage(format!("container not paused: {id}")));
    }
    router::for_record(&record, settings, store.root())?.resume(&record.guest())?;
    record.status = Status::Running;
    store.save(&lock, &record)?;
    Ok(())
}

/// Host pids of every process in the guest: its cgroup, or (when the
/// cgroup cannot be read) the init and its descendants.
pub fn guest_pids(store: &Store, record: &Record) -> Result<Vec<i32>> {
    if !status(store, record).has_process() {
        return Err(Error::NotRunning(record.id.clone()));
    }
    let init = record
        .init
        .filter(|i| i.is_alive())
        .ok_or_else(|| Error::NotRunning(record.id.clone()))?;
    let pids = cgroup::of_init(&record.id, record.init)
        .map(|cg| cg.procs())
        .unwrap_or_default();
    if pids.contains(&init.pid) {
        return Ok(pids);
    }
    let mut pids = procfs::descendants(init.pid);
    pids.sort_unstable();
    Ok(pids)
}

pub fn delete(store: &Store, settings: &Settings, id: &str, force: bool) -> Result<()> {
    check_id(id)?;
    let lock = lock_for_delete(store, id, force)?;
    let record = match store.load(id) {
        Ok(Some(record)) => record,
        // Left for `delete --force`, which finds the rest.
        Ok(None) if !force => return Err(Error::NotFound(id.to_string())),
        Err(e) if !force => return Err(e.into()),
        Ok(None) => {
            tracing::debug!("{id} has no state file; removing what is left of it");
            return delete_leftovers(store, settings, id, lock);
        }
        Err(e) => {
            tracing::debug!("{e}; removing what is left of {id}");
            return delete_leftovers(store, settings, id, lock);
        }
    };
    let st = status(store, &record);
    if !st.can_delete() && !force {
        return Err(Error::Usage(format!(
            "cannot delete container {id} that is not stopped: {st}"
        )));
    }
    if let Some(p) = record.process.filter(|p| p.is_alive()) {
        let _ = p.signal(Signal::SIGKILL);
    }
    // A frozen guest cannot die (v1 freezer): thaw it before it is stopped.
    if st == Status::Paused {
        if let Ok(cg) = cgroup::of_init(&record.id, record.init) {
            let _ = cg.thaw();
        }
    }
    // The guest may have been destroyed when the process ended (`reap`).
    if !record.guest_destroyed {
        router::for_record(&record, settings, store.root())?.destroy(&record.guest())?;
    }
    wait_gone(record.monitor, Duration::from_secs(5));
    if let Some(h) = &record.hooks {
        hooks::run_logged(Kind::Poststop, h, &hook_state(&record, Status::Stopped));
    }
    store.remove(lock)?;
    Ok(())
}

/// Destroy the guest of a container whose process has ended, before any
/// `delete`: clients wait for the container's exit and only then delete
/// it, so the guest's `pct destroy` runs while they clean up their side.
/// Runs detached from the monitor, after it; the record keeps naming the
/// guest until the destroy succeeded, so a reap that fails or dies half-way
/// leaves `delete` (with or without --force) the same work as before.
pub fn reap(store: &Store, settings: &Settings, id: &str, monitor_pid: i32) -> Result<()> {
    check_id(id)?;
    let Some(monitor) = store
        .load(id)?
        .and_then(|r| r.monitor)
        .filter(|m| m.pid == monitor_pid)
    else {
        return Ok(());
    };
    // The monitor's exit is the container's for clients; never act before.
    let deadline = Instant::now() + REAP_WAIT;
    while monitor.is_alive() {
        if Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // A delete holding the lock meanwhile does the destroy itself.
    let Some(lock) = store.lock(id)? else {
        return Ok(());
    };
    let Some(mut record) = store.load(id)? else {
        return Ok(());
    };
    if record.monitor != Some(monitor)
        || record.guest_destroyed
        || status(store, &record) != Status::Stopped
    {
        return Ok(());
    }
    router::for_record(&record, settings, store.root())?.destroy(&record.guest())?;
    record.guest_destroyed = true;
    store.save(&lock, &record)?;
    tracing::debug!("{id}: guest destroyed once its process ended");
    Ok(())
}

/// How long `reap` waits for the monitor that started it to exit.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// The container's lock. With `force` and no directory, the id is claimed
/// instead, so that `delete --force` can still look for what a lost one
/// leaves (a guest, its monitor, a reservation) while no create of it
/// starts. A create claiming it meanwhile is waited for; a few such races
/// in a row mean something keeps making and removing it.
fn lock_for_delete(store: &Store, id: &str, force: bool) -> Result<ContainerLock> {
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        if let Some(lock) = store.lock(id)? {
            return Ok(lock);
        }
        if !force {
            return Err(Error::NotFound(id.to_string()));
        }
        if let Some(lock) = store.claim(id)? {
            return Ok(lock);
        }
    }
    Err(Error::Contested(id.to_string()))
}

/// `delete --force` of a container without a readable record: find its
/// monitor by its command line, its guests by their reservations, and
/// remove them and the directory. Nothing found is not an error (runc's
/// force delete of a missing container succeeds).
fn delete_leftovers(
    store: &Store,
    settings: &Settings,
    id: &str,
    lock: ContainerLock,
) -> Result<()> {
    let bridge = BridgeDir::of(&store.dir(id));
    // The init ends the process and itself when its monitor goes, which
    // stops the guest before pct destroys it.
    for monitor in find_monitors(bridge.path()) {
        let _ = monitor.signal(Signal::SIGKILL);
        wait_gone(Some(monitor), Duration::from_secs(5));
        tracing::debug!(pid = monitor.pid, "removed the monitor of {id}");
    }
    for reg in router::registry() {
        let backend = router::open(reg.name, settings, store.root())?;
        for what in backend.destroy_leftovers(id, bridge.path())? {
            tracing::debug!("removed {what} of {id}");
        }
    }
    // A create that a delegate ran but whose record is lost.
    for name in delegate::NAMES {
        if !delegate::holds_in(name, store.root(), id) {
            continue;
        }
        let d = router::open_delegate(name, settings, store.root())?;
        let done = d.delete_force(id);
        tracing::debug!(?done, "removed what {name} held of {id}");
    }
    let had_dir = store.dir(id).join("state.json").exists() || bridge.path().exists();
    store.remove(lock)?;
    if had_dir {
        tracing::debug!("removed the state directory of {id}");
    }
    Ok(())
}

/// Monitors serving `bridge_dir`: processes whose command line is
/// `... monitor ID --bridge-dir BRIDGE_DIR ...` (the path is absolute, see
/// `Store::open`). Each is named by its start time as well, and its command
/// line is read again after that, so a pid reused meanwhile is not taken.
fn find_monitors(bridge_dir: &Path) -> Vec<ProcRef> {
    let serves = |pid: i32| {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        let want = bridge_dir.as_os_str().as_encoded_bytes();
        args.iter().any(|a| *a == b"monitor")
            && args
                .windows(2)
                .any(|w| w[0] == b"--bridge-dir" && w[1] == want)
    };
    let me = std::process::id() as i32;
    procfs::all_pids()
        .into_iter()
        .filter(|&pid| pid != me && serves(pid))
        .filter_map(|pid| ProcRef::of(pid).filter(|_| serves(pid)))
        .collect()
}

/// The monitor exits by itself once the container is gone; don't leave it
/// behind if it does not.
fn wait_gone(p: Option<ProcRef>, within: Duration) {
    let Some(p) = p else { return };
    let deadline = Instant::now() + within;
    while p.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if p.is_alive() {
        let _ = p.signal(Signal::SIGKILL);
    }
}

/// Signals generated by the terminal reach the whole foreground process
/// group, our child included: relaying them as well would double them.
const SI_KERNEL: i32 = 0x80;

/// Block the signals a runtime relays and receive them on a descriptor
/// instead; call before spawning what they are relayed to, so none is lost.
pub fn block_relayed_signals() -> Result<SignalFd> {
    let mask = crate::bridge::monitor::relayed_signals();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(Error::sys("signalfd"))
}

/// Wait for `child` (which stands for a container process: `run`'s monitor,
/// `exec`'s pct), handing every relayed signal to `relay`; returns the exit
/// status in shell convention (code, or 128+signal).
pub fn wait_relaying(child: &mut Child, signals: &SignalFd, relay: impl Fn(Signal)) -> Result<i32> {
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("child process", e))?
        {
            break status;
        }
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(20u16));
        while let Ok(Some(info)) = signals.read_signal() {
            if info.ssi_code == SI_KERNEL {
                continue;
            }
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                relay(sig);
            }
        }
    };
    Ok(exit_code(status))
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        for (s, want) in [
            ("9", Signal::SIGKILL),
            ("KILL", Signal::SIGKILL),
            ("SIGKILL", Signal::SIGKILL),
            ("term", Signal::SIGTERM),
            ("15", Signal::SIGTERM),
            ("SIGUSR1", Signal::SIGUSR1),
        ] {
            assert_eq!(parse_signal(s).unwrap(), want, "{s}");
        }
        for bad in ["0", "99", "SIGNOPE", "", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pid_file_errors_name_the_pid_file_not_its_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("missing-dir/c1.pid");
        let err = write_pid_file(&pid_file, 42).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot write pid file {}: No such file or directory (os error 2)",
                pid_file.display()
            )
        );
        let ok = tmp.path().join("c1.pid");
        write_pid_file(&ok, 42).unwrap();
        assert_eq!(std::fs::read_to_string(ok).unwrap(), "42");
    }
}
