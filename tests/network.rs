//! The guest's own network on a node with a real vmbr0 (in the node's own
//! network namespace): an addressed eth0 from org.proxmox.net0.ip/gw, set
//! by pct (host-managed=1) where the node's pct has it and by nexcage's init
//! otherwise; guests of the test reach each other over the bridge. Traffic
//! only between this test's guests, on addresses the test assigns.

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};

fn net_bundle(node: &Node, name: &str, ip: &str, args: Value) -> std::path::PathBuf {
    node.bundle(
        name,
        json!({
            "process": {
                "args": args,
                // busybox ping opens a raw ICMP socket.
                "capabilities": {
                    "bounding": ["CAP_NET_RAW"],
                    "effective": ["CAP_NET_RAW"],
                    "permitted": ["CAP_NET_RAW"]
                }
            },
            "annotations": {
                "org.proxmox.net0.ip": ip,
                "org.proxmox.net0.gw": gw_of(ip)
            }
        }),
    )
}

/// .254 of the /24 the address is in.
fn gw_of(cidr: &str) -> String {
    let ip = cidr.split('/').next().unwrap();
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets[3] = "254";
    octets.join(".")
}

fn vmid_of(node: &Node, id: &str) -> u32 {
    record(node, id)["backendData"]["vmid"]
        .as_u64()
        .expect("vmid in state.json") as u32
}

/// Guest `a` idles; guest `b` shows its network and pings `a`.
fn two_guests_ping(node: &Node, subnet: u8) -> (u32, String) {
    let a_ip = format!("10.199.{subnet}.1/24");
    let b_ip = format!("10.199.{subnet}.2/24");
    let a = net_bundle(node, "a", &a_ip, json!(["sleep", "60"]));
    let out = node.create(&a, "a", &[]);
    assert!(out.status.success(), "create a: {}", stderr(&out));
    let out = node.run(["start", "a"]);
    assert!(out.status.success(), "start a: {}", stderr(&out));
    let vmid = vmid_of(node, "a");

    let script = format!(
        "ip -o -4 addr show dev eth0; ip -o link show dev lo; ip route; ping -c 1 -W 5 10.199.{subnet}.1"
    );
    let b = net_bundle(node, "b", &b_ip, json!(["sh", "-c", script]));
    let out = node.run_bundle(&b, "b");
    let shown = stdout(&out);
    assert!(out.status.success(), "b: {shown}\n{}", stderr(&out));
    assert!(shown.contains(&format!("inet {b_ip}")), "{shown}");
    assert!(
        shown.contains(&format!("default via {}", gw_of(&b_ip))),
        "{shown}"
    );
    assert!(shown.contains("lo: <LOOPBACK,UP"), "{shown}");
    assert!(shown.contains("1 packets received"), "{shown}");
    (vmid, shown)
}

fn assert_veth_only_in_node(node: &Node, vmid: u32) {
    let veth = format!("veth{vmid}i0");
    assert!(
        !Path::new("/sys/class/net").join(&veth).exists(),
        "{veth} appeared in the host's network"
    );
    let out = node
        .in_netns("cat")
        .arg(format!("/sys/class/net/{veth}/master/uevent"))
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("INTERFACE=vmbr0"),
        "{veth} is not on the node's vmbr0: {out:?}"
    );
}

#[test]
fn host_managed_node_addresses_eth0_and_guests_ping_each_other() {
    let node = Node::new();
    let (vmid, _) = two_guests_ping(&node, 31);
    let conf = stdout(&node.pct(["config", &vmid.to_string()]));
    assert!(conf.contains("host-managed=1"), "{conf}");
    assert!(conf.contains("ip=10.199.31.1/24"), "{conf}");
    assert_veth_only_in_node(&node, vmid);
    let out = node.run(["delete", "--force", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn without_host_managed_the_init_configures_eth0() {
    let node = Node::new();
    node.set_pve_container_version("6.0.14");
    let (vmid, _) = two_guests_ping(&node, 32);
    let conf = stdout(&node.pct(["config", &vmid.to_string()]));
    assert!(!conf.contains("host-managed"), "{conf}");
    assert_veth_only_in_node(&node, vmid);
    let out = node.run(["delete", "--force", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn dhcp_is_refused_where_pct_cannot_manage_the_network() {
    let node = Node::new();
    node.set_pve_container_version("6.0.14");
    let bundle = node.bundle(
        "dhcp",
        json!({"annotations": {"org.proxmox.net0.ip": "dhcp"}}),
    );
    let out = node.create(&bundle, "dhcp", &[]);
    assert!(!out.status.success(), "create succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("org.proxmox.net0.ip") && err.contains("dhcp") && err.contains("host-managed"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_clean(&node);
}

#[test]
fn a_missing_bridge_fails_create_and_leaves_nothing() {
    let node = Node::new();
    let bundle = node.bundle(
        "nobridge",
        json!({"annotations": {"org.proxmox.net0.bridge": "vmbr9"}}),
    );
    let out = node.create(&bundle, "nobridge", &[]);
    assert!(!out.status.success(), "create succeeded");
    let err = stderr(&out);
    assert!(err.contains("bridge 'vmbr9' does not exist"), "{err}");
    assert_clean(&node);
}
