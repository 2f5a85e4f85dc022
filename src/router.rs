//! Which backend runs a container. The choice is made once, at create, and
//! stored in the state so every later command reaches the same backend.

use std::ffi::OsString;
use std::path::Path;

use crate::backend::proxmox::Driver;
use crate::bundle::Bundle;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::state::Record;

/// Annotation that names a backend explicitly.
pub const BACKEND_ANNOTATION: &str = "org.nexcage.backend";

/// What a backend gets to make a guest whose PID 1 is nexcage's init.
pub struct Provision<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    /// Host directory to bind-mount read-only at /.nexcage.
    pub bridge_dir: &'a Path,
    /// Host path of the nexcage binary to bind-mount at /.nexcage/init.
    pub init_binary: &'a Path,
}

pub trait Backend {
    fn name(&self) -> &'static str;
    /// Make the guest (not started). Backend facts such as the VMID go into
    /// `record`, and `save` persists them as soon as they exist, so that a
    /// crash leaves enough behind for `delete --force` to clean up.
    fn provision(
        &self,
        req: &Provision,
        record: &mut Record,
        save: &mut dyn FnMut(&Record) -> Result<()>,
    ) -> Result<()>;
    /// Boot the guest; its init then connects to the bridge.
    fn boot(&self, record: &Record) -> Result<()>;
    /// Remove the guest, stopping it first if needed. Idempotent.
    fn destroy(&self, record: &Record) -> Result<()>;
    /// `delete --force` without a readable record: remove what this backend
    /// still holds for container `id` (whose bridge directory, mounted into
    /// its guest, is `bridge_dir`) and say what was removed.
    fn destroy_leftovers(&self, _id: &str, _bridge_dir: &Path) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Undo what `provision` made that outlives the guest (e.g. a template
    /// converted for this create), after a failed create.
    fn discard(&self, _record: &Record) {}
    /// The command (program first) that runs `/.nexcage/init exec FILE` in
    /// the running guest with the caller's stdio and exits with the
    /// process's status. `process_file` is the path inside the guest.
    fn exec_command(&self, record: &Record, process_file: &str) -> Result<Vec<OsString>>;
    /// Freeze every process of the guest.
    fn pause(&self, record: &Record) -> Result<()>;
    /// Thaw the guest.
    fn resume(&self, record: &Record) -> Result<()>;
    /// Apply new limits (an OCI LinuxResources object) to the running guest
    /// and to the backend's own configuration; refuse what cannot be.
    fn update(&self, record: &Record, resources: &oci_spec::runtime::LinuxResources) -> Result<()>;
}

/// Names of the backends this build has.
pub const BACKENDS: &[&str] = &[Driver::NAME];

/// Pick the backend for a new container: the annotation if present, else the default.
pub fn select(bundle: &Bundle, settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    let wanted = bundle
        .spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(BACKEND_ANNOTATION))
        .map(String::as_str)
        .unwrap_or(Driver::NAME);
    by_name(wanted, settings, state_root)
}

/// The backend recorded for an existing container.
pub fn by_name(name: &str, settings: &Settings, state_root: &Path) -> Result<Box<dyn Backend>> {
    match name {
        Driver::NAME => Ok(Box::new(Driver::new(settings.proxmox.clone(), state_root))),
        other => Err(Error::Usage(format!(
            "unknown backend {other:?} (this build has: {})",
            BACKENDS.join(", ")
        ))),
    }
}

/// The backend that manages `record`.
pub fn for_record(
    record: &Record,
    settings: &Settings,
    state_root: &Path,
) -> Result<Box<dyn Backend>> {
    by_name(&record.backend, settings, state_root)
}
