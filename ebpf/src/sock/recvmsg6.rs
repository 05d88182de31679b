//! cgroup/recvmsg6: recvmsg4's reverse translation for AF_INET6 sockets (IPv4-mapped
//! peers). Must always return 1.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{SYS_PROCEED, xlate_rev6};

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    xlate_rev6(&ctx, Counter::SockRecvmsgRevXlated);
    SYS_PROCEED
}
