//! BPF_PROG_TEST_RUN tests of the per-packet Service translation: `tc_from_netdev` (the
//! uplink: NodePort/LoadBalancer/external IP flows, SNAT, conntrack, reverse NAT of replies),
//! the reverse-NAT step of `tc_from_container` (replies of local backends) and `tc_to_netdev`
//! (replies of the node's own sockets).
//!
//! As in the from_container tests, the program runs with `ifindex` 1 (`lo` of the test
//! process's namespace, net/bpf/test_run.c); the redirect helpers only record their target in
//! the per-CPU redirect state and return `TC_ACT_REDIRECT`, which the test run hands back as
//! the verdict without sending anything anywhere.

use std::net::{IpAddr, Ipv4Addr};

use keelson_common::{
    Counter, CtKey, CtValue, DropReason, EndpointInfo, NodeConfig, ct_dir, ct_flags, limits, names,
    proto, service_flags,
};

use super::{
    maps::ip_to_net,
    packet_testutil::{
        ETH_HLEN, IP_HLEN, LO_IFINDEX, Macs, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        assert_passes_untouched, eth_ipv4, ipv4_checksum, l4_checksum, refresh_ipv4_checksum,
        run_tc,
    },
    testutil::{TestDatapath, metric, metric_bytes},
};
use crate::services::model::{BackendAddr, Frontend, MapOp, Proto};

const L4: usize = ETH_HLEN + IP_HLEN;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_PSH_ACK: u8 = 0x18;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const CLIENT_PORT: u16 = 45_678;
const NODE_PORT: u16 = 30_080;
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A backend on another node.
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const REMOTE_BACKEND_2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// A backend Pod of this node (its host veth is `lo` in the test run, so the Pod's reply
/// passes from_container's anti-spoofing check).
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const LOCAL_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 1];
const LOCAL_HOST_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 2];
const BACKEND_PORT: u16 = 8080;
const UPLINK_MAC: [u8; 6] = [0x02, 0x0e, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [0x02, 0x0f, 0, 0, 0, 1];
const PAYLOAD: &[u8] = b"keelson";
/// Longer ago than a UDP flow may stay silent.
const PAST_UDP_IDLE_NS: u64 = limits::CT_OTHER_IDLE_NS + 1_000_000_000;

/// How a test frame's transport header looks.
#[derive(Clone, Copy)]
enum L4Kind {
    Tcp {
        flags: u8,
    },
    /// UDP with a computed checksum (`true`) or checksum 0, "none" (RFC 768).
    Udp {
        checksum: bool,
    },
}

const UDP: L4Kind = L4Kind::Udp { checksum: true };

/// An Ethernet/IPv4/TCP-or-UDP frame with a short payload and correct checksums.
fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, kind: L4Kind) -> Vec<u8> {
    let (proto, mut l4) = match kind {
        L4Kind::Tcp { flags } => {
            let mut tcp = vec![0u8; 20];
            tcp[4..8].copy_from_slice(&0x1000_0001u32.to_be_bytes()); // seq
            if flags & TCP_ACK != 0 {
                tcp[8..12].copy_from_slice(&0x2000_0001u32.to_be_bytes());
            }
            tcp[12] = 5 << 4;
            tcp[13] = flags;
            tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
            (proto::TCP, tcp)
        }
        L4Kind::Udp { .. } => {
            let mut udp = vec![0u8; 8];
            udp[4..6].copy_from_slice(&((8 + PAYLOAD.len()) as u16).to_be_bytes());
            (proto::UDP, udp)
        }
    };
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(PAYLOAD);
    let csum_off = if proto == proto::TCP { 16 } else { 6 };
    if !matches!(kind, L4Kind::Udp { checksum: false }) {
        let mut csum = l4_checksum(src, dst, proto, &l4);
        if proto == proto::UDP && csum == 0 {
            csum = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
    }
    let macs = Macs {
        dst: UPLINK_MAC,
        src: PEER_MAC,
    };
    eth_ipv4(macs, src, dst, 64, proto, &l4)
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    frame(src, sport, dst, dport, L4Kind::Tcp { flags })
}

/// A frame of `client` (from `CLIENT_PORT`) to the NodePort.
fn to_node_port(client: Ipv4Addr, kind: L4Kind) -> Vec<u8> {
    frame(client, CLIENT_PORT, NODE_IP, NODE_PORT, kind)
}

/// A frame of `REMOTE_BACKEND` (from `BACKEND_PORT`) to the node's `snat_port`.
fn backend_reply(snat_port: u16, kind: L4Kind) -> Vec<u8> {
    frame(REMOTE_BACKEND, BACKEND_PORT, NODE_IP, snat_port, kind)
}

/// A TCP segment of `backend` (from `BACKEND_PORT`) straight to `CLIENT`: the answer of a
/// backend that saw the client's own address.
fn dnat_reply(backend: Ipv4Addr, flags: u8) -> Vec<u8> {
    tcp(backend, BACKEND_PORT, CLIENT, CLIENT_PORT, flags)
}

/// A TCP segment of `CLIENT` to the NodePort.
fn client_tcp(flags: u8) -> Vec<u8> {
    tcp(CLIENT, CLIENT_PORT, NODE_IP, NODE_PORT, flags)
}

/// The addresses and ports of a frame, as the test reads them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
}

/// A reply of the NodePort to `CLIENT`, as the client must see it.
const NODE_PORT_TO_CLIENT: Tuple = Tuple {
    src: NODE_IP,
    sport: NODE_PORT,
    dst: CLIENT,
    dport: CLIENT_PORT,
};

/// `CLIENT`'s flow to the NodePort with only its destination translated, to `backend`.
fn dnat_only(backend: Ipv4Addr) -> Tuple {
    Tuple {
        src: CLIENT,
        sport: CLIENT_PORT,
        dst: backend,
        dport: BACKEND_PORT,
    }
}

fn tuple(f: &[u8]) -> Tuple {
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    Tuple {
        src: ip(ETH_HLEN + 12),
        sport: port(L4),
        dst: ip(ETH_HLEN + 16),
        dport: port(L4 + 2),
    }
}

/// Asserts that the IPv4 header checksum and the transport checksum of `f` are right for its
/// (rewritten) contents, and that nothing past the ports but the checksum changed.
fn assert_checksums_and_payload(f: &[u8], original: &[u8]) {
    assert_eq!(f.len(), original.len(), "frame length kept");
    assert_eq!(
        ipv4_checksum(&f[ETH_HLEN..L4]),
        0,
        "IPv4 header checksum valid"
    );
    let t = tuple(f);
    let proto = f[ETH_HLEN + 9];
    let csum_off = if proto == proto::TCP { 16 } else { 6 };
    let csum = u16::from_be_bytes([f[L4 + csum_off], f[L4 + csum_off + 1]]);
    if proto == proto::UDP && csum == 0 {
        // "No checksum" is only valid if the sender sent none.
        assert_eq!(original[L4 + 6..L4 + 8], [0, 0], "UDP checksum 0 kept as 0");
    } else {
        assert_eq!(
            l4_checksum(t.src, t.dst, proto, &f[L4..]),
            0,
            "transport checksum valid over the pseudo-header"
        );
    }
    // Everything in the transport header after the ports except the checksum, and the payload.
    let strip = |x: &[u8]| {
        let mut v = x[L4 + 4..].to_vec();
        v[csum_off - 4] = 0;
        v[csum_off - 3] = 0;
        v
    };
    assert_eq!(strip(f), strip(original), "rest of the segment untouched");
    // IPv4 header besides addresses and checksum.
    assert_eq!(
        f[ETH_HLEN..ETH_HLEN + 10],
        original[ETH_HLEN..ETH_HLEN + 10]
    );
}

fn netdev(t: &TestDatapath, frame: &[u8]) -> (u32, Vec<u8>) {
    run_tc(t, names::PROG_FROM_NETDEV, frame)
}

/// Runs `tc_from_netdev` on `frame`, asserts that it was redirected with valid checksums and
/// its payload untouched, and returns the frame as the program left it.
fn netdev_redirected_frame(t: &TestDatapath, frame: &[u8]) -> Vec<u8> {
    let (verdict, out) = netdev(t, frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_checksums_and_payload(&out, frame);
    out
}

/// [`netdev_redirected_frame`], returning the tuple the frame was translated to.
fn netdev_redirected(t: &TestDatapath, frame: &[u8]) -> Tuple {
    tuple(&netdev_redirected_frame(t, frame))
}

fn ct(t: &TestDatapath) -> Vec<(CtKey, CtValue)> {
    t.dp.with_maps(move |m| m.read_ct()).expect("read ct")
}

fn ct_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, dir: u8) -> CtKey {
    CtKey {
        saddr: ip_to_net(src),
        daddr: ip_to_net(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        dir,
        pad: [0; 2],
    }
}

/// The key of the original direction of `CLIENT`'s flow to the NodePort.
fn client_key(proto: u8) -> CtKey {
    ct_key(
        CLIENT,
        CLIENT_PORT,
        NODE_IP,
        NODE_PORT,
        proto,
        ct_dir::ORIGINAL,
    )
}

/// The key of the reply direction of a flow DNATed (not SNATed) to `backend`: its answer
/// to `CLIENT`.
fn dnat_reply_key(backend: Ipv4Addr) -> CtKey {
    ct_key(
        backend,
        BACKEND_PORT,
        CLIENT,
        CLIENT_PORT,
        proto::TCP,
        ct_dir::REPLY,
    )
}

/// The key of the reply direction of a SNATed flow: `backend` answering the node's
/// `snat_port`.
fn snat_reply_key(backend: Ipv4Addr, snat_port: u16, proto: u8) -> CtKey {
    ct_key(
        backend,
        BACKEND_PORT,
        NODE_IP,
        snat_port,
        proto,
        ct_dir::REPLY,
    )
}

fn ct_get(t: &TestDatapath, key: &CtKey) -> Option<CtValue> {
    ct(t).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn fe(ip: Ipv4Addr, port: u16, proto: Proto) -> Frontend {
    Frontend {
        address: IpAddr::V4(ip),
        port,
        proto,
    }
}

fn be(ip: Ipv4Addr, port: u16, proto: Proto) -> BackendAddr {
    BackendAddr {
        address: IpAddr::V4(ip),
        port,
        proto,
    }
}

/// A frontend with `backends` (id, address) in slots `1..`, written through the same
/// [`MapOp`]s the planner emits.
fn put_service(
    t: &TestDatapath,
    frontend: Frontend,
    rev_nat_index: u16,
    flags: u8,
    backends: &[(u32, Ipv4Addr)],
) {
    let mut ops = Vec::new();
    for &(id, ip) in backends {
        ops.push(MapOp::PutBackend {
            id,
            backend: be(ip, BACKEND_PORT, frontend.proto),
        });
    }
    ops.push(MapOp::PutRevNat {
        index: rev_nat_index,
        frontend,
    });
    for (i, &(id, _)) in backends.iter().enumerate() {
        ops.push(MapOp::PutSlot {
            frontend,
            slot: i as u16 + 1,
            backend_id: id,
        });
    }
    ops.push(MapOp::PutMaster {
        frontend,
        count: backends.len() as u16,
        rev_nat_index,
        affinity_timeout: None,
        flags,
    });
    t.dp.apply(&ops).expect("apply service ops");
}

/// The ops that make backend 2 (`REMOTE_BACKEND_2`) the only one of the TCP NodePort.
fn move_node_port_to_backend_2() -> [MapOp; 2] {
    [
        MapOp::PutBackend {
            id: 2,
            backend: be(REMOTE_BACKEND_2, BACKEND_PORT, Proto::Tcp),
        },
        MapOp::PutSlot {
            frontend: fe(NODE_IP, NODE_PORT, Proto::Tcp),
            slot: 1,
            backend_id: 2,
        },
    ]
}

/// A datapath with the node configured, a local backend Pod, and a NodePort frontend (TCP)
/// whose only backend is that Pod.
fn nodeport_local() -> TestDatapath {
    let t = node_port_service(
        Proto::Tcp,
        2,
        service_flags::EXTERNAL,
        &[(7, LOCAL_BACKEND)],
    );
    put_local_endpoint(&t);
    t
}

fn snat_range() -> std::ops::RangeInclusive<u16> {
    limits::SNAT_PORT_MIN..=limits::SNAT_PORT_MAX
}

/// Writes the node's configuration: its address, `lo` as uplink, SNAT from `snat_ports`.
fn write_config(t: &TestDatapath, snat_ports: std::ops::RangeInclusive<u16>) {
    t.dp.with_maps(move |m| {
        m.write_config(NodeConfig {
            node_ip: ip_to_net(NODE_IP),
            uplink_ifindex: LO_IFINDEX,
            snat_port_min: *snat_ports.start(),
            snat_port_max: *snat_ports.end(),
            pad: [0; 4],
        })
    })
    .expect("write config");
}

/// A datapath with the node configured and no Service yet.
fn configured() -> TestDatapath {
    let t = TestDatapath::load("fnd", None);
    write_config(&t, snat_range());
    t
}

fn put_local_endpoint(t: &TestDatapath) {
    t.dp.with_maps(move |m| {
        m.put_endpoint(
            LOCAL_BACKEND,
            EndpointInfo {
                ifindex: LO_IFINDEX,
                flags: 0,
                identity: 0,
                pod_mac: LOCAL_MAC,
                host_mac: LOCAL_HOST_MAC,
            },
        )
    })
    .expect("put endpoint");
}

/// A datapath with the node configured and the NodePort served for `proto` by `backends`
/// (see [`put_service`]).
fn node_port_service(
    proto: Proto,
    rev_nat_index: u16,
    flags: u8,
    backends: &[(u32, Ipv4Addr)],
) -> TestDatapath {
    let t = configured();
    put_service(
        &t,
        fe(NODE_IP, NODE_PORT, proto),
        rev_nat_index,
        flags,
        backends,
    );
    t
}

/// A datapath with the node configured and a NodePort frontend (TCP) whose only backend is
/// on another node.
fn nodeport_remote() -> TestDatapath {
    node_port_service(
        Proto::Tcp,
        1,
        service_flags::EXTERNAL,
        &[(1, REMOTE_BACKEND)],
    )
}

#[test]
fn new_flow_to_remote_backend_is_snated_and_dnated() {
    let t = nodeport_remote();
    let syn = client_tcp(TCP_SYN);
    let (verdict, out) = netdev(&t, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out (redirect_neigh)");
    let got = tuple(&out);
    assert_eq!(got.src, NODE_IP, "SNAT to the node's address");
    assert_eq!(got.dst, REMOTE_BACKEND);
    assert_eq!(got.dport, BACKEND_PORT);
    assert!(snat_range().contains(&got.sport), "SNAT port {}", got.sport);
    assert_checksums_and_payload(&out, &syn);
    assert_eq!(
        out[0..12],
        syn[0..12],
        "MACs left to the neighbour subsystem"
    );

    let entries = ct(&t);
    assert_eq!(entries.len(), 2, "one entry per direction: {entries:?}");
    let orig = ct_get(&t, &client_key(proto::TCP)).expect("original entry");
    assert_eq!(orig.nat_saddr, ip_to_net(NODE_IP));
    assert_eq!(orig.nat_sport, got.sport.to_be());
    assert_eq!(orig.nat_daddr, ip_to_net(REMOTE_BACKEND));
    assert_eq!(orig.nat_dport, BACKEND_PORT.to_be());
    assert_eq!(orig.backend_id, 1);
    assert_eq!(orig.rev_nat_index, 1);
    assert_eq!(orig.flags, ct_flags::SNAT);
    assert_ne!(orig.last_seen_ns, 0);
    let reply = ct_get(&t, &snat_reply_key(REMOTE_BACKEND, got.sport, proto::TCP))
        .expect("reply entry keyed by the SNATed tuple");
    assert_eq!(reply.nat_saddr, ip_to_net(NODE_IP));
    assert_eq!(reply.nat_sport, NODE_PORT.to_be());
    assert_eq!(reply.nat_daddr, ip_to_net(CLIENT));
    assert_eq!(reply.nat_dport, CLIENT_PORT.to_be());
    assert_eq!(reply.backend_id, 1);
    assert_eq!(reply.flags, ct_flags::SNAT);

    assert_eq!(metric(&t, Counter::CtCreated as u32), 1);
    assert_eq!(metric(&t, Counter::NodePortXlated as u32), 1);
    assert_eq!(metric(&t, Counter::NodePortRevXlated as u32), 0);

    // The next segment of the flow: the same translation from conntrack, nothing new created.
    assert_eq!(netdev_redirected(&t, &client_tcp(TCP_ACK)), got);
    assert_eq!(ct(&t).len(), 2);
    assert_eq!(metric(&t, Counter::CtCreated as u32), 1);
    assert_eq!(metric(&t, Counter::NodePortXlated as u32), 2);
}

#[test]
fn reply_of_remote_backend_is_translated_back_to_the_client() {
    let t = nodeport_remote();
    let (_, fwd) = netdev(&t, &client_tcp(TCP_SYN));
    let snat_port = tuple(&fwd).sport;

    let reply = backend_reply(
        snat_port,
        L4Kind::Tcp {
            flags: TCP_SYN | TCP_ACK,
        },
    );
    let (verdict, out) = netdev(&t, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "back out of the uplink");
    assert_eq!(tuple(&out), NODE_PORT_TO_CLIENT);
    assert_checksums_and_payload(&out, &reply);
    assert_eq!(metric(&t, Counter::NodePortRevXlated as u32), 1);
    assert_eq!(metric(&t, Counter::CtCreated as u32), 1);
    assert_eq!(ct(&t).len(), 2, "a reply creates nothing");

    // A reply to a SNAT port no flow holds is not ours: the stack gets it untouched.
    let stray = backend_reply(
        if snat_port == limits::SNAT_PORT_MAX {
            limits::SNAT_PORT_MIN
        } else {
            snat_port + 1
        },
        L4Kind::Tcp { flags: TCP_ACK },
    );
    assert_passes_untouched(&t, names::PROG_FROM_NETDEV, &stray);
}

#[test]
fn load_balancer_ip_flow_replies_come_from_the_load_balancer_ip() {
    let t = configured();
    put_service(
        &t,
        fe(LB_IP, 80, Proto::Tcp),
        3,
        service_flags::EXTERNAL,
        &[(4, REMOTE_BACKEND)],
    );
    let fwd = netdev_redirected(&t, &tcp(CLIENT, CLIENT_PORT, LB_IP, 80, TCP_SYN));
    assert_eq!(
        (fwd.src, fwd.dst, fwd.dport),
        (NODE_IP, REMOTE_BACKEND, 8080)
    );

    let reply = backend_reply(fwd.sport, L4Kind::Tcp { flags: TCP_ACK });
    assert_eq!(
        netdev_redirected(&t, &reply),
        Tuple {
            src: LB_IP,
            sport: 80,
            dst: CLIENT,
            dport: CLIENT_PORT,
        }
    );
}

#[test]
fn local_backend_keeps_the_client_address_and_its_reply_leaves_as_the_frontend() {
    let t = nodeport_local();

    let syn = client_tcp(TCP_SYN);
    let (verdict, out) = netdev(&t, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirect_peer into the Pod");
    assert_eq!(tuple(&out), dnat_only(LOCAL_BACKEND), "DNAT only");
    assert_eq!(out[0..6], LOCAL_MAC, "destination MAC: the Pod's");
    assert_eq!(out[6..12], LOCAL_HOST_MAC, "source MAC: its host veth's");
    assert_checksums_and_payload(&out, &syn);

    let orig = ct_get(&t, &client_key(proto::TCP)).expect("original entry");
    assert_eq!(orig.flags, ct_flags::LOCAL_BACKEND);
    assert_eq!(orig.nat_saddr, ip_to_net(CLIENT));
    assert_eq!(orig.nat_sport, CLIENT_PORT.to_be());
    assert_eq!(orig.backend_id, 7);
    assert_eq!(orig.rev_nat_index, 2);
    let reply_key = dnat_reply_key(LOCAL_BACKEND);
    let rev = ct_get(&t, &reply_key).expect("reply entry keyed by the Pod's reply");
    assert_eq!(rev.flags, ct_flags::LOCAL_BACKEND);
    assert_eq!(rev.nat_saddr, ip_to_net(NODE_IP));
    assert_eq!(rev.nat_sport, NODE_PORT.to_be());
    assert_eq!(ct(&t).len(), 2);
    assert_eq!(metric(&t, Counter::CtCreated as u32), 1);
    assert_eq!(metric(&t, Counter::NodePortXlated as u32), 1);

    // The Pod answers through its veth: from_container turns the source into the frontend.
    let reply = dnat_reply(LOCAL_BACKEND, TCP_SYN | TCP_ACK);
    let (verdict, out) = run_tc(&t, names::PROG_FROM_CONTAINER, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "straight out of the uplink");
    assert_eq!(tuple(&out), NODE_PORT_TO_CLIENT);
    assert_checksums_and_payload(&out, &reply);
    assert_eq!(
        out[ETH_HLEN + 8],
        reply[ETH_HLEN + 8],
        "TTL left to the uplink"
    );
    assert_eq!(metric(&t, Counter::NodePortRevXlated as u32), 1);
    assert_eq!(metric(&t, Counter::FromContainerLocal as u32), 0);
    assert_eq!(metric(&t, Counter::FromContainerStack as u32), 0);

    // Without a conntrack entry the Pod's traffic to the client is plain routing.
    t.dp.with_maps(move |m| m.ct.remove(&reply_key))
        .expect("delete reply entry");
    assert_passes_untouched(&t, names::PROG_FROM_CONTAINER, &reply);
    assert_eq!(metric(&t, Counter::FromContainerStack as u32), 1);
}

#[test]
fn udp_checksum_zero_stays_zero_and_a_real_one_is_updated() {
    let t = node_port_service(
        Proto::Udp,
        1,
        service_flags::EXTERNAL,
        &[(1, REMOTE_BACKEND)],
    );

    let no_csum = to_node_port(CLIENT, L4Kind::Udp { checksum: false });
    let out = netdev_redirected_frame(&t, &no_csum);
    let got = tuple(&out);
    assert_eq!(
        (got.src, got.dst, got.dport),
        (NODE_IP, REMOTE_BACKEND, 8080)
    );
    assert!(snat_range().contains(&got.sport));
    assert_eq!(out[L4 + 6..L4 + 8], [0, 0], "UDP checksum 0 stays 0");
    let orig = ct_get(&t, &client_key(proto::UDP)).expect("UDP original entry");
    assert_eq!(orig.flags, ct_flags::SNAT);

    // Another client with a checksum: it is updated, not zeroed.
    let other = Ipv4Addr::new(192, 0, 2, 51);
    let with_csum = to_node_port(other, UDP);
    let out = netdev_redirected_frame(&t, &with_csum);
    assert_ne!(out[L4 + 6..L4 + 8], [0, 0]);
    assert_eq!(ct(&t).len(), 4);
}

#[test]
fn cluster_ip_and_unknown_destinations_pass_untouched() {
    let t = nodeport_remote();
    // A ClusterIP frontend: served by the socket hooks only, not reachable from outside.
    put_service(
        &t,
        fe(CLUSTER_IP, 80, Proto::Tcp),
        5,
        0,
        &[(9, REMOTE_BACKEND_2)],
    );
    for f in [
        tcp(CLIENT, CLIENT_PORT, CLUSTER_IP, 80, TCP_SYN),
        // Unknown address, and the node's address on a port that is no NodePort.
        tcp(
            CLIENT,
            CLIENT_PORT,
            Ipv4Addr::new(10, 250, 0, 99),
            80,
            TCP_SYN,
        ),
        tcp(CLIENT, CLIENT_PORT, NODE_IP, 22, TCP_SYN),
        // The NodePort, but UDP while only TCP is served.
        to_node_port(CLIENT, UDP),
    ] {
        let (verdict, out) = netdev(&t, &f);
        assert_eq!(verdict, TC_ACT_OK, "{:?}", tuple(&f));
        assert_eq!(out, f, "bytes identical");
    }
    // Not IPv4 at all.
    let mut arp = client_tcp(TCP_SYN);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_passes_untouched(&t, names::PROG_FROM_NETDEV, &arp);
    assert!(ct(&t).is_empty());
    assert_eq!(metric(&t, Counter::NodePortXlated as u32), 0);
    assert_eq!(metric(&t, Counter::CtCreated as u32), 0);
}

#[test]
fn external_frontend_without_backends_drops_and_counts() {
    let t = node_port_service(Proto::Tcp, 1, service_flags::EXTERNAL, &[]);
    let syn = client_tcp(TCP_SYN);
    assert_eq!(netdev(&t, &syn).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::NoBackend as u32), 1);
    assert_eq!(
        metric_bytes(&t, DropReason::NoBackend as u32),
        syn.len() as u64
    );
    assert!(ct(&t).is_empty());
    assert_eq!(metric(&t, Counter::CtCreated as u32), 0);
}

#[test]
fn maglev_frontend_uses_its_table() {
    let t = configured();
    let frontend = fe(NODE_IP, NODE_PORT, Proto::Tcp);
    // Both backends in the slots; the table names only the second: a random pick would
    // choose the first half of the time.
    put_service(
        &t,
        frontend,
        4,
        service_flags::EXTERNAL | service_flags::MAGLEV,
        &[(1, REMOTE_BACKEND), (2, REMOTE_BACKEND_2)],
    );
    t.dp.apply(&[MapOp::PutMaglev {
        index: 4,
        proto: Proto::Tcp,
        table: vec![2; limits::MAGLEV_TABLE_SIZE as usize],
    }])
    .expect("put maglev table");

    for i in 0..16u16 {
        let client = Ipv4Addr::new(192, 0, 2, 100 + i as u8);
        let syn = tcp(client, 40_000 + i * 7, NODE_IP, NODE_PORT, TCP_SYN);
        assert_eq!(
            netdev_redirected(&t, &syn).dst,
            REMOTE_BACKEND_2,
            "flow {i}"
        );
    }
    let entries = ct(&t);
    assert_eq!(entries.len(), 32);
    assert!(entries.iter().all(|(_, v)| v.backend_id == 2));

    // A Maglev frontend whose table is missing is refused, not balanced at random.
    t.dp.apply(&[MapOp::DeleteMaglev {
        index: 4,
        proto: Proto::Tcp,
    }])
    .expect("delete maglev table");
    let syn = client_tcp(TCP_SYN);
    assert_eq!(netdev(&t, &syn).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::MissingBackend as u32), 1);
}

#[test]
fn syn_on_a_known_tuple_rebalances_while_the_old_flow_keeps_its_backend() {
    let t = nodeport_remote();
    let (_, out) = netdev(&t, &client_tcp(TCP_SYN));
    let old = tuple(&out);
    assert_eq!(old.dst, REMOTE_BACKEND);

    // The Service's only backend changes.
    t.dp.apply(&move_node_port_to_backend_2())
        .expect("swap backend");

    // A segment of the established flow stays with its backend.
    assert_eq!(netdev_redirected(&t, &client_tcp(TCP_PSH_ACK)), old);

    // A new connection from the same port: balanced afresh onto the new backend.
    let new = netdev_redirected(&t, &client_tcp(TCP_SYN));
    assert_eq!(new.dst, REMOTE_BACKEND_2);
    assert_eq!(new.src, NODE_IP);

    let entries = ct(&t);
    assert_eq!(entries.len(), 2, "old entries replaced: {entries:?}");
    let orig = ct_get(&t, &client_key(proto::TCP)).expect("original entry");
    assert_eq!(orig.backend_id, 2);
    assert_eq!(orig.nat_daddr, ip_to_net(REMOTE_BACKEND_2));
    assert!(ct_get(&t, &snat_reply_key(REMOTE_BACKEND_2, new.sport, proto::TCP)).is_some());
    assert!(
        ct_get(&t, &snat_reply_key(REMOTE_BACKEND, old.sport, proto::TCP)).is_none(),
        "the old backend's reply entry is gone"
    );
    assert_eq!(metric(&t, Counter::CtCreated as u32), 2);
}

#[test]
fn without_node_config_everything_passes() {
    let t = TestDatapath::load("fnd", None);
    put_service(
        &t,
        fe(NODE_IP, NODE_PORT, Proto::Tcp),
        1,
        service_flags::EXTERNAL,
        &[(1, REMOTE_BACKEND)],
    );
    assert_eq!(
        t.dp.with_maps(move |m| m.read_config()).expect("config"),
        NodeConfig::default(),
        "uplink_ifindex 0 until attach_uplink"
    );
    let syn = client_tcp(TCP_SYN);
    assert_passes_untouched(&t, names::PROG_FROM_NETDEV, &syn);
    let udp = to_node_port(CLIENT, UDP);
    assert_passes_untouched(&t, names::PROG_FROM_NETDEV, &udp);
    assert!(ct(&t).is_empty());
    assert_eq!(metric(&t, Counter::NodePortXlated as u32), 0);
}

#[test]
fn closed_connections_do_not_exhaust_snat_ports() {
    let t = nodeport_remote();
    let span = u32::from(limits::SNAT_PORT_MAX - limits::SNAT_PORT_MIN) + 1;
    // More connections than there are SNAT ports, each opened and reset by its client.
    let flows = span + span / 4;
    for n in 0..flows {
        let client = Ipv4Addr::new(192, 0, 2, 1 + (n % 250) as u8);
        let port = 20_000 + (n / 250) as u16;
        let syn = tcp(client, port, NODE_IP, NODE_PORT, TCP_SYN);
        let (verdict, _) = netdev(&t, &syn);
        if verdict != TC_ACT_REDIRECT {
            continue;
        }
        let rst = tcp(client, port, NODE_IP, NODE_PORT, TCP_RST | TCP_ACK);
        netdev(&t, &rst);
    }
    assert_eq!(
        metric(&t, DropReason::NoSnatPort as u32),
        0,
        "new connections refused for want of a SNAT port although every earlier one was closed \
         ({} conntrack entries)",
        ct(&t).len()
    );
}

#[test]
fn backend_at_the_nodes_own_address_is_answered_through_the_uplink_egress() {
    let t = node_port_service(
        Proto::Tcp,
        1,
        service_flags::EXTERNAL | service_flags::LOCAL,
        &[(1, NODE_IP)],
    );
    let syn = client_tcp(TCP_SYN);
    let (verdict, out) = netdev(&t, &syn);
    let got = tuple(&out);
    assert_eq!(
        verdict, TC_ACT_OK,
        "handed to this node's stack, not sent out of the uplink from {}:{} to its own address",
        got.src, got.sport
    );
    assert_eq!(
        got,
        dnat_only(NODE_IP),
        "DNAT only: the client's address is kept"
    );
    assert_checksums_and_payload(&out, &syn);
    let reply_key = dnat_reply_key(NODE_IP);
    let rev = ct_get(&t, &reply_key).expect("reply entry keyed by the node socket's reply");
    assert_eq!(rev.flags, ct_flags::HOST_BACKEND);
    assert_eq!(ct(&t).len(), 2);

    // The node's socket answers; the uplink's egress turns the source back into the frontend.
    let reply = dnat_reply(NODE_IP, TCP_SYN | TCP_ACK);
    let (verdict, out) = run_tc(&t, names::PROG_TO_NETDEV, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(tuple(&out), NODE_PORT_TO_CLIENT);
    assert_checksums_and_payload(&out, &reply);
    assert_eq!(metric(&t, Counter::NodePortRevXlated as u32), 1);

    // Other traffic of the node leaves untouched.
    let other = tcp(NODE_IP, 22, CLIENT, CLIENT_PORT, TCP_ACK);
    assert_passes_untouched(&t, names::PROG_TO_NETDEV, &other);
    assert_eq!(metric(&t, Counter::NodePortRevXlated as u32), 1);
}

#[test]
fn uplink_egress_leaves_replies_translated_elsewhere_alone() {
    // A Pod backend's reply entry (translated by from_container) matching a packet on the
    // uplink's egress must not be applied a second time there.
    let t = nodeport_local();
    netdev(&t, &client_tcp(TCP_SYN));
    let reply = dnat_reply(LOCAL_BACKEND, TCP_ACK);
    assert_passes_untouched(&t, names::PROG_TO_NETDEV, &reply);
    assert_eq!(metric(&t, Counter::NodePortRevXlated as u32), 0);
}

#[test]
fn purged_flows_are_balanced_again_on_their_next_packet() {
    let t = nodeport_remote();
    let (_, out) = netdev(&t, &client_tcp(TCP_SYN));
    assert_eq!(tuple(&out).dst, REMOTE_BACKEND);
    // A flow of another backend that must survive the purge.
    put_service(
        &t,
        fe(LB_IP, 80, Proto::Tcp),
        2,
        service_flags::EXTERNAL,
        &[(3, REMOTE_BACKEND_2)],
    );
    netdev(&t, &tcp(CLIENT, CLIENT_PORT, LB_IP, 80, TCP_SYN));
    assert_eq!(ct(&t).len(), 4);

    // The backend goes away: the agent replaces it and forgets its flows.
    let [put_backend, put_slot] = move_node_port_to_backend_2();
    t.dp.apply(&[put_backend, put_slot, MapOp::DeleteBackend { id: 1 }])
        .expect("replace backend");
    let purged =
        t.dp.with_maps(move |m| m.purge_ct(&[1].into()))
            .expect("purge");
    assert_eq!(purged, 2, "both directions of the flow");
    let left = ct(&t);
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|(_, v)| v.backend_id == 3));

    // The next segment of the old flow (no SYN) gets a live backend.
    assert_eq!(
        netdev_redirected(&t, &client_tcp(TCP_PSH_ACK)).dst,
        REMOTE_BACKEND_2
    );
    assert_eq!(
        t.dp.with_maps(move |m| m.purge_ct(&Default::default()))
            .expect("empty purge"),
        0
    );
}

#[test]
fn maglev_tables_of_the_wrong_size_are_refused() {
    let t = TestDatapath::load("fnd", None);
    let err =
        t.dp.apply(&[MapOp::PutMaglev {
            index: 1,
            proto: Proto::Tcp,
            table: vec![1; 7],
        }])
        .expect_err("short table");
    assert!(
        matches!(err, super::MapsError::Invalid { map, .. } if map == names::MAGLEV),
        "{err:?}"
    );
    assert!(t.dp.read_lb().expect("read").maglev.is_empty());
}

#[test]
fn maglev_tables_and_names_read_back_and_go_with_their_index() {
    let t = TestDatapath::load("fnd", None);
    let frontend = fe(NODE_IP, NODE_PORT, Proto::Udp);
    put_service(
        &t,
        frontend,
        9,
        service_flags::EXTERNAL | service_flags::MAGLEV,
        &[(1, REMOTE_BACKEND), (2, REMOTE_BACKEND_2)],
    );
    let table: Vec<u32> = (0..limits::MAGLEV_TABLE_SIZE).map(|i| 1 + i % 2).collect();
    t.dp.apply(&[
        MapOp::PutMaglev {
            index: 9,
            proto: Proto::Udp,
            table: table.clone(),
        },
        MapOp::PutName {
            index: 9,
            name: "shop/web".into(),
        },
    ])
    .expect("apply");
    let state = t.dp.read_lb().expect("read");
    assert_eq!(state.maglev.get(&(9, Proto::Udp)), Some(&table));
    assert_eq!(state.names.get(&9).map(String::as_str), Some("shop/web"));
    assert_eq!(
        state.services[&frontend].flags,
        service_flags::EXTERNAL | service_flags::MAGLEV
    );

    t.dp.apply(&[
        MapOp::DeleteMaglev {
            index: 9,
            proto: Proto::Udp,
        },
        MapOp::DeleteRevNat { index: 9 },
    ])
    .expect("delete");
    let state = t.dp.read_lb().expect("read");
    assert!(state.maglev.is_empty());
    assert!(state.names.is_empty(), "the name goes with its index");
}

/// `f` with 4 bytes of IPv4 options (NOPs) inserted, header length and checksum fixed.
fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..L4].to_vec();
    out.extend_from_slice(&[1, 1, 1, 1]);
    out.extend_from_slice(&f[L4..]);
    out[ETH_HLEN] = 0x46;
    let total = u16::from_be_bytes([out[ETH_HLEN + 2], out[ETH_HLEN + 3]]) + 4;
    out[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
    refresh_ipv4_checksum(&mut out);
    out
}

#[test]
fn ip_options_shift_the_ports_and_later_fragments_pass() {
    let t = nodeport_remote();
    let syn = with_ip_options(&client_tcp(TCP_SYN));
    let (verdict, out) = netdev(&t, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let l4 = L4 + 4;
    assert_eq!(ipv4_checksum(&out[ETH_HLEN..l4]), 0);
    assert_eq!(out[ETH_HLEN + 12..ETH_HLEN + 16], NODE_IP.octets());
    assert_eq!(out[ETH_HLEN + 16..ETH_HLEN + 20], REMOTE_BACKEND.octets());
    assert_eq!(out[L4..l4], [1, 1, 1, 1], "options untouched");
    let sport = u16::from_be_bytes([out[l4], out[l4 + 1]]);
    assert!(snat_range().contains(&sport));
    assert_eq!(u16::from_be_bytes([out[l4 + 2], out[l4 + 3]]), BACKEND_PORT);
    assert_eq!(
        l4_checksum(NODE_IP, REMOTE_BACKEND, proto::TCP, &out[l4..]),
        0,
        "TCP checksum valid"
    );

    // A fragment past the first carries no ports: left to the stack as it is.
    let mut frag = to_node_port(CLIENT, UDP);
    frag[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&0x00b9u16.to_be_bytes());
    refresh_ipv4_checksum(&mut frag);
    assert_passes_untouched(&t, names::PROG_FROM_NETDEV, &frag);
    assert_eq!(ct(&t).len(), 2, "only the TCP flow");
}

/// The node configured with a single SNAT port, so that every SNATed flow towards one backend
/// competes for it; the NodePort is served for TCP and UDP.
fn single_snat_port() -> TestDatapath {
    let t = nodeport_remote();
    write_config(&t, limits::SNAT_PORT_MIN..=limits::SNAT_PORT_MIN);
    put_service(
        &t,
        fe(NODE_IP, NODE_PORT, Proto::Udp),
        1,
        service_flags::EXTERNAL,
        &[(2, REMOTE_BACKEND)],
    );
    t
}

/// Opens a flow from `client` with `kind`; returns the verdict and the SNAT port it got.
fn open(t: &TestDatapath, client: Ipv4Addr, kind: L4Kind) -> (u32, u16) {
    let (verdict, out) = netdev(t, &to_node_port(client, kind));
    (verdict, tuple(&out).sport)
}

/// [`single_snat_port`] with the port held by a UDP flow of `CLIENT`.
fn udp_flow_on_single_snat_port() -> TestDatapath {
    let t = single_snat_port();
    assert_eq!(
        open(&t, CLIENT, UDP),
        (TC_ACT_REDIRECT, limits::SNAT_PORT_MIN)
    );
    t
}

#[test]
fn snat_port_is_taken_over_only_when_its_flow_is_over() {
    let t = single_snat_port();
    let port = limits::SNAT_PORT_MIN;
    let syn = L4Kind::Tcp { flags: TCP_SYN };
    let (a, b, c) = (
        CLIENT,
        Ipv4Addr::new(192, 0, 2, 61),
        Ipv4Addr::new(192, 0, 2, 62),
    );
    assert_eq!(open(&t, a, syn), (TC_ACT_REDIRECT, port));

    // The port is busy: a second client is refused rather than mixed into the first flow.
    assert_eq!(open(&t, b, syn).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::NoSnatPort as u32), 1);

    // A FIN one way only is a half-close: the connection still carries data the other way.
    let fin = tcp(a, CLIENT_PORT, NODE_IP, NODE_PORT, TCP_FIN | TCP_ACK);
    assert_eq!(netdev(&t, &fin).0, TC_ACT_REDIRECT);
    assert_eq!(open(&t, b, syn).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::NoSnatPort as u32), 2);

    // The backend's FIN too: the connection is over and its port serves the next client.
    let (verdict, _) = netdev(
        &t,
        &backend_reply(
            port,
            L4Kind::Tcp {
                flags: TCP_FIN | TCP_ACK,
            },
        ),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(open(&t, b, syn), (TC_ACT_REDIRECT, port));
    let keys: Vec<CtKey> = ct(&t).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 2, "the old flow is gone: {keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.dir == ct_dir::REPLY || k.saddr == ip_to_net(b))
    );
    let reply = ct_get(&t, &snat_reply_key(REMOTE_BACKEND, port, proto::TCP)).expect("reply entry");
    assert_eq!(
        reply.nat_daddr,
        ip_to_net(b),
        "replies now go to the new client"
    );
    assert_eq!(
        reply.flags,
        ct_flags::SNAT,
        "no FIN of the old flow carried over"
    );

    // A RST from the backend ends a flow at once.
    netdev(&t, &backend_reply(port, L4Kind::Tcp { flags: TCP_RST }));
    assert_eq!(open(&t, c, syn), (TC_ACT_REDIRECT, port));
    assert_eq!(ct(&t).len(), 2);
}

/// Pretends the conntrack entry `key` was last seen `age_ns` ago.
fn age(t: &TestDatapath, key: CtKey, age_ns: u64) {
    t.dp.with_maps(move |m| {
        let mut v = m.ct.get(&key, 0).expect("conntrack entry");
        v.last_seen_ns = super::sys::monotonic_ns().saturating_sub(age_ns);
        m.ct.insert(key, v, 0)
    })
    .expect("age conntrack entry");
}

/// Pretends the reply direction of the UDP flow holding the single SNAT port has been silent
/// past the idle limit.
fn age_udp_reply(t: &TestDatapath) {
    age(
        t,
        snat_reply_key(REMOTE_BACKEND, limits::SNAT_PORT_MIN, proto::UDP),
        PAST_UDP_IDLE_NS,
    );
}

/// Pretends both directions of `CLIENT`'s UDP flow have been silent past the idle limit.
fn age_udp_flow(t: &TestDatapath) {
    age_udp_reply(t);
    age(t, client_key(proto::UDP), PAST_UDP_IDLE_NS);
}

#[test]
fn udp_port_of_an_idle_flow_is_taken_over() {
    let t = udp_flow_on_single_snat_port();
    let other = Ipv4Addr::new(192, 0, 2, 61);
    assert_eq!(open(&t, other, UDP).0, TC_ACT_SHOT, "still in use");

    // Both directions silent past the idle limit.
    age_udp_flow(&t);
    assert_eq!(
        open(&t, other, UDP),
        (TC_ACT_REDIRECT, limits::SNAT_PORT_MIN)
    );
    assert!(
        ct_get(&t, &client_key(proto::UDP)).is_none(),
        "the idle flow is forgotten"
    );
    assert_eq!(ct(&t).len(), 2);
}

#[test]
fn udp_flow_sending_one_way_keeps_its_snat_port() {
    let t = udp_flow_on_single_snat_port();
    let port = limits::SNAT_PORT_MIN;
    // The backend has been silent past the idle limit; the client sends right now.
    age_udp_reply(&t);
    assert_eq!(open(&t, CLIENT, UDP), (TC_ACT_REDIRECT, port));

    let other = Ipv4Addr::new(192, 0, 2, 61);
    assert_eq!(
        open(&t, other, UDP).0,
        TC_ACT_SHOT,
        "the active flow's port must not be taken over"
    );
    let reply = ct_get(&t, &snat_reply_key(REMOTE_BACKEND, port, proto::UDP)).expect("reply entry");
    assert_eq!(
        reply.nat_daddr,
        ip_to_net(CLIENT),
        "the backend's answers still reach the client"
    );
}

#[test]
fn conntrack_gc_keeps_both_directions_of_a_flow_that_is_active_one_way() {
    let t = udp_flow_on_single_snat_port();
    age_udp_reply(&t);
    assert_eq!(t.dp.gc_ct().expect("gc"), 0, "the flow is active");
    let (verdict, out) = netdev(&t, &backend_reply(limits::SNAT_PORT_MIN, UDP));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(tuple(&out).dst, CLIENT);
}

#[test]
fn conntrack_gc_removes_flows_idle_in_both_directions() {
    let t = udp_flow_on_single_snat_port();
    assert_eq!(t.dp.gc_ct().expect("gc"), 0, "fresh entries stay");
    age_udp_flow(&t);
    assert_eq!(t.dp.gc_ct().expect("gc"), 2);
    assert!(ct(&t).is_empty());
}

#[test]
fn a_full_conntrack_refuses_new_flows_keeps_established_ones_and_counts() {
    let t = nodeport_remote();
    // An established flow first.
    let syn = client_tcp(TCP_SYN);
    assert_eq!(netdev(&t, &syn).0, TC_ACT_REDIRECT);
    // Fill the rest of the table from userspace with flows of other clients.
    let filler = CtValue {
        nat_saddr: 0,
        nat_daddr: 0,
        nat_sport: 0,
        nat_dport: 0,
        backend_id: 0,
        rev_nat_index: 0,
        flags: 0,
        pad: [0; 5],
        last_seen_ns: 0,
    };
    t.dp.with_maps(move |m| {
        let mut n: u32 = 0;
        loop {
            let key = ct_key(
                Ipv4Addr::from(0x0a00_0000 + n),
                1,
                Ipv4Addr::new(203, 0, 113, 1),
                1,
                proto::UDP,
                ct_dir::ORIGINAL,
            );
            match m.ct.insert(key, filler, 0) {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        assert_eq!(n + 2, limits::MAX_CT, "the table holds MAX_CT entries");
    });
    // A new flow is refused and counted...
    let other = tcp(
        Ipv4Addr::new(192, 0, 2, 77),
        40_000,
        NODE_IP,
        NODE_PORT,
        TCP_SYN,
    );
    assert_eq!(netdev(&t, &other).0, TC_ACT_SHOT);
    assert_eq!(metric(&t, DropReason::CtFull as u32), 1);
    // ... while the established one is still translated.
    let data = client_tcp(TCP_PSH_ACK);
    let (verdict, out) = netdev(&t, &data);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(tuple(&out).dst, REMOTE_BACKEND);
}
