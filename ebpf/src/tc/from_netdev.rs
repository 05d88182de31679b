//! tcx ingress of the node's uplink: every packet reaching the node from the network.
//! Replies of translated flows are translated back and sent out again; new flows to a
//! NodePort, LoadBalancer or external IP of this node get a backend, conntrack entries and
//! the rewrite (Cilium's `from-netdev` with `nodeport_lb4`); everything else goes to the stack
//! untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use keelson_common::{Counter, CtValue, DropReason, EndpointKey, ct_dir, ct_flags};

use crate::{
    maps::ENDPOINTS,
    metrics,
    nat::{self, Flow},
    policy::{self, Packet},
};

#[classifier]
pub fn tc_from_netdev(ctx: TcContext) -> i32 {
    match try_from_netdev(&ctx) {
        Ok(v) => v,
        Err(reason) => {
            metrics::drop(reason, u64::from(ctx.len()));
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_from_netdev(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(flow) = nat::parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    let Some(cfg) = nat::config() else {
        return Ok(TC_ACT_OK);
    };
    let len = u64::from(ctx.len());
    // SAFETY: `ctx.skb.skb` is the valid __sk_buff of this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    // A backend on another node answering a flow this node SNATed: back to the client, out of
    // the interface it came in by.
    if let Some(entry) = nat::ct_lookup(&flow.key(ct_dir::REPLY)) {
        nat::apply_ct(ctx, &flow, entry)?;
        metrics::count(Counter::NodePortRevXlated, len);
        return Ok(nat::redirect_neigh(ifindex));
    }
    let original = flow.key(ct_dir::ORIGINAL);
    if let Some(entry) = nat::ct_lookup(&original) {
        if flow.syn {
            // SAFETY: copied out at once.
            let old = unsafe { *entry };
            nat::ct_forget(&original, &old);
        } else {
            let value = nat::apply_ct(ctx, &flow, entry)?;
            metrics::count(Counter::NodePortXlated, len);
            return deliver(ctx, &flow, &value, ifindex);
        }
    }
    let Some(value) = nat::new_external_flow(&flow, &cfg)? else {
        return Ok(TC_ACT_OK);
    };
    metrics::count(Counter::CtCreated, len);
    rewrite_new(ctx, &flow, &value)?;
    metrics::count(Counter::NodePortXlated, len);
    deliver(ctx, &flow, &value, ifindex)
}

#[inline(always)]
fn rewrite_new(ctx: &TcContext, flow: &Flow, v: &CtValue) -> Result<(), DropReason> {
    nat::rewrite(
        ctx,
        flow,
        v.nat_saddr,
        v.nat_sport,
        v.nat_daddr,
        v.nat_dport,
    )
}

/// Hands a translated packet to its backend: straight into a local Pod with
/// `bpf_redirect_peer` (as from_container does) once its ingress policy allows it (against the
/// client's address, which a local backend keeps), to the node's own stack for a backend at
/// the node's address, or back out of the uplink towards the node that hosts the backend
/// (whose own ingress policy judges it there).
#[inline(always)]
fn deliver(ctx: &TcContext, flow: &Flow, v: &CtValue, uplink: u32) -> Result<i32, DropReason> {
    if v.flags & ct_flags::HOST_BACKEND != 0 {
        // A socket of the node: the stack delivers it; its reply is translated on egress.
        return Ok(TC_ACT_OK);
    }
    if v.flags & ct_flags::LOCAL_BACKEND != 0 {
        // SAFETY: copied out at once.
        if let Some(ep) = unsafe {
            ENDPOINTS.get(EndpointKey {
                address: v.nat_daddr,
            })
        }
        .copied()
        {
            // The packet as rewritten: the client (or the SNAT address) to the backend.
            let pkt = Packet {
                saddr: v.nat_saddr,
                daddr: v.nat_daddr,
                sport: v.nat_sport,
                dport: v.nat_dport,
                proto: flow.proto,
                tcp_flags: flow.tcp_flags,
            };
            policy::enforce(ctx, &pkt)?;
            metrics::count(Counter::ForwardedIngress, u64::from(ctx.len()));
            ctx.store(0, &ep.pod_mac, 0)
                .map_err(|_| DropReason::RewriteFailed)?;
            ctx.store(6, &ep.host_mac, 0)
                .map_err(|_| DropReason::RewriteFailed)?;
            // SAFETY: bpf_redirect_peer has no memory preconditions.
            return Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32);
        }
        // The Pod went away: the stack answers (or drops) for it.
        return Ok(TC_ACT_OK);
    }
    Ok(nat::redirect_neigh(uplink))
}
