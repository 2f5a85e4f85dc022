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
    let stdio = match proto::recv(conn.as_fd()) {
        Ok(Some((Message::Stdio, fds))) if fds.len() >= 3 => fds,
        _ => return 1,
    };
    let prepared = match Prepared::load(&Path::new(MOUNT_POINT).join("process.json")) {
        Ok(p) => p,
        Err(message) => {
            let _ = proto::send(conn.as_fd(), &Message::Failed { message }, &[]);
            return 1;
        }
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
}

impl Prepared {
    fn load(path: &Path) -> Result<Prepared, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let process: Process = serde_json::from_slice(&text)
            .map_err(|e| format!("invalid {}: {e}", path.display()))?;
        Prepared::from_process(&process)
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
        })
    }
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
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("exec: {program:?}: no such executable file"))
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

/// After fork: become the user's process. Only exec or _exit leave here.
fn child(p: &Prepared, stdio: Vec<OwnedFd>) -> ! {
    let fail = |what: &str, err: std::io::Error| -> ! {
        let msg = format!("nexcage: {what}: {err}\n");
        // SAFETY: writing to stderr (already the caller's) and exiting.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    let last = || std::io::Error::last_os_error();
    // SAFETY: raw descriptor and credential syscalls in a single-threaded child.
    unsafe {
        let empty = SigSet::empty();
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None);
        libc::setsid();

        // Caller's descriptors to 0..n: park above n first so none clobbers another.
        let n = stdio.len() as RawFd;
        let parked: Vec<RawFd> = stdio
            .iter()
            .map(|fd| libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, n + 3))
            .collect();
        for (i, fd) in parked.iter().enumerate() {
            if *fd < 0 || libc::dup2(*fd, i as RawFd) < 0 {
                fail("set up stdio", last());
            }
        }
        std::mem::forget(stdio);
        libc::syscall(
            libc::SYS_close_range,
            n as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );

        // Wait here until `nexcage start` opens the other end.
        let fifo = CString::new(format!("{MOUNT_POINT}/exec.fifo")).expect("no NUL");
        let fd = libc::open(fifo.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            fail("wait for start", last());
        }
        libc::close(fd);

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
        if nix::unistd::setgroups(&p.groups).is_err() && !p.groups.is_empty() {
            fail("setgroups", last());
        }
        if libc::setgid(p.gid) != 0 {
            fail("setgid", last());
        }
        if libc::setuid(p.uid) != 0 {
            fail("setuid", last());
        }
        if p.no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail("no_new_privs", last());
        }
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
        libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(&format!("exec {}", p.path.to_string_lossy()), last())
    }
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
        assert!(resolve(prog.to_str().unwrap(), &[], Path::new("/")).is_err());
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
