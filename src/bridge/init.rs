//! The container's PID 1: nexcage's own binary, bind-mounted at
//! /.nexcage/init and started by LXC (`lxc.init.cmd`). It takes the caller's
//! stdio from the monitor, forks the process described by process.json, holds
//! it at exec.fifo until `start`, then forwards signals, reaps every orphan,
//! and reports how the process ended. When it returns the container stops.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{
    kill, sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setresgid, setresuid, setsid, ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process};

use super::proto::{self, Message};
use super::settings::{InitSettings, INIT_SETTINGS_FILE};
use super::{FIFO_FILE, MOUNT_POINT, PROCESS_FILE, SOCKET_FILE};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the init could not set up or become the container's process. The
/// texts reach `create`/`exec` callers verbatim; the `exec:` ones are runc's
/// words, which clients match (docs/clients.md).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("exec: {program:?}: executable file not found in $PATH")]
    NotInPath { program: String },
    #[error("exec: {program:?}: stat {}: {reason}", path.display())]
    Stat {
        program: String,
        path: PathBuf,
        reason: String,
    },
    #[error("exec: {program:?}: permission denied")]
    NotExecutable { program: String },
    #[error("cwd {cwd:?}: not a directory in the container")]
    Cwd { cwd: String },
    #[error("process.args is empty")]
    NoArgs,
    #[error("NUL byte in process settings")]
    Nul,
    #[error("process.consoleSize.{0} is too large")]
    ConsoleSize(&'static str),
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error(
        "process.capabilities: {0} cannot be granted: this Proxmox guest's bounding set lacks them"
    )]
    CapabilitiesUnavailable(String),
    /// A system call of a named step failed (the io::Error keeps the words
    /// the caller has always seen: "No such file or directory (os error 2)").
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Capabilities {
        step: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("exec {}: {source}", path.to_string_lossy())]
    Execve {
        path: CString,
        source: std::io::Error,
    },
    #[error("cannot fork the container process: {0}")]
    Fork(Errno),
    #[error("signals: {0}")]
    Signals(Errno),
    #[error("maskedPaths: {path}: {source}")]
    Mask { path: String, source: Errno },
    #[error("readonlyPaths: {path}: {source}")]
    ReadonlyPath { path: String, source: Errno },
    #[error("root.readonly: {0}")]
    ReadonlyRoot(Errno),
    #[error("domainname: {0}")]
    Domainname(std::io::Error),
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
    #[error("network: {0}")]
    Network(String),
    #[error("{}: {source}", path.display())]
    StartHooksFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    StartHooks(crate::hooks::HookError),
    #[error("terminal: {0}")]
    TerminalDup(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
    /// From the bridge's helpers (pty, devfs, netns, proto), which speak in
    /// their own one-line messages.
    #[error("{0}")]
    Bridge(String),
    #[error("the monitor sent no network namespace")]
    NoNetns,
    #[error("exec: nexcage exec sent no descriptors")]
    ExecNoDescriptors,
    #[error("exec: {0}")]
    ExecReceive(String),
    #[error("exec: unexpected message {0}")]
    ExecUnexpected(String),
}

impl InitError {
    fn step(step: &'static str) -> impl FnOnce(Errno) -> InitError {
        move |e| InitError::Step {
            step,
            source: e.into(),
        }
    }

    fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
        move |source| InitError::Step { step, source }
    }

    fn caps(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> InitError {
        move |source| InitError::Capabilities { step, source }
    }
}

pub fn run() -> ! {
    let code = match connect_monitor() {
        Ok(conn) => serve(&conn),
        // Nobody to tell: the monitor reports the missing connection.
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn connect_monitor() -> nix::Result<OwnedFd> {
    let path = Path::new(MOUNT_POINT).join(SOCKET_FILE);
    let addr = UnixAddr::new(&path)?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut last = Errno::UnknownErrno;
    for _ in 0..100 {
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => return Ok(sock),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

fn serve(conn: &OwnedFd) -> i32 {
    let stdio = match receive_stdio(conn) {
        Ok(fds) => fds,
        Err(None) => return 1,
        Err(Some(err)) => return fail_and_wait(conn, err),
    };
    let prepared = match Prepared::load(&Path::new(MOUNT_POINT).join(PROCESS_FILE)) {
        Ok(p) => p,
        Err(err) => return fail_and_wait(conn, err),
    };
    if let Err(err) = apply_linux_settings(&Path::new(MOUNT_POINT).join(INIT_SETTINGS_FILE)) {
        return fail_and_wait(conn, err);
    }
    let stdio = match terminal_stdio(conn, &prepared, stdio) {
        Ok(fds) => fds,
        Err(err) => return fail_and_wait(conn, err),
    };
    let mask = match block_signals() {
        Ok(mask) => mask,
        Err(err) => return fail_and_wait(conn, err),
    };
    // SAFETY: this process is single-threaded; the child only execs or exits.
    match unsafe { fork() } {
        Err(e) => {
            let message = InitError::Fork(e).to_string();
            let _ = proto::send(conn.as_fd(), &Message::Failed { message }, &[]);
            1
        }
        Ok(ForkResult::Child) => die(child(&prepared, stdio)),
        Ok(ForkResult::Parent { child }) => {
            drop(stdio);
            if proto::send(conn.as_fd(), &Message::Ready, &[]).is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let (code, signal) = supervise(child, &mask, conn);
            let _ = proto::send(conn.as_fd(), &Message::Exited { code, signal }, &[]);
            code.unwrap_or_else(|| 128 + signal.unwrap_or(9))
        }
    }
}

/// `init exec FILE`: run the process described by FILE (an OCI process
/// JSON the host wrote into the bridge) in place of this one. lxc-attach has
/// already put us into the guest's namespaces and cgroup, so there is nothing
/// to fork. lxc-attach closes every inherited descriptor but stdio, so the
/// caller's descriptors come over our stdin, a socket from `nexcage exec`
/// (lxc-attach's own stdout and stderr carry only pct's chatter). Failures
/// print one line on the caller's stderr and exit 127, as the container
/// process does.
pub fn exec(file: &Path) -> ! {
    let (msg, fds) = match proto::recv(std::io::stdin().as_fd()) {
        Ok(Some(got)) => got,
        Ok(None) => die(InitError::ExecNoDescriptors),
        Err(e) => die(InitError::ExecReceive(e)),
    };
    let terminal = match (&msg, fds.len()) {
        (Message::ExecStdio, n) if n >= 3 => false,
        (Message::ExecTerminal, n) if n >= 2 => true,
        _ => die(InitError::ExecUnexpected(format!("{msg:?}"))),
    };
    // From here on failures reach the caller's stderr.
    let stderr = if terminal { &fds[1] } else { &fds[2] };
    if let Err(e) = nix::unistd::dup2_stderr(stderr) {
        // Still lxc-attach's stderr: pct shows it.
        die(InitError::step("set up stderr")(e))
    }
    let prepared = Prepared::load(file).unwrap_or_else(|e| die(e));
    let fds = if terminal {
        exec_terminal(&prepared, fds).unwrap_or_else(|e| die(e))
    } else {
        fds
    };
    if terminal {
        // lxc-attach's child leads no process group, so it may start a
        // session and take the pty as its controlling terminal.
        if let Err(e) = setsid() {
            die(InitError::step("start a session")(e))
        }
    }
    // SAFETY: single-threaded (nothing spawned threads yet), and this
    // process only leaves by exec or _exit (die).
    if let Err(e) = unsafe { install_fds(fds) } {
        die(e)
    }
    if terminal {
        if let Err(e) = take_controlling_terminal() {
            die(e)
        }
    }
    die(become_process(&prepared))
}

/// Terminal `exec`: a pty whose master goes to `nexcage exec` over the
/// console socket it sent, and whose slave becomes stdio.
fn exec_terminal(prepared: &Prepared, fds: Vec<OwnedFd>) -> Result<Vec<OwnedFd>, InitError> {
    let mut fds = fds.into_iter();
    let console = fds.next().expect("checked above");
    let _stderr = fds.next();
    let pty = super::pty::open(prepared.console_size).map_err(InitError::Bridge)?;
    super::pty::send_master(console.as_fd(), &pty.name, pty.master.as_fd())
        .map_err(InitError::Bridge)?;
    drop(console);
    drop(pty.master);
    let mut stdio = Vec::new();
    for _ in 0..3 {
        stdio.push(pty.slave.try_clone().map_err(InitError::TerminalDup)?);
    }
    stdio.extend(fds);
    Ok(stdio)
}

nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

/// stdin (the pty's slave) becomes the controlling terminal of this
/// session, whose leader we are (job control, ^C).
fn take_controlling_terminal() -> Result<(), InitError> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal the
    // terminal from another session), no pointer.
    unsafe { tiocsctty(0, 0) }
        .map(drop)
        .map_err(InitError::step("set the controlling terminal"))
}

/// The caller's stdio from the monitor, after joining the network namespace
/// it may send first (before the sysctls, which then apply to that
/// namespace; `pct exec` joins the init's namespaces, so exec'd processes
/// share it too). Err(None): nobody to tell.
fn receive_stdio(conn: &OwnedFd) -> Result<Vec<OwnedFd>, Option<InitError>> {
    let mut msg = proto::recv(conn.as_fd());
    if let Ok(Some((Message::Netns, fds))) = &msg {
        let [ns] = &fds[..] else {
            return Err(Some(InitError::NoNetns));
        };
        super::netns::join(ns.as_fd()).map_err(|e| Some(InitError::Bridge(e)))?;
        msg = proto::recv(conn.as_fd());
    }
    match msg {
        Ok(Some((Message::Stdio, fds))) if fds.len() >= 3 => Ok(fds),
        _ => Err(None),
    }
}

/// Terminal mode: open a pty in the guest, send its master to the monitor
/// (which hands it to --console-socket), and give the process the slave as
/// stdin, stdout and stderr in place of the caller's (preserved descriptors
/// from 3 up stay). The parent's copies of the slave close after fork.
fn terminal_stdio(
    conn: &OwnedFd,
    p: &Prepared,
    mut stdio: Vec<OwnedFd>,
) -> Result<Vec<OwnedFd>, InitError> {
    if !p.terminal {
        return Ok(stdio);
    }
    let pty = super::pty::open(p.console_size).map_err(InitError::Bridge)?;
    let msg = Message::Console {
        pty: pty.name.clone(),
    };
    proto::send(conn.as_fd(), &msg, &[pty.master.as_raw_fd()]).map_err(InitError::Bridge)?;
    drop(pty.master);
    for fd in stdio.iter_mut().take(3) {
        *fd = pty.slave.try_clone().map_err(InitError::TerminalDup)?;
    }
    Ok(stdio)
}

/// Report a set-up failure, then stay up until create has read it and tears
/// the guest down: a guest that stopped at once would fail `pct start`
/// instead, hiding the reason.
fn fail_and_wait(conn: &OwnedFd, err: InitError) -> i32 {
    let message = err.to_string();
    let _ = proto::send(conn.as_fd(), &Message::Failed { message }, &[]);
    while let Ok(Some(_)) = proto::recv(conn.as_fd()) {}
    1
}

/// Everything the child needs, checked and converted before fork, so that
/// mistakes fail `create` with a message instead of a dead process.
#[derive(Debug)]
struct Prepared {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<Gid>,
    umask: Option<u32>,
    rlimits: Vec<(Resource, u64, u64)>,
    no_new_privileges: bool,
    /// process.terminal: the process runs on a pty opened in the guest.
    terminal: bool,
    /// process.consoleSize as (height, width).
    console_size: Option<(u16, u16)>,
    /// None: the process keeps the init's capabilities, as with runc.
    caps: Option<Caps>,
    oom_score_adj: Option<Vec<u8>>,
    /// linux.seccomp, compiled by create; the same for `exec`, as with runc.
    seccomp: Option<super::seccomp::Loadable>,
}

/// The five OCI capability sets, limited to what this kernel knows (others
/// cannot be set, and runc skips them too). Built before fork so that
/// applying them allocates nothing after a seccomp filter is loaded.
#[derive(Debug, Default, PartialEq, Eq)]
struct Caps {
    /// Capabilities to drop from the bounding set (all known ones not
    /// listed), by number.
    drop_bounding: Vec<Capability>,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: Vec<Capability>,
}

/// The capability names nexcage can apply (for `nexcage features`), in
/// kernel order.
pub fn capability_names() -> Vec<String> {
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    all.iter().map(|c| c.to_string()).collect()
}

fn cap_from_name(name: &str) -> Result<Capability, InitError> {
    name.parse()
        .map_err(|_| InitError::UnknownCapability(name.to_string()))
}

impl Caps {
    fn from_process(p: &Process) -> Result<Option<Caps>, InitError> {
        let Some(c) = p.capabilities() else {
            return Ok(None);
        };
        // Those the kernel does not know (PR_CAPBSET_READ says EINVAL).
        let supported = caps::runtime::thread_all_supported();
        // oci-spec's names are its serde names ("CAP_CHOWN").
        let list = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut v: Vec<Capability> = Vec::new();
            for cap in set.iter().flatten() {
                let name = serde_json::to_value(cap)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let cap = cap_from_name(&name)?;
                if supported.contains(&cap) {
                    v.push(cap);
                }
            }
            v.sort_by_key(|c| c.index());
            v.dedup();
            Ok::<_, InitError>(v)
        };
        let set = |v: &[Capability]| v.iter().copied().collect::<CapsHashSet>();
        let bounding = list(c.bounding())?;
        let effective = list(c.effective())?;
        let permitted = list(c.permitted())?;
        let inheritable = list(c.inheritable())?;
        let ambient = list(c.ambient())?;
        // The spec makes a capability that cannot be granted an error. A
        // guest never holds what Proxmox drops (lxc.cap.drop: sys_module,
        // sys_time, mac_*...), so say which, instead of capset's EPERM.
        let mut wanted: Vec<Capability> = [&effective, &permitted, &inheritable, &ambient]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        wanted.sort_by_key(|c| c.index());
        wanted.dedup();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|&&c| !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false))
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(InitError::CapabilitiesUnavailable(missing.join(", ")));
        }
        let mut drop_bounding: Vec<Capability> = supported
            .into_iter()
            .filter(|c| !bounding.contains(c))
            .collect();
        drop_bounding.sort_by_key(|c| c.index());
        Ok(Some(Caps {
            drop_bounding,
            effective: set(&effective),
            permitted: set(&permitted),
            inheritable: set(&inheritable),
            ambient,
        }))
    }
}

/// The container-side settings the host could not express (maskedPaths,
/// readonlyPaths, readonly root, domainname), applied in the init while it
/// still has every capability, before the process is forked. A missing file
/// means nothing to do.
fn apply_linux_settings(path: &Path) -> Result<(), InitError> {
    let settings: InitSettings = match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text).map_err(|source| InitError::Parse {
            path: path.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(InitError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if let Some(net) = &settings.net {
        configure_link(net)?;
    }
    // Before any other mount: moves need parents that are not shared.
    super::devfs::make_root_rslave().map_err(InitError::Bridge)?;
    match &settings.dev {
        Some(dev) => super::devfs::rebuild(dev).map_err(InitError::Bridge)?,
        None => super::devfs::fix_lxc_dev().map_err(InitError::Bridge)?,
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
        super::devfs::apply_root_propagation(p).map_err(InitError::Bridge)?;
    }
    Ok(())
}

/// The guest's link as pct would have configured it with host-managed=1
/// (and as LXC does then, lo comes up with it).
fn configure_link(net: &super::settings::InitNet) -> Result<(), InitError> {
    use super::netlink;
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
    let locked = if crate::backend::proxmox::apparmor::in_kernel_dir(p) {
        locked | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
    } else {
        locked
    };
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
    mount(none, p, none, flags, none)
}

impl Prepared {
    fn load(path: &Path) -> Result<Prepared, InitError> {
        let text = std::fs::read(path).map_err(|source| InitError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let process: Process =
            serde_json::from_slice(&text).map_err(|source| InitError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut prepared = Prepared::from_process(&process)?;
        prepared.seccomp = super::seccomp::read(Path::new(MOUNT_POINT))?;
        Ok(prepared)
    }

    fn from_process(p: &Process) -> Result<Prepared, InitError> {
        let cstr = |s: &[u8]| CString::new(s).map_err(|_| InitError::Nul);
        let args = p.args().clone().unwrap_or_default();
        let env = p.env().clone().unwrap_or_default();
        let cwd = p.cwd();
        if !cwd.is_dir() {
            return Err(InitError::Cwd {
                cwd: cwd.display().to_string(),
            });
        }
        let program = args.first().ok_or(InitError::NoArgs)?;
        let path = resolve(program, &env, cwd)?;
        let user = p.user();
        let rlimits = p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect();
        Ok(Prepared {
            path: cstr(path.as_os_str().as_bytes())?,
            args: args
                .iter()
                .map(|a| cstr(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|e| cstr(e.as_bytes()))
                .collect::<Result<_, _>>()?,
            cwd: cstr(cwd.as_os_str().as_bytes())?,
            uid: user.uid(),
            gid: user.gid(),
            groups: user
                .additional_gids()
                .iter()
                .flatten()
                .map(|&g| Gid::from_raw(g))
                .collect(),
            umask: user.umask(),
            rlimits,
            no_new_privileges: p.no_new_privileges().unwrap_or(false),
            terminal: p.terminal().unwrap_or(false),
            console_size: match p.console_size() {
                Some(b) => Some((
                    u16::try_from(b.height()).map_err(|_| InitError::ConsoleSize("height"))?,
                    u16::try_from(b.width()).map_err(|_| InitError::ConsoleSize("width"))?,
                )),
                None => None,
            },
            caps: Caps::from_process(p)?,
            oom_score_adj: p.oom_score_adj().map(|a| a.to_string().into_bytes()),
            seccomp: None,
        })
    }
}

/// What the init would run for `p`, for the translation table's test.
#[cfg(test)]
pub(crate) fn prepared_debug(p: &Process) -> Result<String, String> {
    Prepared::from_process(p)
        .map(|p| format!("{p:?}"))
        .map_err(|e| e.to_string())
}

/// Find the program as exec would with the process's own PATH (not ours).
fn resolve(program: &str, env: &[String], cwd: &Path) -> Result<PathBuf, InitError> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        // runc's words: podman tells "command not found" (127) from "cannot
        // run it" (126) by "no such file or directory" / "permission denied".
        return match std::fs::metadata(&p) {
            Err(e) => Err(InitError::Stat {
                program: program.to_string(),
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file or directory".to_string()
                } else {
                    e.to_string()
                },
                path: p,
            }),
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(InitError::NotExecutable {
                program: program.to_string(),
            }),
        };
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path_var
        .split(':')
        .map(|dir| {
            cwd.join(if dir.is_empty() { "." } else { dir })
                .join(program)
        })
        .find(|p| executable(p))
        .ok_or_else(|| InitError::NotInPath {
            program: program.to_string(),
        })
}

/// Every rlimit the runtime spec names exists on Linux, so the mapping is
/// total; a type oci-spec does not know already fails when create loads the
/// bundle, and a variant a newer oci-spec adds fails this match at build.
fn rlimit_resource(t: PosixRlimitType) -> Resource {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

extern "C" fn ignore(_: libc::c_int) {}

/// PID 1 gets no default signal actions; handle and block everything that
/// can be, and take signals one at a time with sigwait.
fn block_signals() -> Result<SigSet, InitError> {
    let mut mask = super::monitor::relayed_signals();
    mask.add(Signal::SIGCHLD);
    let handler = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in mask.iter() {
        // SAFETY: the handler does nothing, so it is async-signal-safe;
        // signals are consumed by sigwait.
        unsafe { sigaction(sig, &handler) }.map_err(InitError::Signals)?;
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(InitError::Signals)?;
    Ok(mask)
}

/// In the forked process, undo block_signals' do-nothing handlers before
/// unblocking: the process waits at exec.fifo until `start`, and a created
/// container must die by a signal whose default action terminates (TERM
/// from `kill`, CRI StopContainer, `podman stop`) as runc's waiting init
/// does, where the inherited handler would swallow it and restart the open.
/// Signals ignored by default (WINCH, CHLD, URG, CONT) stay harmless, and
/// one that arrived since fork is still pending and acts once unblocked.
fn restore_default_signals() -> Result<(), InitError> {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: SIG_DFL installs no handler, so nothing runs in signal
        // context.
        unsafe { sigaction(sig, &dfl) }.map_err(InitError::Signals)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(InitError::Signals)?;
    Ok(())
}

/// Forward signals to the process; reap everything; return once the process
/// ends. The monitor stands for the process on the host (its pid is the one
/// clients wait for), so when its end of the connection closes, the process
/// is killed: nothing runs on that nobody can wait for, and our own exit then
/// stops the guest.
fn supervise(child: Pid, mask: &SigSet, conn: &OwnedFd) -> (Option<i32>, Option<i32>) {
    // Without a signalfd the monitor cannot be watched; sigwait still works.
    let signals = SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
    let mut monitor_up = true;
    loop {
        let sig = match &signals {
            None => mask.wait().ok(),
            Some(sfd) => next_signal(sfd, conn, &mut monitor_up, child),
        };
        let Some(sig) = sig else {
            continue;
        };
        match sig {
            Signal::SIGCHLD => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return (Some(code), None),
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                        return (None, Some(s as i32))
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            // lxc-stop (pct shutdown) asks PID 1 to halt with SIGPWR.
            // ESRCH (the process is just ending) is reported by SIGCHLD.
            Signal::SIGPWR => {
                let _ = kill(child, Signal::SIGTERM);
            }
            other => {
                let _ = kill(child, other);
            }
        }
    }
}

/// A pending signal, or None once poll returned without one: then a
/// readable connection may be the monitor's end, and the process is killed.
fn next_signal(
    sfd: &SignalFd,
    conn: &OwnedFd,
    monitor_up: &mut bool,
    child: Pid,
) -> Option<Signal> {
    let pending = sfd.read_signal().ok().flatten();
    if let Some(sig) = pending.and_then(|i| Signal::try_from(i.ssi_signo as i32).ok()) {
        return Some(sig);
    }
    let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
    if *monitor_up {
        fds.push(PollFd::new(conn.as_fd(), PollFlags::POLLIN));
    }
    let _ = poll(&mut fds, PollTimeout::NONE);
    let conn_ready = fds
        .get(1)
        .and_then(|f| f.revents())
        .is_some_and(|r| !r.is_empty());
    if conn_ready && monitor_gone(conn) {
        *monitor_up = false;
        let _ = kill(child, Signal::SIGKILL);
    }
    None
}

/// The monitor sends nothing after set-up: a readable connection is its
/// end (EOF, or an error once its socket is gone).
fn monitor_gone(conn: &OwnedFd) -> bool {
    !matches!(proto::recv(conn.as_fd()), Ok(Some(_)))
}

/// A copy of `fd` numbered `min` or above, closed on exec.
fn dup_at_least(fd: BorrowedFd, min: RawFd) -> nix::Result<OwnedFd> {
    let new = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The caller's descriptors become 0..n, every other one is closed.
///
/// # Safety
/// Only in a single-threaded process that leaves by exec or _exit: the
/// descriptors from n up are closed under their owners' feet (the monitor
/// socket, held by frames that never return) and 0..n are replaced.
unsafe fn install_fds(fds: Vec<OwnedFd>) -> Result<(), InitError> {
    let n = fds.len() as RawFd;
    // Park above n first so that no dup2 clobbers another.
    let parked = fds
        .iter()
        .map(|fd| dup_at_least(fd.as_fd(), n + 3))
        .collect::<nix::Result<Vec<_>>>()
        .map_err(InitError::step("set up stdio"))?;
    drop(fds);
    for (i, fd) in parked.iter().enumerate() {
        // nix's dup2 wants an OwnedFd for the target; 0..n are not owned
        // by anything in this process once `fds` is gone.
        // SAFETY: both descriptors are open numbers; the caller's contract
        // makes replacing i harmless.
        let r = unsafe { libc::dup2(fd.as_raw_fd(), i as RawFd) };
        Errno::result(r).map_err(InitError::step("set up stdio"))?;
    }
    drop(parked);
    // SAFETY: the caller's contract.
    unsafe { close_from(n as libc::c_uint) }
}

/// Close every descriptor from `first` up: close_range(2), or on kernels
/// before 5.9 (ENOSYS) one by one as /proc/self/fd lists them.
///
/// # Safety
/// As install_fds: nothing may use those descriptors afterwards.
unsafe fn close_from(first: libc::c_uint) -> Result<(), InitError> {
    // nix has no close_range.
    // SAFETY: close_range takes three integers; the caller's contract.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    match Errno::result(r) {
        Ok(_) => return Ok(()),
        Err(Errno::ENOSYS) => {}
        Err(e) => return Err(InitError::step("close inherited descriptors")(e)),
    }
    let fds = open_fds_from(Path::new("/proc/self/fd"), first as RawFd)
        .map_err(InitError::io("close inherited descriptors"))?;
    for fd in fds {
        // Like close_range, per-descriptor errors are not reported: the
        // number is released either way, and EBADF is the listing's own
        // descriptor, gone with it.
        // SAFETY: the caller's contract.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// The descriptor numbers from `first` up that `dir` (a /proc/PID/fd)
/// lists.
fn open_fds_from(dir: &Path, first: RawFd) -> std::io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            if fd >= first {
                fds.push(fd);
            }
        }
    }
    fds.sort_unstable();
    Ok(fds)
}

/// The process cannot become what process.json says: tell the caller on
/// its own stderr and end as a shell does for a program it cannot run.
fn die(err: InitError) -> ! {
    // Nothing is left to tell if the caller's stderr is gone.
    let _ = std::io::stderr().write_all(format!("nexcage: {err}\n").as_bytes());
    // SAFETY: _exit has no preconditions; unlike exit it runs no atexit
    // handlers that belong to the forking parent.
    unsafe { libc::_exit(127) }
}

/// After fork: become the user's process. Returns only why it could not.
fn child(p: &Prepared, stdio: Vec<OwnedFd>) -> InitError {
    if let Err(e) = restore_default_signals() {
        return e;
    }
    // Forked from the session's leader: cannot fail.
    if let Err(e) = setsid() {
        return InitError::step("start a session")(e);
    }
    // SAFETY: single-threaded child that leaves by exec or _exit (die).
    if let Err(e) = unsafe { install_fds(stdio) } {
        return e;
    }
    // Terminal mode: stdin is the pty's slave; as the new session's
    // leader, make it our controlling terminal (job control, ^C).
    if p.terminal {
        if let Err(e) = take_controlling_terminal() {
            return e;
        }
    }
    if let Err(e) = wait_for_start() {
        return e;
    }
    become_process(p)
}

/// Wait at exec.fifo until `nexcage start` opens the other end, run the
/// startContainer hooks (inside the guest, before the process) and tell
/// start '0', or '1' and why, which it fails with.
fn wait_for_start() -> Result<(), InitError> {
    let fifo = Path::new(MOUNT_POINT).join(FIFO_FILE);
    // std opens with O_CLOEXEC.
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .map_err(InitError::io("wait for start"))?;
    if let Err(reason) = run_start_hooks() {
        // start reports the reason; if it is gone there is nobody to tell.
        let _ = fifo.write_all(format!("1{reason}").as_bytes());
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) }
    }
    fifo.write_all(b"0")
        .map_err(InitError::io("wait for start"))
}

/// The startContainer hooks create left in the bridge, if any.
fn run_start_hooks() -> Result<(), InitError> {
    let path = Path::new(MOUNT_POINT).join(super::START_HOOKS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(InitError::Read { path, source }),
    };
    #[derive(serde::Deserialize)]
    struct StartHooks {
        hooks: Vec<oci_spec::runtime::Hook>,
        state: serde_json::Value,
    }
    let doc: StartHooks = match serde_json::from_slice(&text) {
        Ok(doc) => doc,
        Err(source) => return Err(InitError::StartHooksFile { path, source }),
    };
    let mut hooks = oci_spec::runtime::Hooks::default();
    hooks.set_start_container(Some(doc.hooks));
    let state = serde_json::to_vec(&doc.state).expect("state serializes");
    crate::hooks::run(crate::hooks::Kind::StartContainer, &hooks, &state)
        .map_err(InitError::StartHooks)
}

/// Drop to the OCI user and exec: cwd, rlimits, umask, oom_score_adj,
/// capabilities, groups, gid, uid, no_new_privs, seccomp, then execve with
/// exactly the process's environment. Shared by the container process
/// (after `start`) and by `exec` (already placed in the guest by
/// lxc-attach). Returns only why it could not; the caller must then _exit.
fn become_process(p: &Prepared) -> InitError {
    match drop_to_user(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn drop_to_user(p: &Prepared) -> Result<std::convert::Infallible, InitError> {
    // Built first: after the seccomp filter, allocating may be denied.
    let argv: Vec<*const libc::c_char> = p
        .args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = p
        .env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    nix::unistd::chdir(p.cwd.as_c_str()).map_err(InitError::step("chdir"))?;
    for &(res, soft, hard) in &p.rlimits {
        setrlimit(res, soft, hard).map_err(InitError::step("setrlimit"))?;
    }
    if let Some(m) = p.umask {
        // OCI's umask is a mode_t: anything above 0o7777 is not one.
        umask(Mode::from_bits_truncate(m as libc::mode_t));
    }
    if let Some(adj) = &p.oom_score_adj {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/oom_score_adj")
            .and_then(|mut f| f.write_all(adj))
            .map_err(InitError::io("oom_score_adj"))?;
    }
    // Without no_new_privs the kernel wants CAP_SYS_ADMIN for a filter:
    // load it while we still have it, as runc does (the profile must then
    // allow what follows: setgroups, setuid, capset...).
    if let Some(f) = p.seccomp.as_ref().filter(|_| !p.no_new_privileges) {
        f.load().map_err(InitError::io("load the seccomp filter"))?;
    }
    if let Some(c) = &p.caps {
        // Dropping from the bounding set needs CAP_SETPCAP: before setuid.
        for &cap in &c.drop_bounding {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(InitError::caps("drop bounding capability"))?;
        }
        // Keep the permitted set across setuid; the sets are trimmed after.
        nix::sys::prctl::set_keepcaps(true).map_err(InitError::step("keep capabilities"))?;
    }
    if let Err(e) = nix::unistd::setgroups(&p.groups) {
        // A guest that may not call setgroups still runs a process that
        // asks for no supplementary groups.
        if !p.groups.is_empty() {
            return Err(InitError::step("setgroups")(e));
        }
    }
    let gid = Gid::from_raw(p.gid);
    setresgid(gid, gid, gid).map_err(InitError::step("setgid"))?;
    let uid = Uid::from_raw(p.uid);
    setresuid(uid, uid, uid).map_err(InitError::step("setuid"))?;
    if let Some(c) = &p.caps {
        set_caps(c)?;
    }
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(InitError::step("no_new_privs"))?;
    }
    // As close to execve as possible, so the profile governs the fewest
    // of our own calls (runc's order).
    if let Some(f) = p.seccomp.as_ref().filter(|_| p.no_new_privileges) {
        f.load().map_err(InitError::io("load the seccomp filter"))?;
    }
    // nix's execve builds its pointer arrays itself, which may allocate
    // under the filter; ours were built above.
    // SAFETY: argv and envp are NULL-terminated arrays of pointers into
    // p's CStrings, which outlive the call.
    unsafe { libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(InitError::Execve {
        path: p.path.clone(),
        source: std::io::Error::last_os_error(),
    })
}

/// The inheritable, effective and permitted sets, then the ambient set,
/// whose members must already be permitted and inheritable. One capset per
/// set (the caps crate's way), in the order that checks each against the
/// same sets a single capset would: inheritable first, while the old
/// permitted set (and, for root, CAP_SETPCAP) still stands; effective
/// before permitted, so that effective stays within permitted throughout.
fn set_caps(c: &Caps) -> Result<(), InitError> {
    caps::set(None, CapSet::Inheritable, &c.inheritable)
        .map_err(InitError::caps("set capabilities"))?;
    caps::set(None, CapSet::Effective, &c.effective)
        .map_err(InitError::caps("set capabilities"))?;
    caps::set(None, CapSet::Permitted, &c.permitted)
        .map_err(InitError::caps("set capabilities"))?;
    caps::clear(None, CapSet::Ambient).map_err(InitError::caps("set capabilities"))?;
    for &cap in &c.ambient {
        caps::raise(None, CapSet::Ambient, cap).map_err(InitError::caps("set capabilities"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_found_on_the_process_path_not_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("hello");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![format!("PATH={}", bin.display())];
        assert_eq!(resolve("hello", &env, Path::new("/")).unwrap(), prog);
        let err = resolve("hello", &["PATH=/nonexistent".into()], Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"hello\": executable file not found in $PATH"
        );
        assert!(resolve("./bin/hello", &[], tmp.path()).is_ok());
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve(prog.to_str().unwrap(), &[], Path::new("/")).unwrap_err();
        assert!(err.to_string().ends_with(": permission denied"), "{err}");
        let err = resolve("/nonexistent", &[], Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"/nonexistent\": stat /nonexistent: no such file or directory"
        );
    }

    #[test]
    fn capabilities_are_converted_before_fork() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}, "oomScoreAdj": -17,
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "inheritable": ["CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_NET_BIND_SERVICE"]
            }
        }))
        .unwrap();
        let prep = Prepared::from_process(&p).unwrap();
        let c = prep.caps.unwrap();
        use Capability::*;
        let set = |v: &[Capability]| v.iter().copied().collect::<CapsHashSet>();
        assert_eq!(c.effective, set(&[CAP_CHOWN, CAP_KILL]));
        assert_eq!(
            c.permitted,
            set(&[CAP_CHOWN, CAP_KILL, CAP_NET_BIND_SERVICE])
        );
        assert_eq!(c.inheritable, set(&[CAP_NET_BIND_SERVICE]));
        assert_eq!(c.ambient, [CAP_NET_BIND_SERVICE]);
        assert!(!c.drop_bounding.contains(&CAP_CHOWN) && c.drop_bounding.contains(&CAP_SYS_ADMIN));
        assert!(c
            .drop_bounding
            .windows(2)
            .all(|w| w[0].index() < w[1].index()));
        assert_eq!(prep.oom_score_adj.as_deref(), Some(&b"-17"[..]));
        assert_eq!(cap_from_name("CAP_SYS_ADMIN").unwrap().index(), 21);
        assert_eq!(cap_from_name("CAP_CHECKPOINT_RESTORE").unwrap().index(), 40);
        assert_eq!(
            cap_from_name("CAP_BOGUS").unwrap_err().to_string(),
            "unknown capability CAP_BOGUS"
        );
        let names = capability_names();
        assert_eq!(names.len(), 41);
        assert_eq!(
            (names[0].as_str(), names[21].as_str()),
            ("CAP_CHOWN", "CAP_SYS_ADMIN")
        );
        let none: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert!(Prepared::from_process(&none).unwrap().caps.is_none());
    }

    #[test]
    fn missing_linux_settings_file_means_nothing_to_apply() {
        assert!(apply_linux_settings(Path::new("/nonexistent/linux.json")).is_ok());
    }

    #[test]
    fn every_oci_rlimit_maps_to_its_kernel_resource() {
        // Through serde, as bundles name them, so a wrong arm shows.
        for (name, res) in [
            ("RLIMIT_CPU", libc::RLIMIT_CPU),
            ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
            ("RLIMIT_DATA", libc::RLIMIT_DATA),
            ("RLIMIT_STACK", libc::RLIMIT_STACK),
            ("RLIMIT_CORE", libc::RLIMIT_CORE),
            ("RLIMIT_RSS", libc::RLIMIT_RSS),
            ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
            ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
            ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
            ("RLIMIT_AS", libc::RLIMIT_AS),
            ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
            ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
            ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
            ("RLIMIT_NICE", libc::RLIMIT_NICE),
            ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
            ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
        ] {
            let t: PosixRlimitType = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(
                rlimit_resource(t) as libc::c_int,
                res as libc::c_int,
                "{name}"
            );
        }
    }

    #[test]
    fn descriptors_to_close_are_listed_from_proc() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let listed = open_fds_from(Path::new("/proc/self/fd"), 3).unwrap();
        assert!(listed.contains(&fd), "{fd} not in {listed:?}");
        assert!(listed.iter().all(|&n| n >= 3));
        assert!(!open_fds_from(Path::new("/proc/self/fd"), fd + 1)
            .unwrap()
            .contains(&fd));
        assert!(open_fds_from(Path::new("/nonexistent"), 0).is_err());
    }

    #[test]
    fn close_from_falls_back_to_proc_without_close_range() {
        use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
        // A kernel before 5.9, as seen by the child: close_range is ENOSYS.
        let mut filter = ScmpFilterContext::new(ScmpAction::Allow).unwrap();
        let close_range = ScmpSyscall::from_name("close_range").unwrap();
        filter
            .add_rule(ScmpAction::Errno(libc::ENOSYS), close_range)
            .unwrap();
        let keep = std::fs::File::open("/dev/null").unwrap();
        let gone = dup_at_least(keep.as_fd(), keep.as_raw_fd() + 1).unwrap();
        let (keep, gone) = (keep.as_raw_fd(), gone.as_raw_fd());
        // SAFETY: F_GETFD only asks whether the number is open.
        let open =
            |fd: RawFd| fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD).is_ok();
        // SAFETY: the child only makes system calls and _exits; glibc's
        // fork leaves malloc usable in it.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: close_range on our own descriptor numbers; the
                // child is single-threaded and ends by _exit.
                let code = if filter.load().is_err() {
                    2
                } else if unsafe { libc::syscall(libc::SYS_close_range, gone, gone, 0) } != -1
                    || Errno::last() != Errno::ENOSYS
                {
                    3
                } else if unsafe { close_from(gone as libc::c_uint) }.is_err() {
                    4
                } else if !open(keep) || open(gone) {
                    5
                } else {
                    0
                };
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
        assert!(open(gone), "the parent's descriptors stay open");
    }

    #[test]
    fn init_errors_keep_the_words_callers_match() {
        let e = InitError::step("chdir")(Errno::ENOENT);
        assert_eq!(
            e.to_string(),
            "chdir: No such file or directory (os error 2)"
        );
        let e = InitError::Execve {
            path: CString::new("/bin/x").unwrap(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            e.to_string(),
            "exec /bin/x: Permission denied (os error 13)"
        );
        assert_eq!(
            InitError::Mask {
                path: "/proc/kcore".into(),
                source: Errno::EPERM
            }
            .to_string(),
            "maskedPaths: /proc/kcore: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn process_settings_are_checked_before_fork() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/nonexistent-dir", "args": ["sh"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert_eq!(
            Prepared::from_process(&p).unwrap_err().to_string(),
            "cwd \"/nonexistent-dir\": not a directory in the container"
        );
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "env": ["PATH=/bin:/usr/bin", "A=1"], "user": {"uid": 1000, "gid": 100, "umask": 18, "additionalGids": [5]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}], "noNewPrivileges": true
        }))
        .unwrap();
        let prep = Prepared::from_process(&p).unwrap();
        assert_eq!((prep.uid, prep.gid, prep.umask), (1000, 100, Some(18)));
        assert_eq!(prep.rlimits, vec![(Resource::RLIMIT_NOFILE, 10, 20)]);
        assert!(prep.no_new_privileges);
        assert_eq!(prep.env.len(), 2);
    }
}
