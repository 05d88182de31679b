//! Frames and test runs for the BPF_PROG_TEST_RUN tests of the tc programs: Ethernet/IPv4
//! headers with correct checksums, checksum verification (RFC 1071), and one run of a
//! program on a frame.
//!
//! The program runs with `ifindex` 1 in its context: the kernel runs it on `lo` of the test
//! process's network namespace (net/bpf/test_run.c), which every namespace has, so nothing
//! outside the test's own maps is involved.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

use super::testutil::TestDatapath;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// `struct __sk_buff` is 192 bytes; `ifindex` sits at offset 40 (include/uapi/linux/bpf.h).
const SKB_CTX_LEN: usize = 192;
const SKB_IFINDEX_OFF: usize = 40;
pub const LO_IFINDEX: u32 = 1;

pub const ETH_HLEN: usize = 14;
/// An IPv4 header without options.
pub const IP_HLEN: usize = 20;

/// One's-complement sum of 16-bit words (RFC 1071), not yet inverted.
pub fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The checksum of an IPv4 header: 0 for a header whose checksum field is right.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    !(ones_sum(header, 0) as u16)
}

/// The TCP/UDP checksum of `segment` (its checksum field included) over the IPv4
/// pseudo-header: 0 for a segment whose checksum field is right.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(proto);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !(ones_sum(segment, ones_sum(&pseudo, 0)) as u16)
}

/// The MAC addresses of a frame.
#[derive(Clone, Copy)]
pub struct Macs {
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// An Ethernet frame carrying an IPv4 header without options (identification 0x1234, DF,
/// correct checksum) from `src` to `dst` and then `l4` as it is.
pub fn eth_ipv4(
    macs: Macs,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&macs.dst);
    f.extend_from_slice(&macs.src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (IP_HLEN + l4.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// Recomputes the IPv4 header checksum of frame `f` after a test changed the header (its
/// length taken from the IHL field).
pub fn refresh_ipv4_checksum(f: &mut [u8]) {
    let hlen = usize::from(f[ETH_HLEN] & 0x0f) * 4;
    f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    let csum = ipv4_checksum(&f[ETH_HLEN..ETH_HLEN + hlen]);
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&csum.to_be_bytes());
}

/// Runs program `prog` on `frame`; returns the verdict and the frame as the program left it.
pub fn run_tc(t: &TestDatapath, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&LO_IFINDEX.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let result = t.dp.with_ebpf(|ebpf| {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(prog)
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

/// Asserts that program `prog` lets `frame` pass to the stack (`TC_ACT_OK`) with every byte
/// as it was.
pub fn assert_passes_untouched(t: &TestDatapath, prog: &str, frame: &[u8]) {
    assert_eq!(
        run_tc(t, prog, frame),
        (TC_ACT_OK, frame.to_vec()),
        "passed untouched"
    );
}
