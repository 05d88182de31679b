//! The datapath's decision on a new flow, computed from a compiled [`Desired`] instead of the
//! maps: the same steps as `evaluate` in `ebpf/src/policy.rs` (the source's egress if it is an
//! isolated local endpoint, then the destination's ingress likewise, the node itself always
//! reaching its Pods), with the same identity resolution and the same longest-prefix
//! semantics of the `policy` trie. `keelson policy whatif` replays recorded flows through it,
//! and the compiler's tests state what a plan allows through it rather than which entries it
//! holds, so both judge a flow exactly as the programs do.

use std::{collections::HashMap, net::Ipv4Addr};

use keelson_common::policy::{direction, endpoint_flags, identity, policy_prefix};

use super::{
    compile::net_address,
    model::{Cidr, Desired},
};

/// A policy entry's match data: (prefix length, protocol, port in host order, policy index).
type Entry = (u32, u8, u16, u32);

/// The decision on one new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The side that refused it, else the last side that was checked ([`direction`]).
    pub dir: u8,
    /// The policy index that let the source send it, when its egress is isolated.
    pub egress_policy: Option<u32>,
    /// The policy index that let the destination accept it, when its ingress is isolated.
    pub ingress_policy: Option<u32>,
}

/// One end's part in a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Not an isolated local endpoint in this direction: nothing to check.
    Open,
    /// Isolated, and this policy index allows the peer.
    AllowedBy(u32),
    /// Isolated, and no policy allows the peer.
    Refused,
}

/// One node's compiled policy, indexed by (endpoint, direction, peer identity) so that a flow
/// costs two small scans, as the trie costs two lookups.
#[derive(Debug)]
pub struct Decider<'a> {
    desired: &'a Desired,
    node_ip: Ipv4Addr,
    entries: HashMap<(u32, u8, u32), Vec<Entry>>,
}

impl<'a> Decider<'a> {
    /// The decider of the plan `desired` made for the node at `node_ip`.
    pub fn new(desired: &'a Desired, node_ip: Ipv4Addr) -> Self {
        let mut entries: HashMap<(u32, u8, u32), Vec<Entry>> = HashMap::new();
        for ((len, key), value) in &desired.policy {
            entries
                .entry((key.endpoint, key.dir, u32::from_be(key.identity)))
                .or_default()
                .push((*len, key.proto, u16::from_be(key.dport), value.policy));
        }
        Self {
            desired,
            node_ip,
            entries,
        }
    }

    /// The plan this decider judges by.
    pub fn desired(&self) -> &'a Desired {
        self.desired
    }

    /// Whether `addr` is an endpoint of this node.
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.desired.endpoints.contains_key(&addr)
    }

    /// The security identity of an address: the node's own, a local endpoint's once it has
    /// one, else the longest ipcache prefix, else the world (`identity_of` in the program).
    pub fn identity_of(&self, addr: Ipv4Addr) -> u32 {
        if addr == self.node_ip {
            return identity::HOST;
        }
        if let Some(ep) = self.desired.endpoints.get(&addr)
            && ep.identity != 0
        {
            return ep.identity;
        }
        (0..=32u8)
            .rev()
            .find_map(|len| self.desired.ipcache.get(&Cidr::new(addr, len)?))
            .map_or(identity::WORLD, |v| v.identity)
    }

    /// The policy that lets `endpoint` talk with `peer` in `dir` on `proto`/`port`: the exact
    /// peer first, then any peer (`allowed_by` in the program).
    pub fn allowed_by(
        &self,
        endpoint: Ipv4Addr,
        peer: u32,
        dir: u8,
        proto: u8,
        port: u16,
    ) -> Option<u32> {
        self.lookup(endpoint, peer, dir, proto, port)
            .or_else(|| self.lookup(endpoint, identity::ANY, dir, proto, port))
            .map(|policy| policy.max(1))
    }

    /// One lookup of the `policy` trie: the policy of the longest entry of `endpoint` for the
    /// peer identity `peer` that covers `proto`/`port`.
    pub fn lookup(
        &self,
        endpoint: Ipv4Addr,
        peer: u32,
        dir: u8,
        proto: u8,
        port: u16,
    ) -> Option<u32> {
        self.entries
            .get(&(net_address(endpoint), dir, peer))?
            .iter()
            .filter(|&&(len, p, base, _)| entry_matches(len, p, base, proto, port))
            .max_by_key(|&&(len, ..)| len)
            .map(|&(.., policy)| policy)
    }

    /// What `endpoint` does with the flow on its side: open when it is not a local endpoint,
    /// that side is not isolated or the peer is the node (which may always reach its Pods),
    /// else allowed by a policy or refused.
    pub fn side(&self, endpoint: Ipv4Addr, peer: Ipv4Addr, dir: u8, proto: u8, port: u16) -> Side {
        let flag = if dir == direction::INGRESS {
            endpoint_flags::INGRESS_ISOLATED
        } else {
            endpoint_flags::EGRESS_ISOLATED
        };
        let Some(ep) = self.desired.endpoints.get(&endpoint) else {
            return Side::Open;
        };
        if ep.flags & flag == 0 {
            return Side::Open;
        }
        let peer_id = self.identity_of(peer);
        if dir == direction::INGRESS && peer_id == identity::HOST {
            return Side::Open;
        }
        match self.allowed_by(endpoint, peer_id, dir, proto, port) {
            Some(policy) => Side::AllowedBy(policy),
            None => Side::Refused,
        }
    }

    /// The decision on a new flow from `src` to `dst` on `proto`/`port`, for the ends that are
    /// endpoints of this node.
    pub fn evaluate(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Decision {
        let mut d = Decision {
            allowed: true,
            dir: if self.is_local(dst) {
                direction::INGRESS
            } else {
                direction::EGRESS
            },
            egress_policy: None,
            ingress_policy: None,
        };
        match self.side(src, dst, direction::EGRESS, proto, port) {
            Side::Open => {}
            Side::AllowedBy(p) => d.egress_policy = Some(p),
            Side::Refused => {
                d.allowed = false;
                d.dir = direction::EGRESS;
                return d;
            }
        }
        match self.side(dst, src, direction::INGRESS, proto, port) {
            Side::Open => {}
            Side::AllowedBy(p) => d.ingress_policy = Some(p),
            Side::Refused => {
                d.allowed = false;
                d.dir = direction::INGRESS;
            }
        }
        d
    }
}

/// Whether an entry of prefix length `len` (protocol `p`, port `base`) covers a packet on
/// `proto`/`port`: up to [`policy_prefix::ANY_PROTO`] bits it covers every protocol, up to
/// [`policy_prefix::ANY_PORT`] every port of its protocol, beyond that the port's leading
/// `len - ANY_PORT` bits.
fn entry_matches(len: u32, p: u8, base: u16, proto: u8, port: u16) -> bool {
    if len <= policy_prefix::ANY_PROTO {
        return true;
    }
    if p != proto {
        return false;
    }
    let bits = len.saturating_sub(policy_prefix::ANY_PORT).min(16);
    let mask = if bits == 0 {
        0
    } else {
        u16::MAX << (16 - bits)
    };
    port & mask == base & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_decide_an_entry_covers_what_its_prefix_covers() {
        assert!(entry_matches(policy_prefix::ANY_PROTO, 0, 0, 17, 53));
        assert!(entry_matches(policy_prefix::ANY_PORT, 6, 0, 6, 9999));
        assert!(!entry_matches(policy_prefix::ANY_PORT, 6, 0, 17, 9999));
        assert!(entry_matches(policy_prefix::FULL, 6, 80, 6, 80));
        assert!(!entry_matches(policy_prefix::FULL, 6, 80, 6, 81));
        // 80/15 covers 80 and 81, not 82.
        let len = policy_prefix::ANY_PORT + 15;
        assert!(entry_matches(len, 6, 80, 6, 81) && !entry_matches(len, 6, 80, 6, 82));
    }
}
