//! scripts/package.sh's .deb, installed and removed with dpkg on this
//! machine (tests run as root): the binary runs, `man` finds the pages,
//! an admin's edit of the conffile survives a reinstall, and `dpkg -P`
//! leaves nothing behind. The pages shipped are those the parser makes now.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NEXCAGE: &str = env!("CARGO_BIN_EXE_nexcage");
const CONFIG: &str = "/etc/nexcage/config.toml";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "nexcage"])
        .stdout
        .ends_with(b" installed")
}

/// Purges the package whatever happens, so a failing test leaves the
/// machine as it found it.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "nexcage"]);
    }
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", path.display());
    out.stdout
}

#[test]
fn the_deb_installs_works_and_purges_without_a_trace() {
    assert!(
        !installed(),
        "a nexcage package is installed on this machine already: this test would replace it"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb = ok(repo.join("scripts/package.sh").to_str().unwrap(), &[]);
    let deb = deb.trim();
    assert!(
        deb.ends_with(&format!(
            "target/nexcage_{}_amd64.deb",
            env!("CARGO_PKG_VERSION")
        )),
        "{deb}"
    );
    let _purge = Purge;
    // Slim Debian images exclude /usr/share/man from every package
    // (dpkg.cfg.d path-exclude); a later include on the command line wins.
    ok(
        "dpkg",
        &["--path-include=/usr/share/man/man8/nexcage*", "-i", deb],
    );
    assert!(installed());

    let version = ok("/usr/bin/nexcage", &["--version"]);
    assert!(
        version.starts_with(&format!("nexcage version {}\n", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let page = ok("man", &["-w", "nexcage"]);
    assert_eq!(page.trim(), "/usr/share/man/man8/nexcage.8.gz");
    let page = ok("man", &["-w", "nexcage-create"]);
    assert_eq!(page.trim(), "/usr/share/man/man8/nexcage-create.8.gz");

    // What was shipped is what the parser generates now, page for page.
    let fresh = tempfile::tempdir().unwrap();
    ok(
        NEXCAGE,
        &["generate", "man", fresh.path().to_str().unwrap()],
    );
    let mut generated: Vec<PathBuf> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    generated.sort();
    let files = ok("dpkg", &["-L", "nexcage"]);
    let shipped: Vec<&str> = files
        .lines()
        .filter(|l| l.starts_with("/usr/share/man/man8/"))
        .collect();
    assert_eq!(shipped.len(), generated.len(), "{shipped:?}");
    for page in &generated {
        let name = page.file_name().unwrap().to_str().unwrap();
        let installed = format!("/usr/share/man/man8/{name}.gz");
        assert_eq!(
            gunzip(Path::new(&installed)),
            std::fs::read(page).unwrap(),
            "{installed} differs from `nexcage generate man`"
        );
    }
    for f in [
        "/usr/share/bash-completion/completions/nexcage",
        "/usr/share/zsh/vendor-completions/_nexcage",
        "/usr/share/fish/vendor_completions.d/nexcage.fish",
        "/usr/share/doc/nexcage/copyright",
        "/usr/share/doc/nexcage/changelog.Debian.gz",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in the package");
    }
    assert_eq!(
        std::fs::read_to_string(CONFIG).unwrap(),
        std::fs::read_to_string(repo.join("packaging/config.toml")).unwrap()
    );
    assert_eq!(
        ok("cat", &["/var/lib/dpkg/info/nexcage.conffiles"]).trim(),
        CONFIG
    );

    // An admin's edit survives installing the package again.
    let edited = format!(
        "{}start_timeout_secs = 90\n",
        std::fs::read_to_string(CONFIG).unwrap()
    )
    .replace("start_timeout_secs = 60 ", "# start_timeout_secs = 60 ");
    std::fs::write(CONFIG, &edited).unwrap();
    ok("dpkg", &["--force-confold", "-i", deb]);
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);

    ok("dpkg", &["-r", "nexcage"]);
    assert!(!Path::new("/usr/bin/nexcage").exists());
    assert!(Path::new(CONFIG).exists(), "remove keeps the conffile");
    ok("dpkg", &["-P", "nexcage"]);
    assert!(!installed());
    for path in files.lines().filter(|l| l.starts_with('/') && *l != "/.") {
        let p = Path::new(path);
        if p.is_dir() {
            // Directories stay only where other packages own them too.
            let owners = run("dpkg", &["-S", path]);
            assert!(
                owners.status.success(),
                "{path} left behind, owned by nobody"
            );
        } else {
            assert!(!p.exists(), "{path} left behind after purge");
        }
    }
    for gone in ["/etc/nexcage", "/usr/share/doc/nexcage", CONFIG] {
        assert!(!Path::new(gone).exists(), "{gone} left behind after purge");
    }
}
