//! Map keys, values, events and names shared by the eBPF programs and userspace.
//!
//! Everything here is plain data: `#[repr(C)]`, `Copy`, explicit padding, a size assertion per
//! type so the kernel object and the agent can never disagree on a layout. Addresses and ports
//! are stored in network byte order, exactly as the kernel hands them to the programs
//! (`bpf_sock_addr.user_ip4`, IPv4 headers), so the datapath never swaps bytes.
#![cfg_attr(not(test), no_std)]

use core::mem::size_of;

pub mod ct;
pub mod maps;
pub mod policy;

pub use ct::{CtKey, CtValue, ct_closed, ct_dir, ct_flags, ct_idle_limit};

pub use policy::{
    FlowEvent, IpcacheKey, IpcacheValue, PolicyCtKey, PolicyCtValue, PolicyKey, PolicyName,
    PolicyState, PolicyValue,
};

/// Names of the pinned maps (the ELF symbol names in the eBPF object and the file names under
/// the node's pin directory), generated from the one list in [`maps`]; and program names.
pub mod names {
    use crate::maps::map_names;

    crate::datapath_maps!(map_names);

    /// Program names (the function names in the eBPF object).
    pub const PROG_CONNECT4: &str = "sock_connect4";
    pub const PROG_SENDMSG4: &str = "sock_sendmsg4";
    pub const PROG_RECVMSG4: &str = "sock_recvmsg4";
    pub const PROG_GETPEERNAME4: &str = "sock_getpeername4";
    pub const PROG_CONNECT6: &str = "sock_connect6";
    pub const PROG_SENDMSG6: &str = "sock_sendmsg6";
    pub const PROG_RECVMSG6: &str = "sock_recvmsg6";
    pub const PROG_GETPEERNAME6: &str = "sock_getpeername6";
    pub const PROG_SOCK_RELEASE: &str = "sock_release";
    pub const PROG_FROM_CONTAINER: &str = "tc_from_container";
    pub const PROG_TO_CONTAINER: &str = "tc_to_container";
    pub const PROG_FROM_NETDEV: &str = "tc_from_netdev";
    pub const PROG_TO_NETDEV: &str = "tc_to_netdev";
}

/// Where things live on bpffs.
pub mod paths {
    /// Mount point of the BPF filesystem.
    pub const BPFFS: &str = "/sys/fs/bpf";
    /// Per-node pin directories live under `<BPFFS>/<PIN_ROOT>/<node>`.
    pub const PIN_ROOT: &str = "keelson";
    /// Sub-directory of a node's pin directory holding pinned links.
    pub const LINKS_DIR: &str = "links";
}

/// Map sizes. A full map is an error reported to the agent, never a silent drop.
pub mod limits {
    /// Service entries: one master plus one per backend slot, summed over all frontends.
    pub const MAX_SERVICE_ENTRIES: u32 = 65_536;
    pub const MAX_BACKENDS: u32 = 65_536;
    pub const MAX_REVNAT: u32 = 65_536;
    /// LRU: entries of closed sockets age out.
    pub const MAX_SOCK_REVNAT: u32 = 262_144;
    pub const MAX_ENDPOINTS: u32 = 65_536;
    /// LRU: session-affinity entries of idle clients age out.
    pub const MAX_AFFINITY: u32 = 65_536;
    /// Size of the metrics array: drop reasons and counters share one index space.
    pub const METRICS_SLOTS: u32 = 128;
    /// Highest number of backends one frontend may have (slots are `u16`).
    pub const MAX_BACKENDS_PER_SERVICE: u16 = u16::MAX - 1;
    /// Conntrack of per-packet translated flows: two entries per flow. Full means new flows
    /// are refused (and counted), never that established ones are evicted.
    pub const MAX_CT: u32 = 262_144;
    /// Entries of a Maglev lookup table: a prime, well above 100 × the backends of a Service
    /// so that each backend's share stays within 1% (Maglev paper, NSDI 2016, section 5.3).
    pub const MAGLEV_TABLE_SIZE: u32 = 1021;
    /// Frontends that use Maglev (their tables are allocated on demand, not preallocated).
    pub const MAX_MAGLEV: u32 = 16_384;
    /// Source ports the uplink program uses when it SNATs a flow to the node's address: above
    /// Linux's default ephemeral range (32768-60999), so they never clash with the node's own
    /// sockets, and above the NodePort range.
    pub const SNAT_PORT_MIN: u16 = 61_000;
    pub const SNAT_PORT_MAX: u16 = 65_535;
    /// Conntrack entries idle this long are removed by the agent: TCP (Cilium's default
    /// lifetime of established TCP entries), a TCP connection that saw FIN or RST, anything else.
    pub const CT_TCP_IDLE_NS: u64 = 6 * 3600 * 1_000_000_000;
    pub const CT_CLOSED_IDLE_NS: u64 = 10 * 1_000_000_000;
    pub const CT_OTHER_IDLE_NS: u64 = 60 * 1_000_000_000;
    /// Addresses and CIDRs the ipcache holds: every Pod of the cluster, every node, every
    /// `ipBlock` CIDR and except.
    pub const MAX_IPCACHE: u32 = 65_536;
    /// Policy entries over all local endpoints.
    pub const MAX_POLICY: u32 = 262_144;
    /// Flows the policy conntrack remembers.
    pub const MAX_POL_CT: u32 = 262_144;
    /// NetworkPolicies named in `pol_names`.
    pub const MAX_POLICIES: u32 = 65_536;
    /// Identities described in `id_names`.
    pub const MAX_IDENTITIES: u32 = 65_536;
    /// Size of the flow event ring buffer (a power of two of pages).
    pub const EVENTS_BYTES: u32 = 1 << 20;
}

/// IP protocol numbers as found in `bpf_sock_addr.protocol` and IPv4 headers.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Key of the `services` map: one frontend (ClusterIP, port, protocol) and a slot.
///
/// Slot 0 is the master entry carrying the backend count; slots `1..=count` point at backend
/// ids. A lookup costs two hash lookups (master, then a random slot) whatever the number of
/// backends, the scheme of Cilium's `lb4_key`/`lb4_service`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    /// Reserved for traffic-policy scopes (external/internal); 0 today.
    pub scope: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<ServiceKey>() == 12);

impl ServiceKey {
    pub const fn new(address: u32, dport: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address,
            dport,
            backend_slot,
            proto,
            scope: 0,
            pad: [0; 2],
        }
    }
}

/// Value of the `services` map. For the master slot: `count` backends, the frontend's
/// reverse-NAT index, `flags` ([`service_flags`]) and, with [`service_flags::AFFINITY`], the
/// affinity timeout in seconds in `backend_id` (the field is unused on a master, as in
/// Cilium's `lb4_service`); for slot `n`: `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u16,
    pub rev_nat_index: u16,
    pub flags: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<ServiceValue>() == 12);

/// Bits of [`ServiceValue::flags`] on a master entry.
pub mod service_flags {
    /// `sessionAffinity: ClientIP`: a client keeps its backend for the timeout.
    pub const AFFINITY: u8 = 1;
    /// A NodePort, LoadBalancer or external IP frontend: besides the socket hooks, the uplink
    /// program translates packets addressed to it. ClusterIPs are not reachable from outside
    /// the cluster, as with kube-proxy.
    pub const EXTERNAL: u8 = 2;
    /// Backends are chosen from the frontend's Maglev table by a hash of the flow, so that every
    /// node picks the same backend for a flow and a backend change moves ~1/N of the flows.
    pub const MAGLEV: u8 = 4;
    /// `externalTrafficPolicy: Local`. The programs need nothing more (the agent gives such a
    /// frontend this node's backends only, which are never SNATed); the bit tells the dump
    /// tools why a frontend has fewer backends than its Service.
    pub const LOCAL: u8 = 8;
}

/// Key of the `affinity` LRU map: one client of one frontend. The client is its network
/// namespace cookie (one per Pod, so it stands for the Pod's IP, which is what kube-proxy's
/// ClientIP affinity keys on).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub rev_nat_index: u16,
    pub pad: [u8; 6],
}
const _: () = assert!(size_of::<AffinityKey>() == 16);

/// Value of the `affinity` map: the backend (and the slot it had) and when it was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub slot: u16,
    pub pad: [u8; 2],
    /// `bpf_ktime_get_ns` of the last connect/sendmsg that used the entry.
    pub last_used_ns: u64,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// Key of the `backends` map: a backend id, allocated by the agent (never 0).
pub type BackendKey = u32;

/// Value of the `backends` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<Backend>() == 8);

/// Key of the `revnat` map: the frontend's reverse-NAT index (never 0).
pub type RevNatKey = u16;

/// Value of the `revnat` map: the frontend a reverse-NAT index stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub port: u16,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<RevNatValue>() == 8);

/// Key of the `sock_revnat` LRU map: which socket talked to which backend. recvmsg4 and
/// getpeername4 look it up to show the application the ClusterIP it addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<SockRevNatKey>() == 16);

/// Value of the `sock_revnat` map: the frontend the socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatValue {
    /// ClusterIP, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub port: u16,
    pub rev_nat_index: u16,
}
const _: () = assert!(size_of::<SockRevNatValue>() == 8);

/// Key of the `services6` map: an IPv6 frontend and a slot, with the slot scheme of
/// [`ServiceKey`]. Values are [`ServiceValue`]s; backend ids and reverse-NAT indexes share
/// one number space with IPv4 (the agent allocates them over both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey6 {
    /// IPv6 address, network byte order, as four words the way `bpf_sock_addr.user_ip6` has it.
    pub address: [u32; 4],
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<ServiceKey6>() == 24);

impl ServiceKey6 {
    pub const fn new(address: [u32; 4], dport: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address,
            dport,
            backend_slot,
            proto,
            scope: 0,
            pad: [0; 2],
        }
    }
}

/// Value of the `backends6` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub address: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<Backend6>() == 20);

/// Value of the `revnat6` map (key: [`RevNatKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue6 {
    pub address: [u32; 4],
    pub port: u16,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<RevNatValue6>() == 20);

/// Key of the `sockrevnat6` LRU map: [`SockRevNatKey`] for IPv6 backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey6 {
    pub cookie: u64,
    pub address: [u32; 4],
    pub port: u16,
    pub pad: [u8; 6],
}
const _: () = assert!(size_of::<SockRevNatKey6>() == 32);

/// Value of the `sockrevnat6` map: the IPv6 frontend the socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatValue6 {
    pub address: [u32; 4],
    pub port: u16,
    pub rev_nat_index: u16,
}
const _: () = assert!(size_of::<SockRevNatValue6>() == 20);

/// The single value of the `config` array: what the agent tells the programs about the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// The node's address on the uplink (SNAT source), network byte order.
    pub node_ip: u32,
    /// ifindex of the uplink in the node's network namespace; 0 until the agent attached it.
    pub uplink_ifindex: u32,
    /// SNAT source port range, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub pad: [u8; 4],
}
const _: () = assert!(size_of::<NodeConfig>() == 16);

/// Key of the `maglev` map: one frontend (its reverse-NAT index) and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub rev_nat_index: u16,
    pub proto: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<MaglevKey>() == 4);

/// Value of the `maglev` map: the lookup table, backend ids indexed by flow hash modulo its
/// size (Cilium keeps the same shape in an inner map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevTable {
    pub backend_ids: [u32; limits::MAGLEV_TABLE_SIZE as usize],
}
const _: () = assert!(size_of::<MaglevTable>() == 4 * limits::MAGLEV_TABLE_SIZE as usize);

/// Value of the `svc_names` map (key: [`RevNatKey`]): `namespace/name` of the Service a
/// frontend belongs to, NUL-padded. Only the dump tools read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub name: [u8; 128],
}
const _: () = assert!(size_of::<ServiceName>() == 128);

/// Value of the `id_names` map: the labels an identity stands for, as
/// `ns=<namespace>;<pod labels>[;ns:<other namespace labels>]`, or `cidr=<prefix>` for an
/// ipBlock's, NUL-padded (cut at 255 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdentityName {
    pub name: [u8; 256],
}
const _: () = assert!(size_of::<IdentityName>() == 256);

/// Key of the `endpoints` map: a local Pod's IPv4 address (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub address: u32,
}
const _: () = assert!(size_of::<EndpointKey>() == 4);

/// Value of the `endpoints` map: how to reach a local Pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// ifindex of the host-side veth, in the node's network namespace.
    pub ifindex: u32,
    pub flags: u32,
    /// Security identity (0 until policy assigns one).
    pub identity: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}
const _: () = assert!(size_of::<EndpointInfo>() == 24);

/// One per-CPU counter cell of the `metrics` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricValue {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<MetricValue>() == 16);

/// Why the datapath refused a packet or a socket operation. The discriminant is also the
/// packet's index in the `metrics` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A packet left a Pod with a source address that is not that Pod's.
    InvalidSource = 1,
    /// A connect()/sendmsg() to a Service that has no backend (refused like kube-proxy's
    /// REJECT rule).
    NoBackend = 2,
    /// A backend slot or backend id the master entry promised was missing (the agent was
    /// shrinking the service at that moment).
    MissingBackend = 3,
    /// A packet too short for the headers it claims.
    Malformed = 4,
    /// The socket reverse-NAT map refused an entry.
    SockRevNatFull = 5,
    /// The conntrack map refused an entry: the flow is not translated rather than half-done.
    CtFull = 6,
    /// No free SNAT source port towards the chosen backend.
    NoSnatPort = 7,
    /// A checksum or byte rewrite of the packet failed.
    RewriteFailed = 8,
    /// No NetworkPolicy allows the flow into its destination Pod.
    PolicyIngress = 9,
    /// No NetworkPolicy allows the flow out of its source Pod.
    PolicyEgress = 10,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::InvalidSource,
        DropReason::NoBackend,
        DropReason::MissingBackend,
        DropReason::Malformed,
        DropReason::SockRevNatFull,
        DropReason::CtFull,
        DropReason::NoSnatPort,
        DropReason::RewriteFailed,
        DropReason::PolicyIngress,
        DropReason::PolicyEgress,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::InvalidSource => "invalid_source",
            DropReason::NoBackend => "no_backend",
            DropReason::MissingBackend => "missing_backend",
            DropReason::Malformed => "malformed",
            DropReason::SockRevNatFull => "sock_revnat_full",
            DropReason::CtFull => "ct_full",
            DropReason::NoSnatPort => "no_snat_port",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::PolicyIngress => "policy_denied",
            DropReason::PolicyEgress => "policy_denied",
        }
    }

    /// The direction a drop is counted in, seen from the Pod (or node) the packet was going
    /// to or coming from: [`policy::direction`].
    pub const fn direction(self) -> u8 {
        match self {
            DropReason::PolicyIngress => policy::direction::INGRESS,
            // Everything else is refused on the way out of a Pod or socket, except the
            // uplink's translation of flows coming in, which has no Pod yet.
            DropReason::CtFull | DropReason::NoSnatPort | DropReason::RewriteFailed => {
                policy::direction::INGRESS
            }
            _ => policy::direction::EGRESS,
        }
    }

    /// The reason of a number, as found in a [`FlowEvent`].
    pub const fn from_number(n: u32) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == n {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// What the datapath did, besides drops. Indexes of the `metrics` map above the drop reasons.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// A connect() was translated from a ClusterIP to a backend.
    SockConnectXlated = 64,
    /// An unconnected sendmsg() was translated.
    SockSendmsgXlated = 65,
    /// A received datagram's source was translated back to the ClusterIP.
    SockRecvmsgRevXlated = 66,
    /// getpeername() showed the ClusterIP instead of the backend.
    SockPeernameRevXlated = 67,
    /// A Pod's packet was delivered straight to a local Pod (`bpf_redirect_peer`).
    FromContainerLocal = 68,
    /// A Pod's packet was handed to the node's routing.
    FromContainerStack = 69,
    /// A packet from outside addressed to a NodePort/LoadBalancer/external IP was translated.
    NodePortXlated = 70,
    /// A reply of such a flow was translated back, on the uplink (remote backend) or on the
    /// backend's veth (local backend).
    NodePortRevXlated = 71,
    /// A new per-packet flow was recorded in conntrack.
    CtCreated = 72,
    /// A new flow into a policy-isolated Pod was allowed by a policy entry.
    PolicyAllowedIngress = 73,
    /// A new flow out of a policy-isolated Pod was allowed by a policy entry.
    PolicyAllowedEgress = 74,
    /// A packet was delivered to a local Pod (any path).
    ForwardedIngress = 75,
    /// A packet left a local Pod.
    ForwardedEgress = 76,
    /// The ring buffer had no room for a flow event.
    EventsLost = 77,
}

impl Counter {
    pub const ALL: [Counter; 14] = [
        Counter::SockConnectXlated,
        Counter::SockSendmsgXlated,
        Counter::SockRecvmsgRevXlated,
        Counter::SockPeernameRevXlated,
        Counter::FromContainerLocal,
        Counter::FromContainerStack,
        Counter::NodePortXlated,
        Counter::NodePortRevXlated,
        Counter::CtCreated,
        Counter::PolicyAllowedIngress,
        Counter::PolicyAllowedEgress,
        Counter::ForwardedIngress,
        Counter::ForwardedEgress,
        Counter::EventsLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::SockConnectXlated => "sock_connect_xlated",
            Counter::SockSendmsgXlated => "sock_sendmsg_xlated",
            Counter::SockRecvmsgRevXlated => "sock_recvmsg_revxlated",
            Counter::SockPeernameRevXlated => "sock_getpeername_revxlated",
            Counter::FromContainerLocal => "from_container_local",
            Counter::FromContainerStack => "from_container_stack",
            Counter::NodePortXlated => "nodeport_xlated",
            Counter::NodePortRevXlated => "nodeport_revxlated",
            Counter::CtCreated => "ct_created",
            Counter::PolicyAllowedIngress => "policy_allowed_ingress",
            Counter::PolicyAllowedEgress => "policy_allowed_egress",
            Counter::ForwardedIngress => "forwarded_ingress",
            Counter::ForwardedEgress => "forwarded_egress",
            Counter::EventsLost => "events_lost",
        }
    }
}

const _: () = assert!((Counter::EventsLost as u32) < limits::METRICS_SLOTS);

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type below is #[repr(C)], Copy, has no implicit padding (the size
    // assertions above match the sum of the fields) and is valid for any bit pattern.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNatValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNatValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MetricValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNatValue6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNatKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNatValue6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MaglevKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MaglevTable {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IdentityName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpcacheKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpcacheValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyCtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyCtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEvent {}
}
