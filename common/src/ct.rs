//! Conntrack of the flows the uplink program translates per packet (NodePort, LoadBalancer,
//! externalIPs): the entry layout, and the rules both the programs and the agent's GC apply to
//! it — how an entry finds its other direction, and when a flow is over.

use core::mem::size_of;

use crate::{limits, proto};

/// Key of the `ct` map: one direction of a flow the uplink program translated, as its
/// packets look when they reach the node (before any rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// Addresses and ports in network byte order.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`ct_dir`].
    pub dir: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 16);

/// Directions of a [`CtKey`].
pub mod ct_dir {
    /// Client to frontend, as it arrives on the uplink.
    pub const ORIGINAL: u8 = 0;
    /// Backend to client (or to the SNAT address), as the backend sends it.
    pub const REPLY: u8 = 1;
}

/// Value of the `ct` map: what a packet of this direction is rewritten to. For the original
/// direction: the (possibly SNATed) source and the backend; for the reply: the frontend as
/// source and the client as destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub nat_saddr: u32,
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    pub backend_id: u32,
    pub rev_nat_index: u16,
    /// [`ct_flags`].
    pub flags: u8,
    pub pad: [u8; 5],
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<CtValue>() == 32);

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    /// The source was rewritten to the node's address (the backend is on another node).
    pub const SNAT: u8 = 1;
    /// The backend is a Pod of this node.
    pub const LOCAL_BACKEND: u8 = 2;
    /// A TCP FIN went this way.
    pub const FIN: u8 = 4;
    /// A TCP RST went this way: the connection is over.
    pub const RST: u8 = 8;
    /// The backend is a socket of the node itself (a hostNetwork Pod at the node's address):
    /// the reply is translated back on the uplink's egress.
    pub const HOST_BACKEND: u8 = 16;
}

impl CtKey {
    /// The key of the other direction of the flow this entry belongs to: a value holds the
    /// rewritten addresses, which are exactly the other direction's tuple reversed. The
    /// programs (taking over a SNAT port, forgetting a flow) and the agent's GC both pair
    /// entries with it.
    #[inline(always)]
    pub const fn partner(&self, value: &CtValue) -> CtKey {
        CtKey {
            saddr: value.nat_daddr,
            daddr: value.nat_saddr,
            sport: value.nat_dport,
            dport: value.nat_sport,
            proto: self.proto,
            dir: if self.dir == ct_dir::REPLY {
                ct_dir::ORIGINAL
            } else {
                ct_dir::REPLY
            },
            pad: [0; 2],
        }
    }
}

/// When a translated flow is over, given the flags of its two entries (0 for a missing one):
/// a RST went either way, or a FIN went each way (a half-closed flow may still send).
#[inline(always)]
pub const fn ct_closed(original_flags: u8, reply_flags: u8) -> bool {
    (original_flags | reply_flags) & ct_flags::RST != 0
        || original_flags & reply_flags & ct_flags::FIN != 0
}

/// How long a flow may stay idle before it is forgotten: briefly once it is closed, else its
/// protocol's limit (Cilium's lifetimes). The agent's GC removes entries idle past it; the
/// uplink program takes over the SNAT port of a closed flow at once and of an open one only
/// past the protocol's limit.
#[inline(always)]
pub const fn ct_idle_limit(proto: u8, closed: bool) -> u64 {
    if closed {
        limits::CT_CLOSED_IDLE_NS
    } else if proto == proto::TCP {
        limits::CT_TCP_IDLE_NS
    } else {
        limits::CT_OTHER_IDLE_NS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn value(saddr: u32, sport: u16, daddr: u32, dport: u16) -> CtValue {
        CtValue {
            nat_saddr: saddr,
            nat_daddr: daddr,
            nat_sport: sport,
            nat_dport: dport,
            backend_id: 1,
            rev_nat_index: 1,
            flags: 0,
            pad: [0; 5],
            last_seen_ns: 0,
        }
    }

    #[test]
    fn partners_pair_both_directions_of_a_snated_flow() {
        // Client 1:100 -> frontend 2:80, SNATed to node 3:61000 towards backend 4:8080.
        let original = CtKey {
            saddr: 1,
            daddr: 2,
            sport: 100,
            dport: 80,
            proto: proto::TCP,
            dir: ct_dir::ORIGINAL,
            pad: [0; 2],
        };
        let fwd = value(3, 61000, 4, 8080);
        let reply = original.partner(&fwd);
        assert_eq!(
            reply,
            CtKey {
                saddr: 4,
                daddr: 3,
                sport: 8080,
                dport: 61000,
                proto: proto::TCP,
                dir: ct_dir::REPLY,
                pad: [0; 2],
            }
        );
        // The reply entry rewrites back to frontend -> client; its partner is the original.
        let rev = value(2, 80, 1, 100);
        assert_eq!(reply.partner(&rev), original);
    }

    #[test]
    fn a_flow_is_closed_by_one_rst_or_two_fins() {
        assert!(!ct_closed(0, 0));
        assert!(ct_closed(ct_flags::RST, 0));
        assert!(ct_closed(0, ct_flags::RST));
        assert!(!ct_closed(ct_flags::FIN, 0));
        assert!(ct_closed(ct_flags::FIN, ct_flags::FIN | ct_flags::SNAT));
        assert_eq!(ct_idle_limit(proto::TCP, false), limits::CT_TCP_IDLE_NS);
        assert_eq!(ct_idle_limit(proto::UDP, false), limits::CT_OTHER_IDLE_NS);
        assert_eq!(ct_idle_limit(proto::UDP, true), limits::CT_CLOSED_IDLE_NS);
    }
}
