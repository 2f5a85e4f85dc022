//! OCI images in, without a client: a runnable bundle (config.json and
//! rootfs/) from an OCI image layout directory, an `oci-archive` or a
//! `docker-archive` tar. Generic: nothing here knows the backend.
//!
//! layout: which blobs make the image (index, manifest, config, digests);
//! unpack: layers onto the rootfs (whiteouts, safe paths);
//! config: the image config as a runtime spec.

pub mod config;
pub mod layout;
pub mod unpack;

use std::io::Read;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::Spec;

use layout::{Compression, Hashing, Layer, Source};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Format { what: String, message: String },
    #[error("{what}: digest mismatch: the manifest says {expected}, the content is {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("layer entry {entry:?} refused: {why}")]
    Hostile { entry: String, why: &'static str },
    #[error("layer entry {entry:?}: {what}: {source}")]
    Entry {
        entry: String,
        what: &'static str,
        source: Errno,
    },
    #[error("layer {index} ({member}): {source}")]
    Layer {
        index: usize,
        member: String,
        source: Box<ImageError>,
    },
}

impl ImageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Makes the bundle `out` from `image` (a layout directory or an archive):
/// built in a hidden directory beside `out` and renamed into place, so a
/// failure leaves nothing. `base` is the default spec the image's settings
/// go onto.
pub fn make_bundle(
    image: &Path,
    out: &Path,
    tag: Option<&str>,
    base: Spec,
) -> Result<(), ImageError> {
    check_out(out)?;
    let source = Source::open(image)?;
    let selected = source.select(tag)?;
    let tmp = temp_beside(out)?;
    let result = fill(&source, &selected, &tmp, base)
        .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| ImageError::io(out, e)));
    if result.is_err() {
        if let Err(e) = std::fs::remove_dir_all(&tmp) {
            tracing::warn!("cannot remove {}: {e}", tmp.display());
        }
    }
    result
}

fn fill(source: &Source, image: &layout::Image, tmp: &Path, base: Spec) -> Result<(), ImageError> {
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir(&rootfs).map_err(|e| ImageError::io(&rootfs, e))?;
    let root = unpack::Rootfs::open(&rootfs)?;
    for (i, layer) in image.layers.iter().enumerate() {
        tracing::debug!("layer {i}: {}", layer.member);
        apply_layer(source, layer, &root).map_err(|e| ImageError::Layer {
            index: i,
            member: layer.member.clone(),
            source: Box::new(e),
        })?;
    }
    let accounts = config::Accounts::read(&root)?;
    let spec = config::runtime_spec(&image.config, base, &accounts)?;
    let json = serde_json::to_string_pretty(&spec).expect("spec serializes");
    let path = tmp.join("config.json");
    std::fs::write(&path, format!("{json}\n")).map_err(|e| ImageError::io(&path, e))
}

/// One layer, streamed: stored bytes -> hash -> decompress -> hash -> tar.
fn apply_layer(source: &Source, layer: &Layer, root: &unpack::Rootfs) -> Result<(), ImageError> {
    let mut stored = Hashing::new(source.read(&layer.member)?);
    let diff = {
        let mut buffered = std::io::BufReader::new(&mut stored);
        let kind = match layer.compression {
            Compression::Sniff => sniff(&mut buffered)?,
            k => k,
        };
        let decoded: Box<dyn Read + '_> = match kind {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::Decoder::with_buffer(buffered)
                    .map_err(|e| ImageError::io(&layer.member, e))?,
            ),
            Compression::None | Compression::Sniff => Box::new(buffered),
        };
        let mut tar = Hashing::new(decoded);
        unpack::apply(root, &mut tar)?;
        tar.finish().map_err(|e| ImageError::io(&layer.member, e))?
    };
    let blob = stored
        .finish()
        .map_err(|e| ImageError::io(&layer.member, e))?;
    let mismatch = |what: &str, expected: &str, actual: String| ImageError::Digest {
        what: what.to_string(),
        expected: format!("sha256:{expected}"),
        actual: format!("sha256:{actual}"),
    };
    if let Some(want) = &layer.blob {
        if *want != blob {
            return Err(mismatch("blob", want, blob));
        }
    }
    if let Some(want) = &layer.diff {
        if *want != diff {
            return Err(mismatch("uncompressed content (diff_id)", want, diff));
        }
    }
    Ok(())
}

fn sniff<R: std::io::BufRead>(r: &mut R) -> Result<Compression, ImageError> {
    let head = r.fill_buf().map_err(|e| ImageError::io("layer", e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// `out` must not exist, or be an empty directory.
fn check_out(out: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(out, e)),
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(out).map_err(|e| ImageError::io(out, e))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(ImageError::Usage(format!(
                    "{} exists and is not empty",
                    out.display()
                ))),
            }
        }
        Ok(_) => Err(ImageError::Usage(format!("{} exists", out.display()))),
    }
}

/// A fresh private directory in `out`'s parent, so the final rename stays
/// on one filesystem.
fn temp_beside(out: &Path) -> Result<PathBuf, ImageError> {
    let name = out
        .file_name()
        .ok_or_else(|| ImageError::Usage(format!("{}: not a directory name", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let template = parent.join(format!(".{}.XXXXXX", name.to_string_lossy()));
    let dir = nix::unistd::mkdtemp(&template).map_err(|e| ImageError::io(&template, e.into()))?;
    // mkdtemp's 0700 would outlive the rename: a bundle is as a mkdir makes it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| ImageError::io(&dir, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
