use std::io::Write;

use crate::cli::{GlobalOpts, SpecArgs};
use crate::error::{Error, Result};

/// `runc spec`: a default config.json for a shell in ./rootfs.
pub fn run(global: &GlobalOpts, args: &SpecArgs) -> Result<i32> {
    let path = args.bundle.join("config.json");
    let rootless = matches!(global.rootless.as_deref(), Some("true" | "1"));
    let spec = crate::lifecycle::default_spec(rootless);
    let json = serde_json::to_string_pretty(&spec).expect("spec serializes");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                Error::Usage(format!("File {} exists. Remove it first", path.display()))
            }
            _ => Error::io(&path, e),
        })?;
    f.write_all(json.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(|e| Error::io(&path, e))?;
    Ok(0)
}
