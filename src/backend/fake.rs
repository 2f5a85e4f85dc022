//! A backend that makes no guest, for unit tests of the seam: it shows that
//! a backend is this one file, its `mod` line in `super` and its line in
//! `crate::router::registry`.

use std::ffi::OsString;
use std::path::Path;

use serde_json::{json, Value};

use super::{Backend, BackendError, Guest, Provision, Registration, Save};

pub static REGISTRATION: Registration = Registration {
    name: "fake",
    section: "fake",
    check: |table| match table.keys().next() {
        Some(k) => Err(format!("[fake]: unknown key {k}")),
        None => Ok(()),
    },
    open: |_, _| Ok(Box::new(Fake)),
    annotations: &[],
};

struct Fake;

#[derive(Debug, thiserror::Error)]
#[error("fake backend: container {0} has no guest")]
struct NoGuest(String);

#[derive(Debug, thiserror::Error)]
#[error("fake backend: {0}")]
struct Refused(String);

/// Bundles carrying it are ones the fake cannot express.
pub const REFUSE_ANNOTATION: &str = "fake.refuse";

fn guest_name(g: &Guest) -> Result<String, BackendError> {
    g.data["guest"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BackendError::new(NoGuest(g.id.to_string())))
}

impl Backend for Fake {
    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn check(&self, bundle: &crate::bundle::Bundle) -> Result<(), BackendError> {
        match bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REFUSE_ANNOTATION))
        {
            Some(why) => Err(BackendError::new(Refused(why.clone()))),
            None => Ok(()),
        }
    }

    fn provision(
        &self,
        req: &Provision,
        data: &mut Value,
        save: &mut Save,
    ) -> Result<(), BackendError> {
        *data = json!({"guest": format!("guest-of-{}", req.id)});
        save(data)
    }

    fn boot(&self, g: &Guest) -> Result<(), BackendError> {
        guest_name(g).map(drop)
    }

    fn destroy(&self, _: &Guest) -> Result<(), BackendError> {
        Ok(())
    }

    fn exec_command(&self, g: &Guest, file: &str) -> Result<Vec<OsString>, BackendError> {
        Ok(vec![
            "fake-exec".into(),
            g.id.into(),
            guest_name(g)?.into(),
            file.into(),
        ])
    }

    fn pause(&self, g: &Guest) -> Result<(), BackendError> {
        guest_name(g).map(drop)
    }

    fn resume(&self, g: &Guest) -> Result<(), BackendError> {
        guest_name(g).map(drop)
    }

    fn update(&self, g: &Guest, _: &oci_spec::runtime::LinuxResources) -> Result<(), BackendError> {
        guest_name(g).map(drop)
    }

    fn destroy_leftovers(&self, _: &str, _: &Path) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
}
