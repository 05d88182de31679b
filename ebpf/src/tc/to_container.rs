//! tcx egress of a Pod's host-side veth: every packet the node's stack hands the Pod (from
//! another node, from the node itself, from outside). Its NetworkPolicy ingress is checked
//! here; packets another local Pod sends arrive by `bpf_redirect_peer` instead and were
//! checked by `from_container`.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use keelson_common::{Counter, DropReason};

use crate::{metrics, policy};

#[classifier]
pub fn tc_to_container(ctx: TcContext) -> i32 {
    match try_to_container(&ctx) {
        Ok(v) => v,
        Err(reason) => {
            metrics::drop(reason, u64::from(ctx.len()));
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_to_container(ctx: &TcContext) -> Result<i32, DropReason> {
    if let Some(pkt) = policy::parse(ctx)? {
        policy::enforce(ctx, &pkt)?;
    }
    metrics::count(Counter::ForwardedIngress, u64::from(ctx.len()));
    Ok(TC_ACT_OK)
}
