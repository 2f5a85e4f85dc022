//! Containers of a delegate (runc, crun): nexcage keeps a record of each,
//! claimed under its own lock like any container (ids are unique across
//! backends, `list` shows them, later commands find their backend), and
//! forwards every command to the runtime, which does all the work.

use std::collections::BTreeMap;
use std::ffi::OsString;

use crate::bundle::Bundle;
use crate::cli::{Command, GlobalOpts};
use crate::delegate::Delegate;
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::router;
use crate::state::{validate_id, Record, Status, Store};

/// nexcage's command line without argv[0], as the caller gave it.
fn argv() -> Vec<OsString> {
    std::env::args_os().skip(1).collect()
}

/// `create` or `run` of a container the router gave to `d`: claim the id,
/// record it, and run the runtime with the same command line. The record
/// stays exactly as long as the runtime keeps the container (`run`
/// without `--detach` or `--keep` ends with the container deleted; a
/// failed create leaves none).
pub fn launch(
    store: &Store,
    d: &Delegate,
    bundle: &Bundle,
    id: &str,
    foreground: bool,
) -> Result<i32> {
    lifecycle::check_id(id)?;
    d.prepare_root()?;
    let lock = store
        .claim(id)?
        .ok_or_else(|| Error::Exists(id.to_string()))?;
    let record = Record {
        backend_data: serde_json::json!({"binary": d.binary, "version": d.version}),
        ..Record::new(id, bundle, d.name, Status::Created)
    };
    if let Err(e) = store.save(&lock, &record) {
        store.remove(lock)?;
        return Err(e.into());
    }
    // A foreground `run` lasts as long as the container: the lock must not,
    // or `delete --force` of it would wait for it to end.
    let lock = if foreground {
        drop(lock);
        None
    } else {
        Some(lock)
    };
    let code = run_forwarded(d, id);
    let lock = match lock {
        Some(l) => Some(l),
        None => store.lock(id)?,
    };
    if let Some(lock) = lock {
        if !d.holds(id) {
            store.remove(lock)?;
        }
    }
    code
}

/// The runtime with nexcage's command line, waited for, signals relayed.
fn run_forwarded(d: &Delegate, id: &str) -> Result<i32> {
    let (globals, rest) = crate::delegate::split_args(&argv(), id);
    tracing::debug!(backend = d.name, binary = %d.binary.display(), ?rest, "forwarding");
    let signals = lifecycle::block_relayed_signals()?;
    let mut child = d.command(&globals, &rest).spawn().map_err(|source| {
        crate::delegate::DelegateError::Spawn {
            name: d.name.into(),
            binary: d.binary.clone(),
            source,
        }
    })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    lifecycle::wait_relaying(&mut child, &signals, |sig| {
        let _ = nix::sys::signal::kill(pid, sig);
    })
}

/// A command about an existing container: when its record names a
/// delegate, forward it and return its exit status; None for a guest
/// backend's container (or none known: the command's own path says so).
pub fn existing(global: &GlobalOpts, command: &Command, id: &str) -> Result<Option<i32>> {
    if validate_id(id).is_err() {
        return Ok(None);
    }
    // A delegate's root is made before any record of it: a root without
    // one holds no delegated container, and `state`/`kill` of a guest pay
    // one stat here rather than a second read of its record.
    if !crate::fsutil::own_path(&global.root, "delegate").is_dir() {
        return Ok(None);
    }
    let store = Store::open(&global.root)?;
    let Some(record) = store.load(id).ok().flatten() else {
        return Ok(None);
    };
    if !router::is_delegate(&record.backend) {
        return Ok(None);
    }
    let settings = router::load_settings()?;
    let d = router::open_delegate(&record.backend, &settings, store.root())?;
    if let Command::Delete(_) = command {
        // Under nexcage's lock, so no create of the id starts meanwhile;
        // the record goes once the runtime has no container left.
        let Some(lock) = store.lock(id)? else {
            return Err(Error::NotFound(id.to_string()));
        };
        let code = run_forwarded(&d, id)?;
        if !d.holds(id) {
            store.remove(lock)?;
        }
        return Ok(Some(code));
    }
    let (globals, rest) = crate::delegate::split_args(&argv(), id);
    tracing::debug!(backend = d.name, ?rest, "forwarding");
    Err(d.replace_process(&globals, &rest).into())
}

/// `list`: the runtime's own status and pid of those of `ids` it lists,
/// from one run of its `list`. What it does not list (or all, when it
/// fails) is left out: the caller shows it stopped, without a pid, as
/// when the runtime's `state` of it fails.
pub fn live(d: &Delegate, ids: &[&str]) -> BTreeMap<String, (Status, i32)> {
    // A root without the container's directory cannot list it: no run.
    if !ids.iter().any(|id| d.holds(id)) {
        return BTreeMap::new();
    }
    let Some(listed) = d.list() else {
        return BTreeMap::new();
    };
    ids.iter()
        .filter_map(|id| {
            let c = listed.get(*id)?;
            let status = serde_json::from_value(c["status"].clone()).unwrap_or(Status::Stopped);
            let pid = c["pid"].as_i64().unwrap_or(0) as i32;
            Some((id.to_string(), (status, pid)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime that answers `--version` and, logging each run, `list`
    /// with container `a` running as pid 5.
    fn fake(dir: &std::path::Path) -> (Delegate, std::path::PathBuf) {
        let bin = dir.join("fake-runc");
        let log = dir.join("runs");
        let list =
            r#"[{"id":"a","pid":5,"status":"running"},{"id":"z","pid":9,"status":"paused"}]"#;
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\ncase \"$1\" in --version) echo 'runc version 1.1.5'; exit;; esac\necho \"$3\" >> {}\necho '{list}'\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = Delegate::open("runc", bin.to_str(), &dir.join("root")).unwrap();
        (d, log)
    }

    #[test]
    fn one_list_run_gives_what_the_runtime_lists_of_the_ids_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let (d, log) = fake(tmp.path());
        let runs = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(live(&d, &["a", "b"]).is_empty(), "nothing held");
        assert_eq!(runs(), "", "a root holding none of them is not asked");
        for id in ["a", "b"] {
            std::fs::create_dir_all(d.root.join(id)).unwrap();
        }
        let got = live(&d, &["a", "b", "c"]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got["a"], (Status::Running, 5));
        assert_eq!(runs(), "list\n");
    }
}
