//! One typed runner for the node's tools (pct, pveam, pvesm, pvesh): argument
//! vectors only, stdin closed, stdout and stderr captured, a time limit.
//!
//! Output goes to memory files rather than pipes: `pct start` leaves a daemon
//! behind (lxc-start), and a daemon that inherited a pipe would keep us waiting
//! for an end-of-file that never comes.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::settings::ProxmoxSettings;
use crate::capture;

#[derive(Debug, thiserror::Error)]
pub enum PctError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{command} did not finish within {secs} s")]
    Timeout { command: String, secs: u64 },
}

impl PctError {
    /// The tool's own words, for callers that react to a specific refusal.
    pub fn stderr(&self) -> &str {
        match self {
            PctError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tools {
    pub pct: PathBuf,
    pub pveam: PathBuf,
    pub pvesm: PathBuf,
    pub pvesh: PathBuf,
    pub timeout: Duration,
}

impl Tools {
    pub fn from_settings(s: &ProxmoxSettings) -> Tools {
        Tools {
            pct: s.pct.clone(),
            pveam: s.pveam.clone(),
            pvesm: s.pvesm.clone(),
            pvesh: s.pvesh.clone(),
            timeout: Duration::from_secs(s.command_timeout_secs),
        }
    }

    pub fn pct<I, S>(&self, args: I) -> Result<String, PctError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&self.pct, args, self.timeout)
    }

    /// `pct destroy` of a guest (stopped first if it runs) and its volumes.
    /// A guest already gone (an admin's destroy, a create that never made
    /// it) is what was wanted, not an error.
    pub fn destroy(&self, vmid: u32) -> Result<(), PctError> {
        let id = vmid.to_string();
        match self.pct(["destroy", &id, "--force", "1", "--purge", "1"]) {
            Ok(_) => Ok(()),
            Err(e) if e.stderr().contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn pveam<I, S>(&self, args: I) -> Result<String, PctError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&self.pveam, args, self.timeout)
    }

    pub fn pvesm<I, S>(&self, args: I) -> Result<String, PctError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&self.pvesm, args, self.timeout)
    }

    pub fn pvesh<I, S>(&self, args: I) -> Result<String, PctError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&self.pvesh, args, self.timeout)
    }
}

/// Run `program args...`; Ok(stdout) on exit status 0.
pub fn run<I, S>(program: &Path, args: I, timeout: Duration) -> Result<String, PctError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = display_command(program, &args);
    let spawn_err = |source| PctError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    let mut out = capture::capture_file("stdout").map_err(spawn_err)?;
    let mut err = capture::capture_file("stderr").map_err(spawn_err)?;
    tracing::debug!(%command, "running");
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(spawn_err)?)
        .stderr(err.try_clone().map_err(spawn_err)?)
        .spawn()
        .map_err(spawn_err)?;

    let status = match crate::procfs::wait_child(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PctError::Timeout {
                command,
                secs: timeout.as_secs(),
            });
        }
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_err(source));
        }
    };
    tracing::debug!(%command, ?status, ms = started.elapsed().as_millis() as u64, "finished");
    let stdout = capture::read_back(&mut out);
    if status.success() {
        return Ok(stdout);
    }
    let stderr = capture::read_back(&mut err);
    Err(PctError::Failed {
        command,
        status: match status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("{status}"),
        },
        stderr: capture::joined_lines(&stderr),
    })
}

fn display_command(program: &Path, args: &[OsString]) -> String {
    let name = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy();
    let mut s = name.into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_is_returned_on_success() {
        let out = run(Path::new("/bin/echo"), ["a b", "c"], Duration::from_secs(5)).unwrap();
        assert_eq!(out, "a b c\n");
    }

    #[test]
    fn arguments_are_never_interpreted_by_a_shell() {
        let out = run(
            Path::new("/bin/echo"),
            ["$(id); `x`"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out, "$(id); `x`\n");
    }

    #[test]
    fn failure_quotes_stderr_on_one_line() {
        let err = run(
            Path::new("/bin/sh"),
            [
                "-c",
                "echo '400 Parameter verification failed.' >&2; echo 'memory: bad' >&2; exit 255",
            ],
            Duration::from_secs(5),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status 255"), "{msg}");
        assert!(
            msg.ends_with("400 Parameter verification failed.; memory: bad"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_daemon_holding_stdout_does_not_block_us() {
        let started = Instant::now();
        run(
            Path::new("/bin/sh"),
            ["-c", "sleep 5 & echo started"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn timeout_kills_the_command() {
        let err = run(Path::new("/bin/sleep"), ["10"], Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, PctError::Timeout { .. }), "{err}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = run(
            Path::new("/nonexistent/pct"),
            ["list"],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pct"));
    }
}
