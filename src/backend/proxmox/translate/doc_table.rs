//! docs/translation.md is the contract: every row is exercised here.

use super::*;
use serde_json::json;

const DOC: &str = include_str!("../../../../docs/translation.md");

enum Expect {
    /// `--flag` followed by a value containing the text.
    Arg(&'static str, &'static str),
    /// A rendered raw line.
    Raw(&'static str),
    /// Text in the JSON the init reads (linux.json).
    Init(&'static str),
    /// Text in what the init prepares from process.json.
    Process(&'static str),
    /// A compiled linux.seccomp filter for the init.
    Seccomp,
    /// Provided by LXC or ignored: the plan succeeds.
    Accepted,
    /// Refused naming the field.
    Refused,
}
use Expect::*;

fn host(v: CgroupVersion) -> HostFacts {
    HostFacts {
        mem_total_mib: 2048,
        swap_total_mib: 0,
        cgroup: v,
    }
}

fn res(r: Value) -> Value {
    json!({"linux": {"resources": r}})
}

/// The bundle exercising each row, and the effect it must have.
fn case(row: &str) -> Option<(Value, CgroupVersion, Expect)> {
    use CgroupVersion::{V1, V2};
    let caps = |set: &str| json!({"process": {"capabilities": {set: ["CAP_KILL"]}}});
    Some(match row {
            "`process.args`" => (
                json!({"process": {"args": ["/bin/sh", "-c", "true"]}}),
                V1,
                Process("\"-c\""),
            ),
            "`process.env`" => (json!({"process": {"env": ["A=1"]}}), V1, Process("\"A=1\"")),
            "`process.cwd`" => (
                json!({"process": {"cwd": "/tmp"}}),
                V1,
                Process("cwd: \"/tmp\""),
            ),
            "`process.user.uid`" => (
                json!({"process": {"user": {"uid": 1234, "gid": 0}}}),
                V1,
                Process("uid: 1234"),
            ),
            "`process.user.gid`" => (
                json!({"process": {"user": {"uid": 0, "gid": 4321}}}),
                V1,
                Process("gid: 4321"),
            ),
            "`process.user.umask`" => (
                json!({"process": {"user": {"uid": 0, "gid": 0, "umask": 63}}}),
                V1,
                Process("umask: Some(63)"),
            ),
            "`process.user.additionalGids`" => (
                json!({"process": {"user": {"uid": 0, "gid": 0, "additionalGids": [77]}}}),
                V1,
                Process("groups: [Gid(77)]"),
            ),
            "`process.terminal`" => (
                json!({"process": {"terminal": true}}),
                V1,
                Process("terminal: true"),
            ),
            "`process.consoleSize`" => (
                json!({"process": {"terminal": true, "consoleSize": {"height": 1, "width": 2}}}),
                V1,
                Process("console_size: Some((1, 2))"),
            ),
            "`process.capabilities.bounding`" => (
                caps("bounding"),
                V1,
                Process("drop_bounding: [CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_SETGID,"),
            ),
            "`process.capabilities.effective`" => {
                (caps("effective"), V1, Process("effective: {CAP_KILL},"))
            }
            "`process.capabilities.permitted`" => {
                (caps("permitted"), V1, Process("permitted: {CAP_KILL},"))
            }
            "`process.capabilities.inheritable`" => {
                (caps("inheritable"), V1, Process("inheritable: {CAP_KILL},"))
            }
            "`process.capabilities.ambient`" => (caps("ambient"), V1, Process("ambient: [CAP_KILL]")),
            "`process.rlimits`" => (
                json!({"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 5, "hard": 6}]}}),
                V1,
                Process(", 5, 6)]"),
            ),
            "`process.noNewPrivileges`" => (
                json!({"process": {"noNewPrivileges": true}}),
                V1,
                Process("no_new_privileges: true"),
            ),
            "`process.apparmorProfile`" => {
                (json!({"process": {"apparmorProfile": "x"}}), V1, Accepted)
            }
            "`process.selinuxLabel`" => (json!({"process": {"selinuxLabel": "x"}}), V1, Refused),
            "`process.oomScoreAdj`" => (
                json!({"process": {"oomScoreAdj": 500}}),
                V1,
                Process("oom_score_adj: Some([53, 48, 48])"),
            ),
            "`process.ioPriority`" => (
                json!({"process": {"ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0}}}),
                V1,
                Refused,
            ),
            "`process.scheduler`" => (
                json!({"process": {"scheduler": {"policy": "SCHED_BATCH"}}}),
                V1,
                Refused,
            ),
            "`process.execCPUAffinity`" => (
                json!({"process": {"execCPUAffinity": {"initial": "0"}}}),
                V1,
                Refused,
            ),
            "`root.path`" => (json!({}), V1, Accepted),
            "`root.readonly`" => (
                json!({"root": {"path": "rootfs", "readonly": true}}),
                V1,
                Init("\"readonlyRoot\":true"),
            ),
            "`hostname`" => (json!({"hostname": "web"}), V1, Arg("hostname", "web")),
            "`domainname`" => (
                json!({"domainname": "example.org"}),
                V1,
                Init("\"domainname\":\"example.org\""),
            ),
            "`mounts` (bind, directory)" => (
                json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro", "nodev"]}]}),
                V1,
                Arg("mp0", "/tmp,mp=/data,ro=1,mountoptions=nodev"),
            ),
            "`mounts` (bind, file)" => (
                json!({"mounts": [{"destination": "/etc/x", "source": "/etc/passwd", "options": ["bind", "ro"]}]}),
                V1,
                Raw("lxc.mount.entry: /etc/passwd etc/x none bind,create=file,ro 0 0"),
            ),
            "`mounts` (tmpfs)" => (
                json!({"mounts": [{"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=64k"]}]}),
                V1,
                Raw("lxc.mount.entry: tmpfs run tmpfs nosuid,mode=755,size=64k,create=dir 0 0"),
            ),
            "`mounts` (mqueue)" => (
                json!({"mounts": [{"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid"]}]}),
                V1,
                Raw("lxc.mount.entry: mqueue dev/mqueue mqueue nosuid,create=dir 0 0"),
            ),
            "`mounts` (proc, sysfs, cgroup, devpts)" => (
                json!({"mounts": [{"destination": "/proc", "type": "proc"}, {"destination": "/sys", "type": "sysfs"}, {"destination": "/sys/fs/cgroup", "type": "cgroup"}, {"destination": "/dev/pts", "type": "devpts"}]}),
                V1,
                Accepted,
            ),
            "`mounts` (/dev tmpfs)" => (
                json!({"mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=65536k"]}]}),
                V1,
                Init("\"dev\":{\"source\":\"tmpfs\",\"options\":[\"nosuid\",\"size=65536k\"]}"),
            ),
            "`mounts` (below /dev)" => (
                json!({"mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}, {"destination": "/dev/pts", "type": "devpts", "source": "devpts"}, {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}]}),
                V1,
                Init("\"mounts\":[{\"destination\":\"/dev/pts\",\"type\":\"devpts\",\"source\":\"devpts\"},{\"destination\":\"/dev/shm\",\"type\":\"tmpfs\",\"source\":\"shm\"}]"),
            ),
            "`mounts` (other types)" => (
                json!({"mounts": [{"destination": "/mnt", "type": "nfs", "source": "h:/x"}]}),
                V1,
                Refused,
            ),
            "`mounts[].options`" => (
                json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "options": ["bind", "nosuid", "noexec"]}]}),
                V1,
                Arg("mp0", "mountoptions=nosuid;noexec"),
            ),
            "`mounts[].uidMappings`" => (
                json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]}),
                V1,
                Refused,
            ),
            "`hooks`" => (
                json!({"hooks": {"poststart": [{"path": "/bin/true"}]}}),
                V1,
                Accepted,
            ),
            "`annotations`" => (
                json!({"annotations": {"org.proxmox.onboot": "0", "com.example": "x"}}),
                V1,
                Arg("onboot", "0"),
            ),
            "`linux.namespaces` (network)" => {
                (json!({}), V1, Arg("net0", "name=eth0,bridge=vmbr0"))
            }
            "`linux.namespaces` (user)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}]}}),
                V1,
                Arg("unprivileged", "1"),
            ),
            "`linux.namespaces` (pid, ipc, uts, mount, cgroup)" => (
                json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "network"}]}}),
                V1,
                Accepted,
            ),
            "`linux.namespaces` (no network)" => (
                json!({"linux": {"namespaces": [{"type": "pid"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces[].path` (network)" => (
                json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}}),
                V1,
                Init("\"netns\":\"/run/netns/x\""),
            ),
            "`linux.namespaces[].path` (network, unprivileged guest)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network", "path": "/run/netns/x"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces[].path` (ipc, uts)" => (
                json!({"linux": {"namespaces": [{"type": "network"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "uts", "path": "/proc/1/ns/uts"}]}}),
                V1,
                Init("\"ipcns\":\"/proc/1/ns/ipc\",\"utsns\":\"/proc/1/ns/uts\""),
            ),
            "`linux.namespaces[].path` (uts, with hostname or domainname)" => (
                json!({"hostname": "h", "linux": {"namespaces": [{"type": "network"}, {"type": "uts", "path": "/proc/1/ns/uts"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces[].path` (pid, mount, cgroup, user)" => (
                json!({"linux": {"namespaces": [{"type": "network"}, {"type": "pid", "path": "/proc/1/ns/pid"}]}}),
                V1,
                Refused,
            ),
            "`linux.namespaces` (time)" => (
                json!({"linux": {"namespaces": [{"type": "network"}, {"type": "time"}]}}),
                V1,
                Refused,
            ),
            "`linux.uidMappings`" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
                V1,
                Arg("unprivileged", "1"),
            ),
            "`linux.uidMappings` (other maps)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "uidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}}),
                V1,
                Refused,
            ),
            "`linux.gidMappings`" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
                V1,
                Arg("unprivileged", "1"),
            ),
            "`linux.gidMappings` (other maps)" => (
                json!({"linux": {"namespaces": [{"type": "user"}, {"type": "network"}], "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}}),
                V1,
                Refused,
            ),
            "`linux.devices`" => (
                json!({"linux": {"devices": [{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 438}]}}),
                V1,
                Arg("dev0", "/dev/kmsg,mode=0666"),
            ),
            "`linux.cgroupsPath`" => (json!({"linux": {"cgroupsPath": "/x/y"}}), V1, Accepted),
            "`linux.resources.memory.limit`" => (
                res(json!({"memory": {"limit": 268435456}})),
                V1,
                Arg("memory", "256"),
            ),
            "`linux.resources.memory.reservation`" => (
                res(json!({"memory": {"reservation": 1048576}})),
                V1,
                Raw("lxc.cgroup.memory.soft_limit_in_bytes: 1048576"),
            ),
            "`linux.resources.memory.swap`" => (
                res(json!({"memory": {"limit": 268435456, "swap": 536870912}})),
                V1,
                Arg("swap", "256"),
            ),
            "`linux.resources.memory.kernel`" => {
                (res(json!({"memory": {"kernel": 1048576}})), V1, Accepted)
            }
            "`linux.resources.memory.kernelTCP`" => {
                (res(json!({"memory": {"kernelTCP": 1048576}})), V1, Refused)
            }
            "`linux.resources.memory.swappiness`" => (
                res(json!({"memory": {"swappiness": 10}})),
                V1,
                Raw("lxc.cgroup.memory.swappiness: 10"),
            ),
            "`linux.resources.memory.disableOOMKiller`" => (
                res(json!({"memory": {"disableOOMKiller": true}})),
                V1,
                Raw("lxc.cgroup.memory.oom_control: 1"),
            ),
            "`linux.resources.memory.useHierarchy`" => {
                (res(json!({"memory": {"useHierarchy": true}})), V1, Accepted)
            }
            "`linux.resources.memory.checkBeforeUpdate`" => (
                res(json!({"memory": {"checkBeforeUpdate": true}})),
                V1,
                Accepted,
            ),
            "`linux.resources.cpu.shares`" => (
                res(json!({"cpu": {"shares": 512}})),
                V1,
                Arg("cpuunits", "512"),
            ),
            "`linux.resources.cpu.quota`" => (
                res(json!({"cpu": {"quota": 150000, "period": 100000}})),
                V1,
                Arg("cpulimit", "1.5"),
            ),
            "`linux.resources.cpu.period`" => (
                res(json!({"cpu": {"quota": 50000, "period": 200000}})),
                V1,
                Arg("cpulimit", "0.25"),
            ),
            "`linux.resources.cpu.cpus`" => (
                res(json!({"cpu": {"cpus": "0-1,3"}})),
                V1,
                Arg("cores", "3"),
            ),
            "`linux.resources.cpu.mems`" => (
                res(json!({"cpu": {"mems": "0"}})),
                V1,
                Raw("lxc.cgroup.cpuset.mems: 0"),
            ),
            "`linux.resources.cpu.realtimeRuntime`" => {
                (res(json!({"cpu": {"realtimeRuntime": 1000}})), V1, Refused)
            }
            "`linux.resources.cpu.realtimePeriod`" => {
                (res(json!({"cpu": {"realtimePeriod": 1000}})), V1, Refused)
            }
            "`linux.resources.cpu.idle`" => (res(json!({"cpu": {"idle": 1}})), V1, Refused),
            "`linux.resources.cpu.burst`" => (res(json!({"cpu": {"burst": 1000}})), V1, Refused),
            "`linux.resources.pids.limit`" => (
                res(json!({"pids": {"limit": 64}})),
                V1,
                Raw("lxc.cgroup.pids.max: 64"),
            ),
            "`linux.resources.blockIO`" => (res(json!({"blockIO": {"weight": 100}})), V1, Refused),
            "`linux.resources.hugepageLimits`" => (
                res(json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]})),
                V1,
                Refused,
            ),
            "`linux.resources.network`" => (res(json!({"network": {"classID": 1}})), V1, Refused),
            "`linux.resources.rdma`" => (
                res(json!({"rdma": {"mlx": {"hcaHandles": 1}}})),
                V1,
                Refused,
            ),
            "`linux.resources.unified`" => (
                res(json!({"unified": {"memory.high": "1000000"}})),
                V2,
                Raw("lxc.cgroup2.memory.high: 1000000"),
            ),
            "`linux.resources.devices`" => (
                res(
                    json!({"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]}),
                ),
                V1,
                Raw("lxc.cgroup.devices.allow: c 10:200 rwm"),
            ),
            "`linux.sysctl`" => (
                json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}}),
                V1,
                Init("\"sysctl\":{\"net.ipv4.ip_forward\":\"1\"}"),
            ),
            "`linux.seccomp`" => (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}}),
                V1,
                Seccomp,
            ),
            "`linux.seccomp.listenerPath`" => (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                              "listenerPath": "/run/agent.sock"}}}),
                V1,
                Refused,
            ),
            "`linux.rootfsPropagation`" => (
                json!({"linux": {"rootfsPropagation": "rprivate"}}),
                V1,
                Init("\"rootPropagation\":\"rprivate\""),
            ),
            "`linux.rootfsPropagation` (other values)" => (
                json!({"linux": {"rootfsPropagation": "sideways"}}),
                V1,
                Refused,
            ),
            "`linux.maskedPaths`" => (
                json!({"linux": {"maskedPaths": ["/proc/kcore"]}}),
                V1,
                Init("\"maskedPaths\":[\"/proc/kcore\"]"),
            ),
            "`linux.readonlyPaths`" => (
                json!({"linux": {"readonlyPaths": ["/proc/sys"]}}),
                V1,
                Init("\"readonlyPaths\":[\"/proc/sys\"]"),
            ),
            "`linux.mountLabel`" => (json!({"linux": {"mountLabel": "x"}}), V1, Refused),
            "`linux.personality`" => (
                json!({"linux": {"personality": {"domain": "LINUX"}}}),
                V1,
                Accepted,
            ),
            "`linux.intelRdt`" => (json!({"linux": {"intelRdt": {"closID": "x"}}}), V1, Refused),
            "`linux.timeOffsets`" => (
                json!({"linux": {"timeOffsets": {"monotonic": {"secs": 1, "nanosecs": 0}}}}),
                V1,
                Refused,
            ),
            "`linux.netDevices`" => (json!({"linux": {"netDevices": {"eth1": {}}}}), V1, Refused),
            "`linux.memoryPolicy`" => (
                json!({"linux": {"memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0"}}}),
                V1,
                Refused,
            ),
            _ => return None,
        })
}

/// The rows of the "Fields" table: (first column, status).
fn rows() -> Vec<(String, String)> {
    let table = DOC
        .split("## Fields")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cols: Vec<&str> = l.split(" | ").collect();
            (
                cols[0].trim_start_matches("| ").to_string(),
                cols[1].to_string(),
            )
        })
        .collect()
}

fn spec(patch: Value) -> Spec {
    let mut base = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
    });
    super::test_support::merge(&mut base, patch);
    serde_json::from_value(base).unwrap()
}

#[test]
fn doc_table_covers_every_field_of_the_issue() {
    let rows = rows();
    let names: Vec<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
    for f in [
        "process.args",
        "process.env",
        "process.cwd",
        "process.user.uid",
        "process.user.gid",
        "process.user.umask",
        "process.user.additionalGids",
        "process.terminal",
        "process.consoleSize",
        "process.capabilities.bounding",
        "process.capabilities.effective",
        "process.capabilities.permitted",
        "process.capabilities.inheritable",
        "process.capabilities.ambient",
        "process.rlimits",
        "process.noNewPrivileges",
        "process.apparmorProfile",
        "process.selinuxLabel",
        "process.oomScoreAdj",
        "process.ioPriority",
        "process.scheduler",
        "root.path",
        "root.readonly",
        "hostname",
        "domainname",
        "mounts",
        "hooks",
        "annotations",
        "linux.namespaces",
        "linux.uidMappings",
        "linux.gidMappings",
        "linux.devices",
        "linux.cgroupsPath",
        "linux.resources.memory.limit",
        "linux.resources.memory.reservation",
        "linux.resources.memory.swap",
        "linux.resources.memory.kernel",
        "linux.resources.memory.swappiness",
        "linux.resources.memory.disableOOMKiller",
        "linux.resources.cpu.shares",
        "linux.resources.cpu.quota",
        "linux.resources.cpu.period",
        "linux.resources.cpu.cpus",
        "linux.resources.cpu.mems",
        "linux.resources.cpu.realtimeRuntime",
        "linux.resources.cpu.realtimePeriod",
        "linux.resources.pids.limit",
        "linux.resources.blockIO",
        "linux.resources.hugepageLimits",
        "linux.resources.network",
        "linux.resources.rdma",
        "linux.resources.unified",
        "linux.resources.devices",
        "linux.sysctl",
        "linux.seccomp",
        "linux.rootfsPropagation",
        "linux.maskedPaths",
        "linux.readonlyPaths",
        "linux.mountLabel",
        "linux.personality",
        "linux.intelRdt",
        "linux.timeOffsets",
    ] {
        let tick = format!("`{f}`");
        assert!(
            names.iter().any(|n| n.starts_with(&tick)),
            "docs/translation.md has no row for {f}"
        );
    }
}

#[test]
fn doc_table_rows_hold() {
    let rows = rows();
    assert!(rows.len() > 80, "{} rows", rows.len());
    for (row, status) in rows {
        let (patch, cg, expect) =
            case(&row).unwrap_or_else(|| panic!("no test case for row {row}"));
        let name = row.split('`').nth(1).unwrap();
        let name = name.split('[').next().unwrap();
        let s = spec(patch);
        let got = plan(&s, &ProxmoxSettings::default(), host(cg));
        let applied = status.starts_with("applied");
        match (&expect, status.as_str()) {
            (Refused, "refused") => {
                let err = got.expect_err(&row).to_string();
                assert!(err.contains(name), "{row}: {err}");
                continue;
            }
            (Accepted, "ignored" | "applied (lxc)" | "applied (pct)" | "applied (nexcage)") => {}
            (Arg(..) | Raw(_) | Init(_) | Process(_) | Seccomp, _) if applied => {}
            _ => panic!("{row}: status {status:?} does not match its test"),
        }
        let p = got.unwrap_or_else(|e| panic!("{row}: {e}"));
        let args = p
            .create_args(100, "local:vztmpl/T.tar.zst", "local-lvm", 1)
            .join("\n");
        let raw: Vec<String> = p.raw_lines.iter().map(RawLine::render).collect();
        match expect {
            Arg(flag, value) => assert!(
                args.split("\n--")
                    .any(|a| a.starts_with(&format!("{flag}\n")) && a.contains(value)),
                "{row}: --{flag} {value} not in {args}"
            ),
            Raw(line) => assert!(
                raw.iter().any(|r| r == line),
                "{row}: {line} not in {raw:?}"
            ),
            Init(text) => {
                let json = serde_json::to_string(&p.init).unwrap();
                assert!(json.contains(text), "{row}: {text} not in {json}");
            }
            Process(text) => {
                let dbg =
                    crate::bridge::init::prepared_debug(s.process().as_ref().unwrap()).unwrap();
                assert!(dbg.contains(text), "{row}: {text} not in {dbg}");
            }
            Seccomp => assert!(p.seccomp.is_some(), "{row}: no filter"),
            Accepted | Refused => {}
        }
    }
}
