//! Host process facts from /proc. A pid alone can be reused by an unrelated
//! process, so every pid nexcage keeps is paired with its start time.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A path field of /proc/<pid>/mountinfo (mount root or point), whose
/// blanks and backslashes the kernel writes octal-escaped (`\040`), byte
/// for byte.
pub fn unescape_mount_field(field: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// A descriptor that pins process `pid` and becomes readable when it exits.
pub fn pidfd_open(pid: i32) -> Result<std::os::fd::OwnedFd, nix::errno::Errno> {
    // SAFETY: a plain syscall with integer arguments; the fd is owned below.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: fd was just returned by pidfd_open and is ours alone.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Wait for `child` to exit, at most `timeout`: Ok(None) when it is still
/// running then. The kernel wakes us at its exit through a pidfd, so the
/// exit is noticed at once instead of at the next tick of a polling loop;
/// kernels without pidfds (before 5.3) get the polling loop.
pub fn wait_child(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + timeout;
    let pidfd = match pidfd_open(child.id() as i32) {
        Ok(fd) => Some(fd),
        Err(nix::errno::Errno::ENOSYS) => None,
        Err(e) => return Err(e.into()),
    };
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                let ms =
                    PollTimeout::try_from(left.as_millis().max(1).min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, ms) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// A process identified across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot).
    pub start_time: u64,
}

impl ProcRef {
    pub fn of(pid: i32) -> Option<ProcRef> {
        let st = stat(pid)?;
        Some(ProcRef {
            pid,
            start_time: st.start_time,
        })
    }

    /// True while the very same process exists and has not exited (a zombie
    /// has exited: only its parent's wait is missing).
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Some(st) => st.start_time == self.start_time && st.state != 'Z' && st.state != 'X',
            None => false,
        }
    }
}

pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub start_time: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start_time is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Direct children of a single-threaded process.
pub fn children(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => scan_children(pid),
    }
}

/// Fallback for kernels without /proc/<pid>/task/<tid>/children.
fn scan_children(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).map(|s| s.ppid == parent).unwrap_or(false))
        .collect()
}

/// `root` and every process below it, root first.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        for kid in children(out[i]) {
            if !out.contains(&kid) {
                out.push(kid);
            }
        }
        i += 1;
    }
    out
}

pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir(Path::new("/proc")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_unescape_octal_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(unescape_mount_field(r"/a\040b\134c"), Path::new("/a b\\c"));
        assert_eq!(
            unescape_mount_field(r"/x\377").as_os_str().as_bytes(),
            b"/x\xff"
        );
        // Not a byte: left as written (it used to overflow in cgroup.rs).
        assert_eq!(unescape_mount_field(r"\777\05"), Path::new(r"\777\05"));
    }

    #[test]
    fn wait_child_returns_the_status_or_none_at_the_timeout() {
        use std::time::Duration;
        let mut quick = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let st = wait_child(&mut quick, Duration::from_secs(30)).unwrap();
        assert_eq!(st.and_then(|s| s.code()), Some(3));
        let mut slow = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(wait_child(&mut slow, Duration::from_millis(100))
            .unwrap()
            .is_none());
        slow.kill().unwrap();
        let st = wait_child(&mut slow, Duration::from_secs(30))
            .unwrap()
            .unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    }

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let line = "42 (a b) c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 1 1";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 7);
        assert_eq!(st.start_time, 98765);
    }

    #[test]
    fn own_process_is_alive_and_a_forged_start_time_is_not() {
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn children_lists_a_spawned_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let kids = scan_children(me);
        assert!(kids.contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl ProcRef {
    /// Signal this process and no other: a pidfd pins the process, and the
    /// start time is checked after the pidfd is held, so a recycled pid can
    /// never receive the signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), nix::errno::Errno> {
        match self.pin() {
            Ok(pinned) => pinned.signal(sig),
            Err(nix::errno::Errno::ENOSYS) => {
                if !self.is_alive() {
                    return Err(nix::errno::Errno::ESRCH);
                }
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
            }
            Err(e) => Err(e),
        }
    }

    /// A pidfd of this very process (the start time is checked once the
    /// pidfd is held). ENOSYS on kernels before 5.3.
    pub fn pin(&self) -> Result<Pinned, nix::errno::Errno> {
        let fd = pidfd_open(self.pid)?;
        if !self.is_alive() {
            return Err(nix::errno::Errno::ESRCH);
        }
        Ok(Pinned { fd })
    }
}

/// A process held by its pidfd: it reaches that process and no other, and
/// needs no /proc to do so (the monitor's /proc is the guest's once it has
/// joined the guest's mount namespace).
#[derive(Debug)]
pub struct Pinned {
    fd: std::os::fd::OwnedFd,
}

impl Pinned {
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), nix::errno::Errno> {
        use nix::libc;
        // SAFETY: a plain syscall on a pidfd we own, with no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    #[test]
    fn signal_reaches_the_process_and_not_a_stale_ref() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let r = ProcRef::of(child.id() as i32).unwrap();
        let stale = ProcRef {
            start_time: r.start_time + 1,
            ..r
        };
        assert_eq!(
            stale.signal(nix::sys::signal::Signal::SIGTERM),
            Err(nix::errno::Errno::ESRCH)
        );
        r.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
    }
}
