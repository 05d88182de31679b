//! cgroup/connect6: connect4's translation for AF_INET6 sockets: IPv6 ClusterIPs, and IPv4
//! ClusterIPs through their IPv4-mapped address.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{refuse, xlate_fwd6};

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    match xlate_fwd6(&ctx, Counter::SockConnectXlated) {
        Ok(v) => v,
        Err(reason) => refuse(reason),
    }
}
