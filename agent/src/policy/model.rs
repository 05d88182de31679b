//! The policy compiler's vocabulary: what it reads (a [`Snapshot`] of Pods, Namespaces,
//! NetworkPolicies and Nodes, and the [`NodeContext`] it compiles for), what it produces
//! ([`Desired`]: the contents of the ipcache, policy, endpoint and name maps) and the map
//! operations ([`PolicyOp`]) that turn one content into another.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use keelson_common::{IpcacheValue, PolicyKey, PolicyValue, policy::endpoint_flags};

/// Labels of an object, sorted by key (as k8s-openapi keeps them).
pub type Labels = BTreeMap<String, String>;

/// The endpoint flag bits the policy programmer owns; any other bit of
/// `EndpointInfo::flags` belongs to someone else and is kept as it is.
pub const POLICY_FLAGS: u32 = endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;

/// Longest `namespace/name` the `pol_names` map keeps (its value is 128 bytes with the NUL).
pub const MAX_POLICY_NAME: usize = 127;
/// Longest identity text the `id_names` map keeps (256 bytes with the NUL).
pub const MAX_IDENTITY_NAME: usize = 255;

/// The node a plan is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    /// Pods with this `spec.nodeName` are this node's endpoints.
    pub node_name: String,
    /// The node's own address: traffic from it is the host's (kubelet probes).
    pub node_ip: Ipv4Addr,
}

/// One port of one of a Pod's containers, as named ports resolve against them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// The port's name (`containers[].ports[].name`); empty when unnamed.
    pub name: String,
    pub port: u16,
    /// IP protocol number (`keelson_common::proto`).
    pub proto: u8,
}

/// What the compiler reads of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Its IPv4 address (`status.podIPs`); `None` before it has one and once it has
    /// terminated (its address is released and may already be another Pod's).
    pub ip: Option<Ipv4Addr>,
    /// `spec.nodeName`; empty while unscheduled.
    pub node_name: String,
    /// `spec.hostNetwork`: the Pod has the node's address and so the node's identity.
    pub host_network: bool,
    pub labels: Labels,
    pub ports: Vec<ContainerPort>,
}

/// What the compiler reads of a Namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

/// What the compiler reads of a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Its `InternalIP` addresses of family IPv4.
    pub addresses: Vec<Ipv4Addr>,
}

/// Everything a plan is computed from. Policies are kept by `namespace/name`, the order in
/// which "the first policy" of an entry is chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// By `namespace/name`.
    pub pods: BTreeMap<String, PodInfo>,
    /// By name.
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// By `namespace/name`.
    pub policies: BTreeMap<String, NetworkPolicy>,
    /// By name.
    pub nodes: BTreeMap<String, NodeInfo>,
}

impl Snapshot {
    pub fn add_pod(&mut self, pod: PodInfo) {
        self.pods
            .insert(format!("{}/{}", pod.namespace, pod.name), pod);
    }

    pub fn add_namespace(&mut self, ns: NamespaceInfo) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    /// Adds a policy under its `namespace/name` (an unset namespace is `default`).
    pub fn add_policy(&mut self, policy: NetworkPolicy) {
        let key = format!(
            "{}/{}",
            policy.metadata.namespace.as_deref().unwrap_or("default"),
            policy.metadata.name.as_deref().unwrap_or("")
        );
        self.policies.insert(key, policy);
    }

    pub fn add_node(&mut self, node: NodeInfo) {
        self.nodes.insert(node.name.clone(), node);
    }
}

/// An IPv4 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// The prefix of `len` bits of `addr` (host bits dropped); `None` if `len` exceeds 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }

    /// The /32 of one address.
    pub const fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    /// Parses `a.b.c.d/n`. Octets with leading zeros are read as decimal, as Go's parser did
    /// before 1.17: the API still serves ipBlocks stored under those rules (KEP-4858).
    /// Host bits are dropped, as the datapath's trie ignores them. IPv6 is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, len) = s.trim().split_once('/')?;
        let len: u8 = len.parse().ok()?;
        let mut octets = [0u8; 4];
        let mut parts = addr.split('.');
        for o in &mut octets {
            let part = parts.next()?;
            if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *o = part.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Self::new(Ipv4Addr::from(octets), len)
    }

    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && u32::from(other.addr) & mask(self.len) == u32::from(self.addr)
    }

    /// `0.0.0.0/0`.
    pub const fn is_everything(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The netmask of a prefix length (host order).
fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

/// What policy sets on one local endpoint: its identity and its isolation bits
/// ([`POLICY_FLAGS`] only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointPolicy {
    pub identity: u32,
    pub flags: u32,
}

/// A policy trie key: (prefix length in bits, key data).
pub type PolicyEntryKey = (u32, PolicyKey);

/// The contents of the maps the policy programmer owns, as a plan wants them or as they were
/// read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// `ipcache`: prefix → identity and flags.
    pub ipcache: BTreeMap<Cidr, IpcacheValue>,
    /// `policy`: allowed (endpoint, peer identity, direction, protocol, port prefix).
    pub policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Identity and isolation of this node's endpoints, by Pod address.
    pub endpoints: BTreeMap<Ipv4Addr, EndpointPolicy>,
    /// `pol_names`: policy index → `namespace/name`.
    pub policy_names: BTreeMap<u32, String>,
    /// `id_names`: identity → the text of its labels (or CIDR).
    pub identities: BTreeMap<u32, String>,
}

/// One write to the policy maps. [`super::diff::diff`] orders them so that no packet is
/// wrongly denied while they are applied one by one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    PutPolicyName {
        index: u32,
        name: String,
    },
    PutIdentityName {
        identity: u32,
        name: String,
    },
    PutPolicy {
        key: PolicyEntryKey,
        value: PolicyValue,
    },
    PutIpcache {
        cidr: Cidr,
        value: IpcacheValue,
    },
    /// Read-modify-write of an existing `endpoints` entry: identity and [`POLICY_FLAGS`];
    /// an endpoint not in the map is skipped (the CNI server has not recorded it yet).
    SetEndpoint {
        address: Ipv4Addr,
        policy: EndpointPolicy,
    },
    DeleteIpcache {
        cidr: Cidr,
    },
    DeletePolicy {
        key: PolicyEntryKey,
    },
    DeletePolicyName {
        index: u32,
    },
    DeleteIdentityName {
        identity: u32,
    },
}

/// `text` cut to at most `max` bytes at a character boundary: what a NUL-padded name map
/// keeps, so that a plan compares equal with what is read back.
pub fn fit(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_cidr_parse_normalizes_and_contains() {
        let c = Cidr::parse("10.1.2.3/8").expect("parses");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("010.000.0.1/32")
                .map(|c| c.to_string())
                .as_deref(),
            Some("10.0.0.1/32")
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "::/0",
            "1.2.3.256/32",
            "a.b.c.d/1",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        let all = Cidr::parse("0.0.0.0/0").expect("parses");
        assert!(all.is_everything());
        let ten = Cidr::parse("10.0.0.0/8").expect("parses");
        let sub = Cidr::parse("10.2.0.0/16").expect("parses");
        assert!(all.contains(&ten) && ten.contains(&sub) && ten.contains(&ten));
        assert!(!sub.contains(&ten));
        assert!(!ten.contains(&Cidr::parse("11.0.0.0/16").expect("parses")));
    }

    #[test]
    fn policy_fit_cuts_at_char_boundaries() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcd", 3), "abc");
        assert_eq!(fit("aé", 2), "a");
    }
}
