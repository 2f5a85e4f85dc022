//! The image configuration turned into a runtime spec, as the OCI image
//! spec's conversion.md says, on top of the default spec `nexcage spec`
//! writes.

use std::collections::HashMap;
use std::io::Read;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Spec, User};

use super::ImageError;

/// The PATH entry when the image sets none (runc's and docker's default).
pub fn default_path_env() -> String {
    format!("PATH={}", crate::fsutil::DEFAULT_PATH)
}

const A: &str = "org.opencontainers.image.";
/// Config.Volumes: recorded, not mounted (no key in the spec).
pub const VOLUMES: &str = "org.nexcage.image.volumes";

/// What the rootfs says about users: /etc/passwd and /etc/group.
#[derive(Debug, Default)]
pub struct Accounts {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

impl Accounts {
    /// Read from the unpacked rootfs (symlinks resolved inside it).
    pub fn read(root: &super::unpack::Rootfs) -> Result<Accounts, ImageError> {
        let read = |rel: &str| -> Result<Option<String>, ImageError> {
            let Some(f) = root.open_file(rel)? else {
                return Ok(None);
            };
            let mut text = String::new();
            f.take(16 << 20)
                .read_to_string(&mut text)
                .map_err(|e| ImageError::io(format!("rootfs/{rel}"), e))?;
            Ok(Some(text))
        };
        Ok(Accounts {
            passwd: read("etc/passwd")?,
            group: read("etc/group")?,
        })
    }
}

/// `base` (the default spec) with the image's process, user and annotations.
pub fn runtime_spec(
    image: &ImageConfiguration,
    mut base: Spec,
    accounts: &Accounts,
) -> Result<Spec, ImageError> {
    let run = image.config().as_ref();
    let mut args: Vec<String> = Vec::new();
    if let Some(r) = run {
        args.extend(r.entrypoint().iter().flatten().cloned());
        args.extend(r.cmd().iter().flatten().cloned());
    }
    if args.is_empty() {
        return Err(ImageError::Usage(
            "the image has neither Entrypoint nor Cmd: nothing to run".into(),
        ));
    }
    let mut env: Vec<String> = run.and_then(|r| r.env().clone()).unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, default_path_env());
    }
    let cwd = run
        .and_then(|r| r.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(ImageError::Usage(format!(
            "the image's WorkingDir {cwd:?} is not absolute"
        )));
    }
    let user = match run
        .and_then(|r| r.user().as_deref())
        .filter(|u| !u.is_empty())
    {
        Some(u) => resolve_user(u, accounts)?,
        None => User::default(),
    };
    let mut process = base.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_user(user);
    // Run from a shell or a script: no terminal unless the caller edits it in.
    process.set_terminal(Some(false));
    base.set_process(Some(process));
    if let Some(root) = base.root_mut() {
        // Images expect a writable root, as every client gives them.
        root.set_readonly(Some(false));
    }
    base.set_annotations(Some(annotations(image)));
    Ok(base)
}

/// Implicit annotations first, Config.Labels over them (conversion.md's precedence).
fn annotations(image: &ImageConfiguration) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.insert(format!("{A}{k}"), v);
        }
    };
    put("os", Some(image.os().to_string()));
    put("architecture", Some(image.architecture().to_string()));
    put("variant", image.variant().clone());
    put("os.version", image.os_version().clone());
    put(
        "os.features",
        image.os_features().as_ref().map(|f| f.join(",")),
    );
    put("author", image.author().clone());
    put("created", image.created().clone());
    if let Some(r) = image.config() {
        put("stopSignal", r.stop_signal().clone());
        // oci-spec keeps these JSON objects' keys in no set order.
        let keys = |m: &Option<Vec<String>>| {
            m.as_ref().map(|m| {
                let mut m = m.clone();
                m.sort();
                m.join(",")
            })
        };
        put("exposedPorts", keys(r.exposed_ports()));
        if let Some(v) = keys(r.volumes()).filter(|v| !v.is_empty()) {
            out.insert(VOLUMES.to_string(), v);
        }
        for (k, v) in r.labels().iter().flatten() {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Config.User (`user`, `uid`, `user:group`, `uid:gid`, mixed) against the
/// rootfs's accounts; a name that is not there is an error.
pub fn resolve_user(spec: &str, accounts: &Accounts) -> Result<User, ImageError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = accounts.passwd.as_deref().unwrap_or("");
    let groups = accounts.group.as_deref().unwrap_or("");
    let unknown = |what: &str, name: &str, file: &str| {
        ImageError::Usage(format!(
            "the image's user {spec:?}: no {what} {name:?} in the rootfs's {file}"
        ))
    };
    let by_name = |name: &str| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[0] == name)
    };
    let numeric = user.parse::<u32>().ok();
    let (uid, user_gid, name) = match numeric {
        Some(uid) => {
            // A uid's primary group, when /etc/passwd has the uid.
            let gid = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
                .and_then(|f| f[3].parse::<u32>().ok())
                .unwrap_or(0);
            (uid, gid, None)
        }
        None => {
            let f = by_name(user).ok_or_else(|| unknown("user", user, "/etc/passwd"))?;
            let uid = f[2]
                .parse::<u32>()
                .map_err(|_| unknown("valid uid for", user, "/etc/passwd"))?;
            let gid = f[3]
                .parse::<u32>()
                .map_err(|_| unknown("valid gid for", user, "/etc/passwd"))?;
            (uid, gid, Some(user))
        }
    };
    let group_rows = || {
        groups
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 3)
    };
    let mut out = User::default();
    out.set_uid(uid);
    match group {
        Some(g) => {
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_rows()
                    .find(|f| f[0] == g)
                    .and_then(|f| f[2].parse::<u32>().ok())
                    .ok_or_else(|| unknown("group", g, "/etc/group"))?,
            };
            out.set_gid(gid);
        }
        None => {
            out.set_gid(user_gid);
            if let Some(name) = name {
                let mut extra: Vec<u32> = group_rows()
                    .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
                    .filter_map(|f| f[2].parse::<u32>().ok())
                    .filter(|g| *g != user_gid)
                    .collect();
                extra.sort_unstable();
                extra.dedup();
                if !extra.is_empty() {
                    out.set_additional_gids(Some(extra));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
