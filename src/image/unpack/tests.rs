use super::*;
use crate::image::testutil::{layer, E};

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

pub(crate) struct Fs {
    pub dir: tempfile::TempDir,
    pub root: Rootfs,
}

impl Fs {
    pub fn new() -> Fs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let root = Rootfs::open(&dir.path().join("rootfs")).unwrap();
        Fs { dir, root }
    }
    /// A rootfs with `layers` applied, lowest first, each one without error.
    pub fn with_layers(layers: &[&[E]]) -> Fs {
        let fs = Fs::new();
        for l in layers {
            fs.apply(l).unwrap();
        }
        fs
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("rootfs").join(rel)
    }
    /// A directory beside the rootfs standing for the host.
    pub fn host(&self) -> PathBuf {
        let p = self.dir.path().join("host");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    pub fn apply(&self, entries: &[E]) -> Result<(), ImageError> {
        apply(&self.root, &layer(entries)[..])
    }
    pub fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.path(rel)).is_ok()
    }
}

#[test]
fn files_dirs_links_nodes_owners_and_modes_are_made() {
    let fs = Fs::new();
    fs.apply(&[
        E::Dir("./", 0o755),
        E::Dir("./usr/", 0o755),
        E::Dir("usr/bin", 0o711),
        E::Owned("usr/bin/tool", b"#!/bin/sh\n", 0o4755, 1000, 50),
        E::Link("bin", "usr/bin"),
        E::Hard("usr/bin/tool2", "usr/bin/tool"),
        E::Char("dev/null", 1, 3),
        E::Fifo("run/pipe"),
        E::Xattr("etc/tagged", "user.nexcage", b"yes"),
    ])
    .unwrap();
    let tool = std::fs::metadata(fs.path("usr/bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (1000, 50));
    assert_eq!(
        tool.permissions().mode() & 0o7777,
        0o4755,
        "set-uid kept after chown"
    );
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::read(fs.path("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(
        std::fs::metadata(fs.path("usr/bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o711
    );
    assert_eq!(
        std::fs::read_link(fs.path("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let tool2 = std::fs::metadata(fs.path("usr/bin/tool2")).unwrap();
    assert_eq!(tool2.ino(), tool.ino(), "a hard link, not a copy");
    let null = std::fs::metadata(fs.path("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    assert!(std::fs::metadata(fs.path("run/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    let mut buf = [0u8; 8];
    let p = CString::new(fs.path("etc/tagged").as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer with its length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.nexcage".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"yes");
}

#[test]
fn a_whiteout_deletes_a_lower_file_or_tree() {
    let fs = Fs::with_layers(&[
        &[
            E::File("app/keep", b"1", 0o644),
            E::File("app/gone", b"2", 0o644),
            E::File("data/deep/file", b"3", 0o644),
        ],
        &[
            E::File("app/.wh.gone", b"", 0o644),
            E::File(".wh.data", b"", 0o644),
        ],
    ]);
    assert!(fs.exists("app/keep"));
    assert!(!fs.exists("app/gone"));
    assert!(!fs.exists("app/.wh.gone"), "the marker itself is not made");
    assert!(!fs.exists("data"));
    // A whiteout of what is not there is no error.
    fs.apply(&[E::File("nowhere/.wh.x", b"", 0o644)]).unwrap();
    assert!(!fs.exists("nowhere"));
}

#[test]
fn an_opaque_dir_hides_lower_content_but_not_its_own_layers() {
    let fs = Fs::with_layers(&[
        &[
            E::File("d/old", b"1", 0o644),
            E::File("d/sub/older", b"2", 0o644),
            E::File("other/stays", b"3", 0o644),
        ],
        // The marker after one of its own layer's files: that file stays.
        &[
            E::Dir("d", 0o755),
            E::File("d/early", b"4", 0o644),
            E::File("d/.wh..wh..opq", b"", 0o644),
            E::File("d/late", b"5", 0o644),
        ],
    ]);
    assert!(!fs.exists("d/old"));
    assert!(!fs.exists("d/sub"));
    assert!(fs.exists("d/early"));
    assert!(fs.exists("d/late"));
    assert!(!fs.exists("d/.wh..wh..opq"));
    assert!(fs.exists("other/stays"));
}

/// The opaque marker hides lower content at any depth, and keeps what its
/// own layer made below the directory, implied parents included.
#[test]
fn an_opaque_dir_reaches_into_subdirectories_both_ways() {
    let fs = Fs::with_layers(&[
        &[
            E::File("d/sub/older", b"1", 0o644),
            E::File("d/new/lower", b"2", 0o644),
        ],
        &[
            // Re-declared by this layer: still opaque below.
            E::Dir("d/sub", 0o755),
            // Its parent never declared in this layer.
            E::File("d/new/x", b"3", 0o644),
            E::File("d/.wh..wh..opq", b"", 0o644),
        ],
    ]);
    assert!(fs.exists("d/sub"));
    assert!(
        !fs.exists("d/sub/older"),
        "lower content under a kept dir is hidden"
    );
    assert!(
        fs.exists("d/new/x"),
        "this layer's file under an implied dir stays"
    );
    assert!(!fs.exists("d/new/lower"));
}

#[test]
fn later_layers_replace_whatever_type_was_there() {
    let fs = Fs::with_layers(&[
        &[
            E::File("a", b"file", 0o644),
            E::Dir("b", 0o755),
            E::File("b/inner", b"x", 0o644),
            E::Link("c", "a"),
            E::File("d", b"old", 0o644),
            E::Hard("e", "d"),
        ],
        &[
            E::Dir("a", 0o750),
            E::File("b", b"now a file", 0o600),
            E::File("c", b"no longer a link", 0o644),
            E::File("d", b"new", 0o644),
        ],
    ]);
    assert!(std::fs::metadata(fs.path("a")).unwrap().is_dir());
    assert_eq!(std::fs::read(fs.path("b")).unwrap(), b"now a file");
    assert!(!std::fs::symlink_metadata(fs.path("c"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        std::fs::read(fs.path("a/..").join("c")).unwrap(),
        b"no longer a link"
    );
    assert_eq!(std::fs::read(fs.path("d")).unwrap(), b"new");
    assert_eq!(
        std::fs::read(fs.path("e")).unwrap(),
        b"old",
        "a new file replaces the name, it does not write through an old hard link"
    );
    // A directory over a directory keeps its content and takes the new mode.
    fs.apply(&[E::Dir("a", 0o700), E::File("a/x", b"", 0o644)])
        .unwrap();
    fs.apply(&[E::Dir("a", 0o755)]).unwrap();
    assert!(fs.exists("a/x"));
    assert_eq!(
        std::fs::metadata(fs.path("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

#[test]
fn paths_with_dotdot_or_absolute_are_refused() {
    for bad in ["../escape", "a/../../escape", "/etc/evil", "./a/.."] {
        let fs = Fs::new();
        let err = fs.apply(&[E::File(bad, b"x", 0o644)]).unwrap_err();
        assert!(matches!(err, ImageError::Hostile { .. }), "{bad}: {err}");
        assert!(!fs.dir.path().join("escape").exists());
    }
}

#[test]
fn a_symlink_never_carries_a_write_out_of_the_rootfs() {
    let fs = Fs::new();
    let host = fs.host();
    std::fs::write(host.join("victim"), b"host data").unwrap();
    let host_s = host.to_str().unwrap();
    // `etc -> /etc`, then etc/passwd: the host's /etc must not be touched.
    let err = fs
        .apply(&[
            E::Link("etc", "/etc"),
            E::File("etc/passwd", b"root::0:0::/:/bin/sh\n", 0o644),
        ])
        .unwrap_err();
    assert!(matches!(err, ImageError::Entry { .. }), "{err}");
    // An absolute link to a host directory: resolved inside the rootfs.
    let fs = Fs::new();
    let r = fs.apply(&[E::Link("evil", host_s), E::File("evil/pwned", b"x", 0o644)]);
    assert!(r.is_err() || fs.path(&format!("{}/pwned", &host_s[1..])).exists());
    assert!(!host.join("pwned").exists());
    // A relative link climbing out: `..` stops at the rootfs's top.
    let fs = Fs::new();
    fs.apply(&[
        E::Link("up", "../../../../../.."),
        E::File("up/pwned", b"x", 0o644),
    ])
    .unwrap();
    assert!(fs.path("pwned").exists());
    assert!(!fs.dir.path().join("pwned").exists());
    // A later layer's file over a symlink to a host file replaces the link.
    let fs = Fs::new();
    let host = fs.host();
    std::fs::write(host.join("victim"), b"host data").unwrap();
    let victim = host.join("victim");
    fs.apply(&[E::Link("f", victim.to_str().unwrap())]).unwrap();
    fs.apply(&[E::File("f", b"image data", 0o644)]).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
}

#[test]
fn whiteouts_and_opaque_markers_do_not_follow_symlinks_out() {
    let fs = Fs::new();
    let host = fs.host();
    std::fs::write(host.join("victim"), b"host data").unwrap();
    let host_s = host.to_str().unwrap();
    fs.apply(&[E::Link("evil", host_s)]).unwrap();
    let _ = fs.apply(&[E::File("evil/.wh.victim", b"", 0o644)]);
    let _ = fs.apply(&[E::File("evil/.wh..wh..opq", b"", 0o644)]);
    let _ = fs.apply(&[E::File(".wh.evil", b"", 0o644)]);
    assert_eq!(std::fs::read(host.join("victim")).unwrap(), b"host data");
    assert!(!fs.exists("evil"), "the whiteout removed the link itself");
}

#[test]
fn hard_links_only_reach_files_of_the_rootfs() {
    let fs = Fs::new();
    let host = fs.host();
    std::fs::write(host.join("secret"), b"host data").unwrap();
    let secret = host.join("secret");
    for target in [
        secret.to_str().unwrap(),
        "../host/secret",
        "a/../../host/secret",
    ] {
        let err = fs.apply(&[E::Hard("stolen", target)]).unwrap_err();
        assert!(matches!(err, ImageError::Hostile { .. }), "{target}: {err}");
    }
    // Through a symlink to the host directory: resolved inside, not found.
    fs.apply(&[E::Link("h", host.to_str().unwrap())]).unwrap();
    assert!(fs.apply(&[E::Hard("stolen", "h/secret")]).is_err());
    assert!(!fs.exists("stolen"));
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn open_file_stays_inside_the_rootfs() {
    let fs = Fs::new();
    let host = fs.host();
    std::fs::write(host.join("passwd"), b"host").unwrap();
    fs.apply(&[E::Link("etc", host.to_str().unwrap())]).unwrap();
    assert!(fs.root.open_file("etc/passwd").unwrap().is_none());
    let fs = Fs::new();
    fs.apply(&[
        E::File("real/passwd", b"image", 0o644),
        E::Link("etc", "/real"),
    ])
    .unwrap();
    let mut s = String::new();
    fs.root
        .open_file("etc/passwd")
        .unwrap()
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "image");
}

#[test]
fn whiteouts_of_dot_or_dotdot_are_refused() {
    for bad in [".wh..", ".wh...", "sub/.wh..", "sub/.wh..."] {
        let fs = Fs::new();
        let host = fs.host();
        std::fs::write(host.join("sibling"), b"host data").unwrap();
        fs.apply(&[
            E::File("sub/keep", b"x", 0o644),
            E::File("top", b"x", 0o644),
        ])
        .unwrap();
        let err = fs.apply(&[E::File(bad, b"", 0o644)]).unwrap_err();
        assert!(matches!(err, ImageError::Hostile { .. }), "{bad}: {err}");
        assert!(host.join("sibling").exists(), "{bad}");
        assert!(fs.exists("sub/keep") && fs.exists("top"), "{bad}");
    }
}
