//! tcx ingress of a Pod's host-side veth, i.e. every packet leaving the Pod: anti-spoofing
//! (the source must be the address of the endpoint behind this very veth), NetworkPolicy
//! (the Pod's egress, and a local destination's ingress), reverse
//! translation of replies to NodePort flows the uplink program sent to this Pod, then delivery
//! straight into a local destination Pod with `bpf_redirect_peer` (kernel 5.10, 9aa1206e8f48),
//! or the node's routing for everything else.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use keelson_common::{Counter, DropReason, EndpointKey, ct_dir};

use crate::{
    maps::ENDPOINTS,
    metrics,
    nat::{self, ETH_HLEN, ETH_P_IP, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF},
    policy,
};

const IP_TTL_OFF: usize = ETH_HLEN + 8;
const BPF_F_RECOMPUTE_CSUM_NONE: u64 = 0;

#[classifier]
pub fn tc_from_container(ctx: TcContext) -> i32 {
    match try_from_container(&ctx) {
        Ok(v) => v,
        Err(reason) => {
            metrics::drop(reason, u64::from(ctx.len()));
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| DropReason::Malformed)?);
    if ethertype != ETH_P_IP {
        // ARP and IPv6 are left to the kernel until the datapath handles them.
        return Ok(TC_ACT_OK);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| DropReason::Malformed)?;
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return Err(DropReason::Malformed);
    }
    let saddr: u32 = ctx.load(IP_SADDR_OFF).map_err(|_| DropReason::Malformed)?;
    let daddr: u32 = ctx.load(IP_DADDR_OFF).map_err(|_| DropReason::Malformed)?;

    // SAFETY: `ctx.skb.skb` is the valid __sk_buff of this invocation; ifindex is readable.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once.
    match unsafe { ENDPOINTS.get(EndpointKey { address: saddr }) } {
        Some(ep) if ep.ifindex == ifindex => {}
        _ => return Err(DropReason::InvalidSource),
    }

    let len = u64::from(ctx.len());
    // NetworkPolicy sees the packet as the Pod sent it: after the socket-level translation (so
    // the backend of a Service), before the reverse translation of a NodePort reply (so the
    // tuple its flow was allowed with). For a local destination this also checks its ingress.
    if let Some(pkt) = policy::parse(ctx)? {
        policy::enforce(ctx, &pkt)?;
    }
    metrics::count(Counter::ForwardedEgress, len);
    // A reply to a client outside the node: the uplink program translated the flow towards
    // this Pod, its conntrack entry turns the source back into the frontend. It leaves by the
    // uplink directly: the stack would drop a packet from the node's own address arriving on
    // a veth as martian.
    if let Some(flow) = nat::parse(ctx)?
        && let Some(entry) = nat::ct_lookup(&flow.key(ct_dir::REPLY))
        && let Some(cfg) = nat::config()
    {
        nat::apply_ct(ctx, &flow, entry)?;
        metrics::count(Counter::NodePortRevXlated, len);
        return Ok(nat::redirect_neigh(cfg.uplink_ifindex));
    }
    // SAFETY: copied out at once.
    let Some(dst) = (unsafe { ENDPOINTS.get(EndpointKey { address: daddr }) }).copied() else {
        metrics::count(Counter::FromContainerStack, len);
        return Ok(TC_ACT_OK);
    };

    // Local delivery bypasses the node's IP forwarding, so do what it would do: decrement the
    // TTL (and let the kernel answer with ICMP time-exceeded when it would reach 0), and make
    // the frame look as if the host veth of the destination sent it.
    let ttl_word: u16 = ctx.load(IP_TTL_OFF).map_err(|_| DropReason::Malformed)?;
    // The TTL is the first byte on the wire, the low byte of this little-endian load.
    if ttl_word & 0x00ff <= 1 {
        metrics::count(Counter::FromContainerStack, len);
        return Ok(TC_ACT_OK);
    }
    let new_ttl_word = ttl_word - 1;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(ttl_word), u64::from(new_ttl_word), 2)
        .map_err(|_| DropReason::Malformed)?;
    ctx.store(IP_TTL_OFF, &new_ttl_word, BPF_F_RECOMPUTE_CSUM_NONE)
        .map_err(|_| DropReason::Malformed)?;
    ctx.store(0, &dst.pod_mac, 0)
        .map_err(|_| DropReason::Malformed)?;
    ctx.store(6, &dst.host_mac, 0)
        .map_err(|_| DropReason::Malformed)?;
    metrics::count(Counter::FromContainerLocal, len);
    metrics::count(Counter::ForwardedIngress, len);
    // SAFETY: bpf_redirect_peer has no memory preconditions; it returns TC_ACT_REDIRECT or
    // TC_ACT_SHOT for invalid flags.
    Ok(unsafe { bpf_redirect_peer(dst.ifindex, 0) } as i32)
}
