//! `nexcage template` for the Proxmox backend: nexcage's templates on the
//! node's template storage, listed and removed through pveam (and root
//! mode clone's bases with them).

use serde::Deserialize;
use serde_json::Value;

use super::driver::{Driver, DriverError, GuestData};
use super::template::cache::{self, Meta};
use crate::backend::{BackendError, Template, TemplateStore, Temporaries};

impl TemplateStore for Driver {
    fn list(&self) -> Result<Vec<Template>, BackendError> {
        let storage = self.node().template_storage()?;
        Ok(self.templates_on(&storage)?)
    }

    fn temporaries(&self) -> Result<Temporaries, BackendError> {
        let storage = self.node().template_storage()?;
        let dir = self.node().template_dir(&storage)?;
        Ok(cache::temps(&dir))
    }

    fn busy(&self, name: &str) -> Result<bool, BackendError> {
        let meta = Meta::new(&self.state_root);
        let lock = meta.try_lock_exclusive(name).map_err(DriverError::from)?;
        Ok(lock.is_none())
    }

    /// `pveam remove` under the template's exclusive lock.
    fn remove(&self, t: &Template) -> Result<bool, BackendError> {
        let meta = Meta::new(&self.state_root);
        let removed = cache::remove(&self.tools, &meta, &t.name, &t.volid, &|n| {
            self.release_bases(n)
        });
        Ok(removed.map_err(DriverError::from)?)
    }

    fn used_by(&self, data: &Value) -> Option<String> {
        let d = GuestData::deserialize(data).ok()?;
        let volid = d.template?;
        let (_, name) = volid.split_once(":vztmpl/")?;
        Some(name.to_string())
    }
}
