//! Files nexcage keeps besides containers' state: atomic replacement, and
//! its own directory under the state root; and where programs are looked
//! for when no PATH says.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The program search path when the environment has no PATH: the init's
/// for a process whose env sets none, nexcage's own when it looks for a
/// delegate's binary. The usual one (runc's `spec`, Debian's login).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// nexcage's own files under the state root (VMID reservations, caches). The
/// `~` is outside runc's id alphabet, so no container id can name or shadow
/// it, as `.vmids` and `.cache` once could.
pub const OWN_DIR: &str = "~nexcage";

/// `<root>/~nexcage/<name>`: nexcage's own files, out of the id namespace.
pub fn own_path(root: &Path, name: &str) -> PathBuf {
    root.join(OWN_DIR).join(name)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {source}")]
pub struct FileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl FileError {
    /// The I/O error alone, for a caller that names the file itself:
    /// `write_atomic` names whichever file failed, often its temp.
    pub fn into_io(self) -> std::io::Error {
        self.source
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Write `body` to `path` so that readers see either the old or the new file:
/// a temp file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename into place", path))?;
        let d = File::open(dir).map_err(io("open", dir))?;
        nix::unistd::fsync(d.as_fd()).map_err(|e| io("sync", dir)(e.into()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_file_and_replaces_content() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
