//! Socket-level load balancing: cgroup sock_addr hooks rewrite the address a socket talks to,
//! once per connect()/sendmsg(), so east-west traffic to a ClusterIP is never NATed per packet.
//! The model of Cilium's `bpf_sock.c`: forward translation on connect/sendmsg, reverse
//! translation on recvmsg/getpeername through a map keyed by the socket cookie. The v6 hooks
//! serve IPv6 Services and IPv4 Services reached through IPv4-mapped addresses.

mod connect4;
mod connect6;
mod getpeername4;
mod getpeername6;
mod recvmsg4;
mod recvmsg6;
mod release;
mod sendmsg4;
mod sendmsg6;

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use keelson_common::{
    Counter, DropReason, SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6,
};

use crate::{
    lb::{Lb, Lb4, Lb6, Lookup, select_backend},
    maps::{SOCK_REVNAT, SOCK_REVNAT6},
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
pub struct SockDst<A> {
    address: A,
    port: u16,
    proto: u8,
}

/// How a hook family reads and writes the address of a call, and where its reverse entries
/// go. The kernel lets v4 hooks touch only `user_ip4` and v6 hooks only `user_ip6`
/// (net/core/filter.c, sock_addr_is_valid_access), so each hook is compiled for its own.
pub trait Family {
    type L: Lb;
    fn read(ctx: &SockAddrContext) -> Option<SockDst<<Self::L as Lb>::Addr>>;
    fn write(ctx: &SockAddrContext, address: <Self::L as Lb>::Addr, port: u16);
    /// Records that socket `cookie` reaches `dst` through `backend`; false if the map refused.
    fn record(
        cookie: u64,
        backend: (<Self::L as Lb>::Addr, u16),
        dst: &SockDst<<Self::L as Lb>::Addr>,
        rev_nat_index: u16,
    ) -> bool;
    /// The frontend socket `cookie` reached `src` through, if any.
    fn reverse(
        cookie: u64,
        src: &SockDst<<Self::L as Lb>::Addr>,
    ) -> Option<(<Self::L as Lb>::Addr, u16)>;
}

/// AF_INET sockets: connect4, sendmsg4, recvmsg4, getpeername4.
pub struct V4;

/// AF_INET6 sockets talking to IPv4 through IPv4-mapped addresses (dual-stack applications
/// such as Java or Node.js do this for every IPv4 destination; the kernel runs only the v6
/// hooks for them, as Cilium's `sock6_xlate_v4_in_v6` handles).
pub struct V6Mapped;

/// AF_INET6 sockets talking to IPv6 Services.
pub struct V6;

#[inline(always)]
fn record4(cookie: u64, backend: (u32, u16), dst: &SockDst<u32>, rev_nat_index: u16) -> bool {
    let key = SockRevNatKey {
        cookie,
        address: backend.0,
        port: backend.1,
        pad: [0; 2],
    };
    let value = SockRevNatValue {
        address: dst.address,
        port: dst.port,
        rev_nat_index,
    };
    SOCK_REVNAT.insert(key, value, u64::from(BPF_ANY)).is_ok()
}

#[inline(always)]
fn reverse4(cookie: u64, src: &SockDst<u32>) -> Option<(u32, u16)> {
    let key = SockRevNatKey {
        cookie,
        address: src.address,
        port: src.port,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    unsafe { SOCK_REVNAT.get(key) }.map(|v| (v.address, v.port))
}

impl Family for V4 {
    type L = Lb4;

    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> Option<SockDst<u32>> {
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

    #[inline(always)]
    fn record(cookie: u64, backend: (u32, u16), dst: &SockDst<u32>, rev_nat_index: u16) -> bool {
        record4(cookie, backend, dst, rev_nat_index)
    }

    #[inline(always)]
    fn reverse(cookie: u64, src: &SockDst<u32>) -> Option<(u32, u16)> {
        reverse4(cookie, src)
    }
}

/// Reads a v6 hook's address words, family, port and protocol.
#[inline(always)]
fn read6(ctx: &SockAddrContext) -> Option<([u32; 4], u16, u8)> {
    // SAFETY: the kernel hands every sock_addr program a valid `bpf_sock_addr`; v6 hooks may
    // read user_ip6 word by word.
    let (family, address, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            sa.user_family,
            [
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
            ],
            sa.user_port,
            sa.protocol,
        )
    };
    (family == AF_INET6).then_some((address, port as u16, proto as u8))
}

/// Whether a v6 hook's address is IPv4-mapped.
#[inline(always)]
pub fn is_v4_mapped(ctx: &SockAddrContext) -> bool {
    matches!(read6(ctx), Some((a, _, _)) if a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_PREFIX)
}

impl Family for V6Mapped {
    type L = Lb4;

    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> Option<SockDst<u32>> {
        let (a, port, proto) = read6(ctx)?;
        if a[0] != 0 || a[1] != 0 || a[2] != V4_MAPPED_PREFIX {
            return None;
        }
        Some(SockDst {
            address: a[3],
            port,
            proto,
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

    #[inline(always)]
    fn record(cookie: u64, backend: (u32, u16), dst: &SockDst<u32>, rev_nat_index: u16) -> bool {
        record4(cookie, backend, dst, rev_nat_index)
    }

    #[inline(always)]
    fn reverse(cookie: u64, src: &SockDst<u32>) -> Option<(u32, u16)> {
        reverse4(cookie, src)
    }
}

impl Family for V6 {
    type L = Lb6;

    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> Option<SockDst<[u32; 4]>> {
        let (address, port, proto) = read6(ctx)?;
        Some(SockDst {
            address,
            port,
            proto,
        })
    }

    #[inline(always)]
    fn write(ctx: &SockAddrContext, address: [u32; 4], port: u16) {
        // SAFETY: user_ip6 (4-byte stores) and user_port are writable from the v6 hooks.
        unsafe {
            (*ctx.sock_addr).user_ip6[0] = address[0];
            (*ctx.sock_addr).user_ip6[1] = address[1];
            (*ctx.sock_addr).user_ip6[2] = address[2];
            (*ctx.sock_addr).user_ip6[3] = address[3];
            (*ctx.sock_addr).user_port = u32::from(port);
        }
    }

    #[inline(always)]
    fn record(
        cookie: u64,
        backend: ([u32; 4], u16),
        dst: &SockDst<[u32; 4]>,
        rev_nat_index: u16,
    ) -> bool {
        let key = SockRevNatKey6 {
            cookie,
            address: backend.0,
            port: backend.1,
            pad: [0; 6],
        };
        let value = SockRevNatValue6 {
            address: dst.address,
            port: dst.port,
            rev_nat_index,
        };
        SOCK_REVNAT6.insert(key, value, u64::from(BPF_ANY)).is_ok()
    }

    #[inline(always)]
    fn reverse(cookie: u64, src: &SockDst<[u32; 4]>) -> Option<([u32; 4], u16)> {
        let key = SockRevNatKey6 {
            cookie,
            address: src.address,
            port: src.port,
            pad: [0; 6],
        };
        // SAFETY: copied out at once.
        unsafe { SOCK_REVNAT6.get(key) }.map(|v| (v.address, v.port))
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

/// Forward translation for connect and sendmsg: ClusterIP:port → a backend. Records the
/// reverse entry so replies and getpeername() show the ClusterIP again.
#[inline(always)]
fn xlate_fwd<F: Family>(ctx: &SockAddrContext, counter: Counter) -> Result<i32, DropReason> {
    let Some(dst) = F::read(ctx) else {
        return Ok(SYS_PROCEED);
    };
    let lookup = select_backend::<F::L>(dst.address, dst.port, dst.proto, 0, None, || {
        netns_cookie(ctx)
    })?;
    let (backend, rev_nat_index) = match lookup {
        Lookup::NotService => return Ok(SYS_PROCEED),
        Lookup::Backend {
            backend,
            rev_nat_index,
            ..
        } => (backend, rev_nat_index),
    };
    let backend = <F::L as Lb>::backend_addr(&backend);
    if !F::record(cookie(ctx), backend, &dst, rev_nat_index)
        && dst.proto == keelson_common::proto::UDP
    {
        // Without the entry, replies would come from an address the application never
        // addressed and be discarded by connected or address-checking UDP clients.
        return Err(DropReason::SockRevNatFull);
    }
    F::write(ctx, backend.0, backend.1);
    metrics::count(counter, 0);
    Ok(SYS_PROCEED)
}

/// Reverse translation for recvmsg and getpeername: backend → ClusterIP:port for sockets the
/// forward path translated.
#[inline(always)]
fn xlate_rev<F: Family>(ctx: &SockAddrContext, counter: Counter) {
    let Some(src) = F::read(ctx) else {
        return;
    };
    if let Some((address, port)) = F::reverse(cookie(ctx), &src) {
        F::write(ctx, address, port);
        metrics::count(counter, 0);
    }
}

/// Forward translation on a v6 hook: IPv4-mapped destinations use the IPv4 maps.
#[inline(always)]
fn xlate_fwd6(ctx: &SockAddrContext, counter: Counter) -> Result<i32, DropReason> {
    if is_v4_mapped(ctx) {
        xlate_fwd::<V6Mapped>(ctx, counter)
    } else {
        xlate_fwd::<V6>(ctx, counter)
    }
}

/// Reverse translation on a v6 hook.
#[inline(always)]
fn xlate_rev6(ctx: &SockAddrContext, counter: Counter) {
    if is_v4_mapped(ctx) {
        xlate_rev::<V6Mapped>(ctx, counter)
    } else {
        xlate_rev::<V6>(ctx, counter)
    }
}

#[inline(always)]
fn refuse(reason: DropReason) -> i32 {
    metrics::drop(reason, 0);
    SYS_REJECT
}
