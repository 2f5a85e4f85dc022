//! The process bridge (DESIGN.md). A Proxmox container's init is a child of
//! lxc-start under systemd, never of the supervisor that called us, yet
//! containerd's shim and conmon reap the pid we report and read the
//! container's output from the stdio they gave `create`. So:
//!
//! - `create` leaves a *monitor* behind (a child of the caller: its pid is the
//!   container's pid) that hands the caller's stdio to the container and exits
//!   with the process's status;
//! - nexcage itself, bind-mounted read-only, is the container's PID 1 (*init*):
//!   it receives those descriptors, forks the process, holds it on `exec.fifo`
//!   until `start`, then reaps and reports.
//!
//! Everything travels through `<root>/<id>/bridge`, bind-mounted read-only at
//! `/.nexcage`: sockets and fifos work on read-only mounts, so the container
//! can use them but never replace them.

pub mod devfs;
pub mod guestns;
pub mod init;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod proto;
pub mod pty;
pub mod seccomp;
pub mod settings;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use oci_spec::runtime::Process;

use crate::cli::{GlobalOpts, LogFormat};
use crate::procfs::ProcRef;
use proto::Outcome;

// The bridge directory's name at the container's root and the init's name
// in it, as macros because concat! (which builds the paths below at compile
// time) takes only literals.
macro_rules! mount_name {
    () => {
        ".nexcage"
    };
}
macro_rules! init_file {
    () => {
        "init"
    };
}

/// Where the bridge directory appears inside the container.
pub const MOUNT_POINT: &str = concat!("/", mount_name!());
/// The same, relative to the container's root (for lxc.mount.entry).
pub const MOUNT_TARGET: &str = mount_name!();
/// nexcage's own binary inside the container.
pub const INIT_PATH: &str = concat!("/", mount_name!(), "/", init_file!());
/// The command LXC starts: that binary's `init` subcommand.
pub const INIT_CMD: &str = concat!("/", mount_name!(), "/", init_file!(), " init");
/// Where a guest whose root is the bundle's rootfs (root mode `bundle`)
/// finds it mounted, until its init makes it the root.
pub const ROOT_MOUNT_POINT: &str = concat!("/", mount_name!(), "-root");
/// The same, relative to the container's root (for lxc.mount.entry).
pub const ROOT_MOUNT_TARGET: &str = concat!(mount_name!(), "-root");

/// How host and init talk, bumped on every change. A guest's init is the
/// nexcage binary of its `create` (a bind mount keeps that inode through a
/// package upgrade), so later commands check the record's number first.
/// 2: exec passes the caller's descriptors over lxc-attach's stdin.
pub const PROTOCOL: u32 = 2;

// The files of the bridge directory; also settings::INIT_SETTINGS_FILE and
// seccomp::FILE, and devfs::STAGE_DIR.
/// The OCI process the init runs.
pub const PROCESS_FILE: &str = "process.json";
/// Holds the process until `start` (runc's exec.fifo).
pub const FIFO_FILE: &str = "exec.fifo";
/// startContainer hooks and the state they get, for the init (hooks.rs).
pub const START_HOOKS_FILE: &str = "start-hooks.json";
/// The monitor listens here; the init connects.
pub const SOCKET_FILE: &str = "sock";
/// The empty file nexcage's binary is bind-mounted onto.
const INIT_FILE: &str = init_file!();

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Process(String),
    #[error("the container's init did not report within {0} s")]
    Timeout(u64),
    #[error("the bridge monitor exited before the container was created ({0})")]
    MonitorDied(String),
    #[error("the container's process is not waiting to be started")]
    NotWaiting,
    #[error("{0}")]
    StartFailed(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BridgeError + 'a {
    move |source| BridgeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The rest of the fifo after a failure byte: the init's one-line reason.
fn read_reason(fifo: &File, deadline: Instant) -> String {
    let mut reason = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && reason.len() < 4096 {
        match nix::unistd::read(fifo, &mut buf) {
            Ok(0) => break,
            Ok(n) => reason.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(10u16));
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&reason).trim().to_string();
    if text.is_empty() {
        "the container's process failed to start".into()
    } else {
        text
    }
}

/// `<root>/<id>/bridge`.
pub struct BridgeDir {
    dir: PathBuf,
}

impl BridgeDir {
    pub fn of(container_dir: &Path) -> BridgeDir {
        BridgeDir {
            dir: container_dir.join("bridge"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The empty file the nexcage binary is bind-mounted onto.
    pub fn init_mount_target() -> String {
        format!("{MOUNT_TARGET}/{INIT_FILE}")
    }

    /// Lay out the directory and bind the socket the init will connect to.
    /// Modes allow a container root that maps to an unprivileged host uid to
    /// read, connect and open the fifo, and nothing more.
    pub fn prepare(&self, process: &Process) -> Result<OwnedFd, BridgeError> {
        let dir = &self.dir;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(io("create", dir))?;
        set_mode(dir, 0o755)?;

        let json = serde_json::to_vec(process).expect("process serializes");
        let p = dir.join(PROCESS_FILE);
        fs::write(&p, json).map_err(io("write", &p))?;
        set_mode(&p, 0o644)?;

        // Where the init builds the guest's /dev (src/bridge/devfs.rs).
        let p = dir.join(devfs::STAGE_DIR);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(io("create", &p))?;

        let p = dir.join(INIT_FILE);
        File::create(&p).map_err(io("create", &p))?;
        set_mode(&p, 0o644)?;

        let p = dir.join(FIFO_FILE);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| io("create fifo", &p)(e.into()))?;
        set_mode(&p, 0o622)?;

        let p = dir.join(SOCKET_FILE);
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| io("create socket", &p)(e.into()))?;
        // A socket path must fit in sun_path (108 bytes), and `--root` plus
        // a 64-character id (podman, containerd) does not: bind through a
        // descriptor of the directory instead, which is always short.
        let dirfd = File::open(dir).map_err(io("open", dir))?;
        let short = format!("/proc/self/fd/{}/{SOCKET_FILE}", dirfd.as_raw_fd());
        let addr = UnixAddr::new(short.as_str()).map_err(|e| io("bind", &p)(e.into()))?;
        bind(sock.as_raw_fd(), &addr).map_err(|e| io("bind", &p)(e.into()))?;
        drop(dirfd);
        set_mode(&p, 0o666)?;
        listen(&sock, Backlog::new(1).expect("valid backlog"))
            .map_err(|e| io("listen on", &p)(e.into()))?;
        Ok(sock)
    }

    /// startContainer hooks for the init to run at `start`, with the state
    /// they get on stdin (readable by an unprivileged guest's root, as the
    /// rest of the directory).
    pub fn write_start_hooks(
        &self,
        hooks: &[oci_spec::runtime::Hook],
        state: &serde_json::Value,
    ) -> Result<(), BridgeError> {
        let p = self.dir.join(START_HOOKS_FILE);
        let doc = serde_json::json!({"hooks": hooks, "state": state});
        fs::write(&p, serde_json::to_vec(&doc).expect("hooks serialize"))
            .map_err(io("write", &p))?;
        set_mode(&p, 0o644)
    }

    /// The fifo exists from create until start: its presence is "created".
    pub fn is_created(&self) -> bool {
        fs::symlink_metadata(self.dir.join(FIFO_FILE))
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false)
    }

    /// `start`: open the fifo, which lets the process's blocked open return;
    /// it writes one byte and goes on to exec.
    pub fn release(&self, timeout: Duration) -> Result<(), BridgeError> {
        let path = self.dir.join(FIFO_FILE);
        let fifo = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => BridgeError::NotWaiting,
                _ => io("open", &path)(e),
            })?;
        let meta = fifo.metadata().map_err(io("stat", &path))?;
        if !meta.file_type().is_fifo() {
            return Err(io("use", &path)(std::io::Error::other("not a fifo")));
        }
        let deadline = Instant::now() + timeout;
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(&fifo, &mut byte) {
                // The init ran the startContainer hooks in between; '1' and
                // a reason if one failed (the process then never runs).
                Ok(1) if byte[0] == b'1' => {
                    let _ = fs::remove_file(&path);
                    return Err(BridgeError::StartFailed(read_reason(&fifo, deadline)));
                }
                Ok(1) => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(10u16));
                    if fds[0]
                        .revents()
                        .is_some_and(|r| r.contains(PollFlags::POLLHUP))
                    {
                        // No writer yet (or it left): don't spin on POLLHUP.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => return Err(BridgeError::NotWaiting),
                Err(e) => return Err(io("read", &path)(e.into())),
            }
        }
        fs::remove_file(&path).map_err(io("remove", &path))
    }
}

/// Whether the process in the bridge directory `dir` runs on a terminal
/// (for the monitor, which must then expect a console socket).
pub fn process_is_terminal(dir: &Path) -> Result<bool, String> {
    let p = dir.join(PROCESS_FILE);
    let text = fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let process: Process =
        serde_json::from_slice(&text).map_err(|e| format!("invalid {}: {e}", p.display()))?;
    Ok(process.terminal().unwrap_or(false))
}

/// The namespaces the process joins by path (for the monitor, which opens
/// them on the host), from the init settings create wrote, network first.
pub fn joined_namespaces(dir: &Path) -> Result<Vec<(netns::Kind, PathBuf)>, String> {
    use settings::{InitSettings, INIT_SETTINGS_FILE};
    let p = dir.join(INIT_SETTINGS_FILE);
    let settings: InitSettings = match fs::read(&p) {
        Ok(text) => {
            serde_json::from_slice(&text).map_err(|e| format!("invalid {}: {e}", p.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    Ok(settings.joined())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BridgeError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// A monitor started by `create`, not yet known to be ready.
pub struct Launched {
    pub child: Child,
    status: File,
}

/// nexcage itself, run again with the caller's global flags (state root,
/// log file and format, debug), for the helpers a command leaves behind.
pub fn self_command(global: &GlobalOpts) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--root").arg(&global.root);
    if let Some(log) = &global.log {
        cmd.arg("--log").arg(log);
    }
    if global.log_format == LogFormat::Json {
        cmd.args(["--log-format", "json"]);
    }
    if global.debug {
        cmd.arg("--debug");
    }
    cmd
}

/// Start the monitor: nexcage itself, inheriting our stdio (which it passes
/// on to the container) and `preserve_fds` descriptors from 3 up, plus the
/// listening socket and the status pipe right after them, and, in terminal
/// mode, the console socket right after those (the monitor knows terminal
/// mode from process.json, as the init does, so no flag can disagree).
pub fn spawn_monitor(
    global: &GlobalOpts,
    id: &str,
    bridge: &BridgeDir,
    listener: OwnedFd,
    preserve_fds: u32,
    console: Option<OwnedFd>,
) -> Result<Launched, BridgeError> {
    // The running binary itself, even if a package upgrade replaced the file:
    // the monitor must speak exactly this create's protocol.
    let exe = PathBuf::from("/proc/self/exe");
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io("create pipe", &exe)(e.into()))?;
    let listen_fd = 3 + preserve_fds as i32;
    let status_fd = listen_fd + 1;

    let mut cmd = self_command(global);
    cmd.args(["monitor", id])
        .arg("--bridge-dir")
        .arg(bridge.path())
        .arg(format!("--listen-fd={listen_fd}"))
        .arg(format!("--status-fd={status_fd}"))
        .arg(format!("--preserve-fds={preserve_fds}"));
    let (l_raw, s_raw) = (listener.as_raw_fd(), status_w.as_raw_fd());
    let c_raw = console.as_ref().map(|c| c.as_raw_fd());
    let console_fd = monitor::console_fd(status_fd);
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            // Park all above every target first, so no dup2 clobbers
            // another; dup2 then clears close-on-exec on the targets.
            let high = console_fd + 1;
            let l = libc::fcntl(l_raw, libc::F_DUPFD_CLOEXEC, high);
            let s = libc::fcntl(s_raw, libc::F_DUPFD_CLOEXEC, high);
            let c = c_raw.map(|c| libc::fcntl(c, libc::F_DUPFD_CLOEXEC, high));
            if l < 0 || s < 0 || c.is_some_and(|c| c < 0) {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(l, listen_fd) < 0 || libc::dup2(s, status_fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(c) = c {
                if libc::dup2(c, console_fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io("start monitor", &exe))?;
    drop(status_w);
    drop(listener);
    drop(console);
    Ok(Launched {
        child,
        status: File::from(status_r),
    })
}

impl Launched {
    /// Wait for the monitor's report that the init holds the process at the
    /// fifo; returns the host pids of the init and of the process.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(ProcRef, ProcRef), BridgeError> {
        let mut fds = [PollFd::new(self.status.as_fd(), PollFlags::POLLIN)];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let n = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        )
        .map_err(|e| BridgeError::MonitorDied(e.to_string()))?;
        if n == 0 {
            return Err(BridgeError::Timeout(timeout.as_secs()));
        }
        let mut line = String::new();
        let _ = BufReader::new(&self.status).read_line(&mut line);
        match serde_json::from_str::<Outcome>(&line) {
            Ok(Outcome::Ready { init, process }) => Ok((init, process)),
            Ok(Outcome::Failed { message }) => Err(BridgeError::Process(message)),
            Err(_) => {
                let status = self
                    .child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no report".into());
                Err(BridgeError::MonitorDied(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn the_socket_binds_under_a_path_longer_than_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        // A --root like podman's storage path plus a 64-character id.
        let long = tmp.path().join("r".repeat(60)).join("c".repeat(64));
        fs::create_dir_all(&long).unwrap();
        let bridge = BridgeDir::of(&long);
        assert!(bridge.path().join(SOCKET_FILE).as_os_str().len() > 108);
        let _listener = bridge.prepare(&Process::default()).unwrap();
        let meta = fs::symlink_metadata(bridge.path().join(SOCKET_FILE)).unwrap();
        assert!(meta.file_type().is_socket());
    }
}
