//! Per-packet Service translation for flows the socket hooks never see (NodePort,
//! LoadBalancer and external IPs reached from outside the node): parsing a flow, the
//! conntrack entries of both directions, SNAT source ports, and rewriting addresses, ports and
//! checksums. The tc programs of the uplink and of the Pods' veths call into it.
//!
//! The model of Cilium's `nodeport_lb4` and `snat_v4`: the first packet of a flow picks a
//! backend and records two conntrack entries, one per direction; every later packet is one
//! lookup and a rewrite.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::{bpf_ktime_get_ns, bpf_redirect_neigh},
    programs::TcContext,
};
use keelson_common::{
    CtKey, CtValue, DropReason, NodeConfig, ct_closed, ct_dir, ct_flags, ct_idle_limit, limits,
    proto, service_flags,
};

use crate::{
    lb::{Lb4, Lookup, select_backend},
    maps::{CONFIG, CT, ENDPOINTS},
};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;
const IP_FRAG_OFF: usize = ETH_HLEN + 6;
const IP_PROTO_OFF: usize = ETH_HLEN + 9;
/// The fragment offset bits of the flags/offset word, as loaded (network order read as
/// little-endian).
const IP_FRAG_OFFSET_MASK: u16 = 0xff1f;
const TCP_CSUM_OFF: usize = 16;
const TCP_FLAGS_OFF: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const UDP_CSUM_OFF: usize = 6;
const EEXIST: i32 = -17;
/// How many SNAT ports are tried for one new flow before it is refused.
const SNAT_TRIES: u16 = 16;

/// The addresses and ports of an IPv4 TCP or UDP packet, network byte order.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// A TCP SYN without ACK: the client opens a new connection.
    pub syn: bool,
    /// [`ct_flags::FIN`] and/or [`ct_flags::RST`] if the segment carries them.
    pub closing: u8,
    /// The TCP flags byte (0 for UDP), for flow events.
    pub tcp_flags: u8,
}

impl Flow {
    #[inline(always)]
    pub fn key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            pad: [0; 2],
        }
    }
}

/// The IPv4 header of a frame: whether it is a first (or only) fragment, the protocol and the
/// offset of the transport header. `Ok(None)` for other ethertypes.
pub struct Ipv4Header {
    pub first_fragment: bool,
    pub proto: u8,
    pub l4_off: usize,
}

#[inline(always)]
pub fn ipv4_header(ctx: &TcContext) -> Result<Option<Ipv4Header>, DropReason> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| DropReason::Malformed)?);
    if ethertype != ETH_P_IP {
        return Ok(None);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| DropReason::Malformed)?;
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return Err(DropReason::Malformed);
    }
    let frag: u16 = ctx.load(IP_FRAG_OFF).map_err(|_| DropReason::Malformed)?;
    Ok(Some(Ipv4Header {
        // Only the offset matters: a first fragment (offset 0, MF set) still has the ports.
        first_fragment: frag & IP_FRAG_OFFSET_MASK == 0,
        proto: ctx.load(IP_PROTO_OFF).map_err(|_| DropReason::Malformed)?,
        l4_off: ETH_HLEN + usize::from(version_ihl & 0x0f) * 4,
    }))
}

/// Parses an IPv4 TCP/UDP packet. `Ok(None)` for everything the translation leaves alone:
/// other ethertypes and protocols, and non-first fragments (they carry no ports).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Flow>, DropReason> {
    let Some(Ipv4Header {
        first_fragment,
        proto,
        l4_off,
    }) = ipv4_header(ctx)?
    else {
        return Ok(None);
    };
    if !first_fragment || (proto != proto::TCP && proto != proto::UDP) {
        return Ok(None);
    }
    let ports: [u16; 2] = ctx.load(l4_off).map_err(|_| DropReason::Malformed)?;
    let tcp_flags: u8 = if proto == proto::TCP {
        ctx.load(l4_off + TCP_FLAGS_OFF)
            .map_err(|_| DropReason::Malformed)?
    } else {
        0
    };
    let syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut closing = 0;
    if tcp_flags & TCP_FIN != 0 {
        closing |= ct_flags::FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        closing |= ct_flags::RST;
    }
    Ok(Some(Flow {
        saddr: ctx.load(IP_SADDR_OFF).map_err(|_| DropReason::Malformed)?,
        daddr: ctx.load(IP_DADDR_OFF).map_err(|_| DropReason::Malformed)?,
        sport: ports[0],
        dport: ports[1],
        proto,
        l4_off,
        syn,
        closing,
        tcp_flags,
    }))
}

/// The node's configuration as the agent wrote it.
#[inline(always)]
pub fn config() -> Option<NodeConfig> {
    CONFIG.get(0).copied().filter(|c| c.uplink_ifindex != 0)
}

/// Rewrites source and destination of `flow` to the given ones, fixing the IPv4 and the
/// transport checksums incrementally (RFC 1624). Unchanged fields are not touched.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
) -> Result<(), DropReason> {
    let (csum_off, mangled) = if flow.proto == proto::TCP {
        (flow.l4_off + TCP_CSUM_OFF, 0)
    } else {
        // A UDP checksum of 0 means "none" and must stay 0 (RFC 768).
        (flow.l4_off + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR);
    let e = |_| DropReason::RewriteFailed;
    if saddr != flow.saddr {
        ctx.l4_csum_replace(
            csum_off,
            flow.saddr.into(),
            saddr.into(),
            pseudo | mangled | 4,
        )
        .map_err(e)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, flow.saddr.into(), saddr.into(), 4)
            .map_err(e)?;
        ctx.store(IP_SADDR_OFF, &saddr, 0).map_err(e)?;
    }
    if daddr != flow.daddr {
        ctx.l4_csum_replace(
            csum_off,
            flow.daddr.into(),
            daddr.into(),
            pseudo | mangled | 4,
        )
        .map_err(e)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, flow.daddr.into(), daddr.into(), 4)
            .map_err(e)?;
        ctx.store(IP_DADDR_OFF, &daddr, 0).map_err(e)?;
    }
    if sport != flow.sport {
        ctx.l4_csum_replace(csum_off, flow.sport.into(), sport.into(), mangled | 2)
            .map_err(e)?;
        ctx.store(flow.l4_off, &sport, 0).map_err(e)?;
    }
    if dport != flow.dport {
        ctx.l4_csum_replace(csum_off, flow.dport.into(), dport.into(), mangled | 2)
            .map_err(e)?;
        ctx.store(flow.l4_off + 2, &dport, 0).map_err(e)?;
    }
    Ok(())
}

/// Applies a conntrack entry to a packet of its flow and refreshes the entry.
#[inline(always)]
pub fn apply_ct(ctx: &TcContext, flow: &Flow, entry: *mut CtValue) -> Result<CtValue, DropReason> {
    // SAFETY: `entry` is a live value of the conntrack map; it is copied out whole, and only the
    // timestamp and the FIN/RST bits are written back (a racing update of them is harmless).
    let value = unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        (*entry).flags |= flow.closing;
        *entry
    };
    rewrite(
        ctx,
        flow,
        value.nat_saddr,
        value.nat_sport,
        value.nat_daddr,
        value.nat_dport,
    )?;
    Ok(value)
}

/// Forgets a flow: its original entry `key` and the reply entry its value implies. A SYN on
/// a tuple conntrack still holds means the client opened a new connection from a reused port;
/// it is balanced afresh rather than pinned to the old connection's backend.
#[inline(always)]
pub fn ct_forget(key: &CtKey, value: &CtValue) {
    let _ = CT.remove(&key.partner(value));
    let _ = CT.remove(key);
}

/// The conntrack entry of `key`, if any.
#[inline(always)]
pub fn ct_lookup(key: &CtKey) -> Option<*mut CtValue> {
    CT.get_ptr_mut(key)
}

/// A new flow to an external frontend of this node: picks a backend, records both directions
/// in conntrack and returns the rewrite of the original direction. `Ok(None)` when the
/// destination is not an external frontend.
#[inline(always)]
pub fn new_external_flow(flow: &Flow, cfg: &NodeConfig) -> Result<Option<CtValue>, DropReason> {
    let hash = flow_hash(flow);
    let looked = select_backend::<Lb4>(
        flow.daddr,
        flow.dport,
        flow.proto,
        service_flags::EXTERNAL,
        Some(hash),
        // Affinity of clients outside the node is by their address; the high bit keeps these
        // keys apart from the socket hooks' network-namespace cookies.
        || (1u64 << 63) | u64::from(flow.saddr),
    )?;
    let (backend_id, backend, rev_nat_index) = match looked {
        Lookup::NotService => return Ok(None),
        Lookup::Backend {
            backend_id,
            backend,
            rev_nat_index,
        } => (backend_id, backend, rev_nat_index),
    };
    // SAFETY: copied out at once.
    let local = unsafe {
        ENDPOINTS.get(keelson_common::EndpointKey {
            address: backend.address,
        })
    }
    .is_some();
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut fwd = CtValue {
        nat_saddr: flow.saddr,
        nat_daddr: backend.address,
        nat_sport: flow.sport,
        nat_dport: backend.port,
        backend_id,
        rev_nat_index,
        flags: 0,
        pad: [0; 5],
        last_seen_ns: now,
    };
    let rev = CtValue {
        nat_saddr: flow.daddr,
        nat_daddr: flow.saddr,
        nat_sport: flow.dport,
        nat_dport: flow.sport,
        backend_id,
        rev_nat_index,
        flags: 0,
        pad: [0; 5],
        last_seen_ns: now,
    };
    let mut reply_key = CtKey {
        saddr: backend.address,
        daddr: flow.saddr,
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        dir: ct_dir::REPLY,
        pad: [0; 2],
    };
    if local || backend.address == cfg.node_ip {
        // The reply passes the backend's veth (a Pod) or the uplink's egress (a socket of the
        // node itself), where it is translated back: the client's address can stay
        // (kube-proxy keeps it for local endpoints too).
        let flag = if local {
            ct_flags::LOCAL_BACKEND
        } else {
            ct_flags::HOST_BACKEND
        };
        fwd.flags = flag;
        let mut rev = rev;
        rev.flags = flag;
        CT.insert(reply_key, rev, u64::from(BPF_ANY))
            .map_err(|_| DropReason::CtFull)?;
    } else {
        // The reply must come back through this node: SNAT to the node's address with a port
        // no other flow to this backend uses.
        fwd.flags = ct_flags::SNAT;
        fwd.nat_saddr = cfg.node_ip;
        reply_key.daddr = cfg.node_ip;
        let mut rev = rev;
        rev.flags = ct_flags::SNAT;
        let span = cfg.snat_port_max.saturating_sub(cfg.snat_port_min) as u32 + 1;
        let first = (hash % span) as u16;
        let mut chosen = None;
        for i in 0..SNAT_TRIES {
            let port = cfg
                .snat_port_min
                .wrapping_add(((u32::from(first) + u32::from(i)) % span) as u16);
            reply_key.dport = port.to_be();
            match CT.insert(reply_key, rev, u64::from(BPF_NOEXIST)) {
                Ok(()) => {
                    chosen = Some(port.to_be());
                    break;
                }
                Err(EEXIST) => {
                    // The port is held by another flow: take it over if that flow is over.
                    if reclaim(&reply_key, now) {
                        CT.insert(reply_key, rev, u64::from(BPF_ANY))
                            .map_err(|_| DropReason::CtFull)?;
                        chosen = Some(port.to_be());
                        break;
                    }
                }
                Err(_) => return Err(DropReason::CtFull),
            }
        }
        fwd.nat_sport = chosen.ok_or(DropReason::NoSnatPort)?;
    }
    if CT
        .insert(flow.key(ct_dir::ORIGINAL), fwd, u64::from(BPF_ANY))
        .is_err()
    {
        let _ = CT.remove(&reply_key);
        return Err(DropReason::CtFull);
    }
    Ok(Some(fwd))
}

/// Whether the flow holding reply entry `reply_key` is over, so that its SNAT port may serve
/// a new flow; if so its original entry is removed (the reply entry is then overwritten).
/// Over means: a RST went either way, FINs went both ways, or neither direction was seen for
/// the idle limit of its protocol (the agent's conntrack GC uses the same ones).
#[inline(always)]
fn reclaim(reply_key: &CtKey, now: u64) -> bool {
    // SAFETY: copied out at once.
    let Some(reply) = (unsafe { CT.get(reply_key) }).copied() else {
        return true;
    };
    let original = reply_key.partner(&reply);
    // SAFETY: copied out at once.
    let (orig_flags, orig_seen) =
        (unsafe { CT.get(&original) }).map_or((ct_flags::RST, 0), |v| (v.flags, v.last_seen_ns));
    // A flow is idle only when neither direction was seen: a client sending one way (UDP
    // without answers) keeps its port.
    let last_seen = if orig_seen > reply.last_seen_ns {
        orig_seen
    } else {
        reply.last_seen_ns
    };
    let over = ct_closed(orig_flags, reply.flags)
        || now.saturating_sub(last_seen) > ct_idle_limit(reply_key.proto, false);
    if over {
        let _ = CT.remove(&original);
    }
    over
}

/// A hash of the flow's 5-tuple (a Jenkins-style mix): the Maglev table index and the first
/// SNAT port tried. It must not depend on the node, so that every node picks the same Maglev
/// backend for a flow.
#[inline(always)]
pub fn flow_hash(flow: &Flow) -> u32 {
    let mut h = flow.saddr ^ 0x9e37_79b9;
    h = mix(h ^ flow.daddr);
    h = mix(h ^ ((u32::from(flow.sport) << 16) | u32::from(flow.dport)));
    mix(h ^ u32::from(flow.proto))
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    // The finaliser of MurmurHash3 (fmix32): every input bit affects every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Sends a rewritten packet out of `ifindex`, letting the neighbour subsystem fill in the
/// MAC addresses (kernel 5.10, b4ab31414970).
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: a null params pointer with length 0 asks the kernel to do the FIB lookup itself.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

const _: () = assert!(limits::SNAT_PORT_MIN <= limits::SNAT_PORT_MAX);
