//! Descriptors before exec: the caller's become 0..n and every other one is
//! closed, also on kernels without close_range.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use super::error::InitError;

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
pub(super) unsafe fn install_fds(fds: Vec<OwnedFd>) -> Result<(), InitError> {
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

#[cfg(test)]
mod tests {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use super::*;

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
}
