//! Where an image's blobs are and which of them make the image: an OCI
//! image layout directory, the same layout in a tar (`oci-archive`), or
//! docker's `docker-archive` tar. Archives are indexed once and their
//! members read in place (seek + length), never extracted or held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::ImageError;
use crate::hex;

/// Index, manifest and config documents are small; a bigger one is not an
/// image document (and is never read whole into memory).
const MAX_DOCUMENT: u64 = 4 << 20;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// docker-archive's manifest.json (docker's own format, not an OCI type):
/// one entry an image.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// docker-archive names no media type: the first bytes tell.
    Sniff,
}

/// One layer to apply, and what its bytes must hash to.
#[derive(Debug)]
pub struct Layer {
    pub member: String,
    pub compression: Compression,
    /// sha256 hex of the stored bytes (OCI: the manifest's digest).
    pub blob: Option<String>,
    /// sha256 hex of the uncompressed tar (the config's diff_id).
    pub diff: Option<String>,
}

/// A selected image: its configuration and layers, lowest first.
#[derive(Debug)]
pub struct Image {
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
}

pub enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

pub enum Source {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

impl Source {
    /// A directory is an OCI layout; a file is a tar of one.
    pub fn open(path: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let bad = |e: std::io::Error| ImageError::Format {
            what: path.display().to_string(),
            message: format!("not a tar archive: {e}"),
        };
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = member_name(&entry.path_bytes());
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link_name_bytes().unwrap_or_default();
                let target = member_name(&target);
                // A symlink is relative to its directory, a hard link to the top.
                let target = match (kind.is_symlink(), name.rsplit_once('/')) {
                    (true, Some((dir, _))) => format!("{dir}/{target}"),
                    _ => target,
                };
                Member::Link(target)
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Source::Archive {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn describe(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Archive { path: p, .. } => p,
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Archive { members, .. } => members.contains_key(name),
        }
    }

    /// A member's bytes, streamed.
    pub fn read(&self, name: &str) -> Result<Box<dyn Read + '_>, ImageError> {
        let missing = || ImageError::Format {
            what: self.describe().display().to_string(),
            message: format!("{name} is missing"),
        };
        let name = clean_member(name).ok_or_else(missing)?;
        match self {
            Source::Dir(d) => {
                let p = d.join(&name);
                let f = File::open(&p).map_err(|e| ImageError::io(&p, e))?;
                Ok(Box::new(f))
            }
            Source::Archive { path, members } => {
                let mut name = name;
                // Bounded: a link cycle is not an image.
                for _ in 0..8 {
                    match members.get(&name).ok_or_else(missing)? {
                        Member::Link(t) => name = clean_member(t).ok_or_else(missing)?,
                        Member::File { offset, size } => {
                            let mut f = File::open(path).map_err(|e| ImageError::io(path, e))?;
                            f.seek(SeekFrom::Start(*offset))
                                .map_err(|e| ImageError::io(path, e))?;
                            return Ok(Box::new(f.take(*size)));
                        }
                    }
                }
                Err(missing())
            }
        }
    }

    /// A small document, checked against its digest when one is known.
    fn document(&self, name: &str, digest: Option<&str>) -> Result<Vec<u8>, ImageError> {
        let mut body = Vec::new();
        self.read(name)?
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut body)
            .map_err(|e| ImageError::io(self.describe().join(name), e))?;
        if body.len() as u64 > MAX_DOCUMENT {
            return Err(ImageError::Format {
                what: name.to_string(),
                message: format!("larger than {MAX_DOCUMENT} bytes"),
            });
        }
        if let Some(want) = digest {
            let got = hex::encode(&Sha256::digest(&body));
            if got != want {
                return Err(ImageError::Digest {
                    what: name.to_string(),
                    expected: format!("sha256:{want}"),
                    actual: format!("sha256:{got}"),
                });
            }
        }
        Ok(body)
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        digest: Option<&str>,
    ) -> Result<T, ImageError> {
        let body = self.document(name, digest)?;
        serde_json::from_slice(&body).map_err(|e| ImageError::Format {
            what: name.to_string(),
            message: e.to_string(),
        })
    }

    /// The document a descriptor points at, checked against its digest.
    fn described<T: serde::de::DeserializeOwned>(&self, d: &Descriptor) -> Result<T, ImageError> {
        let digest = d.digest().as_ref();
        self.json(&blob_path(digest)?, Some(hex_of(digest)?))
    }

    /// The image `tag` names (or the only one), resolved to its layers.
    pub fn select(&self, tag: Option<&str>) -> Result<Image, ImageError> {
        if self.has("index.json") && self.has("oci-layout") {
            self.select_oci(tag)
        } else if self.has("manifest.json") {
            self.select_docker(tag)
        } else {
            Err(ImageError::Format {
                what: self.describe().display().to_string(),
                message: "neither an OCI image layout (oci-layout, index.json) nor a docker archive (manifest.json)".into(),
            })
        }
    }

    fn select_oci(&self, tag: Option<&str>) -> Result<Image, ImageError> {
        let index: ImageIndex = self.json("index.json", None)?;
        let mut chosen = pick(index.manifests(), tag, self.describe())?;
        // Nested indexes (multi-arch images): follow to this machine's platform.
        // Any other media type is read as a manifest (docker's v2 one included).
        for _ in 0..4 {
            if ![OCI_INDEX, DOCKER_LIST].contains(&chosen.media_type().as_ref()) {
                break;
            }
            let inner: ImageIndex = self.described(&chosen)?;
            chosen = pick(inner.manifests(), None, self.describe())?;
        }
        let manifest: ImageManifest = self.described(&chosen)?;
        let config: ImageConfiguration = self.described(manifest.config())?;
        let diffs = diff_ids(&config, manifest.layers().len())?;
        let mut layers = Vec::new();
        for (d, diff) in manifest.layers().iter().zip(diffs) {
            let digest = hex_of(d.digest().as_ref())?;
            layers.push(Layer {
                member: blob_path(d.digest().as_ref())?,
                compression: compression(d.media_type().as_ref())?,
                blob: Some(digest.to_string()),
                diff,
            });
        }
        check_platform(&config)?;
        Ok(Image { config, layers })
    }

    fn select_docker(&self, tag: Option<&str>) -> Result<Image, ImageError> {
        let entries: Vec<DockerEntry> = self.json("manifest.json", None)?;
        let tags = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
        let mut matching: Vec<&DockerEntry> = match tag {
            Some(t) => entries
                .iter()
                .filter(|e| tags(e).iter().any(|r| r == t))
                .collect(),
            None => entries.iter().collect(),
        };
        if matching.len() != 1 {
            let names: Vec<String> = entries.iter().flat_map(tags).collect();
            return Err(choose_error(tag, matching.len(), &names, self.describe()));
        }
        let entry = matching.remove(0);
        // The config's file name is its digest (`HEX.json`, or
        // `blobs/sha256/HEX` as newer docker writes).
        let config_hex = entry
            .config
            .rsplit('/')
            .next()
            .map(|n| n.strip_suffix(".json").unwrap_or(n))
            .filter(|h| is_hex64(h));
        let config: ImageConfiguration = self.json(&entry.config, config_hex)?;
        let diffs = diff_ids(&config, entry.layers.len())?;
        if diffs.iter().any(Option::is_none) {
            return Err(ImageError::Format {
                what: entry.config.clone(),
                message: "rootfs.diff_ids does not list every layer".into(),
            });
        }
        let layers = entry
            .layers
            .iter()
            .zip(diffs)
            .map(|(m, diff)| Layer {
                member: m.clone(),
                compression: Compression::Sniff,
                blob: None,
                diff,
            })
            .collect();
        check_platform(&config)?;
        Ok(Image { config, layers })
    }
}

/// The manifest `tag` names, else the only one, else the one for this
/// machine's platform; otherwise a refusal listing the choices.
fn pick(
    manifests: &[Descriptor],
    tag: Option<&str>,
    source: &Path,
) -> Result<Descriptor, ImageError> {
    let names: Vec<String> = manifests.iter().filter_map(ref_name).collect();
    let mut matching: Vec<&Descriptor> = match tag {
        Some(t) => manifests
            .iter()
            .filter(|d| {
                [REF_NAME, CONTAINERD_NAME]
                    .iter()
                    .any(|k| annotation(d, k).is_some_and(|v| v == t))
            })
            .collect(),
        None => manifests.iter().collect(),
    };
    if matching.len() > 1 && matching.iter().all(|d| d.platform().is_some()) {
        let (os, arch) = ("linux", machine_arch());
        let platforms: Vec<String> = matching
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
            .collect();
        matching.retain(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        });
        if matching.is_empty() {
            return Err(ImageError::Usage(format!(
                "{}: no manifest for {os}/{arch} (the image has {})",
                source.display(),
                platforms.join(", ")
            )));
        }
    }
    if matching.len() != 1 {
        return Err(choose_error(tag, matching.len(), &names, source));
    }
    Ok(matching.remove(0).clone())
}

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a String> {
    d.annotations().as_ref().and_then(|a| a.get(key))
}

fn ref_name(d: &Descriptor) -> Option<String> {
    annotation(d, REF_NAME)
        .or_else(|| annotation(d, CONTAINERD_NAME))
        .cloned()
}

fn choose_error(tag: Option<&str>, found: usize, names: &[String], source: &Path) -> ImageError {
    let list = if names.is_empty() {
        "none has a name".to_string()
    } else {
        names.join(", ")
    };
    ImageError::Usage(match (tag, found) {
        (Some(t), 0) => format!(
            "{}: no image named {t:?} (it has: {list})",
            source.display()
        ),
        (Some(t), _) => format!("{}: several images named {t:?}", source.display()),
        (None, 0) => format!("{}: holds no image", source.display()),
        (None, _) => format!(
            "{}: holds several images, choose one with --tag: {list}",
            source.display()
        ),
    })
}

/// The GOARCH name of the machine nexcage runs on.
pub fn machine_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn check_platform(config: &ImageConfiguration) -> Result<(), ImageError> {
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    let os_ok = os.is_empty() || os == "linux";
    let arch_ok = arch.is_empty() || arch == machine_arch();
    if os_ok && arch_ok {
        Ok(())
    } else {
        Err(ImageError::Usage(format!(
            "the image is for {os}/{arch}, this machine runs linux/{}",
            machine_arch()
        )))
    }
}

fn diff_ids(config: &ImageConfiguration, layers: usize) -> Result<Vec<Option<String>>, ImageError> {
    let ids = config.rootfs().diff_ids();
    if ids.is_empty() {
        return Ok(vec![None; layers]);
    }
    if ids.len() != layers {
        return Err(ImageError::Format {
            what: "image config".into(),
            message: format!("{} diff_ids for {layers} layers", ids.len()),
        });
    }
    ids.iter()
        .map(|d| hex_of(d).map(|h| Some(h.to_string())))
        .collect()
}

fn compression(media_type: &str) -> Result<Compression, ImageError> {
    let base = media_type
        .replace(".nondistributable", "")
        .replace("vnd.docker.image.rootfs.foreign", "vnd.docker.image.rootfs");
    Ok(match base.as_str() {
        "application/vnd.oci.image.layer.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        _ => {
            return Err(ImageError::Format {
                what: "image manifest".into(),
                message: format!("layer media type {media_type:?} is not supported"),
            })
        }
    })
}

/// `sha256:HEX` -> `blobs/sha256/HEX`; only sha256, only lowercase hex.
pub fn blob_path(digest: &str) -> Result<String, ImageError> {
    Ok(format!("blobs/sha256/{}", hex_of(digest)?))
}

fn hex_of(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| is_hex64(h))
        .ok_or_else(|| ImageError::Format {
            what: "image".into(),
            message: format!("digest {digest:?} is not sha256:<64 hex digits>"),
        })
}

fn is_hex64(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An archive member's name as looked up: no leading `./` or `/`.
fn member_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// A member name resolved lexically; `None` if it climbs above the top.
fn clean_member(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A reader that hashes what passes through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left, then the hex digest of everything.
    pub fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(hex::encode(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
