//! cgroup/recvmsg4: a datagram received from a backend this socket reached through a ClusterIP
//! is shown as coming from the ClusterIP. recvmsg4 must always return 1 (kernel 5.2,
//! 983695fa6765).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{SYS_PROCEED, V4, xlate_rev};

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    xlate_rev::<V4>(&ctx, Counter::SockRecvmsgRevXlated);
    SYS_PROCEED
}
