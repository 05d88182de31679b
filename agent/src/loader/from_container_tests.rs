//! BPF_PROG_TEST_RUN tests of `tc_from_container`: crafted Ethernet/IPv4/TCP frames, seeded
//! `endpoints` map, asserted verdicts, rewritten bytes and metrics.
//!
//! The test run happens in the test process's own network namespace: with `ifindex` 1 in the
//! context the kernel runs the program on `lo` (net/bpf/test_run.c), which every namespace
//! has, so nothing outside the test's own maps is involved.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use keelson_common::{Counter, DropReason, EndpointInfo, names};

use super::testutil::TestDatapath;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `struct __sk_buff` is 192 bytes; `ifindex` sits at offset 40 (include/uapi/linux/bpf.h).
const SKB_CTX_LEN: usize = 192;
const SKB_IFINDEX_OFF: usize = 40;
const LO_IFINDEX: u32 = 1;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const POD_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
const POD_B_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const POD_B_IFINDEX: u32 = 42;

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/TCP SYN from `src` to `dst`.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xee, 0xee, 0xee, 0xee, 0xee, 0xee]); // dst MAC: the host veth
    f.extend_from_slice(&[0x02, 0xaa, 0, 0, 0, 1]); // src MAC: pod A
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    // TCP: 40000 -> 80, SYN; the program does not look at it.
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    f.extend_from_slice(&tcp);
    f
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
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&LO_IFINDEX.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let result = t.dp.with_ebpf(|ebpf| {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(names::PROG_FROM_CONTAINER)
            .expect("program")
            .try_into()
            .expect("tc program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN")
    });
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn metric(t: &TestDatapath, index: u32) -> u64 {
    t.dp.with_maps(|m| m.metric(index)).expect("metric").packets
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
    let bytes =
        t.dp.with_maps(|m| m.metric(DropReason::InvalidSource as u32))
            .expect("metric");
    assert_eq!(bytes.bytes, 2 * frame.len() as u64);
    assert_eq!(metric(&t, Counter::FromContainerStack as u32), 0);
}

#[test]
fn remote_destination_goes_to_the_stack_unchanged() {
    let t = seeded();
    let frame = tcp_frame(POD_A, REMOTE, 64);
    let (verdict, out) = run(&t, &frame);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, frame);
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
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(ipv4_checksum(&out[14..34]), 0, "IPv4 checksum still valid");
    assert_eq!(out[34..], frame[34..], "L4 untouched");
    assert_eq!(metric(&t, Counter::FromContainerLocal as u32), 1);
}

#[test]
fn expiring_ttl_is_left_to_the_kernel() {
    let t = seeded();
    let frame = tcp_frame(POD_A, POD_B, 1);
    let (verdict, out) = run(&t, &frame);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, frame);
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
    bad_ihl[14] = 0x44;
    assert_eq!(run(&t, &bad_ihl).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::Malformed as u32), 1);
}
