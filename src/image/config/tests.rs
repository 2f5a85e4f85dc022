use super::*;
use oci_spec::image::{Config as RunConfig, ConfigBuilder, ImageConfigurationBuilder};
use std::path::Path;

fn accounts() -> Accounts {
    Accounts {
        passwd: Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\nsvc:x:2000:2000::/:/bin/false\n".into()),
        group: Some("root:x:0:\napps:x:1001:\nwheel:x:10:app,svc\naudio:x:29:app\nsvc:x:2000:\n".into()),
    }
}

fn ids(u: &User) -> (u32, u32, Option<Vec<u32>>) {
    (u.uid(), u.gid(), u.additional_gids().clone())
}

#[test]
fn config_user_forms_resolve_against_the_rootfs() {
    let a = accounts();
    let r = |s: &str| ids(&resolve_user(s, &a).unwrap());
    assert_eq!(r("app"), (1000, 1001, Some(vec![10, 29])));
    assert_eq!(
        r("app:wheel"),
        (1000, 10, None),
        "a group given: no extra groups"
    );
    assert_eq!(
        r("1000"),
        (1000, 1001, None),
        "a known uid takes its primary group"
    );
    assert_eq!(
        r("4242"),
        (4242, 0, None),
        "an unknown uid is used as it is"
    );
    assert_eq!(r("4242:77"), (4242, 77, None));
    assert_eq!(r("svc:2000"), (2000, 2000, None));
    assert_eq!(r("0:apps"), (0, 1001, None));
    for bad in ["ghost", "ghost:0", "app:nogroup", "0:nogroup"] {
        let e = resolve_user(bad, &a).unwrap_err().to_string();
        assert!(e.contains("in the rootfs's /etc/"), "{bad}: {e}");
    }
    // No /etc/passwd at all: names cannot resolve, numbers still do.
    let none = Accounts::default();
    assert!(resolve_user("app", &none).is_err());
    assert_eq!(ids(&resolve_user("5:6", &none).unwrap()), (5, 6, None));
}

fn image(run: RunConfig) -> ImageConfiguration {
    ImageConfigurationBuilder::default()
        .os("linux")
        .architecture("amd64")
        .author("someone")
        .config(run)
        .build()
        .unwrap()
}

#[test]
fn args_env_and_cwd_follow_conversion_md() {
    let run = ConfigBuilder::default()
        .entrypoint(vec!["/bin/sh".into(), "-c".into()])
        .cmd(vec!["echo hi".into()])
        .env(vec!["PATH=/opt/bin".into(), "A=1".into()])
        .build()
        .unwrap();
    let spec = runtime_spec(&image(run), Spec::default(), &accounts()).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "echo hi"]);
    assert_eq!(
        p.env().as_ref().unwrap(),
        &["PATH=/opt/bin", "A=1"],
        "the image's PATH stays"
    );
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(p.terminal(), Some(false));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    // Cmd alone; no PATH: the default one is added.
    let run = ConfigBuilder::default()
        .cmd(vec!["/bin/true".into()])
        .working_dir("/work")
        .build()
        .unwrap();
    let spec = runtime_spec(&image(run), Spec::default(), &accounts()).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["/bin/true"]);
    assert_eq!(p.env().as_ref().unwrap(), &[default_path_env()]);
    assert_eq!(p.cwd(), Path::new("/work"));
}

#[test]
fn nothing_to_run_or_a_relative_workdir_is_refused() {
    let e = runtime_spec(&image(RunConfig::default()), Spec::default(), &accounts());
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("neither Entrypoint nor Cmd"));
    let run = ConfigBuilder::default()
        .cmd(vec!["x".into()])
        .working_dir("rel")
        .build()
        .unwrap();
    assert!(runtime_spec(&image(run), Spec::default(), &accounts()).is_err());
}

#[test]
fn annotations_come_from_the_config_and_labels_win() {
    let run = ConfigBuilder::default()
        .cmd(vec!["x".into()])
        .stop_signal("SIGINT")
        .exposed_ports(vec!["80/tcp".into(), "53/udp".into()])
        .volumes(vec!["/data".into()])
        .labels([(
            "org.opencontainers.image.author".to_string(),
            "label".to_string(),
        )])
        .build()
        .unwrap();
    let spec = runtime_spec(&image(run), Spec::default(), &accounts()).unwrap();
    let a = spec.annotations().as_ref().unwrap();
    let get = |k: &str| a.get(k).map(String::as_str);
    assert_eq!(get("org.opencontainers.image.stopSignal"), Some("SIGINT"));
    assert_eq!(
        get("org.opencontainers.image.exposedPorts"),
        Some("53/udp,80/tcp")
    );
    assert_eq!(get(VOLUMES), Some("/data"));
    assert_eq!(get("org.opencontainers.image.author"), Some("label"));
    assert_eq!(get("org.opencontainers.image.os"), Some("linux"));
    assert_eq!(get("org.opencontainers.image.architecture"), Some("amd64"));
    assert!(spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .all(|m| m.destination() != Path::new("/data")));
}
