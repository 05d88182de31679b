//! cgroup/sock_release: a socket the forward hooks translated is closed; its reverse entry
//! goes with it, so `sock_revnat` holds the sockets that exist rather than every socket ever
//! connected (an LRU full of dead sockets makes every insert evict, and may evict the entry of
//! a live socket).
//!
//! A connected socket's destination is the backend its connect() was given, which is how its
//! entry is keyed. Unconnected UDP sockets have no destination here; their entries (one per
//! backend they sent to) are left to the LRU.

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};
use keelson_common::{SockRevNatKey, SockRevNatKey6};

use super::{AF_INET, AF_INET6, SYS_PROCEED, V4_MAPPED_PREFIX};
use crate::maps::{SOCK_REVNAT, SOCK_REVNAT6};

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // Nothing to refuse: a socket that had no entry (most) is not an error either.
    match try_sock_release(&ctx) {
        Ok(v) => v,
        Err(_) => SYS_PROCEED,
    }
}

#[inline(always)]
fn try_sock_release(ctx: &SockContext) -> Result<i32, i32> {
    // SAFETY: the kernel hands sock_release programs a valid `bpf_sock`; these fields may be
    // read with loads of their own size (net/core/filter.c, bpf_sock_is_valid_access;
    // dst_port as 16 bits since 4421a582718a).
    let (family, port, ip4, ip6) = unsafe {
        let sk = &*ctx.sock;
        (
            sk.family,
            sk.dst_port,
            sk.dst_ip4,
            [sk.dst_ip6[0], sk.dst_ip6[1], sk.dst_ip6[2], sk.dst_ip6[3]],
        )
    };
    if port == 0 {
        return Ok(SYS_PROCEED);
    }
    // SAFETY: bpf_get_socket_cookie accepts a cgroup sock context (kernel 5.7).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if family == AF_INET
        || (family == AF_INET6 && ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_PREFIX)
    {
        let address = if family == AF_INET { ip4 } else { ip6[3] };
        let key = SockRevNatKey {
            cookie,
            address,
            port,
            pad: [0; 2],
        };
        SOCK_REVNAT.remove(&key)?;
    } else if family == AF_INET6 {
        let key = SockRevNatKey6 {
            cookie,
            address: ip6,
            port,
            pad: [0; 6],
        };
        SOCK_REVNAT6.remove(&key)?;
    }
    Ok(SYS_PROCEED)
}
