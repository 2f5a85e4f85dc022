//! Proxmox VE LXC: every container is a `pct` guest of the node.

pub mod apparmor;
mod base;
mod bundle_root;
mod check;
pub mod conf;
pub mod driver;
#[cfg(test)]
mod fuzz_tests;
mod node;
pub mod pct;
pub mod settings;
pub mod template;
mod template_store;
pub mod translate;
mod update;
pub mod vmid;

pub use driver::Driver;

use crate::backend::{Backend, BackendError, Registration};

pub static REGISTRATION: Registration = Registration {
    name: Driver::NAME,
    section: "proxmox",
    check: |table| settings::ProxmoxSettings::from_table(table).map(drop),
    open,
    annotations: translate::ANNOTATIONS,
};

fn open(
    table: &toml::Table,
    state_root: &std::path::Path,
) -> Result<Box<dyn Backend>, BackendError> {
    let settings = settings::ProxmoxSettings::from_table(table)
        .map_err(|m| BackendError::new(driver::DriverError::Settings(m)))?;
    Ok(Box::new(Driver::new(settings, state_root)))
}
