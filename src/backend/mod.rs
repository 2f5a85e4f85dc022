//! The seam between the runtime and what turns a container into a guest.
//!
//! The core (lifecycle, exec, the commands) knows backends only through the
//! [`Backend`] trait and the router's registry (`crate::router::registry`);
//! a backend knows nothing of the core's state file, router or error type.
//! What a backend must remember about one container (Proxmox: its VMID and
//! template) it keeps as its own JSON in the state record ([`Guest::data`]),
//! typed on its side. Adding a backend is a new module plus one line in the
//! registry.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::bundle::Bundle;
use crate::procfs::ProcRef;

#[cfg(test)]
pub mod fake;
pub mod proxmox;

/// Makes a backend from its config.toml table and the state root.
pub type Open = fn(&toml::Table, &Path) -> Result<Box<dyn Backend>, BackendError>;

/// How the core finds, configures and opens one backend.
pub struct Registration {
    /// Recorded in each container's state; `org.nexcage.backend` names it.
    pub name: &'static str,
    /// The config.toml table holding this backend's settings.
    pub section: &'static str,
    /// Check the section when the configuration is loaded, so a bad value
    /// fails every command up front rather than the first create.
    pub check: fn(&toml::Table) -> Result<(), String>,
    /// The backend, from its section and the state root it may keep its
    /// own files under.
    pub open: Open,
    /// Annotations the backend reads, reported by `features`.
    pub annotations: &'static [&'static str],
}

/// What a backend gets to make a guest whose PID 1 is nexcage's init.
pub struct Provision<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    /// Host directory to bind-mount read-only at /.nexcage.
    pub bridge_dir: &'a Path,
    /// Host path of the nexcage binary to bind-mount at /.nexcage/init.
    pub init_binary: &'a Path,
    /// Where the backend records how long its steps took.
    pub phases: &'a Phases,
}

/// How long each step of one create took, the core's and the backend's in
/// the order they ran, for the one `--debug` line that says where a slow
/// create spent its time.
#[derive(Debug, Default)]
pub struct Phases(std::cell::RefCell<Vec<Phase>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: &'static str,
    pub took: Duration,
    /// A word on how it went (a template "hit" or "converted").
    pub note: Option<String>,
}

impl Phases {
    pub fn add(&self, name: &'static str, took: Duration, note: Option<&str>) {
        self.0.borrow_mut().push(Phase {
            name,
            took,
            note: note.map(str::to_string),
        });
    }

    /// `f`'s result, its time recorded under `name`.
    pub fn time<T>(&self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(name, start.elapsed(), None);
        out
    }

    /// `bundle 3 ms, template 12 ms (hit), ..., total 1926 ms`.
    pub fn summary(&self, total: Duration) -> String {
        let mut parts: Vec<String> = self
            .0
            .borrow()
            .iter()
            .map(|p| {
                let note = p
                    .note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                format!("{} {} ms{note}", p.name, p.took.as_millis())
            })
            .collect();
        parts.push(format!("total {} ms", total.as_millis()));
        parts.join(", ")
    }
}

/// What a backend sees of an existing container.
#[derive(Debug, Clone, Copy)]
pub struct Guest<'a> {
    pub id: &'a str,
    /// The backend's own data, as `provision` left it (null before).
    pub data: &'a Value,
    /// The guest's PID 1 (nexcage's init) as a host process, once it runs.
    pub init: Option<ProcRef>,
}

/// Persists the backend's data in the container's state record; called
/// by `provision` as soon as something exists that a crash would leave
/// behind, so that `delete --force` finds it.
pub type Save<'a> = dyn FnMut(&Value) -> Result<(), BackendError> + 'a;

pub trait Backend {
    fn name(&self) -> &'static str;
    /// Whether this backend can run the bundle, making nothing: its
    /// translation's refusal, if any. The router's `unexpressible` rules
    /// send what the default backend refuses elsewhere.
    fn check(&self, _bundle: &Bundle) -> Result<(), BackendError> {
        Ok(())
    }
    /// Make the guest (not started), keeping what later commands need in
    /// `data`.
    fn provision(
        &self,
        req: &Provision,
        data: &mut Value,
        save: &mut Save,
    ) -> Result<(), BackendError>;
    /// The create succeeded: what `discard` would undo is kept for good.
    fn created(&self, _data: &mut Value) {}
    /// Boot the guest; its init then connects to the bridge.
    fn boot(&self, guest: &Guest) -> Result<(), BackendError>;
    /// Remove the guest, stopping it first if needed. Idempotent.
    fn destroy(&self, guest: &Guest) -> Result<(), BackendError>;
    /// `delete --force` without a readable record: remove what this backend
    /// still holds for container `id` (whose bridge directory, mounted into
    /// its guest, is `bridge_dir`) and say what was removed.
    fn destroy_leftovers(
        &self,
        _id: &str,
        _bridge_dir: &Path,
    ) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
    /// Undo what `provision` made that outlives the guest (e.g. a template
    /// converted for this create), after a failed create.
    fn discard(&self, _guest: &Guest) {}
    /// The command (program first) that runs `/.nexcage/init exec FILE` in
    /// the running guest with the caller's stdio and exits with the
    /// process's status. `process_file` is the path inside the guest.
    fn exec_command(
        &self,
        guest: &Guest,
        process_file: &str,
    ) -> Result<Vec<OsString>, BackendError>;
    /// Freeze every process of the guest.
    fn pause(&self, guest: &Guest) -> Result<(), BackendError>;
    /// Thaw the guest.
    fn resume(&self, guest: &Guest) -> Result<(), BackendError>;
    /// Apply new limits (an OCI LinuxResources object) to the running guest
    /// and to the backend's own configuration; refuse what cannot be.
    fn update(
        &self,
        guest: &Guest,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), BackendError>;
    /// The images this backend keeps converted for reuse, if it keeps any.
    fn templates(&self) -> Option<&dyn TemplateStore> {
        None
    }
    /// `nexcage check`: whether the node has what this backend needs, one
    /// [`Check`] per item. Only reads and asks (facts it learns may be
    /// remembered under the state root); never makes a guest or template.
    fn check_node(&self) -> Vec<Check> {
        Vec::new()
    }
}

/// One line of `nexcage check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to do about it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Works, but not as well as it could (or not for every bundle).
    Warn,
    /// Creates will fail until it is fixed.
    Fail,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            status: CheckStatus::Warn,
            hint: Some(hint.into()),
            ..Check::ok(name, detail)
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            status: CheckStatus::Fail,
            hint: Some(hint.into()),
            ..Check::ok(name, detail)
        }
    }
}

/// A backend's cache of converted images, for `nexcage template`.
pub trait TemplateStore {
    /// Every template of nexcage's the backend's storage holds.
    fn list(&self) -> Result<Vec<Template>, BackendError>;
    /// Temporary files of conversions, finished or not.
    fn temporaries(&self) -> Result<Temporaries, BackendError>;
    /// Whether a create is using the template called `name` at this moment.
    fn busy(&self, name: &str) -> Result<bool, BackendError>;
    /// Remove it unless busy; Ok(false) when busy.
    fn remove(&self, template: &Template) -> Result<bool, BackendError>;
    /// The name of the template the container with this backend data was
    /// created from.
    fn used_by(&self, data: &Value) -> Option<String>;
}

/// One converted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    /// The storage's name for it (Proxmox: `local:vztmpl/NAME`).
    pub volid: String,
    pub bytes: u64,
    /// Last create that used it, else when it was made.
    pub last_used: SystemTime,
    /// Whether `last_used` is a recorded use rather than the file's age.
    pub recorded: bool,
}

#[cfg(test)]
impl Template {
    /// A recorded template on `local`, last used `age` seconds before
    /// 1,000,000 s after the epoch.
    pub fn sample(name: &str, bytes: u64, age: u64) -> Template {
        Template {
            name: name.into(),
            volid: format!("local:vztmpl/{name}"),
            bytes,
            last_used: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 - age),
            recorded: true,
        }
    }
}

/// Temporary files in a template store: stale ones (left by a crash, swept
/// by the next conversion) and others (being written now, or another
/// node's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Temporaries {
    pub stale: u64,
    pub stale_bytes: u64,
    pub other: u64,
    pub other_bytes: u64,
}

/// A backend's failure, its own error type kept as the source; the core's
/// error shows it as it is.
#[derive(Debug)]
pub struct BackendError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl BackendError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError(Box::new(e))
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_as_one_line_in_the_order_they_ran() {
        let p = Phases::default();
        assert_eq!(p.time("bundle", || 7), 7);
        p.add("template", Duration::from_millis(12), Some("hit"));
        p.add("pct create", Duration::from_micros(840_900), None);
        let line = p.summary(Duration::from_millis(1926));
        assert!(
            line.starts_with("bundle 0 ms, template 12 ms (hit), pct create 840 ms, total 1926 ms"),
            "{line}"
        );
    }
}
