//! BPF_PROG_TEST_RUN tests of `tc_from_container`: crafted Ethernet/IPv4/TCP frames, seeded
//! `endpoints` map, asserted verdicts, rewritten bytes and metrics.
//!
//! The test run happens in the test process's own network namespace, on its `lo` (see
//! [`super::packet_testutil`]).

use std::net::Ipv4Addr;

use keelson_common::{Counter, DropReason, EndpointInfo, names, proto};

use super::{
    packet_testutil::{
        ETH_HLEN, IP_HLEN, LO_IFINDEX, Macs, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        assert_passes_untouched, eth_ipv4, ipv4_checksum, run_tc,
    },
    testutil::{TestDatapath, metric, metric_bytes},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const POD_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
const POD_B_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const POD_B_IFINDEX: u32 = 42;

/// An Ethernet/IPv4/TCP SYN from `src` to `dst`.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    // TCP: 40000 -> 80, SYN; the program does not look at it.
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    let macs = Macs {
        dst: [0xee, 0xee, 0xee, 0xee, 0xee, 0xee], // the host veth
        src: [0x02, 0xaa, 0, 0, 0, 1],             // pod A
    };
    eth_ipv4(macs, src, dst, ttl, proto::TCP, &tcp)
}

fn endpoint(ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) -> EndpointInfo {
    EndpointInfo {
        ifindex,
        flags: 0,
        identity: 0,
        pod_mac,
        host_mac,
    }
}

/// Runs the program on `frame`; returns the verdict and the frame as the program left it.
fn run(t: &TestDatapath, frame: &[u8]) -> (u32, Vec<u8>) {
    run_tc(t, names::PROG_FROM_CONTAINER, frame)
}

fn seeded() -> TestDatapath {
    let t = TestDatapath::load("tc", None);
    t.dp.with_maps(|m| {
        m.put_endpoint(
            POD_A,
            endpoint(LO_IFINDEX, [0x02, 0xaa, 0, 0, 0, 1], [0xee; 6]),
        )?;
        m.put_endpoint(POD_B, endpoint(POD_B_IFINDEX, POD_B_MAC, POD_B_HOST_MAC))
    })
    .expect("seed endpoints");
    t
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    let t = seeded();
    // POD_B's address, but sent through POD_A's veth.
    let frame = tcp_frame(POD_B, REMOTE, 64);
    assert_eq!(run(&t, &frame).0, TC_ACT_SHOT);
    // An address no local endpoint has.
    let frame = tcp_frame(Ipv4Addr::new(192, 0, 2, 1), REMOTE, 64);
    assert_eq!(run(&t, &frame).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::InvalidSource as u32), 2);
    assert_eq!(
        metric_bytes(&t, DropReason::InvalidSource as u32),
        2 * frame.len() as u64
    );
    assert_eq!(metric(&t, Counter::FromContainerStack as u32), 0);
}

#[test]
fn remote_destination_goes_to_the_stack_unchanged() {
    let t = seeded();
    let frame = tcp_frame(POD_A, REMOTE, 64);
    assert_passes_untouched(&t, names::PROG_FROM_CONTAINER, &frame);
    assert_eq!(metric(&t, Counter::FromContainerStack as u32), 1);
}

#[test]
fn local_destination_is_redirected_with_rewritten_macs_and_ttl() {
    let t = seeded();
    let frame = tcp_frame(POD_A, POD_B, 64);
    let (verdict, out) = run(&t, &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[0..6], POD_B_MAC);
    assert_eq!(out[6..12], POD_B_HOST_MAC);
    assert_eq!(out[ETH_HLEN + 8], 63, "TTL decremented");
    let l4 = ETH_HLEN + IP_HLEN;
    assert_eq!(
        ipv4_checksum(&out[ETH_HLEN..l4]),
        0,
        "IPv4 checksum still valid"
    );
    assert_eq!(out[l4..], frame[l4..], "L4 untouched");
    assert_eq!(metric(&t, Counter::FromContainerLocal as u32), 1);
}

#[test]
fn expiring_ttl_is_left_to_the_kernel() {
    let t = seeded();
    let frame = tcp_frame(POD_A, POD_B, 1);
    assert_passes_untouched(&t, names::PROG_FROM_CONTAINER, &frame);
}

#[test]
fn non_ipv4_passes_and_malformed_ipv4_is_dropped() {
    let t = seeded();
    let mut arp = tcp_frame(POD_A, REMOTE, 64);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(run(&t, &arp).0, TC_ACT_OK);
    // (The kernel refuses to test-run frames too short for an IPv4 header; a header length
    // below the minimum is what a program can see.)
    let mut bad_ihl = tcp_frame(POD_A, REMOTE, 64);
    bad_ihl[ETH_HLEN] = 0x44;
    assert_eq!(run(&t, &bad_ihl).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::Malformed as u32), 1);
}
