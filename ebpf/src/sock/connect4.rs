//! cgroup/connect4: TCP and connected UDP sockets connecting to a ClusterIP are connected to a
//! backend instead; a Service without backends refuses the connect().

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{V4, refuse, xlate_fwd};

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    match xlate_fwd::<V4>(&ctx, Counter::SockConnectXlated) {
        Ok(v) => v,
        Err(reason) => refuse(reason),
    }
}
