//! tcx egress of the node's uplink: replies of the node's own sockets to flows the uplink
//! program translated towards them (a hostNetwork backend at the node's address) get their
//! source turned back into the frontend. Everything else leaves untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use keelson_common::{Counter, DropReason, ct_dir, ct_flags};

use crate::{metrics, nat};

#[classifier]
pub fn tc_to_netdev(ctx: TcContext) -> i32 {
    match try_to_netdev(&ctx) {
        Ok(v) => v,
        Err(reason) => {
            metrics::drop(reason, u64::from(ctx.len()));
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_to_netdev(ctx: &TcContext) -> Result<i32, DropReason> {
    // Malformed or foreign packets are the stack's business on the way out.
    let Ok(Some(flow)) = nat::parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let Some(entry) = nat::ct_lookup(&flow.key(ct_dir::REPLY)) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: the flags are read from a live entry; a racing update of them is harmless.
    if unsafe { (*entry).flags } & ct_flags::HOST_BACKEND == 0 {
        // Replies translated elsewhere (from_container, from_netdev) pass here already
        // rewritten; their keys never match, but be strict all the same.
        return Ok(TC_ACT_OK);
    }
    nat::apply_ct(ctx, &flow, entry)?;
    metrics::count(Counter::NodePortRevXlated, u64::from(ctx.len()));
    Ok(TC_ACT_OK)
}
