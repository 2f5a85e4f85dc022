//! The host side of the bridge. Started by `create` as its child, it outlives
//! `create` (reparented to the caller's subreaper, as runc's init is), hands
//! the caller's stdio to the container's init, relays signals it receives to
//! the process, and exits exactly as the process did.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{accept4, getsockopt, sockopt, SockFlag};

use super::guestns;
use super::proto::{self, Message, Outcome};
use crate::cli::{GlobalOpts, MonitorArgs};
use crate::procfs::{self, Pinned, ProcRef};

/// How the process ended, to be reproduced by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    /// Validate what the init reports: it runs inside the container, so its
    /// word is bounded to what a process can really end with.
    pub fn from_report(code: Option<i32>, signal: Option<i32>) -> Exit {
        match (code, signal.and_then(|s| Signal::try_from(s).ok())) {
            (_, Some(sig)) => Exit::Signal(sig),
            (Some(c), None) if (0..=255).contains(&c) => Exit::Code(c),
            _ => Exit::Code(255),
        }
    }
}

/// Signals a supervisor may send the monitor and that make sense to relay.
pub fn relayed_signals() -> SigSet {
    let mut set = SigSet::all();
    for s in [
        Signal::SIGKILL,
        Signal::SIGSTOP,
        Signal::SIGCHLD,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        set.remove(s);
    }
    set
}

pub fn run(args: &MonitorArgs, global: &GlobalOpts) -> ! {
    let exit = match serve(args) {
        Ok((exit, host)) => {
            // The reaper is started by path: only from the host's mount
            // namespace, never from the guest's, whose files the guest owns.
            match host.leave() {
                Ok(()) => start_reaper(global, &args.id),
                Err(e) => tracing::error!(
                    id = %args.id,
                    "cannot return to the host's mount namespace, so no reaper: {e}"
                ),
            }
            exit
        }
        Err(message) => {
            tracing::error!(id = %args.id, "{message}");
            Exit::Code(1)
        }
    };
    exit_like(exit)
}

/// The process has ended: start `nexcage reap` to destroy the guest while
/// the client, told of the exit by ours, cleans up before its `delete`.
/// It is detached (own session, no stdio, none of our descriptors), so that
/// nothing that waits for us or for end-of-file on our stdio waits for it.
/// Best effort: if it cannot start, `delete` destroys the guest as before.
fn start_reaper(global: &GlobalOpts, id: &str) {
    let mut cmd = super::self_command(global);
    cmd.args(["reap", id, "--monitor"])
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, close_range) between
    // fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            use nix::libc;
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    match cmd.spawn() {
        // Not waited for: it outlives us, and whoever inherits it reaps it.
        Ok(child) => drop(child),
        Err(e) => tracing::debug!(id, "cannot start the reaper: {e}"),
    }
}

fn serve(args: &MonitorArgs) -> Result<(Exit, guestns::HostMount), String> {
    // SAFETY: create placed these descriptors here for this process alone.
    let listener = unsafe { OwnedFd::from_raw_fd(args.listen_fd) };
    let mut status = unsafe { File::from_raw_fd(args.status_fd) };
    for fd in [listener.as_raw_fd(), status.as_raw_fd()] {
        let _ = nix::fcntl::fcntl(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    // Block before anything else so that no relayed signal is lost.
    let mask = relayed_signals();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    // Non-blocking: supervise drains it after each poll, and a blocking
    // read past the last pending signal would stall the monitor there, deaf
    // to the init's exit report.
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("cannot create signalfd: {e}"))?;

    // The connection outlives a failed set-up on purpose (see below).
    let mut conn = None;
    let outcome = Extras::gather(&args.bridge_dir, args.status_fd).and_then(|extras| {
        accept_init(&listener, &args.bridge_dir, &status).and_then(|(c, init)| {
            let c = conn.insert(c);
            let process = set_up(c, init, args.preserve_fds, extras)?;
            // Before create learns our pid: clients reach the container's
            // namespaces through /proc/<our pid>/ns (guestns.rs).
            let joined = guestns::join(process).map_err(|e| e.to_string())?;
            // Last: from here on the monitor's paths are the guest's.
            let (pinned, host) = guestns::enter_mount(process).map_err(|e| e.to_string())?;
            tracing::debug!(
                ?joined,
                pid = process.pid,
                "joined the process's namespaces and its mount namespace"
            );
            Ok((init, process, pinned, host))
        })
    });
    let (pinned, host) = match outcome {
        Ok((init, process, pinned, host)) => {
            report(&mut status, &Outcome::Ready { init, process });
            (pinned, host)
        }
        Err(message) => {
            report(
                &mut status,
                &Outcome::Failed {
                    message: message.clone(),
                },
            );
            // Keep the init's connection (and so the guest) up until create
            // has read the reason and closed its end.
            let mut fds = [PollFd::new(status.as_fd(), PollFlags::empty())];
            while let Err(nix::errno::Errno::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
            return Err(message);
        }
    };
    drop(status);
    drop(listener);
    let conn = conn.expect("set up implies connected");
    Ok((supervise(&conn, &signals, &pinned), host))
}

fn report(status: &mut File, outcome: &Outcome) {
    let mut line = serde_json::to_vec(outcome).expect("outcome serializes");
    line.push(b'\n');
    let _ = status.write_all(&line);
}

/// Accept the init's connection and learn its host pid.
fn accept_init(
    listener: &OwnedFd,
    bridge_dir: &Path,
    status: &File,
) -> Result<(OwnedFd, ProcRef), String> {
    // Wait for the init, but give up if create (the status reader) is gone.
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(status.as_fd(), PollFlags::empty()),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
            Ok(_) => {}
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Err("create went away before the container's init connected".into());
        }
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            break;
        }
    }
    let conn = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("accept on the bridge socket: {e}"))?;
    // SAFETY: accept4 returned a new descriptor that we now own.
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    // The kernel translates the peer's pid into our (host) pid namespace.
    let cred = getsockopt(&conn, sockopt::PeerCredentials)
        .map_err(|e| format!("peer credentials: {e}"))?;
    // One connection only: nobody else may reach the monitor afterwards.
    let _ = std::fs::remove_file(bridge_dir.join(super::SOCKET_FILE));
    let init = ProcRef::of(cred.pid()).ok_or("the container's init vanished")?;
    Ok((conn, init))
}

/// The descriptor number of the console socket create passes in terminal
/// mode: right after the status pipe.
pub fn console_fd(status_fd: RawFd) -> RawFd {
    status_fd + 1
}

/// What the bundle asks of the bridge beyond stdio, read from the bridge
/// directory create wrote (the same files the init reads).
#[derive(Default)]
struct Extras {
    /// Terminal mode: the caller's console socket, connected by create.
    console: Option<OwnedFd>,
    /// Namespaces to join, opened here on the host.
    namespaces: Vec<(super::netns::Kind, OwnedFd)>,
}

impl Extras {
    fn gather(dir: &Path, status_fd: RawFd) -> Result<Extras, String> {
        let mut extras = Extras::default();
        if super::process_is_terminal(dir)? {
            let fd = console_fd(status_fd);
            // SAFETY: in terminal mode create placed the connected console
            // socket at this number for this process alone (spawn_monitor).
            let console = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = nix::fcntl::fcntl(
                &console,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            let is_socket = nix::sys::stat::fstat(&console)
                .map(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFSOCK)
                .unwrap_or(false);
            if !is_socket {
                std::mem::forget(console);
                return Err(format!("descriptor {fd} is not the console socket"));
            }
            extras.console = Some(console);
        }
        for (kind, path) in super::joined_namespaces(dir)? {
            let fd = super::netns::open(&path, kind).map_err(|e| e.to_string())?;
            extras.namespaces.push((kind, fd));
        }
        Ok(extras)
    }
}

/// Give the init our stdio (and the namespaces to join); once it has forked
/// the process, find its host pid. In terminal mode the init sends the pty's
/// master first, and it goes to the console socket before create hears
/// "ready", so create returns only once the caller holds the terminal.
fn set_up(
    conn: &OwnedFd,
    init: ProcRef,
    preserve_fds: u32,
    mut extras: Extras,
) -> Result<ProcRef, String> {
    for (kind, ns) in std::mem::take(&mut extras.namespaces) {
        let msg = Message::Join {
            namespace: kind.name().to_string(),
        };
        proto::send(conn.as_fd(), &msg, &[ns.as_raw_fd()])?;
    }
    let passed: Vec<RawFd> = (0..3 + preserve_fds as RawFd).collect();
    proto::send(conn.as_fd(), &Message::Stdio, &passed)?;
    release_stdio(preserve_fds);

    loop {
        match proto::recv(conn.as_fd())? {
            Some((Message::Console { pty }, fds)) => {
                let (Some(console), [master]) = (extras.console.take(), &fds[..]) else {
                    return Err("the container's init sent a terminal nobody asked for".into());
                };
                super::pty::send_master(console.as_fd(), &pty, master.as_fd())?;
                // Our copies of the master and the socket close here: the
                // caller holds the only master from now on.
            }
            Some((Message::Ready, _)) if extras.console.is_some() => {
                return Err("the container's init did not open the terminal".into())
            }
            Some((Message::Ready, _)) => break,
            Some((Message::Failed { message }, _)) => return Err(message),
            Some((other, _)) => return Err(format!("unexpected message from init: {other:?}")),
            None => return Err("the container's init exited during set-up".into()),
        }
    }
    find_process(init.pid)
}

/// The container now holds the caller's stdio; our copies must go, or the
/// caller would not see end-of-file when the process exits.
fn release_stdio(preserve_fds: u32) {
    use nix::libc;
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: replaces descriptors 0-2 in place; nothing else owns them.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    for fd in 3..3 + preserve_fds as RawFd {
        // SAFETY: the preserved descriptors were inherited and are owned by no object.
        unsafe { libc::close(fd) };
    }
}

/// The init has exactly one child at this point: the process, waiting at the fifo.
fn find_process(init_pid: i32) -> Result<ProcRef, String> {
    for _ in 0..100 {
        if let [pid] = procfs::children(init_pid)[..] {
            if let Some(p) = ProcRef::of(pid) {
                return Ok(p);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "cannot find the process forked by the container's init (host pid {init_pid})"
    ))
}

/// Relay signals to the process until it ends. Runs in the guest's mount
/// namespace: it opens no path, and reaches the process by its pidfd.
fn supervise(conn: &OwnedFd, signals: &SignalFd, process: &Pinned) -> Exit {
    loop {
        let mut fds = [
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Exit::Signal(Signal::SIGKILL),
            Ok(_) => {}
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            while let Ok(Some(info)) = signals.read_signal() {
                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                    tracing::debug!(?sig, "relaying signal");
                    let _ = process.signal(sig);
                }
            }
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            match proto::recv(conn.as_fd()) {
                Ok(Some((Message::Exited { code, signal }, _))) => {
                    return Exit::from_report(code, signal)
                }
                Ok(Some(_)) => continue,
                // The container went away without a report: it was stopped
                // from outside (pct stop, delete), i.e. killed.
                Ok(None) | Err(_) => return Exit::Signal(Signal::SIGKILL),
            }
        }
    }
}

/// Leave the way the process left: same code, or death by the same signal.
pub fn exit_like(exit: Exit) -> ! {
    match exit {
        Exit::Code(c) => std::process::exit(c),
        Exit::Signal(sig) => {
            use nix::sys::resource::{setrlimit, Resource};
            use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
            // A core dump of the monitor would be misleading.
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
            let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: restoring the default disposition has no handler to race with.
            let _ = unsafe { sigaction(sig, &dfl) };
            let mut only = SigSet::empty();
            only.add(sig);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
            let _ = nix::sys::signal::raise(sig);
            std::thread::sleep(Duration::from_millis(100));
            std::process::exit(128 + sig as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_from_the_container_are_bounded() {
        assert_eq!(Exit::from_report(Some(7), None), Exit::Code(7));
        assert_eq!(
            Exit::from_report(None, Some(9)),
            Exit::Signal(Signal::SIGKILL)
        );
        assert_eq!(Exit::from_report(Some(1000), None), Exit::Code(255));
        assert_eq!(Exit::from_report(None, Some(999)), Exit::Code(255));
        assert_eq!(Exit::from_report(None, None), Exit::Code(255));
    }

    #[test]
    fn never_relays_what_cannot_or_must_not_be_relayed() {
        let s = relayed_signals();
        assert!(s.contains(Signal::SIGTERM) && s.contains(Signal::SIGWINCH));
        assert!(!s.contains(Signal::SIGKILL) && !s.contains(Signal::SIGCHLD));
    }
}
