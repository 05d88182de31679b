//! Builders of the compiler's input (Pods, Namespaces, Nodes, NetworkPolicies as JSON) and
//! shorthands over [`Decider`] for the compiler's tests: a flow is judged the way the programs
//! judge it, so tests state what is allowed rather than which entries exist.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use keelson_common::proto;

use super::{
    compile::net_address,
    decide::Decider,
    identity::NAMESPACE_NAME_LABEL,
    model::{
        ContainerPort, Desired, Labels, NamespaceInfo, NodeContext, NodeInfo, PodInfo, Snapshot,
    },
};

/// The node plans are made for.
pub(crate) const NODE: &str = "n1";
pub(crate) const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub(crate) const OTHER_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

pub(crate) fn node_ctx() -> NodeContext {
    NodeContext {
        node_name: NODE.into(),
        node_ip: NODE_IP,
    }
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

pub(crate) fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// A Pod of this node.
pub(crate) fn pod(ns: &str, name: &str, addr: &str, l: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        ip: Some(ip(addr)),
        node_name: NODE.into(),
        host_network: false,
        labels: labels(l),
        ports: Vec::new(),
    }
}

/// A Pod with named container ports `(name, number, protocol)`.
pub(crate) fn with_ports(mut p: PodInfo, ports: &[(&str, u16, u8)]) -> PodInfo {
    p.ports = ports
        .iter()
        .map(|&(name, port, proto)| ContainerPort {
            name: name.into(),
            port,
            proto,
        })
        .collect();
    p
}

/// A Namespace with the name label the API server sets, and `l`.
pub(crate) fn namespace(name: &str, l: &[(&str, &str)]) -> NamespaceInfo {
    let mut labels = labels(l);
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    NamespaceInfo {
        name: name.into(),
        labels,
    }
}

/// A NetworkPolicy from its JSON `spec`.
pub(crate) fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .expect("test policy")
}

/// A snapshot with this node and another one, namespaces `a` (team=x) and `b` (team=y) and
/// the given Pods and policies.
pub(crate) fn snapshot(pods: Vec<PodInfo>, policies: Vec<NetworkPolicy>) -> Snapshot {
    let mut s = Snapshot::default();
    s.add_node(NodeInfo {
        name: NODE.into(),
        addresses: vec![NODE_IP],
    });
    s.add_node(NodeInfo {
        name: "n2".into(),
        addresses: vec![OTHER_NODE_IP],
    });
    s.add_namespace(namespace("a", &[("team", "x")]));
    s.add_namespace(namespace("b", &[("team", "y")]));
    for p in pods {
        s.add_pod(p);
    }
    for p in policies {
        s.add_policy(p);
    }
    s
}

/// The policy of the longest-prefix entry that matches a packet's key, as the trie finds it.
pub(crate) fn lookup(
    d: &Desired,
    endpoint: Ipv4Addr,
    peer: u32,
    dir: u8,
    proto: u8,
    port: u16,
) -> Option<u32> {
    Decider::new(d, NODE_IP).lookup(endpoint, peer, dir, proto, port)
}

/// The identity an address resolves to, as the program resolves it.
pub(crate) fn identity_of(d: &Desired, addr: Ipv4Addr) -> u32 {
    Decider::new(d, NODE_IP).identity_of(addr)
}

/// Whether a new flow from `src` to `dst` on `proto`/`port` passes both the source's egress
/// and the destination's ingress, where they are endpoints of this node.
pub(crate) fn allows(d: &Desired, src: &str, dst: &str, proto: u8, port: u16) -> bool {
    Decider::new(d, NODE_IP)
        .evaluate(ip(src), ip(dst), proto, port)
        .allowed
}

pub(crate) fn tcp(d: &Desired, src: &str, dst: &str, port: u16) -> bool {
    allows(d, src, dst, proto::TCP, port)
}

/// The entries of `d` for one endpoint and direction: (prefix, peer identity, proto, port).
pub(crate) fn entries_of(d: &Desired, endpoint: &str, dir: u8) -> Vec<(u32, u32, u8, u16)> {
    let ep = net_address(ip(endpoint));
    d.policy
        .keys()
        .filter(|(_, k)| k.endpoint == ep && k.dir == dir)
        .map(|(len, k)| {
            (
                *len,
                u32::from_be(k.identity),
                k.proto,
                u16::from_be(k.dport),
            )
        })
        .collect()
}

/// The identity of the Pod at `addr` as the ipcache has it.
pub(crate) fn id(d: &Desired, addr: &str) -> u32 {
    identity_of(d, ip(addr))
}

/// The policy index of `ns/name` in `d`'s names.
pub(crate) fn index_of(d: &Desired, key: &str) -> u32 {
    let found: BTreeMap<&str, u32> = d
        .policy_names
        .iter()
        .map(|(i, n)| (n.as_str(), *i))
        .collect();
    *found
        .get(key)
        .unwrap_or_else(|| panic!("no policy {key} in {:?}", d.policy_names))
}
