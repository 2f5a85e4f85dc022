//! A child's output kept in memory (a memfd, so no pipe can fill while we
//! wait) and read back once it has exited, for tools whose chatter becomes
//! part of an error message (pct, pct exec).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use nix::sys::memfd::{memfd_create, MFdFlags};

/// An anonymous file to hand a child as its stdout or stderr.
pub fn capture_file(name: &str) -> std::io::Result<File> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
    Ok(File::from(fd))
}

/// Everything written to `f` so far.
pub fn read_back(f: &mut File) -> String {
    read_back_at_most(f, u64::MAX)
}

/// The first `limit` bytes written to `f`: for output of programs that
/// are not ours (hooks), which could write without end.
pub fn read_back_at_most(f: &mut File, limit: u64) -> String {
    let mut s = String::new();
    if f.seek(SeekFrom::Start(0)).is_ok() {
        let _ = f.take(limit).read_to_string(&mut s);
    }
    s
}

/// A tool's message on one line: its non-empty lines, trimmed, joined with
/// "; " (errors are reported on one line).
pub fn joined_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no error message".into()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn captured_output_reads_back_and_joins_on_one_line() {
        let mut f = capture_file("t").unwrap();
        f.write_all(b"  first\n\n second \n").unwrap();
        assert_eq!(read_back(&mut f), "  first\n\n second \n");
        assert_eq!(joined_lines(&read_back(&mut f)), "first; second");
        assert_eq!(joined_lines(" \n"), "no error message");
    }
}
