//! cgroup/getpeername4: getpeername() on a socket connected through a ClusterIP returns the
//! ClusterIP, as the application expects. Must always return 1 (kernel 5.8, 1b66d253610c).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use keelson_common::Counter;

use super::{SYS_PROCEED, V4, xlate_rev};

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    xlate_rev::<V4>(&ctx, Counter::SockPeernameRevXlated);
    SYS_PROCEED
}
