//! cgroup/sendmsg4: each datagram of an unconnected UDP socket sent to a ClusterIP goes to a
//! backend; the reverse entry keyed by the socket cookie lets recvmsg4 restore the source.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{V4, refuse, xlate_fwd};

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    match xlate_fwd::<V4>(&ctx, Counter::SockSendmsgXlated) {
        Ok(v) => v,
        Err(reason) => refuse(reason),
    }
}
