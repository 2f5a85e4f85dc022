//! The container's pid (state, --pid-file, the state hooks get) lives in
//! the guest's net, uts and ipc namespaces, as runc's does, over a simulated
//! node with real LXC; and a real CNI plugin run from a createRuntime hook
//! the way nerdctl and `ctr run --cni` do configures the guest, not the host.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::wait::WaitStatus;
use serde_json::json;

fn ns(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{name}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn state_pid(node: &Node, id: &str) -> i32 {
    node.state(id)["pid"].as_i64().unwrap() as i32
}

/// Create `id`, check the state pid's namespaces against the guest's and
/// the host's, then start it and make sure the monitor, in its new
/// namespaces, still relays a signal (as conmon's and the shim's kill do)
/// and dies as the process did.
fn check_namespaces(user: bool) {
    let node = Node::new();
    let id = if user { "unpriv" } else { "priv" };
    let namespaces = common::namespaces(user);
    let bundle = node.bundle(
        id,
        json!({"process": {"args": ["sleep", "1000"]},
               "linux": {"namespaces": namespaces}}),
    );
    let pid_file = node.root().join("pid");
    let out = node.create(&bundle, id, &["--pid-file", pid_file.to_str().unwrap()]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let pid = state_pid(&node, id);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    let (pid, init) = (pid.to_string(), init_pid(&node, id).to_string());
    for name in ["net", "uts", "ipc", "cgroup"] {
        let guest = ns(&init, name);
        assert_eq!(ns(&pid, name), guest, "{id}: state pid's {name}");
        assert_ne!(
            ns("self", name),
            guest,
            "{id}: the guest shares the host's {name}"
        );
    }
    // What is not joined (docs/architecture.md): the monitor keeps the
    // host's pid and user namespaces, so its host pid and host privileges
    // still hold.
    for name in ["pid", "user"] {
        assert_eq!(ns(&pid, name), ns("self", name), "{id}: state pid's {name}");
    }
    // The mount namespace is the process's: what a client reaches through
    // /proc/<pid>/root (podman cp) is the container's root, not the node's.
    let process = record(&node, id)["process"]["pid"].to_string();
    assert_eq!(
        ns(&pid, "mnt"),
        ns(&process, "mnt"),
        "{id}: state pid's mnt"
    );
    assert_ne!(
        ns("self", "mnt"),
        ns(&process, "mnt"),
        "{id}: shares the host's mnt"
    );
    let root = Path::new("/proc").join(&pid).join("root");
    let dir = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (m.dev(), m.ino())
    };
    let process_root = Path::new("/proc").join(&process).join("root");
    assert_eq!(dir(&root), dir(&process_root), "{id}: state pid's root");
    assert_ne!(
        dir(&root),
        dir(Path::new("/")),
        "{id}: state pid's root is the node's"
    );
    let host_only = node.root().join("pid");
    assert!(host_only.exists());
    assert!(
        !root.join(host_only.strip_prefix("/").unwrap()).exists(),
        "{id}: the node's {} shows under /proc/{pid}/root",
        host_only.display()
    );

    assert!(node.run(["start", id]).status.success());
    let pid: i32 = pid.parse().unwrap();
    // Signals before the exec are issue 10 part 2's business, not this one's.
    let comm = format!("/proc/{}/comm", record(&node, id)["process"]["pid"]);
    wait_for_file_content(Path::new(&comm), "sleep");
    let monitor = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(monitor, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(
        reap(pid, Duration::from_secs(20)),
        WaitStatus::Signaled(monitor, nix::sys::signal::Signal::SIGTERM, false)
    );
    node.wait_status(id, "stopped");
    assert!(node.run(["delete", id]).status.success());
    assert_clean(&node);
}

#[test]
fn state_pid_is_in_a_privileged_guests_namespaces() {
    check_namespaces(false);
}

#[test]
fn state_pid_is_in_an_unprivileged_guests_namespaces() {
    check_namespaces(true);
}

/// The host netns's addresses and routes, minus the lines of `skip`
/// interfaces (the test bridge and its host-side veth).
fn host_network(skip: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    for args in [
        &["-o", "addr"][..],
        &["route"][..],
        &["-6", "route"][..],
        &["-o", "link"][..],
    ] {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}");
        lines.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| {
                    !skip.iter().any(|dev| {
                        l.split(|c: char| c.is_whitespace() || c == ':' || c == '@')
                            .any(|w| w == dev)
                    })
                })
                .map(stable),
        );
    }
    lines.sort();
    lines
}

/// A line without what changes by itself (link state, address and route
/// lifetimes), so that only a change in what exists shows.
fn stable(line: &str) -> String {
    let mut out = Vec::new();
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if ["state", "expires", "valid_lft", "preferred_lft"].contains(&w) {
            words.next();
        } else {
            out.push(w);
        }
    }
    out.join(" ")
}

/// What the plugin made on the host side (the bridge and the veth's host
/// end, named in its result) goes whatever the outcome; deleting a veth end
/// deletes its peer too, wherever that is. host-local keeps its state under
/// the node's directory, which goes with the node.
struct CniCleanup {
    bridge: String,
    result: std::path::PathBuf,
}

impl Drop for CniCleanup {
    fn drop(&mut self) {
        let mut links = host_side(&self.result);
        links.push(self.bridge.clone());
        for link in links {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
        }
    }
}

/// Interfaces in a CNI result that are not in the sandbox.
fn host_side(result: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(result) else {
        return Vec::new();
    };
    let res: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    res["interfaces"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|i| i.get("sandbox").is_none())
                .filter_map(|i| Some(i["name"].as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn hook_script(path: &Path, conf: &Path, result: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // As nerdctl's createRuntime hook: id and pid from the state on stdin.
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\nstate=$(cat)\n\
             pid=$(echo \"$state\" | sed -n 's/.*\"pid\": *\\([0-9][0-9]*\\).*/\\1/p')\n\
             id=$(echo \"$state\" | sed -n 's/.*\"id\": *\"\\([^\"]*\\)\".*/\\1/p')\n\
             CNI_COMMAND=ADD CNI_CONTAINERID=$id CNI_NETNS=/proc/$pid/ns/net CNI_IFNAME=eth1 \
             CNI_PATH=/usr/lib/cni exec /usr/lib/cni/bridge < {} > {}\n",
            conf.display(),
            result.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn cni_bridge_plugin_from_a_create_runtime_hook_configures_the_guest() {
    let plugin = Path::new("/usr/lib/cni/bridge");
    assert!(
        plugin.exists(),
        "{} missing: run scripts/setup.sh",
        plugin.display()
    );
    let node = Node::new();
    let tag = std::process::id() % 100_000;
    let bridge = format!("nxcni{tag}");
    let subnet = 10 + tag % 240;
    let conf = node.root().join("cni.json");
    let result = node.root().join("cni-result.json");
    let _cleanup = CniCleanup {
        bridge: bridge.clone(),
        result: result.clone(),
    };
    let ipam_dir = node.root().join("cni-ipam");
    std::fs::write(
        &conf,
        serde_json::to_vec(&json!({
            "cniVersion": "1.0.0",
            "name": bridge,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": format!("10.231.{subnet}.0/24")}]]
            }
        }))
        .unwrap(),
    )
    .unwrap();
    let hook = node.root().join("cni-hook");
    hook_script(&hook, &conf, &result);

    let before = host_network(&[]);
    let bundle = node.bundle(
        "cni",
        json!({"process": {"args": ["sleep", "1000"]},
               "hooks": {"createRuntime": [{"path": hook}]}}),
    );
    let out = node.create(&bundle, "cni", &[]);
    assert!(out.status.success(), "create: {}", stderr(&out));

    // The plugin's result: the address it gave, and the interfaces it made
    // on the host side (the bridge and the veth's host end).
    let res: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    let address = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with(&format!("10.231.{subnet}.")), "{res}");
    let host_side = host_side(&result);
    assert!(host_side.contains(&bridge), "{res}");

    let out = node.run(["exec", "cni", "ip", "-o", "-4", "addr", "show", "eth1"]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&address),
        "guest's eth1: {}",
        stdout(&out)
    );
    assert_eq!(
        host_network(&host_side),
        before,
        "the host's interfaces, addresses or routes changed"
    );

    let del = Command::new(plugin)
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "cni")
        .env(
            "CNI_NETNS",
            format!("/proc/{}/ns/net", state_pid(&node, "cni")),
        )
        .env("CNI_IFNAME", "eth1")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::fs::File::open(&conf).unwrap())
        .output()
        .unwrap();
    assert!(del.status.success(), "CNI DEL: {}", stderr(&del));
    assert!(node.run(["delete", "--force", "cni"]).status.success());
    assert_clean(&node);
    drop(_cleanup);
    assert_eq!(host_network(&[]), before, "the test bridge is left");
}
