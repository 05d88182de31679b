//! Socket-level load balancing: cgroup sock_addr hooks rewrite the address a socket talks to,
//! once per connect()/sendmsg(), so east-west traffic to a ClusterIP is never NATed per packet.
//! The model of Cilium's `bpf_sock.c`: forward translation on connect4/sendmsg4, reverse
//! translation on recvmsg4/getpeername4 through a map keyed by the socket cookie.

mod connect4;
mod getpeername4;
mod recvmsg4;
mod sendmsg4;

use aya_ebpf::{
    EbpfContext, bindings::BPF_ANY, helpers::bpf_get_socket_cookie, programs::SockAddrContext,
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

/// The destination (or peer) of a sock_addr call, network byte order.
struct SockDst {
    address: u32,
    port: u16,
    proto: u8,
}

#[inline(always)]
fn read_dst(ctx: &SockAddrContext) -> Option<SockDst> {
    // SAFETY: the kernel hands every sock_addr program a valid `bpf_sock_addr`; the fields read
    // here are readable from all four hooks (4-byte loads).
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
fn write_dst(ctx: &SockAddrContext, address: u32, port: u16) {
    // SAFETY: user_ip4 and user_port are writable (4-byte stores) from connect4, sendmsg4,
    // recvmsg4 and getpeername4, the only hooks calling this.
    unsafe {
        (*ctx.sock_addr).user_ip4 = address;
        (*ctx.sock_addr).user_port = u32::from(port);
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context (kernel 4.12+, d692f1138a4b).
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Forward translation for connect4 and sendmsg4: ClusterIP:port → a backend. Records the
/// reverse entry so replies and getpeername() show the ClusterIP again.
#[inline(always)]
fn xlate_fwd(ctx: &SockAddrContext, counter: Counter) -> Result<i32, DropReason> {
    let Some(dst) = read_dst(ctx) else {
        return Ok(SYS_PROCEED);
    };
    let (backend, rev_nat_index) = match select_backend(dst.address, dst.port, dst.proto)? {
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
    write_dst(ctx, backend.address, backend.port);
    metrics::count(counter, 0);
    Ok(SYS_PROCEED)
}

/// Reverse translation for recvmsg4 and getpeername4: backend → ClusterIP:port for sockets
/// the forward path translated.
#[inline(always)]
fn xlate_rev(ctx: &SockAddrContext, counter: Counter) {
    let Some(src) = read_dst(ctx) else {
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
        write_dst(ctx, address, port);
        metrics::count(counter, 0);
    }
}

#[inline(always)]
fn refuse(reason: DropReason) -> i32 {
    metrics::drop(reason, 0);
    SYS_REJECT
}
