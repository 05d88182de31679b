//! Socket-level load balancing: cgroup sock_addr hooks rewrite the address a socket talks to,
//! once per connect()/sendmsg(), so east-west traffic to a ClusterIP is never NATed per packet.
//! The model of Cilium's `bpf_sock.c`: forward translation on connect/sendmsg, reverse
//! translation on recvmsg/getpeername through a map keyed by the socket cookie. The v6 hooks
//! serve IPv4 Services reached through IPv4-mapped addresses; native IPv6 Services are not
//! handled yet.

mod connect4;
mod connect6;
mod getpeername4;
mod getpeername6;
mod recvmsg4;
mod recvmsg6;
mod sendmsg4;
mod sendmsg6;

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use keelson_common::{Counter, DropReason, SockRevNatKey, SockRevNatValue};

use crate::{
    lb::{Lookup, select_backend},
    maps::SOCK_REVNAT,
    metrics,
};

/// Verdicts of cgroup sock_addr programs: 1 lets the call proceed, 0 fails it with EPERM.
pub const SYS_PROCEED: i32 = 1;
pub const SYS_REJECT: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// The third word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), as stored.
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The destination (or peer) of a sock_addr call, network byte order.
pub struct SockDst {
    address: u32,
    port: u16,
    proto: u8,
}

/// How a hook family reads and writes the IPv4 address of a call. The kernel lets v4 hooks
/// touch only `user_ip4` and v6 hooks only `user_ip6` (net/core/filter.c,
/// sock_addr_is_valid_access), so each hook is compiled for exactly one of them.
pub trait Family {
    fn read(ctx: &SockAddrContext) -> Option<SockDst>;
    fn write(ctx: &SockAddrContext, address: u32, port: u16);
}

/// AF_INET sockets: connect4, sendmsg4, recvmsg4, getpeername4.
pub struct V4;

/// AF_INET6 sockets talking to IPv4 through IPv4-mapped addresses (dual-stack applications
/// such as Java or Node.js do this for every IPv4 destination; the kernel runs only the v6
/// hooks for them, as Cilium's `sock6_xlate_v4_in_v6` handles).
pub struct V6Mapped;

impl Family for V4 {
    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> Option<SockDst> {
        // SAFETY: the kernel hands every sock_addr program a valid `bpf_sock_addr`; v4 hooks
        // may read these fields with 4-byte loads.
        let (family, address, port, proto) = unsafe {
            let sa = &*ctx.sock_addr;
            (sa.user_family, sa.user_ip4, sa.user_port, sa.protocol)
        };
        if family != AF_INET {
            return None;
        }
        // `user_port` holds the port in network byte order in its first two bytes.
        Some(SockDst {
            address,
            port: port as u16,
            proto: proto as u8,
        })
    }

    #[inline(always)]
    fn write(ctx: &SockAddrContext, address: u32, port: u16) {
        // SAFETY: user_ip4 and user_port are writable (4-byte stores) from the v4 hooks.
        unsafe {
            (*ctx.sock_addr).user_ip4 = address;
            (*ctx.sock_addr).user_port = u32::from(port);
        }
    }
}

impl Family for V6Mapped {
    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> Option<SockDst> {
        // SAFETY: as above; v6 hooks may read user_ip6 word by word.
        let (family, w0, w1, w2, address, port, proto) = unsafe {
            let sa = &*ctx.sock_addr;
            (
                sa.user_family,
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
                sa.user_port,
                sa.protocol,
            )
        };
        if family != AF_INET6 || w0 != 0 || w1 != 0 || w2 != V4_MAPPED_PREFIX {
            return None;
        }
        Some(SockDst {
            address,
            port: port as u16,
            proto: proto as u8,
        })
    }

    #[inline(always)]
    fn write(ctx: &SockAddrContext, address: u32, port: u16) {
        // SAFETY: user_ip6 (4-byte stores) and user_port are writable from the v6 hooks; the
        // first three words already hold the IPv4-mapped prefix.
        unsafe {
            (*ctx.sock_addr).user_ip6[3] = address;
            (*ctx.sock_addr).user_port = u32::from(port);
        }
    }
}

#[inline(always)]
fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_netns_cookie accepts a sock_addr context (kernel 5.7, f318903c0bf4).
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context (kernel 4.12+, d692f1138a4b).
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Forward translation for connect4 and sendmsg4: ClusterIP:port → a backend. Records the
/// reverse entry so replies and getpeername() show the ClusterIP again.
#[inline(always)]
fn xlate_fwd<F: Family>(ctx: &SockAddrContext, counter: Counter) -> Result<i32, DropReason> {
    let Some(dst) = F::read(ctx) else {
        return Ok(SYS_PROCEED);
    };
    let lookup = select_backend(dst.address, dst.port, dst.proto, || netns_cookie(ctx))?;
    let (backend, rev_nat_index) = match lookup {
        Lookup::NotService => return Ok(SYS_PROCEED),
        Lookup::Backend {
            backend,
            rev_nat_index,
        } => (backend, rev_nat_index),
    };
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        address: backend.address,
        port: backend.port,
        pad: [0; 2],
    };
    let value = SockRevNatValue {
        address: dst.address,
        port: dst.port,
        rev_nat_index,
    };
    if SOCK_REVNAT.insert(key, value, u64::from(BPF_ANY)).is_err()
        && dst.proto == keelson_common::proto::UDP
    {
        // Without the entry, replies would come from an address the application never
        // addressed and be discarded by connected or address-checking UDP clients.
        return Err(DropReason::SockRevNatFull);
    }
    F::write(ctx, backend.address, backend.port);
    metrics::count(counter, 0);
    Ok(SYS_PROCEED)
}

/// Reverse translation for recvmsg4 and getpeername4: backend → ClusterIP:port for sockets
/// the forward path translated.
#[inline(always)]
fn xlate_rev<F: Family>(ctx: &SockAddrContext, counter: Counter) {
    let Some(src) = F::read(ctx) else {
        return;
    };
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        address: src.address,
        port: src.port,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SOCK_REVNAT.get(key) } {
        let (address, port) = (v.address, v.port);
        F::write(ctx, address, port);
        metrics::count(counter, 0);
    }
}

#[inline(always)]
fn refuse(reason: DropReason) -> i32 {
    metrics::drop(reason, 0);
    SYS_REJECT
}
