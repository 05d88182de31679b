//! cgroup/connect6: connect4's translation for AF_INET6 sockets connecting to a ClusterIP
//! through its IPv4-mapped address.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{V6Mapped, refuse, xlate_fwd};

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    match xlate_fwd::<V6Mapped>(&ctx, Counter::SockConnectXlated) {
        Ok(v) => v,
        Err(reason) => refuse(reason),
    }
}
