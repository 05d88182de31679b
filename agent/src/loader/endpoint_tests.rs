//! `add_endpoint` / `remove_endpoint` for real: two Pods wired to a node namespace the way
//! the CNI side does it (veth, /32 routes, link-local gateway), the tc programs attached as
//! cls_bpf filters from the agent's own namespace, traffic between them delivered by
//! `bpf_redirect_peer`, a spoofed source dropped.

use std::{net::Ipv4Addr, process::Command};

use keelson_common::{Counter, DropReason, names};

use super::{
    Endpoint,
    testutil::{Netns, TestDatapath, metric, unique},
};

struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    host_if: String,
    pod_mac: [u8; 6],
    host_mac: [u8; 6],
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ifindex(ns: &Netns, ifname: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", "dev", ifname])
        .output()
        .expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["ifindex"].as_u64().expect("ifindex") as u32
}

/// A Pod namespace with `eth0` (ip/32, default via 169.254.1.1 with a permanent neighbour
/// entry), its host veth in `node`, and the /32 route to it there.
fn pod(node: &Netns, tag: &str, n: u8) -> Pod {
    let ns = Netns::new(&unique(&format!("pod{tag}")));
    let ip = Ipv4Addr::new(10, 244, 1, 10 + n);
    let host_if = format!("kt{:x}{n}", std::process::id() & 0xfffff);
    let pod_mac = [0x02, 0xaa, 0, 0, n, 1];
    let host_mac = [0x02, 0xbb, 0, 0, n, 2];
    node.ip(&[
        "link",
        "add",
        &host_if,
        "address",
        &mac_str(&host_mac),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        &mac_str(&pod_mac),
        "netns",
        &ns.name,
    ]);
    node.ip(&["link", "set", &host_if, "up"]);
    node.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if]);
    ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    ns.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        &mac_str(&host_mac),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    Pod {
        ns,
        ip,
        host_if,
        pod_mac,
        host_mac,
    }
}

fn endpoint(node: &Netns, p: &Pod) -> Endpoint {
    Endpoint {
        ip: p.ip,
        host_ifindex: ifindex(node, &p.host_if),
        host_ifname: p.host_if.clone(),
        pod_mac: p.pod_mac,
        host_mac: p.host_mac,
    }
}

fn ping(from: &Pod, to: Ipv4Addr, source: Option<Ipv4Addr>) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &from.ns.name,
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
    ]);
    if let Some(src) = source {
        cmd.args(["-I", &src.to_string()]);
    }
    cmd.arg(to.to_string())
        .output()
        .expect("ping")
        .status
        .success()
}

/// Number of bpf filters on the ingress hook of `ifname` inside `node`, as `tc filter show`
/// lists them (one line per filter, naming its program).
fn tc_programs(node: &Netns, ifname: &str) -> usize {
    let out = Command::new("tc")
        .args(["-n", &node.name, "filter", "show", "dev", ifname, "ingress"])
        .output()
        .expect("tc filter show");
    assert!(out.status.success(), "tc filter show dev {ifname}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" bpf ") && l.contains(names::PROG_FROM_CONTAINER))
        .count()
}

#[test]
fn pods_on_one_node_talk_through_redirect_peer_and_spoofing_is_dropped() {
    let node = Netns::new(&unique("node"));
    let t = TestDatapath::load("ep", Some(node.path()));
    let a = pod(&node, "a", 1);
    let b = pod(&node, "b", 2);
    // Without forwarding in the node namespace, only the datapath can deliver A -> B.
    let ep_a = endpoint(&node, &a);
    let ep_b = endpoint(&node, &b);
    t.dp.add_endpoint(&ep_a).expect("add a");
    t.dp.add_endpoint(&ep_b).expect("add b");
    assert_eq!(tc_programs(&node, &a.host_if), 1);

    assert!(ping(&a, b.ip, None), "A must reach B");
    assert!(
        metric(&t, Counter::FromContainerLocal as u32) >= 2,
        "request and reply redirected"
    );

    // A source address that is not A's own never leaves A's veth.
    a.ns.ip(&["addr", "add", "10.244.1.99/32", "dev", "eth0"]);
    let dropped_before = metric(&t, DropReason::InvalidSource as u32);
    assert!(!ping(&a, b.ip, Some(Ipv4Addr::new(10, 244, 1, 99))));
    assert!(metric(&t, DropReason::InvalidSource as u32) > dropped_before);

    // Adding again (an agent restart) replaces the filter in place instead of stacking a
    // second, and leaves no tcx link behind.
    t.dp.add_endpoint(&ep_a).expect("re-add a");
    assert_eq!(tc_programs(&node, &a.host_if), 1);
    assert!(!t.dp.tc_link_path(a.ip).exists());
    assert!(ping(&a, b.ip, None));

    // Removing forgets the endpoint and detaches the programs from the veth.
    t.dp.remove_endpoint(a.ip).expect("remove a");
    assert_eq!(tc_programs(&node, &a.host_if), 0);
    let left = t.dp.with_maps(|m| m.read_endpoints()).expect("endpoints");
    assert_eq!(
        left.iter().map(|(ip, _)| *ip).collect::<Vec<_>>(),
        vec![b.ip]
    );
    assert!(!t.dp.tc_link_path(a.ip).exists());
}
