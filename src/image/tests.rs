use super::*;
use crate::image::testutil::{layer, E};

use serde_json::{json, Value};
use sha2::Digest;
use std::io::Write;

fn sha(b: &[u8]) -> String {
    crate::hex::encode(&sha2::Sha256::digest(b))
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zst(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 1).unwrap()
}

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn run_config() -> Value {
    json!({
        "Entrypoint": ["/bin/app"], "Cmd": ["--serve"],
        "Env": ["MODE=test"], "WorkingDir": "/srv", "User": "app",
        "StopSignal": "SIGQUIT", "ExposedPorts": {"80/tcp": {}},
        "Labels": {"org.opencontainers.image.os": "label wins", "team": "ops"}
    })
}

/// The three test layers: base (passwd, app, a doomed file), a whiteout,
/// a file of its own; stored gzip, zstd and plain.
fn layers() -> Vec<(&'static str, Vec<u8>)> {
    let base = layer(&[
        E::File(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n",
            0o644,
        ),
        E::File(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
            0o644,
        ),
        E::File("bin/app", b"#!/bin/sh\n", 0o755),
        E::File("srv/doomed", b"x", 0o644),
    ]);
    let second = layer(&[E::File("srv/.wh.doomed", b"", 0o644)]);
    let third = layer(&[E::File("srv/data", b"layer three", 0o644)]);
    vec![(GZ, base), (ZST, second), (TAR, third)]
}

struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("image/blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("image/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Layout { dir }
    }
    fn image(&self) -> PathBuf {
        self.dir.path().join("image")
    }
    fn blob(&self, bytes: &[u8]) -> String {
        let h = sha(bytes);
        std::fs::write(self.image().join("blobs/sha256").join(&h), bytes).unwrap();
        format!("sha256:{h}")
    }
    /// An image manifest of `layers` with `run` as Config; its descriptor.
    fn manifest(&self, layers: &[(&str, Vec<u8>)], run: Value, arch: &str) -> Value {
        let mut descs = Vec::new();
        let mut diffs = Vec::new();
        for (mt, tar) in layers {
            let stored = match *mt {
                GZ => gz(tar),
                ZST => zst(tar),
                _ => tar.clone(),
            };
            descs
                .push(json!({"mediaType": mt, "digest": self.blob(&stored), "size": stored.len()}));
            diffs.push(format!("sha256:{}", sha(tar)));
        }
        let config = json!({"architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": run, "rootfs": {"type": "layers", "diff_ids": diffs}});
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(&config), "size": config.len()},
            "layers": descs});
        let m = serde_json::to_vec(&manifest).unwrap();
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": self.blob(&m), "size": m.len()})
    }
    /// The JSON blob `desc` points at, edited, stored under its new
    /// digest; the descriptor of the new blob.
    fn edit_blob(&self, desc: &Value, edit: impl FnOnce(&mut Value)) -> Value {
        let old = layout::blob_path(desc["digest"].as_str().unwrap()).unwrap();
        let mut doc: Value =
            serde_json::from_slice(&std::fs::read(self.image().join(old)).unwrap()).unwrap();
        edit(&mut doc);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let mut desc = desc.clone();
        desc["digest"] = json!(self.blob(&bytes));
        desc["size"] = json!(bytes.len());
        desc
    }
    fn index(&self, manifests: Vec<Value>) {
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.image().join("index.json"), index.to_string()).unwrap();
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }
    fn make(&self, image: &Path, tag: Option<&str>) -> Result<(), ImageError> {
        make_bundle(image, &self.out(), tag, Spec::default())
    }
    /// Only what the test made is in the directory: no temp dir left.
    fn nothing_left(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.retain(|n| n != "image" && n != "image.tar");
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}

fn tagged(mut desc: Value, name: &str) -> Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    desc
}

fn tar_of(dir: &Path, to: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(to).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

fn check_bundle(out: &Path) {
    let rootfs = out.join("rootfs");
    assert_eq!(
        std::fs::read(rootfs.join("srv/data")).unwrap(),
        b"layer three"
    );
    assert!(!rootfs.join("srv/doomed").exists(), "the whiteout applied");
    assert!(rootfs.join("bin/app").exists());
    let spec: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let p = &spec["process"];
    assert_eq!(p["args"], json!(["/bin/app", "--serve"]));
    assert_eq!(p["env"], json!([config::default_path_env(), "MODE=test"]));
    assert_eq!(p["cwd"], "/srv");
    assert_eq!(
        p["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10]})
    );
    assert_eq!(p["terminal"], false);
    let a = &spec["annotations"];
    assert_eq!(a["org.opencontainers.image.stopSignal"], "SIGQUIT");
    assert_eq!(a["org.opencontainers.image.exposedPorts"], "80/tcp");
    assert_eq!(a["org.opencontainers.image.os"], "label wins");
    assert_eq!(a["team"], "ops");
    assert_eq!(spec["root"]["path"], "rootfs");
}

#[test]
fn a_layout_dir_with_gzip_zstd_and_plain_layers_becomes_a_bundle() {
    let l = Layout::new();
    let m = l.manifest(&layers(), run_config(), layout::machine_arch());
    l.index(vec![m]);
    l.make(&l.image(), None).unwrap();
    check_bundle(&l.out());
}

#[test]
fn an_oci_archive_becomes_the_same_bundle() {
    let l = Layout::new();
    let m = l.manifest(&layers(), run_config(), layout::machine_arch());
    l.index(vec![tagged(m, "localhost/app:1")]);
    let archive = l.dir.path().join("image.tar");
    tar_of(&l.image(), &archive);
    std::fs::remove_dir_all(l.image()).unwrap();
    l.make(&archive, Some("localhost/app:1")).unwrap();
    check_bundle(&l.out());
}

#[test]
fn a_docker_archive_becomes_the_same_bundle_and_its_diff_ids_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let build = |diff_override: Option<&str>| {
        let src = dir.path().join("docker");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).unwrap();
        let mut names = Vec::new();
        let mut diffs = Vec::new();
        for (i, (_, tar)) in layers().into_iter().enumerate() {
            // docker save writes plain tars; the kind is sniffed, so gzip and zstd pass too.
            let stored = match i {
                0 => gz(&tar),
                1 => zst(&tar),
                _ => tar.clone(),
            };
            let name = format!("{}/layer.tar", sha(&tar));
            std::fs::create_dir_all(src.join(sha(&tar))).unwrap();
            std::fs::write(src.join(&name), &stored).unwrap();
            names.push(name);
            diffs.push(format!(
                "sha256:{}",
                diff_override.map_or(sha(&tar), str::to_string)
            ));
        }
        let config = json!({"architecture": layout::machine_arch(), "os": "linux",
            "config": run_config(), "rootfs": {"type": "layers", "diff_ids": diffs}});
        let config = serde_json::to_vec(&config).unwrap();
        let cname = format!("{}.json", sha(&config));
        std::fs::write(src.join(&cname), &config).unwrap();
        let manifest = json!([{"Config": cname, "RepoTags": ["localhost/app:1"], "Layers": names}]);
        std::fs::write(src.join("manifest.json"), manifest.to_string()).unwrap();
        let archive = dir.path().join("docker.tar");
        tar_of(&src, &archive);
        archive
    };
    let archive = build(None);
    let out = dir.path().join("bundle");
    make_bundle(&archive, &out, None, Spec::default()).unwrap();
    check_bundle(&out);
    let archive = build(Some(&"0".repeat(64)));
    let out2 = dir.path().join("bundle2");
    let err = make_bundle(&archive, &out2, None, Spec::default()).unwrap_err();
    assert!(
        err.to_string().contains("(diff_id): digest mismatch"),
        "{err}"
    );
    assert!(!out2.exists());
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused_and_nothing_is_left() {
    let l = Layout::new();
    let m = l.manifest(&layers(), run_config(), layout::machine_arch());
    l.index(vec![m]);
    // Swap the last layer's content behind its digest.
    let digest = m_digest(&l);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(l.image().join(layout::blob_path(&digest).unwrap())).unwrap(),
    )
    .unwrap();
    let last = manifest["layers"][2]["digest"].as_str().unwrap();
    std::fs::write(
        l.image().join(layout::blob_path(last).unwrap()),
        layer(&[E::File("srv/data", b"tampered", 0o644)]),
    )
    .unwrap();
    let err = l.make(&l.image(), None).unwrap_err();
    // The blob's own check, not only the diff_id's that would follow.
    assert!(err.to_string().contains("blob: digest mismatch"), "{err}");
    assert!(!l.out().exists());
    l.nothing_left();
}

fn m_digest(l: &Layout) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(l.image().join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn several_images_need_a_tag_and_the_tag_picks_one() {
    let l = Layout::new();
    let a = l.manifest(&layers(), run_config(), layout::machine_arch());
    let mut other = run_config();
    other["Cmd"] = json!(["--other"]);
    let b = l.manifest(&layers(), other, layout::machine_arch());
    l.index(vec![tagged(a, "app:a"), tagged(b, "app:b")]);
    let err = l.make(&l.image(), None).unwrap_err().to_string();
    assert!(
        err.contains("--tag") && err.contains("app:a, app:b"),
        "{err}"
    );
    let err = l.make(&l.image(), Some("app:c")).unwrap_err().to_string();
    assert!(err.contains("no image named \"app:c\""), "{err}");
    l.nothing_left();
    l.make(&l.image(), Some("app:b")).unwrap();
    let spec: Value =
        serde_json::from_slice(&std::fs::read(l.out().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], json!(["/bin/app", "--other"]));
}

#[test]
fn a_multi_arch_index_gives_this_machines_image() {
    let l = Layout::new();
    let mine = l.manifest(&layers(), run_config(), layout::machine_arch());
    let foreign = l.manifest(
        &[(TAR, layer(&[E::File("wrong", b"", 0o644)]))],
        run_config(),
        "s390x",
    );
    let mut mine = mine;
    mine["platform"] = json!({"os": "linux", "architecture": layout::machine_arch()});
    let mut foreign = foreign;
    foreign["platform"] = json!({"os": "linux", "architecture": "s390x"});
    let inner = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign, mine]});
    let inner = serde_json::to_vec(&inner).unwrap();
    l.index(vec![tagged(
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": l.blob(&inner), "size": inner.len()}),
        "app:multi",
    )]);
    l.make(&l.image(), None).unwrap();
    check_bundle(&l.out());
}

#[test]
fn the_output_must_be_new_or_empty() {
    let l = Layout::new();
    let m = l.manifest(&layers(), run_config(), layout::machine_arch());
    l.index(vec![m]);
    std::fs::create_dir(l.out()).unwrap();
    std::fs::write(l.out().join("x"), b"").unwrap();
    let err = l.make(&l.image(), None).unwrap_err().to_string();
    assert!(err.contains("exists and is not empty"), "{err}");
    std::fs::remove_file(l.out().join("x")).unwrap();
    l.make(&l.image(), None).unwrap();
    check_bundle(&l.out());
}

#[test]
fn an_unknown_user_is_refused_and_nothing_is_left() {
    let l = Layout::new();
    let mut run = run_config();
    run["User"] = json!("nobody-here");
    let m = l.manifest(&layers(), run, layout::machine_arch());
    l.index(vec![m]);
    let err = l.make(&l.image(), None).unwrap_err().to_string();
    assert!(err.contains("no user \"nobody-here\""), "{err}");
    assert!(!l.out().exists());
    l.nothing_left();
}

#[test]
fn a_hostile_layer_fails_the_bundle_and_nothing_is_left() {
    let l = Layout::new();
    let mut ls = layers();
    ls.push((TAR, layer(&[E::File("../../escape", b"x", 0o644)])));
    let m = l.manifest(&ls, run_config(), layout::machine_arch());
    l.index(vec![m]);
    let err = l.make(&l.image(), None).unwrap_err().to_string();
    assert!(err.contains("layer 3") && err.contains("refused"), "{err}");
    l.nothing_left();
}

fn without(key: &'static str) -> impl FnOnce(&mut Value) {
    move |doc| {
        doc.as_object_mut().unwrap().remove(key);
    }
}

/// The standard image's config edited; the new manifest's descriptor.
fn edit_config(l: &Layout, m: &Value, edit: impl FnOnce(&mut Value)) -> Value {
    l.edit_blob(m, |man| man["config"] = l.edit_blob(&man["config"], edit))
}

/// oci-spec's types hold to the image spec's REQUIRED fields where the
/// hand-written ones defaulted them, and check a digest's form when its
/// document is parsed: such documents are refused now, naming the document.
/// Layer media types and non-sha256 digests are refused as before.
#[test]
fn documents_without_the_image_specs_required_fields_are_refused() {
    type Edit = fn(&Layout, Value) -> Value;
    const INDEX: &str = "index.json: ";
    const BLOB: &str = "blobs/sha256/";
    // What is wrong, the edit, where the message starts, what it says.
    let cases: [(&str, Edit, &str, &str); 10] = [
        (
            "descriptor without mediaType",
            |_, mut m| {
                without("mediaType")(&mut m);
                m
            },
            INDEX,
            "missing field `mediaType`",
        ),
        (
            "descriptor without size",
            |_, mut m| {
                without("size")(&mut m);
                m
            },
            INDEX,
            "missing field `size`",
        ),
        (
            "uppercase digest",
            |_, mut m| {
                m["digest"] = json!(m["digest"]
                    .as_str()
                    .unwrap()
                    .to_uppercase()
                    .replace("SHA256", "sha256"));
                m
            },
            INDEX,
            "Invalid non-hexadecimal character in digest",
        ),
        (
            "manifest without config",
            |l, m| l.edit_blob(&m, without("config")),
            BLOB,
            "missing field `config`",
        ),
        (
            "manifest without layers",
            |l, m| l.edit_blob(&m, without("layers")),
            BLOB,
            "missing field `layers`",
        ),
        (
            "config without os",
            |l, m| edit_config(l, &m, without("os")),
            BLOB,
            "missing field `os`",
        ),
        (
            "config without rootfs",
            |l, m| edit_config(l, &m, without("rootfs")),
            BLOB,
            "missing field `rootfs`",
        ),
        (
            "config with a port that is not an object",
            |l, m| edit_config(l, &m, |c| c["config"]["ExposedPorts"]["80/tcp"] = json!(1)),
            BLOB,
            "invalid type: integer `1`",
        ),
        (
            "bzip2 layer",
            |l, m| {
                l.edit_blob(&m, |man| {
                    man["layers"][0]["mediaType"] = json!(format!("{TAR}+bzip2"))
                })
            },
            "image manifest: ",
            "layer media type \"application/vnd.oci.image.layer.v1.tar+bzip2\" is not supported",
        ),
        (
            "sha512 layer digest",
            |l, m| {
                l.edit_blob(&m, |man| {
                    man["layers"][0]["digest"] = json!(format!("sha512:{}", "a".repeat(128)))
                })
            },
            "image: ",
            "is not sha256:<64 hex digits>",
        ),
    ];
    for (what, edit, start, want) in cases {
        let l = Layout::new();
        let m = l.manifest(&layers(), run_config(), layout::machine_arch());
        l.index(vec![edit(&l, m)]);
        let err = l.make(&l.image(), None).unwrap_err().to_string();
        assert!(
            err.starts_with(start) && err.contains(want),
            "{what}: {err}"
        );
        assert!(!l.out().exists(), "{what}");
        l.nothing_left();
    }
}

/// A media type oci-spec does not know is read as a manifest, as before:
/// docker's v2 manifest and layer types (as containerd exports them) work.
#[test]
fn docker_media_types_in_an_oci_layout_are_read_as_before() {
    let l = Layout::new();
    let m = l.manifest(&layers(), run_config(), layout::machine_arch());
    let mut m = l.edit_blob(&m, |man| {
        man["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
        man["layers"][0]["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar.gzip");
        man["layers"][2]["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar");
    });
    m["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
    l.index(vec![m]);
    l.make(&l.image(), None).unwrap();
    check_bundle(&l.out());
}
