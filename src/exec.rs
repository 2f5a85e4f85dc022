//! `nexcage exec`: run one more process in a running guest.
//!
//! The process (OCI process JSON, from `--process` or built from runc's
//! flags over the bundle's own process) is written into the bridge
//! directory, which the guest sees read-only at /.nexcage, and the backend's
//! command (`pct exec VMID -- /.nexcage/init exec FILE`, i.e. lxc-attach)
//! runs nexcage's init there, which applies the user, capabilities, cwd and
//! env and execs the process. lxc-attach passes stdio through and exits with
//! the process's status.
//!
//! The file is removed by the host as soon as the init has read it (seen
//! with inotify on the file: the guest's reads are the same inode), so
//! detached execs leave nothing behind either; anything left by a crash goes
//! with the container's state directory at `delete`.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use oci_spec::runtime::Process;

use crate::bridge::proto::{self, Message};
use crate::bridge::{pty, BridgeDir, MOUNT_POINT};
use crate::cli::ExecArgs;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::router;
use crate::state::{Status, Store};
use crate::terminal;

/// `exec` from the command line: returns nexcage's exit code.
pub fn run(store: &Store, settings: &Settings, args: &ExecArgs) -> Result<i32> {
    if args.preserve_fds as usize > proto::MAX_FDS - 3 {
        return Err(Error::Usage(format!(
            "--preserve-fds {}: at most {} descriptors can be passed",
            args.preserve_fds,
            proto::MAX_FDS - 3
        )));
    }
    let record = lifecycle::load(store, &args.id)?;
    if record.bridge_protocol != crate::bridge::PROTOCOL {
        return Err(Error::Usage(format!(
            "cannot exec in {}: its in-guest init is from a nexcage that speaks bridge protocol {}, this one speaks {}; recreate the container",
            args.id,
            record.bridge_protocol,
            crate::bridge::PROTOCOL
        )));
    }
    let status = lifecycle::status(store, &record);
    if !status.can_exec(args.ignore_paused) {
        return Err(match status {
            Status::Paused => Error::Usage(format!(
                "cannot exec in a paused container {}: use --ignore-paused to override",
                args.id
            )),
            _ => Error::NotRunning(args.id.clone()),
        });
    }
    let process = match &args.process {
        Some(path) => read_process(path)?,
        None => {
            let base = base_process(&record.bundle.join("config.json"));
            from_args(base, args)?
        }
    };
    let terminal = process.terminal().unwrap_or(false);
    // runc's rules; a person's `exec -t` without a socket gets our relay.
    let console = match (terminal, &args.console_socket) {
        (true, None) if !args.detach => Console::Relay,
        (t, socket) => match pty::connect(t, socket.as_deref())? {
            Some(fd) => Console::Socket(fd),
            None => Console::None,
        },
    };
    let backend = router::for_record(&record, settings, store.root())?;
    let bridge = BridgeDir::of(&store.dir(&args.id));
    let file = ProcessFile::write(bridge.path(), &process)?;
    let argv = backend.exec_command(&record.guest(), &file.guest_path())?;
    let watch = ReadWatch::new(&file.path)?;
    let mut started = Started::spawn(&argv, console, args.preserve_fds)?;
    let timeout = settings.runtime.start_timeout();
    if args.detach {
        detached(
            started,
            &argv[0],
            &watch,
            file,
            args.pid_file.as_deref(),
            timeout,
        )
    } else {
        write_pid_file(args.pid_file.as_deref(), started.child.id())?;
        let code = match started.relay.take() {
            Some(sock) => match terminal::recv_master(sock.as_fd())? {
                Some(master) => terminal::relay(master, &mut started.child)?,
                None => {
                    lifecycle::exit_code(started.child.wait().map_err(|e| Error::io(&argv[0], e))?)
                }
            },
            None => foreground(&mut started.child)?,
        };
        // Gone before the init read the process: pct or lxc-attach refused.
        if !watch.wait(Duration::ZERO) {
            return Err(started.failure(&argv[0], code));
        }
        drop(file);
        Ok(code)
    }
}

/// Where the process's terminal goes.
enum Console {
    /// Not in terminal mode: the process gets our stdio.
    None,
    /// The caller's --console-socket, connected.
    Socket(OwnedFd),
    /// No socket and in the foreground: to us, relayed to our stdio.
    Relay,
}

/// The running `pct exec`, with what it printed itself.
struct Started {
    child: Child,
    /// pct's and lxc-attach's own stderr: warnings on success (pct repeats
    /// them on every call), the reason on failure.
    chatter: std::fs::File,
    /// Our end of the relay's console socket.
    relay: Option<OwnedFd>,
}

impl Started {
    /// Run `argv` with a socket as its stdin, over which the init (through
    /// lxc-attach, which passes stdio alone) receives the caller's
    /// descriptors: stdio and preserved ones, or the console socket.
    fn spawn(argv: &[OsString], console: Console, preserve_fds: u32) -> Result<Started> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(Error::sys("exec: socketpair"))?;
        let chatter =
            crate::capture::capture_file("pct-exec").map_err(|e| Error::io("memfd", e))?;
        let (msg, mut fds, relay, _keep) = match console {
            Console::None => (Message::ExecStdio, vec![0, 1, 2], None, None),
            Console::Socket(fd) => (
                Message::ExecTerminal,
                vec![fd.as_raw_fd(), 2],
                None,
                Some(fd),
            ),
            Console::Relay => {
                let (ours, theirs) = socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .map_err(Error::sys("exec: socketpair"))?;
                (
                    Message::ExecTerminal,
                    vec![theirs.as_raw_fd(), 2],
                    Some(ours),
                    Some(theirs),
                )
            }
        };
        fds.extend((0..preserve_fds as RawFd).map(|i| 3 + i));
        proto::send(ours.as_fd(), &msg, &fds).map_err(|message| Error::ExecHandOff {
            count: fds.len(),
            message,
        })?;
        drop(ours);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                chatter.try_clone().map_err(|e| Error::io("memfd", e))?,
            ))
            .spawn()
            .map_err(|e| Error::io(&argv[0], e))?;
        Ok(Started {
            child,
            chatter,
            relay,
        })
    }

    /// The exec never reached the process: say what pct said, on one line.
    fn failure(mut self, program: &OsString, code: i32) -> Error {
        let said = crate::capture::read_back(&mut self.chatter);
        Error::ExecFailed {
            program: Path::new(program).display().to_string(),
            code,
            said: said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// A process JSON as containerd and conmon write it.
fn read_process(path: &Path) -> Result<Process> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Usage(format!("invalid process file {}: {e}", path.display())))
}

/// runc's args form starts from the container's own process (env, user,
/// capabilities, rlimits...); without a readable config.json, from defaults.
fn base_process(config: &Path) -> Process {
    std::fs::read(config)
        .ok()
        .and_then(|t| serde_json::from_slice::<oci_spec::runtime::Spec>(&t).ok())
        .and_then(|s| s.process().clone())
        .unwrap_or_default()
}

/// Apply runc's exec flags to `p`, as runc's getProcess does.
fn from_args(mut p: Process, args: &ExecArgs) -> Result<Process> {
    if args.command.is_empty() {
        return Err(Error::Usage(
            "exec: a command is required (or --process FILE)".into(),
        ));
    }
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(PathBuf::from(cwd));
    }
    let env = merge_env(p.env().clone().unwrap_or_default(), &args.env)?;
    p.set_env(Some(env));
    let mut user = p.user().clone();
    if let Some(spec) = &args.user {
        let (uid, gid) = parse_user(spec)?;
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
    }
    if !args.additional_gids.is_empty() {
        user.set_additional_gids(Some(args.additional_gids.clone()));
    }
    p.set_user(user);
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        add_caps(&mut p, &args.cap)?;
    }
    if args.apparmor.is_some() || args.process_label.is_some() {
        tracing::debug!("exec: --apparmor/--process-label accepted and not applied");
    }
    Ok(p)
}

/// `uid[:gid]`, numeric as with runc.
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let bad = || Error::Usage(format!("invalid --user {s:?}: want UID[:GID]"));
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = g.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// Add NAME=VALUE entries; a name already present gets the new value in
/// place (runc keeps the last one too).
pub fn merge_env(mut env: Vec<String>, add: &[String]) -> Result<Vec<String>> {
    for e in add {
        let Some((name, _)) = e.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            return Err(Error::Usage(format!(
                "invalid --env {e:?}: want NAME=VALUE"
            )));
        };
        let prefix = format!("{name}=");
        match env.iter_mut().find(|x| x.starts_with(&prefix)) {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
    Ok(env)
}

/// `--cap` adds to every set. A process without capabilities keeps all of
/// the init's, so there is nothing to add to.
fn add_caps(p: &mut Process, caps: &[String]) -> Result<()> {
    let Some(mut c) = p.capabilities().clone() else {
        return Ok(());
    };
    let mut parsed = Vec::new();
    for name in caps {
        let cap: oci_spec::runtime::Capability = serde_json::from_value(name.as_str().into())
            .map_err(|_| Error::Usage(format!("unknown capability {name:?}")))?;
        parsed.push(cap);
    }
    let add = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut s = set.clone().unwrap_or_default();
        s.extend(parsed.iter().copied());
        Some(s)
    };
    c.set_bounding(add(c.bounding()));
    c.set_effective(add(c.effective()));
    c.set_permitted(add(c.permitted()));
    c.set_inheritable(add(c.inheritable()));
    c.set_ambient(add(c.ambient()));
    p.set_capabilities(Some(c));
    Ok(())
}

/// `exec-<random>.json` in the bridge directory, removed on drop.
struct ProcessFile {
    path: PathBuf,
}

impl ProcessFile {
    fn write(bridge: &Path, process: &Process) -> Result<ProcessFile> {
        let json = serde_json::to_vec(process).expect("process serializes");
        for _ in 0..8 {
            let path = bridge.join(format!("exec-{}.json", random_hex()?));
            // 0644: an unprivileged guest's root is "other" to the host.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path);
            match f {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, &json).map_err(|e| Error::io(&path, e))?;
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(0o644),
                    )
                    .map_err(|e| Error::io(&path, e))?;
                    return Ok(ProcessFile { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::NoProcessFileName(bridge.to_path_buf()))
    }

    fn guest_path(&self) -> String {
        let name = self.path.file_name().expect("has a name").to_string_lossy();
        format!("{MOUNT_POINT}/{name}")
    }
}

impl Drop for ProcessFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn random_hex() -> Result<String> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_pid_file(path: Option<&Path>, pid: u32) -> Result<()> {
    match path {
        Some(p) => lifecycle::write_pid_file(p, pid),
        None => Ok(()),
    }
}

/// Without --detach: wait, relaying signals to the command, and exit as the
/// process did (same code, or 128+signal).
fn foreground(child: &mut Child) -> Result<i32> {
    let signals = lifecycle::block_relayed_signals()?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    lifecycle::wait_relaying(child, &signals, |sig| {
        let _ = nix::sys::signal::kill(pid, sig);
    })
}

/// With --detach: the command is left running as our child (the caller's
/// subreaper adopts it when we exit) and its pid goes to the pid file; its
/// exit status is the process's. We return once the init has read the
/// process file, which is then removed.
fn detached(
    mut started: Started,
    program: &OsString,
    watch: &ReadWatch,
    file: ProcessFile,
    pid_file: Option<&Path>,
    timeout: Duration,
) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if watch.wait(Duration::from_millis(20)) {
            break;
        }
        if let Some(status) = started
            .child
            .try_wait()
            .map_err(|e| Error::io(program, e))?
        {
            return Err(started.failure(program, lifecycle::exit_code(status)));
        }
        if Instant::now() > deadline {
            let _ = started.child.kill();
            let _ = started.child.wait();
            return Err(Error::ExecTimeout(timeout.as_secs()));
        }
    }
    write_pid_file(pid_file, started.child.id())?;
    drop(file);
    Ok(0)
}

/// inotify on one file: reports when someone who opened it read-only
/// closes it (the init, through the read-only bind mount: same inode).
struct ReadWatch {
    fd: OwnedFd,
}

impl ReadWatch {
    fn new(path: &Path) -> Result<ReadWatch> {
        use std::os::unix::ffi::OsStrExt;
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::Usage(format!("NUL in {}", path.display())))?;
        // SAFETY: plain syscalls; the descriptor is owned right away.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            if fd < 0 {
                return Err(Error::io(path, std::io::Error::last_os_error()));
            }
            let fd = OwnedFd::from_raw_fd(fd);
            if libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), libc::IN_CLOSE_NOWRITE) < 0 {
                return Err(Error::io(path, std::io::Error::last_os_error()));
            }
            Ok(ReadWatch { fd })
        }
    }

    /// True once the file was read (an event arrived) within `for_at_most`.
    fn wait(&self, for_at_most: Duration) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let ms = for_at_most.as_millis().min(u16::MAX as u128) as u16;
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let mut buf = [0u8; 4096];
        matches!(nix::unistd::read(&self.fd, &mut buf), Ok(n) if n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs_are_uid_and_optional_gid() {
        assert_eq!(parse_user("1000").unwrap(), (1000, None));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, Some(100)));
        for bad in ["", "root", "1:x", ":1", "1:2:3", "-1"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_entries_replace_by_name_or_append() {
        let env = merge_env(
            vec!["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=x=y".into()],
        )
        .unwrap();
        assert_eq!(env, ["PATH=/bin", "A=2", "B=x=y"]);
        assert!(merge_env(vec![], &["NOEQUALS".into()]).is_err());
        assert!(merge_env(vec![], &["=v".into()]).is_err());
    }

    #[test]
    fn caps_are_added_to_every_set_of_a_process_that_has_some() {
        let mut p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]}
        }))
        .unwrap();
        add_caps(&mut p, &["CAP_KILL".into()]).unwrap();
        let v = serde_json::to_value(p.capabilities()).unwrap();
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert!(
                v[set].as_array().unwrap().contains(&"CAP_KILL".into()),
                "{set}: {v}"
            );
        }
        assert!(add_caps(&mut p, &["CAP_NOPE".into()]).is_err());
    }

    #[test]
    fn a_read_of_the_file_is_seen_and_a_write_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let w = ReadWatch::new(&path).unwrap();
        std::fs::write(&path, "y").unwrap();
        assert!(!w.wait(Duration::from_millis(10)));
        std::fs::read(&path).unwrap();
        assert!(w.wait(Duration::from_millis(100)));
    }
}
