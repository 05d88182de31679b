//! keelson's eBPF object: socket-level Service load balancing (cgroup sock_addr hooks) and the
//! tc programs on the host side of each Pod's veth and on the node's uplink. One file per attach
//! point.
#![no_std]
#![no_main]

mod lb;
mod maps;
mod metrics;
mod nat;
mod policy;
mod sock;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
