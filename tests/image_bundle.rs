//! An image saved by podman runs from a shell: `podman build` (two layers,
//! a file deleted so a whiteout occurs, ENTRYPOINT/CMD/ENV/USER/WORKDIR),
//! `podman save` as oci-archive and docker-archive, `nexcage bundle` each,
//! `nexcage run` the bundle on the simulated node.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{rootfs, stderr, stdout, Node};
use serde_json::json;

const BASE: &str = "localhost/nexcage-image-base:latest";
const IMAGE: &str = "localhost/nexcage-image-test:latest";

/// podman with its storage and config under one directory of the test.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: PathBuf) -> Podman {
        std::fs::create_dir_all(&dir).unwrap();
        // This machine's quirks, as scripts/lib/clients-env.sh sets them:
        // root lacks CAP_SYS_RESOURCE (ulimits under the hard limits), the
        // cgroup layout is hybrid (cgroupfs).
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"));
        c
    }

    fn ok(&self, args: &[&str]) {
        let out = self
            .cmd()
            .args(args)
            .output()
            .expect("podman (scripts/setup.sh installs it)");
        assert!(out.status.success(), "podman {args:?}: {}", stderr(&out));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rmi", "-a", "-f"]).output();
        let _ = self.cmd().args(["system", "reset", "-f"]).output();
    }
}

const CONTAINERFILE: &str = r#"FROM localhost/nexcage-image-base:latest
RUN mkdir -p /app && echo hello-from-image > /app/greeting && echo doomed > /app/doomed \
 && echo 'app:x:1000:1000::/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group \
 && echo 'staff:x:50:app' >> /etc/group && chown -R 1000:1000 /app
RUN rm /app/doomed
ENV GREETING=hi
WORKDIR /app
USER app
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat greeting; echo \"$GREETING $(id -u):$(id -g) $(id -G) $(pwd)\"; test ! -e doomed && exit 3"]
"#;

/// The image built from the busybox rootfs and saved in both formats.
fn saved_image(work: &Path) -> (Podman, PathBuf, PathBuf) {
    let podman = Podman::new(work.join("podman"));
    // No registry here: the base is the busybox rootfs imported, as
    // scripts/clients.sh does.
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = podman
        .cmd()
        .args(["import", "-q", "-", BASE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the busybox rootfs");
    assert!(out.status.success(), "podman import: {}", stderr(&out));
    let ctx = work.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Containerfile"), CONTAINERFILE).unwrap();
    // chroot isolation: RUN needs no OCI runtime, so no cgroup set-up.
    podman.ok(&[
        "build",
        "-q",
        "--isolation",
        "chroot",
        "-t",
        IMAGE,
        ctx.to_str().unwrap(),
    ]);
    let oci = work.join("image.oci.tar");
    let docker = work.join("image.docker.tar");
    podman.ok(&[
        "save",
        "-q",
        "--format",
        "oci-archive",
        "-o",
        oci.to_str().unwrap(),
        IMAGE,
    ]);
    podman.ok(&[
        "save",
        "-q",
        "--format",
        "docker-archive",
        "-o",
        docker.to_str().unwrap(),
        IMAGE,
    ]);
    (podman, oci, docker)
}

#[test]
fn an_image_saved_by_podman_runs_through_nexcage_bundle_and_run() {
    let node = Node::new();
    let work = node.root().join("image-work");
    let (_podman, oci, docker) = saved_image(&work);
    for (kind, archive) in [("oci", &oci), ("docker", &docker)] {
        let bundle = work.join(format!("bundle-{kind}"));
        let out = node
            .nexcage(["bundle", "--image"])
            .arg(archive)
            .arg("--out")
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: bundle: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "bundle prints nothing on success");

        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let p = &config["process"];
        assert_eq!(p["args"][0], "/bin/sh", "{kind}");
        assert_eq!(p["args"][1], "-c", "{kind}");
        assert!(
            p["args"][2].as_str().unwrap().starts_with("cat greeting"),
            "{kind}"
        );
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [50]}),
            "{kind}"
        );
        assert_eq!(p["cwd"], "/app", "{kind}");
        assert!(
            p["env"].as_array().unwrap().contains(&json!("GREETING=hi")),
            "{kind}"
        );
        assert_eq!(
            config["annotations"]["org.opencontainers.image.stopSignal"], "SIGINT",
            "{kind}"
        );
        let rootfs = bundle.join("rootfs");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("app/greeting")).unwrap(),
            "hello-from-image\n"
        );
        assert!(
            !rootfs.join("app/doomed").exists(),
            "{kind}: the whiteout applied"
        );
        assert!(
            rootfs.join("bin/busybox").exists(),
            "{kind}: the base layer is there"
        );

        let run = node.run_bundle(&bundle, &format!("img-{kind}"));
        assert_eq!(
            stdout(&run),
            "hello-from-image\nhi 1000:1000 1000 50 /app\n",
            "{kind}: run: {}",
            stderr(&run)
        );
        assert_eq!(
            run.status.code(),
            Some(3),
            "{kind}: the process's exit status"
        );
        let del = node.run(["delete", "--force", &format!("img-{kind}")]);
        assert!(del.status.success(), "{}", stderr(&del));
    }
    assert!(node.vmids().is_empty(), "no guest left");

    // The oci-archive unpacked is an OCI image layout directory: same bundle.
    let layout = work.join("layout");
    std::fs::create_dir(&layout).unwrap();
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&oci)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(untar.success());
    let bundle = work.join("bundle-layout");
    let out = node
        .nexcage(["bundle", "--image"])
        .arg(&layout)
        .arg("--out")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "layout: {}", stderr(&out));
    // (The spec's capability sets serialize in no fixed order: compare parts.)
    let read = |b: &Path| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        let p = &v["process"];
        json!([p["args"], p["env"], p["user"], p["cwd"], v["annotations"]])
    };
    assert_eq!(read(&bundle), read(&work.join("bundle-oci")));
    if let Err(e) = same_tree(&bundle.join("rootfs"), &work.join("bundle-oci/rootfs")) {
        panic!("the two rootfs differ: {e}");
    }
}

/// Whether two trees hold the same entries: type, mode, owner, device
/// numbers, symlink targets and file contents (diff(1) gives up on device
/// nodes, which an image built with podman may carry under /dev).
fn same_tree(a: &Path, b: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (
        std::fs::symlink_metadata(a).map_err(|e| format!("{}: {e}", a.display()))?,
        std::fs::symlink_metadata(b).map_err(|e| format!("{}: {e}", b.display()))?,
    );
    let key = |m: &std::fs::Metadata| (m.mode(), m.uid(), m.gid(), m.rdev());
    if key(&ma) != key(&mb) {
        return Err(format!("{} {:?} vs {:?}", a.display(), key(&ma), key(&mb)));
    }
    let ft = ma.file_type();
    if ft.is_symlink() {
        if std::fs::read_link(a).ok() != std::fs::read_link(b).ok() {
            return Err(format!("{}: symlink targets differ", a.display()));
        }
    } else if ft.is_file() {
        if std::fs::read(a).ok() != std::fs::read(b).ok() {
            return Err(format!("{}: contents differ", a.display()));
        }
    } else if ft.is_dir() {
        let names = |d: &Path| -> Result<Vec<_>, String> {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .map_err(|e| format!("{}: {e}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            v.sort();
            Ok(v)
        };
        let (na, nb) = (names(a)?, names(b)?);
        if na != nb {
            return Err(format!("{}: entries {na:?} vs {nb:?}", a.display()));
        }
        for n in na {
            same_tree(&a.join(&n), &b.join(&n))?;
        }
    }
    Ok(())
}

#[test]
fn a_docker_archive_of_several_images_takes_a_tag() {
    let node = Node::new();
    let work = node.root().join("image-work");
    let (podman, _, _) = saved_image(&work);
    let both = work.join("both.docker.tar");
    podman.ok(&[
        "save",
        "-q",
        "-m",
        "--format",
        "docker-archive",
        "-o",
        both.to_str().unwrap(),
        BASE,
        IMAGE,
    ]);
    let bundle = work.join("bundle");
    let bundle_cmd = |tag: Option<&str>| {
        let mut c = node.nexcage(["bundle", "--image"]);
        c.arg(&both).arg("--out").arg(&bundle);
        if let Some(t) = tag {
            c.args(["--tag", t]);
        }
        c.output().unwrap()
    };
    let out = bundle_cmd(None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--tag") && err.contains(BASE) && err.contains(IMAGE),
        "{err}"
    );
    assert!(!bundle.exists());
    let out = bundle_cmd(Some(IMAGE));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(bundle.join("rootfs/app/greeting").exists());
}

#[test]
fn a_bad_image_fails_in_one_line_and_leaves_nothing() {
    let node = Node::new();
    let work = node.root().join("bad-image");
    std::fs::create_dir_all(&work).unwrap();
    let not_tar = work.join("not-an-image.tar");
    std::fs::write(
        &not_tar,
        b"this is not a tar archive at all, just some text\n",
    )
    .unwrap();
    let empty_dir = work.join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    for image in [&not_tar, &empty_dir, &work.join("missing")] {
        let out = node
            .nexcage(["bundle", "--image"])
            .arg(image)
            .arg("--out")
            .arg(work.join("bundle"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", image.display());
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert!(!work.join("bundle").exists());
    }
    let mut left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["empty", "not-an-image.tar"]);
}
