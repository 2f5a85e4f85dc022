//! OCI hooks (runtime spec, config.md "POSIX-platform Hooks"): programs the
//! bundle names, run at fixed moments of the lifecycle with the container's
//! state JSON on stdin.
//!
//! - prestart (deprecated) and createRuntime: during `create`, once the guest
//!   exists and its init waits, in the runtime's (host) namespaces;
//! - createContainer: right after, in the container's user, ipc, uts,
//!   network, cgroup and pid namespaces but the host's mount namespace: the
//!   spec runs it before pivot_root, when the runtime's filesystem (and so a
//!   host program's libraries) is still the root, and a Proxmox guest's
//!   root is pivoted by LXC before nexcage's init even starts;
//! - startContainer: during `start`, by nexcage's init in the guest just
//!   before the process is executed (path resolved in the container);
//! - poststart: after `start` started the process; poststop: after `delete`
//!   removed the guest; both in the host's namespaces, failures only logged.
//!
//! Each hook runs with exactly its `env`, `args` as argv (argv[0] included),
//! and is killed after `timeout` seconds. Its output is kept apart from
//! nexcage's (clients parse our stdout) and quoted when it fails.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use oci_spec::runtime::{Hook, Hooks};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("config.json: hooks.{kind}[{index}]: {reason}")]
    Invalid {
        kind: &'static str,
        index: usize,
        reason: String,
    },
    #[error("{kind} hook {path}: cannot run it: {source}")]
    Spawn {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{kind} hook {path} failed ({status}){said}")]
    Failed {
        kind: &'static str,
        path: PathBuf,
        status: String,
        /// What the hook printed, on one line, prefixed ": " (or empty).
        said: String,
    },
    #[error("{kind} hook {path} did not finish within {secs} s")]
    Timeout {
        kind: &'static str,
        path: PathBuf,
        secs: i64,
    },
}

/// The moments of the lifecycle, named as in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Prestart,
        Kind::CreateRuntime,
        Kind::CreateContainer,
        Kind::StartContainer,
        Kind::Poststart,
        Kind::Poststop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        #[allow(deprecated)]
        let list = match self {
            Kind::Prestart => hooks.prestart(),
            Kind::CreateRuntime => hooks.create_runtime(),
            Kind::CreateContainer => hooks.create_container(),
            Kind::StartContainer => hooks.start_container(),
            Kind::Poststart => hooks.poststart(),
            Kind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or(&[])
    }
}

/// Refuse what cannot run before anything is made: a path that is not
/// absolute, a timeout that is not positive, an env entry without '='.
pub fn validate(hooks: &Hooks) -> Result<(), HookError> {
    for kind in Kind::ALL {
        for (index, h) in kind.of(hooks).iter().enumerate() {
            let bad = |reason: String| HookError::Invalid {
                kind: kind.name(),
                index,
                reason,
            };
            let path = h.path();
            if !path.is_absolute() {
                return Err(bad(format!("path {path:?} is not absolute")));
            }
            if path.as_os_str().as_bytes().contains(&0) {
                return Err(bad("path contains a NUL byte".into()));
            }
            if let Some(t) = h.timeout() {
                if t <= 0 {
                    return Err(bad(format!(
                        "timeout {t} must be a positive number of seconds"
                    )));
                }
            }
            for e in h.env().iter().flatten() {
                if !e.contains('=') || e.contains('\0') {
                    return Err(bad(format!("env entry {e:?} is not NAME=VALUE")));
                }
            }
            if h.args().iter().flatten().any(|a| a.contains('\0')) {
                return Err(bad("args contain a NUL byte".into()));
            }
        }
    }
    Ok(())
}

/// Run `kind`'s hooks in order in our own namespaces; the first failure
/// stops the rest.
pub fn run(kind: Kind, hooks: &Hooks, state: &[u8]) -> Result<(), HookError> {
    for h in kind.of(hooks) {
        run_one(kind, h, state, None)?;
    }
    Ok(())
}

/// Run `kind`'s hooks in the namespaces of the container whose PID 1 has
/// host pid `init_pid` (createContainer).
pub fn run_in_container(
    kind: Kind,
    hooks: &Hooks,
    state: &[u8],
    init_pid: i32,
) -> Result<(), HookError> {
    let list = kind.of(hooks);
    if list.is_empty() {
        return Ok(());
    }
    let spawn_err = |h: &Hook, source| HookError::Spawn {
        kind: kind.name(),
        path: h.path().clone(),
        source,
    };
    let namespaces = Namespaces::of(init_pid).map_err(|e| spawn_err(&list[0], e))?;
    for h in list {
        run_one(kind, h, state, Some(&namespaces))?;
    }
    Ok(())
}

/// poststart/poststop: the spec has the runtime log failures and go on.
pub fn run_logged(kind: Kind, hooks: &Hooks, state: &[u8]) {
    for h in kind.of(hooks) {
        if let Err(e) = run_one(kind, h, state, None) {
            tracing::warn!("{e}");
        }
    }
}

fn run_one(
    kind: Kind,
    h: &Hook,
    state: &[u8],
    enter: Option<&Namespaces>,
) -> Result<(), HookError> {
    let path = h.path().clone();
    let spawn_err = |source| HookError::Spawn {
        kind: kind.name(),
        path: path.clone(),
        source,
    };
    let mut output = crate::capture::capture_file("hook-output").map_err(spawn_err)?;
    let args: Vec<String> = h.args().clone().unwrap_or_default();
    let env: &[String] = h.env().as_deref().unwrap_or(&[]);
    let mut running = match enter {
        None => {
            let mut cmd = Command::new(&path);
            cmd.arg0(args.first().map_or(path.as_os_str(), |a| a.as_ref()))
                .args(args.iter().skip(1))
                .env_clear()
                .envs(env.iter().filter_map(|e| e.split_once('=')))
                .stdin(Stdio::piped())
                .stdout(output.try_clone().map_err(spawn_err)?)
                .stderr(output.try_clone().map_err(spawn_err)?);
            Running::Std(cmd.spawn().map_err(spawn_err)?)
        }
        Some(ns) => ns.spawn(&path, &args, env, &output).map_err(spawn_err)?,
    };
    // A hook that does not read its stdin is no failure (EPIPE ignored).
    running.feed(state);
    let timeout = h.timeout().map(|t| Duration::from_secs(t as u64));
    let status = match running.wait(timeout).map_err(spawn_err)? {
        Some(status) => status,
        None => {
            return Err(HookError::Timeout {
                kind: kind.name(),
                path,
                secs: h.timeout().unwrap_or_default(),
            })
        }
    };
    if status.success() {
        return Ok(());
    }
    let said = read_back(&mut output);
    Err(HookError::Failed {
        kind: kind.name(),
        path,
        status: describe(status),
        said: if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        },
    })
}

/// A started hook: by std, or forked by hand (entering namespaces needs a
/// second fork, and std's spawn would wait for the first one to exec).
enum Running {
    Std(Child),
    Raw {
        pid: libc::pid_t,
        stdin: Option<File>,
    },
}

/// Runs `write` with SIGPIPE blocked in this thread, and takes back a
/// SIGPIPE it raised, so a write to a hook that has already exited is an
/// EPIPE and never kills us. Rust's runtime ignores SIGPIPE, but the init's
/// process, which runs the startContainer hooks, has every default
/// disposition back (a created container must die of TERM as runc's does),
/// and there SIGPIPE's default would end it before it could report the
/// hook's failure to `start`.
fn without_sigpipe(write: impl FnOnce()) {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&pipe), Some(&mut old)).is_ok();
    write();
    if blocked && !old.contains(Signal::SIGPIPE) {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: plain syscall with a valid signal set and timeout; a
        // pending SIGPIPE (if any) is consumed, none waited for.
        unsafe { libc::sigtimedwait(pipe.as_ref(), std::ptr::null_mut(), &zero) };
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
}

impl Running {
    fn feed(&mut self, state: &[u8]) {
        let stdin = match self {
            Running::Std(c) => c.stdin.take().map(|s| File::from(OwnedFd::from(s))),
            Running::Raw { stdin, .. } => stdin.take(),
        };
        if let Some(mut s) = stdin {
            without_sigpipe(|| {
                let _ = s.write_all(state);
            });
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Running::Std(c) => c.try_wait(),
            Running::Raw { pid, .. } => {
                let mut status = 0;
                // SAFETY: waitpid on our own child.
                match unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) } {
                    0 => Ok(None),
                    n if n > 0 => Ok(Some(ExitStatus::from_raw(status))),
                    _ => Err(std::io::Error::last_os_error()),
                }
            }
        }
    }

    fn kill(&mut self) {
        match self {
            Running::Std(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Running::Raw { pid, .. } => {
                let mut status = 0;
                // SAFETY: our own unreaped child; its child dies with it
                // (PR_SET_PDEATHSIG).
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                    libc::waitpid(*pid, &mut status, 0);
                }
            }
        }
    }

    /// None when `timeout` passed first (the hook is then killed and reaped).
    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<Option<ExitStatus>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill();
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The hook's output on one bounded line, for the error message.
fn read_back(f: &mut File) -> String {
    let s = crate::capture::read_back_at_most(f, 4096);
    let line: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    line.join("; ")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// The container's namespaces but mount (see the module's doc), opened from
/// its init's /proc entry, minus those we already share (a privileged guest
/// shares our user namespace, and setns into one's own user namespace fails).
struct Namespaces {
    /// In setns order: user first (it grants the rights for the others).
    fds: Vec<(libc::c_int, OwnedFd)>,
    joins_user: bool,
}

impl Namespaces {
    fn of(pid: i32) -> std::io::Result<Namespaces> {
        let mut fds = Vec::new();
        let mut joins_user = false;
        for (name, flag) in [
            ("user", libc::CLONE_NEWUSER),
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("net", libc::CLONE_NEWNET),
            ("cgroup", libc::CLONE_NEWCGROUP),
            ("pid", libc::CLONE_NEWPID),
        ] {
            let theirs = File::open(format!("/proc/{pid}/ns/{name}"))?;
            let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))?;
            let meta = theirs.metadata()?;
            if (meta.dev(), meta.ino()) == (ours.dev(), ours.ino()) {
                continue;
            }
            joins_user |= flag == libc::CLONE_NEWUSER;
            fds.push((flag, OwnedFd::from(theirs)));
        }
        Ok(Namespaces { fds, joins_user })
    }

    /// Fork a child that enters the namespaces and forks again (a pid
    /// namespace takes effect for children only); the grandchild executes
    /// the program opened here before, so that no namespace changes which
    /// program runs, and the child passes on its exit status.
    fn spawn(
        &self,
        path: &Path,
        args: &[String],
        env: &[String],
        output: &File,
    ) -> std::io::Result<Running> {
        let program = File::open(path)?;
        let cstr = |s: &[u8]| {
            CString::new(s).map_err(|_| std::io::Error::other("NUL byte in a hook's args or env"))
        };
        let mut argv = Vec::new();
        if args.is_empty() {
            argv.push(cstr(path.as_os_str().as_bytes())?);
        }
        for a in args {
            argv.push(cstr(a.as_bytes())?);
        }
        let envp = env
            .iter()
            .map(|e| cstr(e.as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut a: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        a.push(std::ptr::null());
        let mut e: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
        e.push(std::ptr::null());
        let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: between fork and exec/_exit only async-signal-safe calls on
        // values built before the fork.
        unsafe {
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // Our copy of the write end would keep the hook from
                    // ever reading the end of the state.
                    libc::close(stdin_w.as_raw_fd());
                    if libc::dup2(stdin_r.as_raw_fd(), 0) < 0
                        || libc::dup2(output.as_raw_fd(), 1) < 0
                        || libc::dup2(output.as_raw_fd(), 2) < 0
                    {
                        libc::_exit(127);
                    }
                    for (flag, fd) in &self.fds {
                        if libc::setns(fd.as_raw_fd(), *flag) != 0 {
                            libc::_exit(126);
                        }
                        if *flag == libc::CLONE_NEWUSER
                            && self.joins_user
                            && (libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0)
                        {
                            libc::_exit(126);
                        }
                    }
                    match libc::fork() {
                        -1 => libc::_exit(126),
                        0 => {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            // Keep the file open across exec: a script's
                            // interpreter reads it as /dev/fd/N.
                            libc::fcntl(program.as_raw_fd(), libc::F_SETFD, 0);
                            libc::syscall(
                                libc::SYS_execveat,
                                program.as_raw_fd(),
                                c"".as_ptr(),
                                a.as_ptr(),
                                e.as_ptr(),
                                libc::AT_EMPTY_PATH,
                            );
                            libc::_exit(127)
                        }
                        grandchild => {
                            // Hold nothing of nexcage's while we wait.
                            libc::syscall(
                                libc::SYS_close_range,
                                0 as libc::c_uint,
                                libc::c_uint::MAX,
                                0,
                            );
                            let mut status = 0;
                            while libc::waitpid(grandchild, &mut status, 0) < 0 {
                                if *libc::__errno_location() != libc::EINTR {
                                    libc::_exit(126);
                                }
                            }
                            if libc::WIFSIGNALED(status) {
                                libc::signal(libc::WTERMSIG(status), libc::SIG_DFL);
                                libc::kill(libc::getpid(), libc::WTERMSIG(status));
                            }
                            libc::_exit(libc::WEXITSTATUS(status))
                        }
                    }
                }
                pid => Ok(Running::Raw {
                    pid,
                    stdin: Some(File::from(stdin_w)),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(kind: &str, list: serde_json::Value) -> Hooks {
        serde_json::from_value(serde_json::json!({ kind: list })).unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_hook_gone_before_its_state_is_written_does_not_kill_us() {
        use nix::sys::signal::{signal, SigHandler, Signal};
        use nix::sys::wait::{waitpid, WaitStatus};
        // In a child of its own: SIGPIPE's default disposition (as in the
        // init's process) must not reach the other tests of this binary.
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        // SAFETY: the child makes only syscalls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: SIG_DFL installs no handler.
                let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
                let mut epipe = false;
                without_sigpipe(|| {
                    let n = nix::unistd::write(&w, &[0u8; 512]);
                    epipe = n == Err(nix::errno::Errno::EPIPE);
                });
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(if epipe { 0 } else { 3 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn state_arrives_on_stdin_with_exactly_args_and_env() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let s = script(
            tmp.path(),
            "h",
            &format!(
                "{{ echo \"$1|$2|$#\"; env | sort; cat; }} > {}",
                out.display()
            ),
        );
        let h = hooks(
            "createRuntime",
            serde_json::json!([{"path": s, "args": ["first", "a b", "c"], "env": ["X=1", "Y=two"]}]),
        );
        run(Kind::CreateRuntime, &h, br#"{"id":"c1"}"#).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        // args[0] is argv[0] (a script's shell then names the script).
        assert_eq!(lines[0], "a b|c|2", "{got}");
        // Exactly the hook's env (sh adds PWD; nothing of ours leaks in).
        assert!(lines.contains(&"X=1") && lines.contains(&"Y=two"), "{got}");
        assert!(!got.contains("CARGO") && !got.contains("HOME="), "{got}");
        assert!(got.ends_with(r#"{"id":"c1"}"#), "{got}");
    }

    #[test]
    fn a_failing_hook_is_an_error_with_its_output_and_stops_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = script(tmp.path(), "bad", "echo nope >&2; exit 3");
        let later = tmp.path().join("later");
        let after = script(tmp.path(), "after", &format!("touch {}", later.display()));
        let h = hooks(
            "prestart",
            serde_json::json!([{"path": bad}, {"path": after}]),
        );
        let e = run(Kind::Prestart, &h, b"{}").unwrap_err().to_string();
        assert!(e.starts_with("prestart hook "), "{e}");
        assert!(e.contains("exit status 3") && e.ends_with(": nope"), "{e}");
        assert!(!later.exists(), "hooks after a failure must not run");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_and_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let slow = script(tmp.path(), "slow", "exec sleep 30");
        let h = hooks(
            "poststart",
            serde_json::json!([{"path": slow, "timeout": 1}]),
        );
        let started = Instant::now();
        let e = run(Kind::Poststart, &h, b"{}").unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let h = hooks("poststop", serde_json::json!([{"path": "/no/such/hook"}]));
        let e = run(Kind::Poststop, &h, b"{}").unwrap_err().to_string();
        assert!(
            e.contains("/no/such/hook") && e.contains("cannot run it"),
            "{e}"
        );
    }

    #[test]
    fn validation_refuses_what_cannot_run() {
        for (kind, hook, want) in [
            (
                "prestart",
                serde_json::json!({"path": "rel/hook"}),
                "not absolute",
            ),
            (
                "poststop",
                serde_json::json!({"path": "/bin/true", "timeout": 0}),
                "positive",
            ),
            (
                "createContainer",
                serde_json::json!({"path": "/bin/true", "env": ["NOEQ"]}),
                "NAME=VALUE",
            ),
        ] {
            let e = validate(&hooks(kind, serde_json::json!([hook])))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("hooks.{kind}[0]")) && e.contains(want),
                "{e}"
            );
        }
        let ok = hooks(
            "startContainer",
            serde_json::json!([{"path": "/bin/true", "timeout": 5}]),
        );
        assert!(validate(&ok).is_ok());
    }
}
