//! Terminal mode over a simulated node with real LXC: `create
//! --console-socket` hands the master of a pty opened inside the guest to
//! the caller, as runc does for conmon and containerd's shim.

mod common;

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::*;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::wait::WaitStatus;
use serde_json::json;

/// What a console-socket owner gets: the payload (the pty's name) and the fd.
fn receive_master(listener: UnixListener) -> (String, OwnedFd) {
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let fds: Vec<RawFd> = msg
        .cmsgs()
        .unwrap()
        .flat_map(|c| match c {
            ControlMessageOwned::ScmRights(v) => v,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(fds.len(), 1, "one descriptor, as runc sends");
    let len = msg.bytes;
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    // SAFETY: the kernel installed this descriptor for us.
    (name, unsafe { OwnedFd::from_raw_fd(fds[0]) })
}

/// Read the terminal until `want` shows up (EIO once the process is gone).
fn read_until(master: &OwnedFd, seen: &mut String, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} in {seen:?}");
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(master),
            PollFlags::POLLIN,
        )];
        if poll(&mut fds, PollTimeout::from(100u16)).unwrap() == 0 {
            continue;
        }
        let mut buf = [0u8; 1024];
        match nix::unistd::read(master, &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => panic!("terminal closed; got {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn console_socket_gets_a_working_terminal_with_its_size() {
    let node = Node::new();
    let bundle = node.bundle(
        "tty",
        json!({"process": {
            "terminal": true,
            "consoleSize": {"height": 30, "width": 100},
            "args": ["sh", "-c", "tty; stty size; echo hello; read x; echo got-$x; exit 4"]
        },
        // As clients send them: the init builds /dev, the pty comes from
        // its /dev/ptmx symlink to LXC's devpts.
        "mounts": [
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"}
        ]}),
    );
    let sock = node.root().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // create returns only after the master was sent: accept meanwhile.
    let receiver = std::thread::spawn(move || receive_master(listener));
    let pid_file = node.root().join("tty.pid");
    let out = node.create(
        &bundle,
        "tty",
        &[
            "--console-socket",
            sock.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "create: {}", stderr(&out));
    let (name, master) = receiver.join().unwrap();
    assert!(name.starts_with("/dev/pts/"), "payload {name:?}");
    assert_eq!(node.status("tty"), "created");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();

    let out = node.run(["start", "tty"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    let mut seen = String::new();
    read_until(&master, &mut seen, "hello");
    assert!(seen.contains("/dev/pts/"), "tty: {seen:?}");
    assert!(seen.contains("30 100"), "stty size: {seen:?}");
    // Input reaches the process through the terminal, which echoes it.
    nix::unistd::write(&master, b"abc\n").unwrap();
    read_until(&master, &mut seen, "got-abc");
    assert!(seen.contains("abc\r\n"), "no echo in {seen:?}");

    assert_eq!(
        reap(pid, Duration::from_secs(20)),
        WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 4)
    );
    node.wait_status("tty", "stopped");
    let out = node.run(["delete", "tty"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(node.vmids().is_empty(), "guest left behind");
}

#[test]
fn terminal_without_console_socket_is_refused_and_leaves_nothing() {
    let node = Node::new();
    let bundle = node.bundle("notty", json!({"process": {"terminal": true}}));
    let out = node.create(&bundle, "notty", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--console-socket"),
        "{}",
        stderr(&out)
    );
    assert!(node.vmids().is_empty(), "guest left behind");
    assert!(
        !node.state_root().join("notty").exists(),
        "state left behind"
    );

    // And the other way round: a console socket with no terminal to send.
    let plain = node.bundle("plain", json!({}));
    let sock = node.root().join("unused.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let out = node.create(
        &plain,
        "plain",
        &["--console-socket", sock.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("process.terminal"),
        "{}",
        stderr(&out)
    );
    assert!(node.vmids().is_empty() && !node.state_root().join("plain").exists());
}

/// `exec` in terminal mode, as conmon (`podman exec -it`) and containerd's
/// shim (`ctr task exec -t`) call it: --process with terminal true,
/// --console-socket, --detach and a pid file they reap.
#[test]
fn exec_sends_a_terminal_to_the_console_socket() {
    become_subreaper();
    let node = Node::new();
    start_running(&node, "ext", json!(["sleep", "1000"]));
    let process = node.root().join("exec-process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&json!({
            "terminal": true,
            "consoleSize": {"height": 25, "width": 90},
            "args": ["sh", "-c", "tty; stty size; read x; echo got-$x; exit 5"],
            "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
        }))
        .unwrap(),
    )
    .unwrap();
    let sock = node.root().join("exec-console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || receive_master(listener));
    let pid_file = node.root().join("exec.pid");
    let out = node
        .nexcage(["exec", "--detach", "--process"])
        .arg(&process)
        .arg("--console-socket")
        .arg(&sock)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("ext")
        .output()
        .unwrap();
    assert!(out.status.success(), "exec: {}", stderr(&out));
    let (name, master) = receiver.join().unwrap();
    assert!(name.starts_with("/dev/pts/"), "payload {name:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let mut seen = String::new();
    read_until(&master, &mut seen, "25 90");
    assert!(seen.contains(&name), "tty names the sent pty: {seen:?}");
    nix::unistd::write(&master, b"xyz\n").unwrap();
    read_until(&master, &mut seen, "got-xyz");
    assert_eq!(
        reap(pid, Duration::from_secs(20)),
        WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 5)
    );

    // runc's flags: the args form with -t and a socket works too...
    let listener = UnixListener::bind(node.root().join("c2.sock")).unwrap();
    let receiver = std::thread::spawn(move || receive_master(listener));
    let out = node
        .nexcage(["exec", "-t", "--detach", "--console-socket"])
        .arg(node.root().join("c2.sock"))
        .args(["ext", "sh", "-c", "echo args-form; exit 0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "exec -t: {}", stderr(&out));
    let (_, master) = receiver.join().unwrap();
    read_until(&master, &mut String::new(), "args-form");

    // ...but a detached terminal needs a socket, and a socket a terminal.
    let out = node.run(["exec", "-t", "--detach", "ext", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--console-socket"),
        "{}",
        stderr(&out)
    );
    let _l = UnixListener::bind(node.root().join("c3.sock")).unwrap();
    let out = node
        .nexcage(["exec", "--console-socket"])
        .arg(node.root().join("c3.sock"))
        .args(["ext", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("process.terminal"),
        "{}",
        stderr(&out)
    );
    assert!(node.run(["delete", "--force", "ext"]).status.success());
}

/// Run `cmd` with `input` piped in and then closed (the relay then sends
/// the pty's ^D, so a shell reads the end of its input).
fn with_input(mut cmd: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input).unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// `exec -t` from a shell (no socket): nexcage relays the terminal itself.
#[test]
fn exec_tty_without_a_socket_relays_the_terminal() {
    let node = Node::new();
    start_running(&node, "rel", json!(["sleep", "1000"]));
    let out = with_input(
        node.nexcage(["exec", "-t", "rel", "sh"]),
        b"tty; echo typed-$((6*7)); exit 6\n",
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(6), "{text} {}", stderr(&out));
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("typed-42"), "{text}");
    assert!(node.run(["delete", "--force", "rel"]).status.success());
}

/// `run` of a terminal process from a shell (no socket, not detached):
/// nexcage relays the terminal, as runc does.
#[test]
fn run_with_a_terminal_relays_it() {
    let node = Node::new();
    let bundle = node.bundle(
        "runtty",
        json!({"process": {"terminal": true, "args": ["sh"]}}),
    );
    let mut cmd = node.nexcage(["run", "--bundle"]);
    cmd.arg(&bundle).arg("runtty");
    let out = with_input(cmd, b"tty; echo ran-$((6*7)); exit 9\n");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(9), "{text} {}", stderr(&out));
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("ran-42"), "{text}");
    assert!(node.vmids().is_empty(), "guest left behind");

    // Detached, the terminal must go somewhere: runc's rule.
    let out = node.run([
        "run",
        "--detach",
        "--bundle",
        bundle.to_str().unwrap(),
        "runtty2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--console-socket"),
        "{}",
        stderr(&out)
    );
    assert!(node.vmids().is_empty(), "guest left behind");
}
