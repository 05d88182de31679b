//! cgroup/sendmsg6: sendmsg4's translation for unconnected AF_INET6 UDP sockets sending to
//! a ClusterIP through its IPv4-mapped address.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{refuse, xlate_fwd6};

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    match xlate_fwd6(&ctx, Counter::SockSendmsgXlated) {
        Ok(v) => v,
        Err(reason) => refuse(reason),
    }
}
