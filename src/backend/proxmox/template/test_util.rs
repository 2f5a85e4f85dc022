//! Helpers the template folder's unit tests share.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::AT_FDCWD;
use nix::libc;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

pub(super) fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a valid value buffer.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", io::Error::last_os_error());
}

pub(super) fn set_times(path: &Path, atime: TimeSpec, mtime: TimeSpec) {
    utimensat(
        AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

pub(super) fn set_mtime(path: &Path, secs: i64) {
    set_mtime_ns(path, secs, 0);
}

/// The mtime alone (of the link itself for a symlink), to the nanosecond.
pub(super) fn set_mtime_ns(path: &Path, secs: i64, nsec: i64) {
    set_times(path, TimeSpec::UTIME_OMIT, TimeSpec::new(secs, nsec));
}

pub(super) fn decompressed(archive: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    zstd::Decoder::new(File::open(archive).unwrap())
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// (name, entry type, link name) of every entry, read back with the tar crate.
pub(super) fn entries(archive: &Path) -> Vec<(Vec<u8>, EntryType, Option<Vec<u8>>)> {
    let data = decompressed(archive);
    let mut ar = tar::Archive::new(data.as_slice());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.header().entry_type(),
                e.link_name_bytes().map(|l| l.into_owned()),
            )
        })
        .collect()
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
