//! TEMPORARY stand-in while the real converter is written (see helper); replaced before commit.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub path: PathBuf,
    pub reused: bool,
}

pub fn ensure(rootfs: &Path, cache_dir: &Path) -> Result<Template, TemplateError> {
    let e = |source| TemplateError::Io {
        path: rootfs.to_path_buf(),
        source,
    };
    let name = "nexcage-stub.tar.zst".to_string();
    let path = cache_dir.join(&name);
    if path.exists() {
        return Ok(Template {
            name,
            path,
            reused: true,
        });
    }
    let f = std::fs::File::create(&path).map_err(e)?;
    let z = zstd::Encoder::new(f, 3).map_err(e)?.auto_finish();
    let mut b = tar::Builder::new(z);
    b.follow_symlinks(false);
    b.append_dir_all(".", rootfs).map_err(e)?;
    b.into_inner().map_err(e)?;
    Ok(Template {
        name,
        path,
        reused: false,
    })
}
