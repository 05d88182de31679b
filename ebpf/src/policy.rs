//! NetworkPolicy enforcement, called by the tc programs for every packet that leaves or
//! reaches a local Pod: the policy conntrack first (an established flow or its reply passes
//! with one lookup), and for a new flow the identities of both ends from the `ipcache` and one
//! or two lookups of the `policy` trie per isolated end (the exact peer identity, then "any
//! peer"), whatever the number of policies or Pods. Every drop, and when the agent asks every
//! new flow, becomes an event in the ring buffer.
//!
//! Established flows are checked again when the agent has changed the policy since they were
//! allowed (their entry's revision is older than `pol_state`'s), so that a new policy stops
//! them, as Kubernetes expects of an implementation that tracks connections.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::TcContext};
use keelson_common::{
    Counter, DropReason, EndpointInfo, EndpointKey, FlowEvent, IpcacheKey, PolicyCtKey,
    PolicyCtValue, PolicyKey, PolicyState,
    policy::{direction, endpoint_flags, identity, policy_prefix, policy_state_flags, verdict},
    proto,
};

use crate::{
    maps::{CONFIG, ENDPOINTS, EVENTS, IPCACHE, POL_CT, POL_STATE, POLICY},
    metrics,
    nat::{self, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4Header},
};

const TCP_FLAGS_OFF: usize = 13;

/// What policy needs of an IPv4 packet: its addresses, protocol and (TCP, UDP, SCTP) ports,
/// network byte order.
#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
}

impl Packet {
    #[inline(always)]
    fn ct_key(&self) -> PolicyCtKey {
        PolicyCtKey::new(self.saddr, self.daddr, self.sport, self.dport, self.proto)
    }
}

/// Parses an IPv4 packet; `Ok(None)` for other ethertypes. Protocols without ports and
/// non-first fragments have ports 0 (only rules without ports can allow them).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, DropReason> {
    let Some(Ipv4Header {
        first_fragment,
        proto,
        l4_off,
    }) = nat::ipv4_header(ctx)?
    else {
        return Ok(None);
    };
    let has_ports =
        first_fragment && (proto == proto::TCP || proto == proto::UDP || proto == proto::SCTP);
    let (ports, tcp_flags) = if has_ports {
        let ports: [u16; 2] = ctx.load(l4_off).map_err(|_| DropReason::Malformed)?;
        let flags: u8 = if proto == proto::TCP {
            ctx.load(l4_off + TCP_FLAGS_OFF)
                .map_err(|_| DropReason::Malformed)?
        } else {
            0
        };
        (ports, flags)
    } else {
        ([0, 0], 0)
    };
    Ok(Some(Packet {
        saddr: ctx.load(IP_SADDR_OFF).map_err(|_| DropReason::Malformed)?,
        daddr: ctx.load(IP_DADDR_OFF).map_err(|_| DropReason::Malformed)?,
        sport: ports[0],
        dport: ports[1],
        proto,
        tcp_flags,
    }))
}

/// The verdict on a flow, as its first packet had it.
struct Decision {
    allowed: bool,
    /// The side the verdict concerns (the isolated end that refused, else the destination if
    /// it is local, else the source).
    dir: u8,
    egress_policy: u32,
    ingress_policy: u32,
    src_identity: u32,
    dst_identity: u32,
}

/// Checks a packet against NetworkPolicy. `Ok(())` lets it go on; `Err` drops it (the
/// caller counts the reason, the event is already sent).
#[inline(always)]
pub fn enforce(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    let state = POL_STATE.get(0).copied().unwrap_or(PolicyState {
        revision: 0,
        flags: 0,
    });
    let key = pkt.ct_key();
    // An established flow, either way.
    let (entry, original) = match POL_CT.get_ptr_mut(&key) {
        Some(e) => (Some(e), key),
        None => {
            let reversed = key.reversed();
            (POL_CT.get_ptr_mut(&reversed), reversed)
        }
    };
    if let Some(entry) = entry {
        // SAFETY: a live value of the LRU map; the revision is a plain u32 read.
        if unsafe { (*entry).revision } == state.revision {
            return Ok(());
        }
        let d = evaluate(&original);
        if d.allowed {
            // SAFETY: as above; racing writers store the same fields.
            unsafe {
                (*entry).revision = state.revision;
                (*entry).egress_policy = d.egress_policy;
                (*entry).ingress_policy = d.ingress_policy;
            }
            return Ok(());
        }
        let _ = POL_CT.remove(&original);
        return Err(refuse(ctx, pkt, &d));
    }

    let d = evaluate(&key);
    if !d.allowed {
        return Err(refuse(ctx, pkt, &d));
    }
    let value = PolicyCtValue {
        revision: state.revision,
        egress_policy: d.egress_policy,
        ingress_policy: d.ingress_policy,
        pad: 0,
    };
    // An LRU map makes room by itself; a failed insert only means the next packet is
    // checked again.
    let _ = POL_CT.insert(&key, &value, 0);
    if d.egress_policy != 0 {
        metrics::count(Counter::PolicyAllowedEgress, u64::from(ctx.len()));
    }
    if d.ingress_policy != 0 {
        metrics::count(Counter::PolicyAllowedIngress, u64::from(ctx.len()));
    }
    if state.flags & policy_state_flags::ALLOWED_EVENTS != 0 {
        let policy = if d.dir == direction::INGRESS {
            d.ingress_policy
        } else {
            d.egress_policy
        };
        emit(ctx, pkt, &d, verdict::ALLOWED, 0, policy);
    }
    Ok(())
}

/// Sends the drop event and names the reason.
#[inline(always)]
fn refuse(ctx: &TcContext, pkt: &Packet, d: &Decision) -> DropReason {
    let reason = if d.dir == direction::INGRESS {
        DropReason::PolicyIngress
    } else {
        DropReason::PolicyEgress
    };
    emit(ctx, pkt, d, verdict::DROPPED, reason as u32, 0);
    reason
}

/// The verdict of policy on a new flow `k`: the egress rules of its source if that is an
/// isolated local Pod, then the ingress rules of its destination likewise. The node itself may
/// always reach its Pods (kubelet's probes come from it).
#[inline(always)]
fn evaluate(k: &PolicyCtKey) -> Decision {
    let node_ip = CONFIG.get(0).map_or(0, |c| c.node_ip);
    // SAFETY: copied out at once.
    let src_ep = unsafe { ENDPOINTS.get(EndpointKey { address: k.saddr }) }.copied();
    // SAFETY: copied out at once.
    let dst_ep = unsafe { ENDPOINTS.get(EndpointKey { address: k.daddr }) }.copied();
    let src_identity = identity_of(k.saddr, src_ep.as_ref(), node_ip);
    let dst_identity = identity_of(k.daddr, dst_ep.as_ref(), node_ip);
    let mut d = Decision {
        allowed: true,
        dir: if dst_ep.is_some() {
            direction::INGRESS
        } else {
            direction::EGRESS
        },
        egress_policy: 0,
        ingress_policy: 0,
        src_identity,
        dst_identity,
    };
    if let Some(ep) = src_ep
        && ep.flags & endpoint_flags::EGRESS_ISOLATED != 0
    {
        match allowed_by(k.saddr, dst_identity, direction::EGRESS, k.proto, k.dport) {
            Some(policy) => d.egress_policy = policy,
            None => {
                d.allowed = false;
                d.dir = direction::EGRESS;
                return d;
            }
        }
    }
    if let Some(ep) = dst_ep
        && ep.flags & endpoint_flags::INGRESS_ISOLATED != 0
        && src_identity != identity::HOST
    {
        match allowed_by(k.daddr, src_identity, direction::INGRESS, k.proto, k.dport) {
            Some(policy) => d.ingress_policy = policy,
            None => {
                d.allowed = false;
                d.dir = direction::INGRESS;
            }
        }
    }
    d
}

/// The security identity of an address: the node's own, a local Pod's (from its endpoint
/// entry once the agent assigned it), else the longest ipcache prefix, else the world.
#[inline(always)]
fn identity_of(addr: u32, ep: Option<&EndpointInfo>, node_ip: u32) -> u32 {
    if addr == node_ip {
        return identity::HOST;
    }
    if let Some(ep) = ep
        && ep.identity != 0
    {
        return ep.identity;
    }
    let key = Key::new(32, IpcacheKey { address: addr });
    IPCACHE.get(&key).map_or(identity::WORLD, |v| v.identity)
}

/// The policy that lets `endpoint` talk with `peer` in `dir` on `proto`/`dport`, if any:
/// the exact peer first, then rules for any peer. The trie's longest match covers "all
/// protocols", "all ports of a protocol" and port ranges.
#[inline(always)]
fn allowed_by(endpoint: u32, peer: u32, dir: u8, proto: u8, dport: u16) -> Option<u32> {
    let exact = Key::new(
        policy_prefix::FULL,
        PolicyKey::lookup(endpoint, peer, dir, proto, dport),
    );
    if let Some(v) = POLICY.get(&exact) {
        return Some(v.policy.max(1));
    }
    let any = Key::new(
        policy_prefix::FULL,
        PolicyKey::lookup(endpoint, identity::ANY, dir, proto, dport),
    );
    POLICY.get(&any).map(|v| v.policy.max(1))
}

/// Sends a flow event; a full ring buffer is counted, never waited for.
#[inline(always)]
fn emit(ctx: &TcContext, pkt: &Packet, d: &Decision, verdict: u8, reason: u32, policy: u32) {
    // SAFETY: `ctx.skb.skb` is the valid __sk_buff of this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let event = FlowEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        verdict,
        dir: d.dir,
        tcp_flags: pkt.tcp_flags,
        reason,
        policy,
        src_identity: d.src_identity,
        dst_identity: d.dst_identity,
        rev_nat_index: 0,
        pad: [0; 2],
        ifindex,
    };
    if EVENTS.output::<FlowEvent>(&event, 0).is_err() {
        metrics::count(Counter::EventsLost, 0);
    }
}
