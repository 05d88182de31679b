//! Builders of the compiler's input (Pods, Namespaces, Nodes, NetworkPolicies as JSON) and a
//! model of the datapath's policy decision over a [`Desired`], for the compiler's tests: a
//! flow is judged the way the programs judge it (ipcache longest prefix match, then the
//! policy trie for the peer's identity or any peer), so tests state what is allowed rather
//! than which entries exist.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use keelson_common::{
    PolicyKey,
    policy::{direction, endpoint_flags, identity, policy_prefix},
    proto,
};

use super::{
    compile::net_address,
    identity::NAMESPACE_NAME_LABEL,
    model::{
        Cidr, ContainerPort, Desired, Labels, NamespaceInfo, NodeContext, NodeInfo, PodInfo,
        Snapshot,
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

/// The key bytes of a policy entry as the trie compares them.
fn key_bytes(k: &PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&k.endpoint.to_ne_bytes());
    b[4..8].copy_from_slice(&k.identity.to_ne_bytes());
    b[8] = k.dir;
    b[9] = k.proto;
    b[10..].copy_from_slice(&k.dport.to_ne_bytes());
    b
}

fn masked(b: [u8; 12], len: u32) -> PolicyKey {
    let mut b = b;
    for (i, byte) in b.iter_mut().enumerate() {
        let start = 8 * i as u32;
        if start >= len {
            *byte = 0;
        } else if start + 8 > len {
            *byte &= 0xffu8 << (8 - (len - start));
        }
    }
    let word = |r: std::ops::Range<usize>| u32::from_ne_bytes(b[r].try_into().expect("4 bytes"));
    PolicyKey {
        endpoint: word(0..4),
        identity: word(4..8),
        dir: b[8],
        proto: b[9],
        dport: u16::from_ne_bytes([b[10], b[11]]),
    }
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
    let full = key_bytes(&PolicyKey::lookup(
        net_address(endpoint),
        peer,
        dir,
        proto,
        port.to_be(),
    ));
    (policy_prefix::ANY_PROTO..=policy_prefix::FULL)
        .rev()
        .find_map(|len| d.policy.get(&(len, masked(full, len))))
        .map(|v| v.policy)
}

/// The identity an address resolves to (WORLD when the ipcache has nothing for it).
pub(crate) fn identity_of(d: &Desired, addr: Ipv4Addr) -> u32 {
    (0..=32u8)
        .rev()
        .find_map(|len| d.ipcache.get(&Cidr::new(addr, len)?))
        .map_or(identity::WORLD, |v| v.identity)
}

/// Whether the endpoint at `endpoint` accepts (INGRESS) or may send (EGRESS) the packet to
/// or from `peer` with destination port `port`.
pub(crate) fn side_allows(
    d: &Desired,
    endpoint: Ipv4Addr,
    peer: Ipv4Addr,
    dir: u8,
    proto: u8,
    port: u16,
) -> bool {
    let flag = if dir == direction::INGRESS {
        endpoint_flags::INGRESS_ISOLATED
    } else {
        endpoint_flags::EGRESS_ISOLATED
    };
    let Some(ep) = d.endpoints.get(&endpoint) else {
        return true;
    };
    if ep.flags & flag == 0 {
        return true;
    }
    let peer_id = identity_of(d, peer);
    if dir == direction::INGRESS && peer_id == identity::HOST {
        return true;
    }
    lookup(d, endpoint, peer_id, dir, proto, port).is_some()
        || lookup(d, endpoint, identity::ANY, dir, proto, port).is_some()
}

/// Whether a new flow from `src` to `dst` on `proto`/`port` passes both the source's egress
/// and the destination's ingress, where they are endpoints of this node.
pub(crate) fn allows(d: &Desired, src: &str, dst: &str, proto: u8, port: u16) -> bool {
    let (src, dst) = (ip(src), ip(dst));
    side_allows(d, src, dst, direction::EGRESS, proto, port)
        && side_allows(d, dst, src, direction::INGRESS, proto, port)
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
