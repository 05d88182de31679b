//! The netlink [`NetOps`] against real namespaces the tests create (root): what it changes is
//! read back both through itself and through iproute2, the independent witness.

use std::{net::Ipv4Addr, path::Path, process::Command};

use super::*;
use crate::netns;

/// Namespaces of one test, removed even when it fails.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete_named(n);
        }
    }
}

fn names(tag: &str) -> (String, String) {
    let pid = std::process::id();
    (
        format!("knl-lt-{tag}-{pid}-n"),
        format!("knl-lt-{tag}-{pid}-p"),
    )
}

/// `ip <args>` inside `ns`, as text.
fn ip_in(ns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", ns.display());
    let out = Command::new("nsenter")
        .arg(&net)
        .arg("ip")
        .args(args)
        .output()
        .expect("nsenter ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn veth_into_a_namespace_with_address_routes_neighbour_and_deletion() {
    let (node_name, pod_name) = names("veth");
    let _guard = Namespaces(vec![node_name.clone(), pod_name.clone()]);
    let node = netns::create_named(&node_name).expect("node netns");
    let pod = netns::create_named(&pod_name).expect("pod netns");
    let net = Netlink::for_namespace(Some(node.clone()));
    let (n, p) = (Some(node.as_path()), Some(pod.as_path()));

    // A fresh namespace's loopback is up (create_named brings it up).
    assert!(ip_in(&pod, &["link", "show", "lo"]).contains("UP"));

    net.create_veth(n, "klsh0", "eth0", &pod).expect("veth");
    let host = net.link(n, "klsh0").expect("host").expect("host exists");
    let inside = net.link(p, "eth0").expect("peer").expect("peer exists");
    assert_ne!(host.mac, [0; 6]);
    assert_ne!(host.mac, inside.mac);
    // The peer was born in the Pod's namespace, not in the node's.
    assert_eq!(net.link(n, "eth0").expect("lookup"), None);
    assert!(ip_in(&pod, &["link", "show", "eth0"]).contains(&format_mac(inside.mac)));
    // Creating it again is refused: the name is taken.
    let again = net
        .create_veth(n, "klsh0", "eth1", &pod)
        .expect_err("exists");
    assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");

    let addr: Ipv4Network = "10.244.9.7/32".parse().expect("cidr");
    net.add_addr(p, "eth0", addr).expect("address");
    net.add_addr(p, "eth0", addr)
        .expect("the same address again is fine");
    assert!(ip_in(&pod, &["-4", "addr", "show", "dev", "eth0"]).contains("10.244.9.7/32"));
    assert_eq!(
        net.link_with_addr(p, Ipv4Addr::new(10, 244, 9, 7))
            .expect("by addr"),
        Some(("eth0".to_owned(), inside.ifindex))
    );
    assert_eq!(
        net.link_with_addr(p, Ipv4Addr::new(10, 244, 9, 8))
            .expect("by addr"),
        None
    );

    net.set_up(p, "eth0").expect("pod up");
    net.set_up(n, "klsh0").expect("host up");
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    let gw_route = Route {
        dst: Ipv4Network::from(gw),
        via: None,
        dev: Some("eth0".into()),
        scope_link: true,
    };
    let default = Route {
        dst: "0.0.0.0/0".parse().expect("cidr"),
        via: Some(gw),
        dev: Some("eth0".into()),
        scope_link: false,
    };
    net.replace_route(p, &gw_route).expect("gateway route");
    net.replace_route(p, &default).expect("default route");
    net.replace_route(p, &default)
        .expect("replacing is idempotent");
    let mut got = net.routes(p).expect("routes");
    got.sort();
    let mut want = vec![gw_route.clone(), default.clone()];
    want.sort();
    assert_eq!(got, want);
    let shown = ip_in(&pod, &["route", "show", "proto", &ROUTE_PROTO.to_string()]);
    assert!(
        shown.contains("default via 169.254.1.1 dev eth0"),
        "{shown}"
    );
    assert!(shown.contains("169.254.1.1 dev eth0 scope link"), "{shown}");

    net.replace_neigh(p, gw, host.mac, "eth0")
        .expect("neighbour");
    net.replace_neigh(p, gw, host.mac, "eth0")
        .expect("replacing is idempotent");
    let neigh = ip_in(&pod, &["neigh", "show", "dev", "eth0"]);
    assert!(
        neigh.contains(&format!(
            "169.254.1.1 lladdr {} PERMANENT",
            format_mac(host.mac)
        )),
        "{neigh}"
    );

    // The node's route to the Pod, and a sysctl of the node only.
    let to_pod = Route {
        dst: addr,
        via: None,
        dev: Some("klsh0".into()),
        scope_link: true,
    };
    net.replace_route(n, &to_pod).expect("node route");
    assert_eq!(net.routes(n).expect("routes"), vec![to_pod]);
    net.set_ipv4_sysctl(n, "ip_forward", "1").expect("sysctl");
    let forward = |ns: &Path| {
        netns::in_netns(Some(ns), || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        })
        .expect("enter")
        .expect("read")
    };
    assert_eq!(forward(&node).trim(), "1");
    assert_eq!(forward(&pod).trim(), "0");

    net.delete_route(n, addr).expect("delete route");
    net.delete_route(n, addr).expect("a missing route is fine");
    assert!(net.routes(n).expect("routes").is_empty());

    net.delete_link(n, "klsh0").expect("delete");
    net.delete_link(n, "klsh0").expect("a missing link is fine");
    assert_eq!(net.link(n, "klsh0").expect("lookup"), None);
    // The peer went with it, and the Pod's routes with the peer.
    assert_eq!(net.link(p, "eth0").expect("lookup"), None);
    assert!(net.routes(p).expect("routes").is_empty());
}

#[test]
fn errors_name_a_missing_namespace_or_link() {
    let (node_name, _) = names("err");
    let _guard = Namespaces(vec![node_name.clone()]);
    let node = netns::create_named(&node_name).expect("node netns");
    let net = Netlink::default();
    let n = Some(node.as_path());

    let gone = Path::new("/run/netns/knl-lt-no-such-namespace");
    let err = net.link(Some(gone), "lo").expect_err("no namespace");
    assert!(
        matches!(err, LinkError::Netns(netns::NetnsError::Open { .. })),
        "{err:?}"
    );
    let err = net
        .create_veth(n, "klsx0", "eth0", gone)
        .expect_err("no peer namespace");
    assert!(
        matches!(err, LinkError::Netns(netns::NetnsError::Open { .. })),
        "{err:?}"
    );
    assert_eq!(net.link(n, "klsx0").expect("lookup"), None, "nothing made");

    let err = net.set_up(n, "nosuch0").expect_err("no link");
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    let err = net
        .add_addr(n, "nosuch0", "10.1.2.3/32".parse().expect("cidr"))
        .expect_err("no link");
    assert!(
        matches!(err, LinkError::NoLink(ref l) if l == "nosuch0"),
        "{err:?}"
    );
    let err = net
        .replace_neigh(n, Ipv4Addr::new(10, 1, 2, 3), [2, 0, 0, 0, 0, 1], "nosuch0")
        .expect_err("no link");
    assert!(matches!(err, LinkError::NoLink(_)), "{err:?}");
    // A gateway that is not reachable on any link is refused by the kernel.
    let err = net
        .replace_route(
            n,
            &Route {
                dst: "10.9.0.0/16".parse().expect("cidr"),
                via: Some(Ipv4Addr::new(192, 0, 2, 1)),
                dev: None,
                scope_link: false,
            },
        )
        .expect_err("unreachable gateway");
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    assert!(
        net.set_ipv4_sysctl(n, "../../kernel/hostname", "x")
            .is_err()
    );
    assert!(net.set_ipv4_sysctl(n, "no_such_sysctl", "1").is_err());
}

#[test]
fn a_bridge_with_a_port_in_another_namespace() {
    let (ul_name, node_name) = names("br");
    let _guard = Namespaces(vec![ul_name.clone(), node_name.clone()]);
    let ul = netns::create_named(&ul_name).expect("underlay");
    let node = netns::create_named(&node_name).expect("node");
    let net = Netlink::default();
    let (u, n) = (Some(ul.as_path()), Some(node.as_path()));
    net.create_bridge(u, "br0").expect("bridge");
    net.create_bridge(u, "br0")
        .expect("an existing bridge is kept");
    // Created from the node's namespace, the peer lands in the underlay.
    net.create_veth(n, "eth0", "n1", &ul).expect("veth");
    net.set_master(u, "n1", "br0").expect("master");
    assert!(ip_in(&ul, &["link", "show", "n1"]).contains("master br0"));
    let err = net.set_master(u, "n1", "nobr").expect_err("no bridge");
    assert!(matches!(err, LinkError::NoLink(_)), "{err:?}");
}

#[test]
fn mac_round_trip_and_rejects_garbage() {
    let mac = parse_mac("0a:1B:22:33:44:ff").expect("valid");
    assert_eq!(mac, [0x0a, 0x1b, 0x22, 0x33, 0x44, 0xff]);
    assert_eq!(format_mac(mac), "0a:1b:22:33:44:ff");
    assert!(parse_mac("0a:1b:22:33:44").is_err());
    assert!(parse_mac("0a:1b:22:33:44:55:66").is_err());
    assert!(parse_mac("zz:1b:22:33:44:55").is_err());
}
