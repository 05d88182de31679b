//! BPF_PROG_TEST_RUN tests of NetworkPolicy in the tc programs: seeded `endpoints`,
//! `ipcache` and `policy` maps, crafted frames through `tc_from_container` (what a Pod sends)
//! and `tc_to_container` (what the stack delivers to a Pod), asserted verdicts, counters and
//! the flow events of the ring buffer.

use std::net::Ipv4Addr;

use aya::maps::{MapData, RingBuf, lpm_trie::Key};
use keelson_common::{
    Counter, DropReason, EndpointInfo, FlowEvent, IpcacheKey, IpcacheValue, NodeConfig, PolicyKey,
    PolicyValue, names,
    policy::{direction, endpoint_flags, identity, policy_prefix, verdict},
    proto,
};

use super::{
    maps::ip_to_net,
    packet_testutil::{
        LO_IFINDEX, Macs, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, eth_ipv4, run_tc,
    },
    testutil::{TestDatapath, metric},
};

/// Pod A sends (its veth is the test's `lo`, where the programs run).
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
/// Pod B is local too, behind another veth.
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const ID_A: u32 = 1000;
const ID_B: u32 = 1001;
const ID_REMOTE: u32 = 1002;

fn frame(src: Ipv4Addr, dst: Ipv4Addr, p: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; if p == proto::TCP { 20 } else { 8 }];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if p == proto::TCP {
        l4[12] = 5 << 4;
        l4[13] = tcp_flags;
    } else {
        l4[4..6].copy_from_slice(&8u16.to_be_bytes());
    }
    let macs = Macs {
        dst: [0xee; 6],
        src: [0x02, 0xaa, 0, 0, 0, 1],
    };
    eth_ipv4(macs, src, dst, 64, p, &l4)
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame(src, dst, proto::TCP, 40000, dport, 0x02)
}

fn endpoint(ifindex: u32, id: u32, flags: u32) -> EndpointInfo {
    EndpointInfo {
        ifindex,
        flags,
        identity: id,
        pod_mac: [0x02, 0xbb, 0, 0, 0, 1],
        host_mac: [0x02, 0xbb, 0, 0, 0, 2],
    }
}

/// Pod A (on `lo`) and Pod B local with the given policy flags; the remote Pod in the ipcache.
fn seeded(a_flags: u32, b_flags: u32) -> TestDatapath {
    let t = TestDatapath::load("pol", None);
    t.dp.with_maps(move |m| {
        m.put_endpoint(POD_A, endpoint(LO_IFINDEX, ID_A, a_flags))?;
        m.put_endpoint(POD_B, endpoint(42, ID_B, b_flags))?;
        m.write_config(NodeConfig {
            node_ip: ip_to_net(NODE_IP),
            uplink_ifindex: 0,
            snat_port_min: 61000,
            snat_port_max: 65535,
            pad: [0; 4],
        })?;
        for (ip, id) in [(POD_A, ID_A), (POD_B, ID_B), (REMOTE_POD, ID_REMOTE)] {
            let key = Key::new(
                32,
                IpcacheKey {
                    address: ip_to_net(ip),
                },
            );
            m.ipcache
                .insert(
                    &key,
                    IpcacheValue {
                        identity: id,
                        flags: 0,
                    },
                    0,
                )
                .expect("ipcache");
        }
        Ok::<_, super::MapsError>(())
    })
    .expect("seed");
    t
}

/// Allows `peer` to/from `ep` in `dir` for `proto`/`port` under a prefix of `prefix` bits.
fn allow(t: &TestDatapath, ep: Ipv4Addr, peer: u32, dir: u8, p: u8, port: u16, prefix: u32) {
    t.dp.with_maps(move |m| {
        let key = Key::new(
            prefix,
            PolicyKey::lookup(ip_to_net(ep), peer, dir, p, port.to_be()),
        );
        m.policy
            .insert(
                &key,
                PolicyValue {
                    policy: 7,
                    flags: 0,
                },
                0,
            )
            .expect("policy entry");
    });
}

fn bump_revision(t: &TestDatapath) {
    t.dp.with_maps(|m| {
        let mut s = m.pol_state.get(&0, 0).expect("state");
        s.revision += 1;
        m.pol_state.set(0, s, 0).expect("state");
    });
}

fn from_a(t: &TestDatapath, f: &[u8]) -> u32 {
    run_tc(t, names::PROG_FROM_CONTAINER, f).0
}

fn to_pod(t: &TestDatapath, f: &[u8]) -> u32 {
    run_tc(t, names::PROG_TO_CONTAINER, f).0
}

/// Every event the programs sent so far.
fn events(t: &TestDatapath) -> Vec<FlowEvent> {
    let data = MapData::from_pin(t.pins.0.join(names::EVENTS)).expect("events pin");
    let mut ring = RingBuf::try_from(aya::maps::Map::RingBuf(data)).expect("ring buffer");
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<FlowEvent>());
        // SAFETY: the item holds exactly one FlowEvent written by the programs; it is read
        // unaligned.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
    }
    out
}

#[test]
fn without_isolation_everything_passes() {
    let t = seeded(0, 0);
    assert_eq!(from_a(&t, &syn(POD_A, POD_B, 80)), TC_ACT_REDIRECT);
    assert_eq!(from_a(&t, &syn(POD_A, REMOTE_POD, 80)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &syn(REMOTE_POD, POD_A, 80)), TC_ACT_OK);
    assert_eq!(metric(&t, DropReason::PolicyIngress as u32), 0);
}

#[test]
fn default_deny_ingress_drops_and_reports_the_flow() {
    t_default_deny(proto::TCP);
    t_default_deny(proto::UDP);
}

fn t_default_deny(p: u8) {
    let t = seeded(0, endpoint_flags::INGRESS_ISOLATED);
    let f = frame(POD_A, POD_B, p, 40000, 80, 0x02);
    assert_eq!(from_a(&t, &f), TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::PolicyIngress as u32), 1);
    let ev = events(&t);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = ev[0];
    assert_eq!(
        (e.saddr, e.daddr, u16::from_be(e.dport), e.proto),
        (ip_to_net(POD_A), ip_to_net(POD_B), 80, p)
    );
    assert_eq!((e.verdict, e.dir), (verdict::DROPPED, direction::INGRESS));
    assert_eq!(e.reason, DropReason::PolicyIngress as u32);
    assert_eq!((e.src_identity, e.dst_identity, e.policy), (ID_A, ID_B, 0));
}

#[test]
fn an_entry_allows_its_peer_protocol_and_port_only() {
    let t = seeded(0, endpoint_flags::INGRESS_ISOLATED);
    allow(
        &t,
        POD_B,
        ID_A,
        direction::INGRESS,
        proto::TCP,
        80,
        policy_prefix::FULL,
    );
    assert_eq!(from_a(&t, &syn(POD_A, POD_B, 80)), TC_ACT_REDIRECT);
    assert_eq!(from_a(&t, &syn(POD_A, POD_B, 81)), TC_ACT_SHOT);
    let udp = frame(POD_A, POD_B, proto::UDP, 40000, 80, 0);
    assert_eq!(from_a(&t, &udp), TC_ACT_SHOT);
    // Another peer (the remote Pod, through the stack) is not allowed.
    assert_eq!(to_pod(&t, &syn(REMOTE_POD, POD_B, 80)), TC_ACT_SHOT);
    assert_eq!(metric(&t, Counter::PolicyAllowedIngress as u32), 1);
}

#[test]
fn port_prefixes_any_port_any_protocol_and_any_peer() {
    let t = seeded(0, endpoint_flags::INGRESS_ISOLATED);
    // 80-81 is one prefix of 15 port bits.
    allow(&t, POD_B, ID_A, direction::INGRESS, proto::TCP, 80, 80 + 15);
    assert_eq!(from_a(&t, &syn(POD_A, POD_B, 81)), TC_ACT_REDIRECT);
    assert_eq!(from_a(&t, &syn(POD_A, POD_B, 82)), TC_ACT_SHOT);
    // Any UDP port.
    allow(
        &t,
        POD_B,
        ID_A,
        direction::INGRESS,
        proto::UDP,
        0,
        policy_prefix::ANY_PORT,
    );
    let udp = frame(POD_A, POD_B, proto::UDP, 40000, 5353, 0);
    assert_eq!(from_a(&t, &udp), TC_ACT_REDIRECT);
    // Any peer on TCP 9000.
    allow(
        &t,
        POD_B,
        identity::ANY,
        direction::INGRESS,
        proto::TCP,
        9000,
        policy_prefix::FULL,
    );
    assert_eq!(to_pod(&t, &syn(REMOTE_POD, POD_B, 9000)), TC_ACT_OK);
    // Everything from the remote Pod.
    allow(
        &t,
        POD_B,
        ID_REMOTE,
        direction::INGRESS,
        0,
        0,
        policy_prefix::ANY_PROTO,
    );
    assert_eq!(to_pod(&t, &syn(REMOTE_POD, POD_B, 1)), TC_ACT_OK);
}

#[test]
fn replies_of_allowed_flows_pass_and_new_flows_are_checked() {
    // A is isolated both ways; the remote Pod may reach it on 80.
    let both = endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;
    let t = seeded(both, 0);
    allow(
        &t,
        POD_A,
        ID_REMOTE,
        direction::INGRESS,
        proto::TCP,
        80,
        policy_prefix::FULL,
    );
    assert_eq!(to_pod(&t, &syn(REMOTE_POD, POD_A, 80)), TC_ACT_OK);
    // A's SYN-ACK leaves although no egress rule allows anything.
    let reply = frame(POD_A, REMOTE_POD, proto::TCP, 80, 40000, 0x12);
    assert_eq!(from_a(&t, &reply), TC_ACT_OK);
    // A new connection of A's is refused at its egress.
    assert_eq!(from_a(&t, &syn(POD_A, REMOTE_POD, 443)), TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::PolicyEgress as u32), 1);
}

#[test]
fn the_node_itself_may_always_reach_its_pods() {
    let t = seeded(0, endpoint_flags::INGRESS_ISOLATED);
    assert_eq!(to_pod(&t, &syn(NODE_IP, POD_B, 8080)), TC_ACT_OK);
    // But an isolated Pod's egress to the node needs a rule.
    let t = seeded(endpoint_flags::EGRESS_ISOLATED, 0);
    assert_eq!(from_a(&t, &syn(POD_A, NODE_IP, 10250)), TC_ACT_SHOT);
    allow(
        &t,
        POD_A,
        identity::HOST,
        direction::EGRESS,
        proto::TCP,
        10250,
        policy_prefix::FULL,
    );
    assert_eq!(from_a(&t, &syn(POD_A, NODE_IP, 10250)), TC_ACT_OK);
}

#[test]
fn established_flows_stop_when_a_new_revision_denies_them() {
    let t = seeded(0, 0);
    let data = frame(POD_A, REMOTE_POD, proto::TCP, 40000, 80, 0x10);
    assert_eq!(from_a(&t, &syn(POD_A, REMOTE_POD, 80)), TC_ACT_OK);
    assert_eq!(from_a(&t, &data), TC_ACT_OK);
    // A policy now isolates A's egress, with nothing allowed: the flow stops at once.
    t.dp.with_maps(|m| {
        m.put_endpoint(
            POD_A,
            endpoint(LO_IFINDEX, ID_A, endpoint_flags::EGRESS_ISOLATED),
        )
    })
    .expect("isolate");
    // Until the revision changes the flow is trusted...
    assert_eq!(from_a(&t, &data), TC_ACT_OK);
    bump_revision(&t);
    assert_eq!(from_a(&t, &data), TC_ACT_SHOT);
    // ...and a rule that allows it again lets it go on after the next revision.
    allow(
        &t,
        POD_A,
        ID_REMOTE,
        direction::EGRESS,
        proto::TCP,
        80,
        policy_prefix::FULL,
    );
    bump_revision(&t);
    assert_eq!(from_a(&t, &data), TC_ACT_OK);
}

#[test]
fn allowed_flows_are_reported_when_asked() {
    let t = seeded(0, endpoint_flags::INGRESS_ISOLATED);
    allow(
        &t,
        POD_B,
        ID_A,
        direction::INGRESS,
        proto::TCP,
        80,
        policy_prefix::FULL,
    );
    assert_eq!(from_a(&t, &syn(POD_A, POD_B, 80)), TC_ACT_REDIRECT);
    assert!(events(&t).is_empty(), "drops only by default");
    t.dp.set_flow_events(true).expect("all events");
    assert_eq!(
        from_a(&t, &syn(POD_A, POD_B, 80)),
        TC_ACT_REDIRECT,
        "established"
    );
    let f = frame(POD_A, POD_B, proto::TCP, 40001, 80, 0x02);
    assert_eq!(from_a(&t, &f), TC_ACT_REDIRECT);
    let ev = events(&t);
    assert_eq!(ev.len(), 1, "one event per new flow: {ev:?}");
    assert_eq!(
        (ev[0].verdict, ev[0].dir, ev[0].policy, ev[0].tcp_flags),
        (verdict::ALLOWED, direction::INGRESS, 7, 0x02)
    );
}
