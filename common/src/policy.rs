//! NetworkPolicy's maps and events: security identities, the `ipcache` (address → identity),
//! the per-endpoint `policy` trie, the policy conntrack and the flow events of the ring buffer.
//!
//! The model of Cilium's: every address resolves to one numeric identity (a Pod's stands for
//! its namespace's and its own labels), and what an endpoint may send or receive is a set of
//! (peer identity, direction, protocol, port prefix) entries, so that a new flow costs the
//! same few lookups whatever the number of policies or Pods.

use core::mem::size_of;

use crate::proto;

/// Reserved identities. Identities of label sets start at [`identity::FIRST_LABELS`], those
/// of `ipBlock` CIDRs at [`identity::FIRST_CIDR`].
pub mod identity {
    /// In a policy key: any peer (a rule with ports but no peers). Never an address's.
    pub const ANY: u32 = 0;
    /// The node itself (its own address): always allowed to reach its Pods, since kubelet
    /// probes come from it.
    pub const HOST: u32 = 1;
    /// Any address the ipcache knows nothing more about.
    pub const WORLD: u32 = 2;
    /// Another node of the cluster (an address of a Node object).
    pub const REMOTE_NODE: u32 = 6;
    /// First identity of a set of (namespace labels, Pod labels).
    pub const FIRST_LABELS: u32 = 256;
    /// First identity of an `ipBlock` CIDR (the high bit marks them).
    pub const FIRST_CIDR: u32 = 1 << 31;

    /// What kind of peer an identity stands for.
    pub const fn kind(id: u32) -> &'static str {
        match id {
            ANY => "any",
            HOST => "host",
            WORLD => "world",
            REMOTE_NODE => "remote-node",
            FIRST_CIDR.. => "cidr",
            FIRST_LABELS.. => "pod",
            _ => "reserved",
        }
    }
}

/// Directions of traffic, seen from the local endpoint a check is made for.
pub mod direction {
    /// Towards the endpoint.
    pub const INGRESS: u8 = 0;
    /// From the endpoint.
    pub const EGRESS: u8 = 1;

    pub const fn name(dir: u8) -> &'static str {
        if dir == INGRESS { "ingress" } else { "egress" }
    }
}

/// Bits of [`crate::EndpointInfo::flags`].
pub mod endpoint_flags {
    /// A NetworkPolicy with `policyTypes: [Ingress]` selects the endpoint: only what its
    /// entries allow may reach it.
    pub const INGRESS_ISOLATED: u32 = 1;
    /// Likewise for what it sends.
    pub const EGRESS_ISOLATED: u32 = 2;
}

/// Data of an `ipcache` key (the trie's key is `{prefixlen, IpcacheKey}`): an IPv4 address
/// in network byte order, so that prefixes compare from the most significant bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    pub address: u32,
}
const _: () = assert!(size_of::<IpcacheKey>() == 4);

/// Value of the `ipcache`: the identity of every address under the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
    /// [`ipcache_flags`].
    pub flags: u32,
}
const _: () = assert!(size_of::<IpcacheValue>() == 8);

/// Bits of [`IpcacheValue::flags`].
pub mod ipcache_flags {
    /// A Pod of this node.
    pub const LOCAL_POD: u32 = 1;
    /// A Pod of another node.
    pub const REMOTE_POD: u32 = 2;
}

/// Prefix lengths of a [`PolicyKey`], in bits: endpoint, peer identity and direction always
/// match whole; then the protocol; then a prefix of the destination port.
pub mod policy_prefix {
    /// Every protocol and port: a rule without ports.
    pub const ANY_PROTO: u32 = 72;
    /// One protocol, every port.
    pub const ANY_PORT: u32 = 80;
    /// One protocol and port.
    pub const FULL: u32 = 96;
}

/// Data of a `policy` key (the trie's key is `{prefixlen, PolicyKey}`). Fields are in the
/// order their prefix covers them; the port is in network byte order so that a range splits
/// into prefixes (as Cilium's policy map v2 does for `endPort`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The local endpoint's address, network byte order.
    pub endpoint: u32,
    /// The peer's identity; [`identity::ANY`] for any peer. Big-endian, like every field.
    pub identity: u32,
    /// [`direction`].
    pub dir: u8,
    pub proto: u8,
    /// Destination port, network byte order (the endpoint's for ingress, the peer's for egress).
    pub dport: u16,
}
const _: () = assert!(size_of::<PolicyKey>() == 12);

impl PolicyKey {
    /// The key a packet is looked up with (full prefix).
    #[inline(always)]
    pub const fn lookup(endpoint: u32, identity: u32, dir: u8, proto: u8, dport: u16) -> Self {
        Self {
            endpoint,
            identity: identity.to_be(),
            dir,
            proto,
            dport,
        }
    }
}

/// Value of a `policy` entry: the flow is allowed, by this policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Index of the NetworkPolicy in `pol_names` (the first one by namespace/name when several
    /// allow the same entry).
    pub policy: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<PolicyValue>() == 8);

/// Key of the policy conntrack: a flow as its first packet had it (after any socket-level
/// translation, so the backend's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyCtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<PolicyCtKey>() == 16);

impl PolicyCtKey {
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            pad: [0; 3],
        }
    }

    /// The key the other direction's packets have.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        Self::new(self.daddr, self.saddr, self.dport, self.sport, self.proto)
    }
}

/// Value of the policy conntrack: the flow was allowed under policy revision `revision`;
/// when the agent has written a newer revision, the next packet checks the policy again, so
/// that an established flow a new policy denies stops.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyCtValue {
    pub revision: u32,
    /// The policies that allowed it at its source's egress and at its destination's ingress
    /// (0: not isolated, or not an endpoint of this node).
    pub egress_policy: u32,
    pub ingress_policy: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<PolicyCtValue>() == 16);

/// The single value of the `pol_state` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyState {
    /// Bumped by the agent on every change of the policy or ipcache maps.
    pub revision: u32,
    /// [`policy_state_flags`].
    pub flags: u32,
}
const _: () = assert!(size_of::<PolicyState>() == 8);

/// Bits of [`PolicyState::flags`].
pub mod policy_state_flags {
    /// Send an event for the first packet of every flow, allowed or not (drops always are).
    pub const ALLOWED_EVENTS: u32 = 1;
}

/// Verdicts of a [`FlowEvent`].
pub mod verdict {
    pub const ALLOWED: u8 = 0;
    pub const DROPPED: u8 = 1;

    pub const fn name(v: u8) -> &'static str {
        if v == ALLOWED { "allowed" } else { "dropped" }
    }
}

/// One event of the `events` ring buffer: the first packet of a flow, or a dropped packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns`.
    pub time_ns: u64,
    /// Addresses and ports, network byte order.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// [`direction`]: the side of the local endpoint the verdict was made for.
    pub dir: u8,
    /// TCP flags of the packet (SYN, ACK, FIN, RST...), 0 for other protocols.
    pub tcp_flags: u8,
    /// A [`crate::DropReason`] for drops, 0 otherwise.
    pub reason: u32,
    /// The allowing policy's index in `pol_names` (0: none needed or none found).
    pub policy: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The Service frontend the socket addressed before translation (0: none).
    pub rev_nat_index: u16,
    pub pad: [u8; 2],
    /// ifindex the program ran on.
    pub ifindex: u32,
}
const _: () = assert!(size_of::<FlowEvent>() == 48);

/// Value of the `pol_names` map (key: a policy index): `namespace/name`, NUL-padded.
pub type PolicyName = crate::ServiceName;

/// Protocols a policy port can name (NetworkPolicy's `protocol`).
pub const fn policy_proto(name: &str) -> Option<u8> {
    match name.as_bytes() {
        b"TCP" => Some(proto::TCP),
        b"UDP" => Some(proto::UDP),
        b"SCTP" => Some(proto::SCTP),
        _ => None,
    }
}
