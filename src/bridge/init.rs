//! The container's PID 1: nexcage's own binary, bind-mounted at
//! /.nexcage/init and started by LXC (`lxc.init.cmd`). It takes the caller's
//! stdio from the monitor, forks the process described by process.json, holds
//! it at exec.fifo until `start`, then forwards signals, reaps every orphan,
//! and reports how the process ended. When it returns the container stops.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::libc;
use nix::sys::signal::{
    kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Process;

use super::proto::{self, Message};
use super::MOUNT_POINT;
use crate::backend::proxmox::translate::{InitSettings, INIT_SETTINGS_FILE};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run() -> ! {
    let code = match connect_monitor() {
        Ok(conn) => serve(&conn),
        // Nobody to tell: the monitor reports the missing connection.
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn connect_monitor() -> Result<OwnedFd, String> {
    let path = Path::new(MOUNT_POINT).join("sock");
    let addr = UnixAddr::new(&path).map_err(|e| e.to_string())?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..100 {
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => return Ok(sock),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

fn serve(conn: &OwnedFd) -> i32 {
    let stdio = match receive_stdio(conn) {
        Ok(fds) => fds,
        Err(None) => return 1,
        Err(Some(message)) => return fail_and_wait(conn, message),
    };
    let prepared = match Prepared::load(&Path::new(MOUNT_POINT).join("process.json")) {
        Ok(p) => p,
        Err(message) => return fail_and_wait(conn, message),
    };
    if let Err(message) = apply_linux_settings(&Path::new(MOUNT_POINT).join(INIT_SETTINGS_FILE)) {
        return fail_and_wait(conn, message);
    }
    let stdio = match terminal_stdio(conn, &prepared, stdio) {
        Ok(fds) => fds,
        Err(message) => return fail_and_wait(conn, message),
    };
    let mask = block_signals();
    // SAFETY: this process is single-threaded; the child only execs or exits.
    match unsafe { fork() } {
        Err(e) => {
            let message = format!("cannot fork the container process: {e}");
            let _ = proto::send(conn.as_fd(), &Message::Failed { message }, &[]);
            1
        }
        Ok(ForkResult::Child) => child(&prepared, stdio),
        Ok(ForkResult::Parent { child }) => {
            drop(stdio);
            if proto::send(conn.as_fd(), &Message::Ready, &[]).is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let (code, signal) = supervise(child, &mask);
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
    let fail = |message: String| -> ! {
        eprintln!("nexcage: {message}");
        std::process::exit(127)
    };
    let (msg, fds) = match proto::recv(std::io::stdin().as_fd()) {
        Ok(Some(got)) => got,
        Ok(None) => fail("exec: nexcage exec sent no descriptors".into()),
        Err(e) => fail(format!("exec: {e}")),
    };
    let terminal = match (&msg, fds.len()) {
        (Message::ExecStdio, n) if n >= 3 => false,
        (Message::ExecTerminal, n) if n >= 2 => true,
        _ => fail(format!("exec: unexpected message {msg:?}")),
    };
    // From here on failures reach the caller's stderr.
    let stderr = if terminal { &fds[1] } else { &fds[2] };
    // SAFETY: dup2 onto our own stderr; both descriptors are open.
    unsafe { libc::dup2(stderr.as_raw_fd(), 2) };
    let prepared = Prepared::load(file).unwrap_or_else(|m| fail(m));
    let fds = if terminal {
        let mut fds = fds.into_iter();
        let console = fds.next().expect("checked above");
        let _stderr = fds.next();
        let pty = super::pty::open(prepared.console_size).unwrap_or_else(|m| fail(m));
        super::pty::send_master(console.as_fd(), &pty.name, pty.master.as_fd())
            .unwrap_or_else(|m| fail(m));
        drop(console);
        drop(pty.master);
        let mut stdio = Vec::new();
        for _ in 0..3 {
            stdio.push(
                pty.slave
                    .try_clone()
                    .unwrap_or_else(|e| fail(format!("terminal: {e}"))),
            );
        }
        stdio.extend(fds);
        stdio
    } else {
        fds
    };
    // SAFETY: single-threaded (nothing spawned threads yet); only exec or
    // _exit leave become_process.
    unsafe {
        if terminal {
            // lxc-attach's child leads no process group, so it may start a
            // session and take the pty as its controlling terminal.
            libc::setsid();
        }
        install_fds(fds);
        if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            die(
                "set the controlling terminal",
                std::io::Error::last_os_error(),
            );
        }
        become_process(&prepared)
    }
}

/// The caller's stdio from the monitor, after joining the network namespace
/// it may send first (before the sysctls, which then apply to that
/// namespace; `pct exec` joins the init's namespaces, so exec'd processes
/// share it too). Err(None): nobody to tell.
fn receive_stdio(conn: &OwnedFd) -> Result<Vec<OwnedFd>, Option<String>> {
    let mut msg = proto::recv(conn.as_fd());
    if let Ok(Some((Message::Netns, fds))) = &msg {
        let [ns] = &fds[..] else {
            return Err(Some("the monitor sent no network namespace".into()));
        };
        super::netns::join(ns.as_fd()).map_err(Some)?;
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
) -> Result<Vec<OwnedFd>, String> {
    if !p.terminal {
        return Ok(stdio);
    }
    let pty = super::pty::open(p.console_size)?;
    let msg = Message::Console {
        pty: pty.name.clone(),
    };
    proto::send(conn.as_fd(), &msg, &[pty.master.as_raw_fd()])?;
    drop(pty.master);
    for fd in stdio.iter_mut().take(3) {
        *fd = pty
            .slave
            .try_clone()
            .map_err(|e| format!("terminal: {e}"))?;
    }
    Ok(stdio)
}

/// Report a set-up failure, then stay up until create has read it and tears
/// the guest down: a guest that stopped at once would fail `pct start`
/// instead, hiding the reason.
fn fail_and_wait(conn: &OwnedFd, message: String) -> i32 {
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
    groups: Vec<nix::unistd::Gid>,
    umask: Option<u32>,
    rlimits: Vec<(libc::c_int, u64, u64)>,
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

/// The five OCI capability sets as kernel numbers/bitmasks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Caps {
    /// Capabilities to drop from the bounding set (all known ones not listed).
    drop_bounding: Vec<u32>,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: Vec<u32>,
}

/// Kernel capability numbers (linux/capability.h), by OCI name.
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability names nexcage can apply (for `nexcage features`).
pub fn capability_names() -> &'static [&'static str] {
    CAP_NAMES
}

fn cap_number(name: &str) -> Result<u32, String> {
    CAP_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
        .ok_or_else(|| format!("unknown capability {name}"))
}

/// The highest capability this kernel knows; others cannot be set.
fn in_bounding_set(n: u32) -> bool {
    // SAFETY: PR_CAPBSET_READ only reads this process's bounding set.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, n as libc::c_ulong, 0, 0, 0) == 1 }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

impl Caps {
    fn from_process(p: &Process) -> Result<Option<Caps>, String> {
        let Some(c) = p.capabilities() else {
            return Ok(None);
        };
        // oci-spec's names are its serde names ("CAP_CHOWN").
        let numbers = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<Vec<u32>, String> {
            let mut v: Vec<u32> = Vec::new();
            for cap in set.iter().flatten() {
                let name = serde_json::to_value(cap).map_err(|e| e.to_string())?;
                v.push(cap_number(name.as_str().unwrap_or(""))?);
            }
            v.sort_unstable();
            v.dedup();
            Ok(v)
        };
        let last = last_cap();
        let known = |v: Vec<u32>| -> Vec<u32> { v.into_iter().filter(|&n| n <= last).collect() };
        let mask = |v: &[u32]| v.iter().fold(0u64, |m, &n| m | 1 << n);
        let bounding = known(numbers(c.bounding())?);
        let wanted = mask(&known(numbers(c.permitted())?))
            | mask(&known(numbers(c.effective())?))
            | mask(&known(numbers(c.inheritable())?))
            | mask(&known(numbers(c.ambient())?));
        // The spec makes a capability that cannot be granted an error. A
        // guest never holds what Proxmox drops (lxc.cap.drop: sys_module,
        // sys_time, mac_*...), so say which, instead of capset's EPERM.
        let missing: Vec<&str> = (0..=last)
            .filter(|&n| wanted & (1 << n) != 0 && !in_bounding_set(n))
            .map(|n| CAP_NAMES.get(n as usize).copied().unwrap_or("(unnamed)"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "process.capabilities: {} cannot be granted: this Proxmox guest's bounding set lacks them",
                missing.join(", ")
            ));
        }
        Ok(Some(Caps {
            drop_bounding: (0..=last).filter(|n| !bounding.contains(n)).collect(),
            effective: mask(&known(numbers(c.effective())?)),
            permitted: mask(&known(numbers(c.permitted())?)),
            inheritable: mask(&known(numbers(c.inheritable())?)),
            ambient: known(numbers(c.ambient())?),
        }))
    }
}

/// The container-side settings the host could not express (maskedPaths,
/// readonlyPaths, readonly root, domainname), applied in the init while it
/// still has every capability, before the process is forked. A missing file
/// means nothing to do.
fn apply_linux_settings(path: &Path) -> Result<(), String> {
    let settings: InitSettings = match std::fs::read(path) {
        Ok(text) => {
            serde_json::from_slice(&text).map_err(|e| format!("invalid {}: {e}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if let Some(net) = &settings.net {
        configure_link(net)?;
    }
    // Before any other mount: moves need parents that are not shared.
    super::devfs::make_root_rslave()?;
    match &settings.dev {
        Some(dev) => super::devfs::rebuild(dev)?,
        None => super::devfs::fix_lxc_dev()?,
    }
    // Before readonlyPaths, which usually include /proc/sys.
    for (key, value) in &settings.sysctl {
        write_sysctl(key, value).map_err(|e| format!("sysctl {key}: {e}"))?;
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
        r.map_err(|e| format!("maskedPaths: {p}: {e}"))?;
    }
    for p in &settings.readonly_paths {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        readonly_bind(p).map_err(|e| format!("readonlyPaths: {p}: {e}"))?;
    }
    if let Some(d) = &settings.domainname {
        // SAFETY: a plain syscall with a valid buffer and length.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(format!("domainname: {}", std::io::Error::last_os_error()));
        }
    }
    if settings.readonly_root {
        // Only the root mount itself: /.nexcage and the mount points keep
        // their own flags, as with runc's readonly root.
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(none, "/", none, flags, none).map_err(|e| format!("root.readonly: {e}"))?;
    }
    // Last: an unbindable `/` would refuse the binds above.
    if let Some(p) = &settings.root_propagation {
        super::devfs::apply_root_propagation(p)?;
    }
    Ok(())
}

/// The guest's link as pct would have configured it with host-managed=1
/// (and as LXC does then, lo comes up with it).
fn configure_link(net: &crate::backend::proxmox::translate::InitNet) -> Result<(), String> {
    use super::netlink;
    let fail = |e: netlink::NetlinkError| format!("network: {e}");
    netlink::link_up("lo").map_err(fail)?;
    netlink::link_up(&net.link).map_err(fail)?;
    if let Some(cidr) = &net.address {
        let (ip, len) = cidr
            .split_once('/')
            .and_then(|(ip, len)| Some((ip.parse().ok()?, len.parse::<u8>().ok()?)))
            .filter(|(_, len)| *len <= 32)
            .ok_or_else(|| format!("network: {cidr:?} is not an IPv4 CIDR"))?;
        netlink::add_ipv4(&net.link, ip, len).map_err(fail)?;
    }
    if let Some(gw) = &net.gateway {
        let gw = gw
            .parse()
            .map_err(|_| format!("network: {gw:?} is not an IPv4 address"))?;
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
    fn load(path: &Path) -> Result<Prepared, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let process: Process = serde_json::from_slice(&text)
            .map_err(|e| format!("invalid {}: {e}", path.display()))?;
        let mut prepared = Prepared::from_process(&process)?;
        prepared.seccomp =
            super::seccomp::read(Path::new(MOUNT_POINT)).map_err(|e| e.to_string())?;
        Ok(prepared)
    }

    fn from_process(p: &Process) -> Result<Prepared, String> {
        let cstr =
            |s: &[u8]| CString::new(s).map_err(|_| "NUL byte in process settings".to_string());
        let args = p.args().clone().unwrap_or_default();
        let env = p.env().clone().unwrap_or_default();
        let cwd = p.cwd();
        if !cwd.is_dir() {
            return Err(format!(
                "cwd {:?}: not a directory in the container",
                cwd.display().to_string()
            ));
        }
        let program = args.first().ok_or("process.args is empty")?;
        let path = resolve(program, &env, cwd)?;
        let user = p.user();
        let rlimits = p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| {
                Ok((
                    rlimit_resource(&format!("{:?}", r.typ()))?,
                    r.soft(),
                    r.hard(),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
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
                .map(|&g| nix::unistd::Gid::from_raw(g))
                .collect(),
            umask: user.umask(),
            rlimits,
            no_new_privileges: p.no_new_privileges().unwrap_or(false),
            terminal: p.terminal().unwrap_or(false),
            console_size: match p.console_size() {
                Some(b) => Some((
                    u16::try_from(b.height())
                        .map_err(|_| "process.consoleSize.height is too large")?,
                    u16::try_from(b.width())
                        .map_err(|_| "process.consoleSize.width is too large")?,
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
    Prepared::from_process(p).map(|p| format!("{p:?}"))
}

/// Find the program as exec would with the process's own PATH (not ours).
fn resolve(program: &str, env: &[String], cwd: &Path) -> Result<PathBuf, String> {
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
            Err(e) => Err(format!(
                "exec: {program:?}: stat {}: {}",
                p.display(),
                if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file or directory".to_string()
                } else {
                    e.to_string()
                }
            )),
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(format!("exec: {program:?}: permission denied")),
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
        .ok_or_else(|| format!("exec: {program:?}: executable file not found in $PATH"))
}

/// oci-spec's Debug names the variants RlimitNofile etc.; map them to libc.
fn rlimit_resource(name: &str) -> Result<libc::c_int, String> {
    let upper = name.to_ascii_uppercase();
    let short = upper
        .trim_start_matches("RLIMIT_")
        .trim_start_matches("RLIMIT");
    let r = match short {
        "AS" => libc::RLIMIT_AS,
        "CORE" => libc::RLIMIT_CORE,
        "CPU" => libc::RLIMIT_CPU,
        "DATA" => libc::RLIMIT_DATA,
        "FSIZE" => libc::RLIMIT_FSIZE,
        "LOCKS" => libc::RLIMIT_LOCKS,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "NICE" => libc::RLIMIT_NICE,
        "NOFILE" => libc::RLIMIT_NOFILE,
        "NPROC" => libc::RLIMIT_NPROC,
        "RSS" => libc::RLIMIT_RSS,
        "RTPRIO" => libc::RLIMIT_RTPRIO,
        "RTTIME" => libc::RLIMIT_RTTIME,
        "SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "STACK" => libc::RLIMIT_STACK,
        _ => return Err(format!("unknown rlimit {name}")),
    } as libc::c_int;
    Ok(r)
}

extern "C" fn ignore(_: libc::c_int) {}

/// PID 1 gets no default signal actions; handle and block everything that
/// can be, and take signals one at a time with sigwait.
fn block_signals() -> SigSet {
    let mut mask = super::monitor::relayed_signals();
    mask.add(Signal::SIGCHLD);
    let handler = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in mask.iter() {
        // SAFETY: the handler does nothing; signals are consumed by sigwait.
        let _ = unsafe { sigaction(sig, &handler) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);
    mask
}

/// In the forked process, undo block_signals' do-nothing handlers before
/// unblocking: the process waits at exec.fifo until `start`, and a created
/// container must die by a signal whose default action terminates (TERM
/// from `kill`, CRI StopContainer, `podman stop`) as runc's waiting init
/// does, where the inherited handler would swallow it and restart the open.
/// Signals ignored by default (WINCH, CHLD, URG, CONT) stay harmless, and
/// one that arrived since fork is still pending and acts once unblocked.
fn restore_default_signals() {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: sigaction is async-signal-safe; no handler is installed.
        let _ = unsafe { sigaction(sig, &dfl) };
    }
}

/// Forward signals to the process; reap everything; return once the process ends.
fn supervise(child: Pid, mask: &SigSet) -> (Option<i32>, Option<i32>) {
    loop {
        let sig = match mask.wait() {
            Ok(s) => s,
            Err(_) => continue,
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
            Signal::SIGPWR => {
                let _ = kill(child, Signal::SIGTERM);
            }
            other => {
                let _ = kill(child, other);
            }
        }
    }
}

/// The caller's descriptors become 0..n, every other one is closed.
///
/// # Safety
/// Single-threaded, about to exec: descriptors are moved under the owners'
/// feet (the OwnedFds are forgotten, their numbers reused).
unsafe fn install_fds(fds: Vec<OwnedFd>) {
    // SAFETY: the caller's contract.
    unsafe {
        // Park above n first so that no dup2 clobbers another.
        let n = fds.len() as RawFd;
        let parked: Vec<RawFd> = fds
            .iter()
            .map(|fd| libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, n + 3))
            .collect();
        for (i, fd) in parked.iter().enumerate() {
            if *fd < 0 || libc::dup2(*fd, i as RawFd) < 0 {
                die("set up stdio", std::io::Error::last_os_error());
            }
        }
        std::mem::forget(fds);
        libc::syscall(
            libc::SYS_close_range,
            n as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
    }
}

/// The process cannot become what process.json says: tell the caller on
/// its own stderr and end as a shell does for a program it cannot run.
fn die(what: &str, err: std::io::Error) -> ! {
    let msg = format!("nexcage: {what}: {err}\n");
    // SAFETY: writing to stderr (already the caller's) and exiting.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// After fork: become the user's process. Only exec or _exit leave here.
fn child(p: &Prepared, stdio: Vec<OwnedFd>) -> ! {
    let fail = die;
    let last = || std::io::Error::last_os_error();
    // SAFETY: raw descriptor and credential syscalls in a single-threaded child.
    unsafe {
        restore_default_signals();
        let empty = SigSet::empty();
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None);
        libc::setsid();

        install_fds(stdio);
        // Terminal mode: stdin is the pty's slave; as the new session's
        // leader, make it our controlling terminal (job control, ^C).
        if p.terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail("set the controlling terminal", last());
        }

        // Wait here until `nexcage start` opens the other end.
        let fifo = CString::new(format!("{MOUNT_POINT}/exec.fifo")).expect("no NUL");
        let fd = libc::open(fifo.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            fail("wait for start", last());
        }
        // startContainer hooks run now, inside the guest, before the
        // process; `start` reads '0', or '1' and why, and fails with it.
        if let Err(reason) = run_start_hooks() {
            let msg = format!("1{reason}");
            libc::write(fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(1);
        }
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            fail("wait for start", last());
        }
        libc::close(fd);

        become_process(p)
    }
}

/// The startContainer hooks create left in the bridge, if any.
fn run_start_hooks() -> Result<(), String> {
    let path = Path::new(MOUNT_POINT).join(super::START_HOOKS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    #[derive(serde::Deserialize)]
    struct StartHooks {
        hooks: Vec<oci_spec::runtime::Hook>,
        state: serde_json::Value,
    }
    let doc: StartHooks =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hooks = oci_spec::runtime::Hooks::default();
    hooks.set_start_container(Some(doc.hooks));
    let state = serde_json::to_vec(&doc.state).expect("state serializes");
    crate::hooks::run(crate::hooks::Kind::StartContainer, &hooks, &state).map_err(|e| e.to_string())
}

/// Drop to the OCI user and exec: cwd, rlimits, umask, oom_score_adj,
/// capabilities, groups, gid, uid, no_new_privs, seccomp, then execve with
/// exactly the process's environment. Shared by the container process (after `start`)
/// and by `exec` (already placed in the guest by lxc-attach).
///
/// # Safety
/// Only in a single-threaded process about to become `p`: only exec or
/// _exit leave here.
unsafe fn become_process(p: &Prepared) -> ! {
    let fail = die;
    let last = || std::io::Error::last_os_error();
    // SAFETY: credential syscalls in a single-threaded process (the caller's contract).
    unsafe {
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
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            fail("chdir", last());
        }
        for &(res, soft, hard) in &p.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(res as _, &lim) != 0 {
                fail("setrlimit", last());
            }
        }
        if let Some(m) = p.umask {
            libc::umask(m as libc::mode_t);
        }
        if let Some(adj) = &p.oom_score_adj {
            let path = b"/proc/self/oom_score_adj\0";
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, adj.as_ptr().cast(), adj.len()) != adj.len() as isize {
                fail("oom_score_adj", last());
            }
            libc::close(fd);
        }
        // Without no_new_privs the kernel wants CAP_SYS_ADMIN for a filter:
        // load it while we still have it, as runc does (the profile must then
        // allow what follows: setgroups, setuid, capset...).
        if let Some(f) = p.seccomp.as_ref().filter(|_| !p.no_new_privileges) {
            f.load()
                .unwrap_or_else(|e| fail("load the seccomp filter", e));
        }
        if let Some(c) = &p.caps {
            // Dropping from the bounding set needs CAP_SETPCAP: before setuid.
            for &n in &c.drop_bounding {
                if libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) != 0 {
                    fail("drop bounding capability", last());
                }
            }
            // Keep the permitted set across setuid; capset trims it after.
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail("keep capabilities", last());
            }
        }
        if nix::unistd::setgroups(&p.groups).is_err() && !p.groups.is_empty() {
            fail("setgroups", last());
        }
        if libc::setgid(p.gid) != 0 {
            fail("setgid", last());
        }
        if libc::setuid(p.uid) != 0 {
            fail("setuid", last());
        }
        if let Some(c) = &p.caps {
            set_caps(c).unwrap_or_else(|e| fail("set capabilities", e));
        }
        if p.no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail("no_new_privs", last());
        }
        // As close to execve as possible, so the profile governs the fewest
        // of our own calls (runc's order).
        if let Some(f) = p.seccomp.as_ref().filter(|_| p.no_new_privileges) {
            f.load()
                .unwrap_or_else(|e| fail("load the seccomp filter", e));
        }
        libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(&format!("exec {}", p.path.to_string_lossy()), last())
    }
}

/// capset (version 3: two 32-bit words per set), then the ambient set,
/// whose members must already be permitted and inheritable.
fn set_caps(c: &Caps) -> Result<(), std::io::Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |m: u64, i: usize| (m >> (32 * i)) as u32;
    let data: [Data; 2] = std::array::from_fn(|i| Data {
        effective: word(c.effective, i),
        permitted: word(c.permitted, i),
        inheritable: word(c.inheritable, i),
    });
    // SAFETY: header and data are the layouts capset(2) documents.
    unsafe {
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        for &n in &c.ambient {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                n as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
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
        assert_eq!(err, "exec: \"hello\": executable file not found in $PATH");
        assert!(resolve("./bin/hello", &[], tmp.path()).is_ok());
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve(prog.to_str().unwrap(), &[], Path::new("/")).unwrap_err();
        assert!(err.ends_with(": permission denied"), "{err}");
        let err = resolve("/nonexistent", &[], Path::new("/")).unwrap_err();
        assert_eq!(
            err,
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
        assert_eq!(c.effective, 1 << 0 | 1 << 5);
        assert_eq!(c.permitted, 1 << 0 | 1 << 5 | 1 << 10);
        assert_eq!(c.inheritable, 1 << 10);
        assert_eq!(c.ambient, [10]);
        assert!(!c.drop_bounding.contains(&0) && c.drop_bounding.contains(&21));
        assert_eq!(prep.oom_score_adj.as_deref(), Some(&b"-17"[..]));
        assert_eq!(cap_number("CAP_SYS_ADMIN").unwrap(), 21);
        assert_eq!(cap_number("CAP_CHECKPOINT_RESTORE").unwrap(), 40);
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
    fn rlimit_names_map_to_resources() {
        assert_eq!(
            rlimit_resource("RlimitNofile").unwrap(),
            libc::RLIMIT_NOFILE as libc::c_int
        );
        assert_eq!(
            rlimit_resource("RLIMIT_NPROC").unwrap(),
            libc::RLIMIT_NPROC as libc::c_int
        );
        assert!(rlimit_resource("RlimitBogus").is_err());
    }

    #[test]
    fn process_settings_are_checked_before_fork() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/nonexistent-dir", "args": ["sh"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert!(Prepared::from_process(&p).unwrap_err().contains("cwd"));
        let p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "env": ["PATH=/bin:/usr/bin", "A=1"], "user": {"uid": 1000, "gid": 100, "umask": 18, "additionalGids": [5]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}], "noNewPrivileges": true
        }))
        .unwrap();
        let prep = Prepared::from_process(&p).unwrap();
        assert_eq!((prep.uid, prep.gid, prep.umask), (1000, 100, Some(18)));
        assert_eq!(
            prep.rlimits,
            vec![(libc::RLIMIT_NOFILE as libc::c_int, 10, 20)]
        );
        assert!(prep.no_new_privileges);
        assert_eq!(prep.env.len(), 2);
    }
}
