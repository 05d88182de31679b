//! Tests of the planner's external frontends: NodePorts per node address, LoadBalancer
//! ingress IPs and externalIPs, their flags (EXTERNAL, MAGLEV, LOCAL), traffic policies
//! `Local`, Service names, and the Maglev tables and names the diff writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{
    core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus},
    discovery::v1::EndpointSlice,
};
use keelson_common::{limits, service_flags};

use super::{
    model::{BackendAddr, DesiredState, Frontend, LbState, MapOp, Proto},
    plan::{LB_ALGORITHM_ANNOTATION, NodeContext, desired, diff},
    testutil::{endpoint, endpoint_port, endpoint_slice, fe, service, service_port, state_after},
};

const NS: &str = "shop";
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 20];
const NODE_A: [u8; 4] = [10, 250, 0, 11];
const NODE_B: [u8; 4] = [10, 250, 0, 12];
const LB_IP: [u8; 4] = [198, 51, 100, 7];
const EXT_IP: [u8; 4] = [203, 0, 113, 9];
const THIS_NODE: &str = "keelson-n1";
const OTHER_NODE: &str = "keelson-n2";

/// A Service port: (name, port, protocol, nodePort).
type Port<'a> = (&'a str, i32, &'a str, Option<i32>);

fn svc(name: &str, ty: &str, ports: &[Port<'_>]) -> Service {
    let mut s = service(
        NS,
        name,
        &Ipv4Addr::from(CLUSTER_IP).to_string(),
        ports
            .iter()
            .map(|&(n, p, proto, np)| service_port(Some(n), p, proto, np))
            .collect(),
    );
    spec(&mut s).type_ = Some(ty.into());
    s
}

fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.as_mut().expect("spec")
}

fn annotate(s: &mut Service, algorithm: &str) {
    s.metadata.annotations = Some(BTreeMap::from([(
        LB_ALGORITHM_ANNOTATION.into(),
        algorithm.into(),
    )]));
}

fn set_ingress(s: &mut Service, ingress: Vec<LoadBalancerIngress>) {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..Default::default()
    });
}

/// A load-balancer ingress with address `LB_IP`.
fn lb_ip_ingress() -> LoadBalancerIngress {
    LoadBalancerIngress {
        ip: Some(Ipv4Addr::from(LB_IP).to_string()),
        ..Default::default()
    }
}

/// An endpoint: (address, nodeName, ready, serving, terminating).
type Ep<'a> = (&'a str, &'a str, bool, bool, bool);

fn ready_on<'a>(ip: &'a str, node: &'a str) -> Ep<'a> {
    (ip, node, true, true, false)
}

fn slice(service: &str, ports: &[(&str, i32, &str)], endpoints: &[Ep<'_>]) -> EndpointSlice {
    endpoint_slice(
        NS,
        &format!("{service}-abcde"),
        service,
        ports
            .iter()
            .map(|&(n, p, proto)| endpoint_port(Some(n), p, proto))
            .collect(),
        endpoints
            .iter()
            .map(|&(ip, node, ready, serving, terminating)| {
                endpoint(
                    ip,
                    Some(node),
                    (Some(ready), Some(serving), Some(terminating)),
                )
            })
            .collect(),
    )
}

fn node(maglev_default: bool) -> NodeContext {
    NodeContext {
        node_name: THIS_NODE.into(),
        node_ips: vec![
            IpAddr::from(Ipv4Addr::from(NODE_A)),
            IpAddr::from(Ipv4Addr::from(NODE_B)),
        ],
        maglev_default,
    }
}

fn be(ip: &str, port: u16, proto: Proto) -> BackendAddr {
    BackendAddr {
        address: ip.parse().expect("address"),
        port,
        proto,
    }
}

fn flags(d: &DesiredState, f: &Frontend) -> u8 {
    d.flags.get(f).copied().unwrap_or(0)
}

fn frontends(d: &DesiredState) -> BTreeSet<Frontend> {
    d.services.keys().copied().collect()
}

/// A NodePort Service `web` with a TCP and a UDP port, two ready endpoints on two nodes.
fn web(ty: &str) -> (Service, EndpointSlice) {
    let s = svc(
        "web",
        ty,
        &[
            ("http", 80, "TCP", Some(30080)),
            ("dns", 53, "UDP", Some(30053)),
        ],
    );
    let e = slice(
        "web",
        &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
        &[
            ready_on("10.244.1.5", THIS_NODE),
            ready_on("10.244.2.5", OTHER_NODE),
        ],
    );
    (s, e)
}

#[test]
fn node_ports_get_a_frontend_per_node_address_and_protocol() {
    let (s, e) = web("NodePort");
    let d = desired(&[s], &[e], &node(false));
    let http = vec![
        be("10.244.1.5", 8080, Proto::Tcp),
        be("10.244.2.5", 8080, Proto::Tcp),
    ];
    let dns = vec![
        be("10.244.1.5", 5353, Proto::Udp),
        be("10.244.2.5", 5353, Proto::Udp),
    ];
    let expected: BTreeMap<Frontend, Vec<BackendAddr>> = BTreeMap::from([
        (fe(CLUSTER_IP, 80, Proto::Tcp), http.clone()),
        (fe(CLUSTER_IP, 53, Proto::Udp), dns.clone()),
        (fe(NODE_A, 30080, Proto::Tcp), http.clone()),
        (fe(NODE_B, 30080, Proto::Tcp), http),
        (fe(NODE_A, 30053, Proto::Udp), dns.clone()),
        (fe(NODE_B, 30053, Proto::Udp), dns),
    ]);
    assert_eq!(d.services, expected);
    for f in d.services.keys() {
        let want = if f.address == IpAddr::from(Ipv4Addr::from(CLUSTER_IP)) {
            0
        } else {
            service_flags::EXTERNAL
        };
        assert_eq!(flags(&d, f), want, "{f}");
        assert_eq!(d.names[f], "shop/web", "{f}");
    }
    // Only the external ones carry flags at all: ClusterIPs keep an empty entry out.
    assert!(!d.flags.contains_key(&fe(CLUSTER_IP, 80, Proto::Tcp)));
}

#[test]
fn node_ports_need_a_node_port_service_and_a_node_address() {
    // A ClusterIP Service with a stale nodePort (carried over from a former type) serves none.
    let (s, e) = web("ClusterIP");
    let d = desired(&[s], std::slice::from_ref(&e), &node(false));
    assert_eq!(
        frontends(&d),
        BTreeSet::from([
            fe(CLUSTER_IP, 80, Proto::Tcp),
            fe(CLUSTER_IP, 53, Proto::Udp)
        ])
    );
    assert!(d.flags.is_empty());

    // A node without known addresses has nowhere to serve NodePorts.
    let (s, e) = web("NodePort");
    let d = desired(
        &[s],
        &[e],
        &NodeContext {
            node_ips: Vec::new(),
            ..node(false)
        },
    );
    assert_eq!(d.services.len(), 2);

    // A port without an allocated nodePort (LoadBalancer with allocateLoadBalancerNodePorts
    // false) only gets its ClusterIP.
    let s = svc("web", "LoadBalancer", &[("http", 80, "TCP", None)]);
    let e = slice(
        "web",
        &[("http", 8080, "TCP")],
        &[ready_on("10.244.1.5", THIS_NODE)],
    );
    let d = desired(&[s], &[e], &node(false));
    assert_eq!(
        frontends(&d),
        BTreeSet::from([fe(CLUSTER_IP, 80, Proto::Tcp)])
    );
}

#[test]
fn load_balancer_ingress_ips_and_external_ips_are_external_frontends() {
    let (mut s, e) = web("LoadBalancer");
    set_ingress(
        &mut s,
        vec![
            lb_ip_ingress(),
            // A hostname-only ingress (cloud LBs) has no address to serve here.
            LoadBalancerIngress {
                hostname: Some("lb.example.com".into()),
                ..Default::default()
            },
        ],
    );
    spec(&mut s).external_ips = Some(vec![Ipv4Addr::from(EXT_IP).to_string()]);
    let d = desired(&[s], &[e], &node(false));
    let mut want = BTreeSet::new();
    for (ip, tcp, udp) in [
        (CLUSTER_IP, 80, 53),
        (NODE_A, 30080, 30053),
        (NODE_B, 30080, 30053),
        // LoadBalancer and external IPs serve the Service port, not the nodePort.
        (LB_IP, 80, 53),
        (EXT_IP, 80, 53),
    ] {
        want.insert(fe(ip, tcp, Proto::Tcp));
        want.insert(fe(ip, udp, Proto::Udp));
    }
    assert_eq!(frontends(&d), want);
    for f in [
        fe(LB_IP, 80, Proto::Tcp),
        fe(LB_IP, 53, Proto::Udp),
        fe(EXT_IP, 80, Proto::Tcp),
        fe(EXT_IP, 53, Proto::Udp),
    ] {
        assert_eq!(flags(&d, &f), service_flags::EXTERNAL, "{f}");
        assert_eq!(d.services[&f], d.services[&fe(CLUSTER_IP, f.port, f.proto)]);
        assert_eq!(d.names[&f], "shop/web");
    }
}

#[test]
fn external_ips_apply_to_cluster_ip_services_and_ingress_only_to_load_balancers() {
    let (mut s, e) = web("ClusterIP");
    spec(&mut s).external_ips = Some(vec![
        Ipv4Addr::from(EXT_IP).to_string(),
        "not-an-address".into(),
    ]);
    // A status a former LoadBalancer type left behind is not served.
    set_ingress(&mut s, vec![lb_ip_ingress()]);
    let d = desired(&[s], &[e], &node(false));
    assert_eq!(
        frontends(&d),
        BTreeSet::from([
            fe(CLUSTER_IP, 80, Proto::Tcp),
            fe(CLUSTER_IP, 53, Proto::Udp),
            fe(EXT_IP, 80, Proto::Tcp),
            fe(EXT_IP, 53, Proto::Udp),
        ])
    );
    assert_eq!(
        flags(&d, &fe(EXT_IP, 80, Proto::Tcp)),
        service_flags::EXTERNAL
    );
    assert_eq!(flags(&d, &fe(CLUSTER_IP, 80, Proto::Tcp)), 0);
}

#[test]
fn maglev_comes_from_the_annotation_or_the_node_default() {
    let ext = fe(NODE_A, 30080, Proto::Tcp);
    let cluster = fe(CLUSTER_IP, 80, Proto::Tcp);
    let cases = [
        // (annotation, node default, MAGLEV expected)
        (None, false, false),
        (None, true, true),
        (Some("maglev"), false, true),
        (Some("maglev"), true, true),
        (Some("random"), true, false),
        (Some("random"), false, false),
        // An unknown value falls back to the default.
        (Some("round-robin"), true, true),
    ];
    for (annotation, default, maglev) in cases {
        let (mut s, e) = web("NodePort");
        if let Some(a) = annotation {
            annotate(&mut s, a);
        }
        let d = desired(&[s], &[e], &node(default));
        let want = if maglev {
            service_flags::EXTERNAL | service_flags::MAGLEV
        } else {
            service_flags::EXTERNAL
        };
        assert_eq!(flags(&d, &ext), want, "{annotation:?} default {default}");
        assert_eq!(flags(&d, &fe(NODE_B, 30053, Proto::Udp)), want);
        // ClusterIPs are balanced by the socket hooks: never Maglev.
        assert_eq!(flags(&d, &cluster), 0, "{annotation:?} default {default}");
    }
}

#[test]
fn external_traffic_policy_local_keeps_this_nodes_endpoints_on_external_frontends() {
    let (mut s, e) = web("LoadBalancer");
    spec(&mut s).external_traffic_policy = Some("Local".into());
    spec(&mut s).external_ips = Some(vec![Ipv4Addr::from(EXT_IP).to_string()]);
    set_ingress(&mut s, vec![lb_ip_ingress()]);
    let d = desired(&[s], &[e], &node(false));
    let local = vec![be("10.244.1.5", 8080, Proto::Tcp)];
    for ip in [NODE_A, NODE_B] {
        let f = fe(ip, 30080, Proto::Tcp);
        assert_eq!(d.services[&f], local, "{f}");
        assert_eq!(
            flags(&d, &f),
            service_flags::EXTERNAL | service_flags::LOCAL
        );
    }
    for ip in [LB_IP, EXT_IP] {
        let f = fe(ip, 80, Proto::Tcp);
        assert_eq!(d.services[&f], local, "{f}");
        assert_eq!(
            flags(&d, &f),
            service_flags::EXTERNAL | service_flags::LOCAL
        );
    }
    assert_eq!(
        d.services[&fe(NODE_A, 30053, Proto::Udp)],
        vec![be("10.244.1.5", 5353, Proto::Udp)]
    );
    // The ClusterIP is not affected by the external policy.
    assert_eq!(d.services[&fe(CLUSTER_IP, 80, Proto::Tcp)].len(), 2);
    assert_eq!(flags(&d, &fe(CLUSTER_IP, 80, Proto::Tcp)), 0);

    // Another node's agent sees its own endpoint only.
    let (mut s, e) = web("NodePort");
    spec(&mut s).external_traffic_policy = Some("Local".into());
    let other = NodeContext {
        node_name: OTHER_NODE.into(),
        ..node(false)
    };
    let d = desired(&[s], &[e], &other);
    assert_eq!(
        d.services[&fe(NODE_A, 30080, Proto::Tcp)],
        vec![be("10.244.2.5", 8080, Proto::Tcp)]
    );
}

#[test]
fn external_traffic_policy_local_falls_back_to_local_terminating_endpoints() {
    let mut s = svc("web", "NodePort", &[("http", 80, "TCP", Some(30080))]);
    spec(&mut s).external_traffic_policy = Some("Local".into());
    let f = fe(NODE_A, 30080, Proto::Tcp);
    // The desired state as `node` plans it with `endpoints` in the Service's one slice.
    let plan = |endpoints: &[Ep<'_>], node: &NodeContext| {
        let e = slice("web", &[("http", 8080, "TCP")], endpoints);
        desired(std::slice::from_ref(&s), &[e], node)
    };

    // This node's endpoint is terminating but still serving; another node's is ready. The
    // external frontend must not go to the other node (KEP-1669: serving terminating local
    // endpoints before none at all), the ClusterIP uses the ready one.
    let d = plan(
        &[
            ("10.244.1.5", THIS_NODE, false, true, true),
            ready_on("10.244.2.5", OTHER_NODE),
        ],
        &node(false),
    );
    assert_eq!(d.services[&f], vec![be("10.244.1.5", 8080, Proto::Tcp)]);
    assert_eq!(
        d.services[&fe(CLUSTER_IP, 80, Proto::Tcp)],
        vec![be("10.244.2.5", 8080, Proto::Tcp)]
    );

    // A ready local endpoint wins over a terminating local one.
    let d = plan(
        &[
            ("10.244.1.5", THIS_NODE, false, true, true),
            ready_on("10.244.1.6", THIS_NODE),
        ],
        &node(false),
    );
    assert_eq!(d.services[&f], vec![be("10.244.1.6", 8080, Proto::Tcp)]);

    // Local but neither ready nor serving: no backend, the frontend stays (and drops).
    let d = plan(
        &[
            ("10.244.1.5", THIS_NODE, false, false, true),
            ready_on("10.244.2.5", OTHER_NODE),
        ],
        &node(false),
    );
    assert_eq!(d.services[&f], vec![]);
    assert_eq!(
        flags(&d, &f),
        service_flags::EXTERNAL | service_flags::LOCAL
    );

    // An agent that does not know its node name has no local endpoint.
    let unnamed = NodeContext {
        node_name: String::new(),
        ..node(false)
    };
    let d = plan(&[ready_on("10.244.1.5", THIS_NODE)], &unnamed);
    assert_eq!(d.services[&f], vec![]);
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_on_cluster_ips() {
    let (mut s, e) = web("NodePort");
    spec(&mut s).internal_traffic_policy = Some("Local".into());
    let d = desired(&[s], &[e], &node(false));
    assert_eq!(
        d.services[&fe(CLUSTER_IP, 80, Proto::Tcp)],
        vec![be("10.244.1.5", 8080, Proto::Tcp)]
    );
    assert_eq!(
        d.services[&fe(CLUSTER_IP, 53, Proto::Udp)],
        vec![be("10.244.1.5", 5353, Proto::Udp)]
    );
    // Without a flag of its own: the socket hooks need none to keep the Pod's address.
    assert_eq!(flags(&d, &fe(CLUSTER_IP, 80, Proto::Tcp)), 0);
    // The external frontends keep the cluster-wide endpoints (externalTrafficPolicy Cluster).
    assert_eq!(d.services[&fe(NODE_A, 30080, Proto::Tcp)].len(), 2);
    assert_eq!(
        flags(&d, &fe(NODE_A, 30080, Proto::Tcp)),
        service_flags::EXTERNAL
    );
}

#[test]
fn every_frontend_is_named_after_its_service() {
    let (mut s, e) = web("NodePort");
    spec(&mut s).external_ips = Some(vec![Ipv4Addr::from(EXT_IP).to_string()]);
    let mut other = svc("api", "ClusterIP", &[("grpc", 9000, "TCP", None)]);
    other.metadata.namespace = Some("backoffice".into());
    let ip = "10.96.0.30".to_string();
    spec(&mut other).cluster_ip = Some(ip.clone());
    spec(&mut other).cluster_ips = Some(vec![ip]);
    let d = desired(&[s, other], &[e], &node(false));
    assert_eq!(
        d.names.keys().collect::<Vec<_>>(),
        d.services.keys().collect::<Vec<_>>(),
        "one name per frontend"
    );
    for (f, name) in &d.names {
        let want = if f.port == 9000 {
            "backoffice/api"
        } else {
            "shop/web"
        };
        assert_eq!(name, want, "{f}");
    }
}

fn rev_nat_index_of(ops: &[MapOp], f: &Frontend) -> u16 {
    ops.iter()
        .find_map(|op| match op {
            MapOp::PutMaster {
                frontend,
                rev_nat_index,
                ..
            } if frontend == f => Some(*rev_nat_index),
            _ => None,
        })
        .expect("master written")
}

#[test]
fn diff_names_each_reverse_nat_index_once_and_converges() {
    // TCP and UDP on one port number share a reverse-NAT index (and so a name).
    let mut s = svc(
        "dns",
        "NodePort",
        &[
            ("dns-tcp", 53, "TCP", Some(30053)),
            ("dns-udp", 53, "UDP", Some(30053)),
        ],
    );
    spec(&mut s).external_ips = Some(vec![Ipv4Addr::from(EXT_IP).to_string()]);
    let e = slice(
        "dns",
        &[("dns-tcp", 5353, "TCP"), ("dns-udp", 5353, "UDP")],
        &[ready_on("10.244.1.5", THIS_NODE)],
    );
    let d = desired(&[s], &[e], &node(false));
    let (ops, next) = state_after(&LbState::default(), &d);
    let named: Vec<(u16, &str)> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::PutName { index, name } => Some((*index, name.as_str())),
            _ => None,
        })
        .collect();
    let indexes: BTreeSet<u16> = named.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indexes.len(),
        named.len(),
        "one PutName per index: {named:?}"
    );
    // ClusterIP:53, nodeA:30053, nodeB:30053, externalIP:53.
    assert_eq!(named.len(), 4);
    assert!(named.iter().all(|(_, n)| *n == "shop/dns"));
    assert_eq!(next.revnat.len(), 4);
    assert_eq!(
        next.names,
        next.revnat
            .keys()
            .map(|&i| (i, "shop/dns".to_string()))
            .collect::<BTreeMap<_, _>>()
    );
    // Every name follows the reverse-NAT entry it names.
    for (pos, op) in ops.iter().enumerate() {
        if let MapOp::PutName { index, .. } = op {
            assert!(
                ops[..pos]
                    .iter()
                    .any(|o| matches!(o, MapOp::PutRevNat { index: i, .. } if i == index)),
                "PutName {index} before its PutRevNat"
            );
        }
    }
    assert_eq!(diff(&next, &d), vec![], "converged");

    // A renamed Service (same frontends) rewrites the names only.
    let mut renamed = d.clone();
    for name in renamed.names.values_mut() {
        *name = "shop/dns2".into();
    }
    let (ops, next) = state_after(&next, &renamed);
    assert_eq!(ops.len(), 4);
    assert!(
        ops.iter()
            .all(|op| matches!(op, MapOp::PutName { name, .. } if name == "shop/dns2"))
    );
    assert_eq!(diff(&next, &renamed), vec![]);
}

#[test]
fn diff_writes_maglev_tables_before_the_masters_that_use_them() {
    let (mut s, e) = web("NodePort");
    annotate(&mut s, "maglev");
    let d = desired(&[s], &[e], &node(false));
    let (ops, next) = state_after(&LbState::default(), &d);

    let external: Vec<Frontend> = d
        .flags
        .iter()
        .filter(|(_, f)| **f & service_flags::MAGLEV != 0)
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(external.len(), 4, "two node addresses x two ports");
    let backend_id: BTreeMap<BackendAddr, u32> = next
        .backends
        .iter()
        .map(|(&id, &addr)| (addr, id))
        .collect();
    for f in &external {
        let index = rev_nat_index_of(&ops, f);
        let table_pos = ops
            .iter()
            .position(|op| {
                matches!(op, MapOp::PutMaglev { index: i, proto, .. } if *i == index && proto == &f.proto)
            })
            .unwrap_or_else(|| panic!("no table for {f}"));
        let master_pos = ops
            .iter()
            .position(|op| matches!(op, MapOp::PutMaster { frontend, .. } if frontend == f))
            .expect("master");
        assert!(table_pos < master_pos, "{f}: table before master");
        let MapOp::PutMaglev { table, .. } = &ops[table_pos] else {
            unreachable!()
        };
        assert_eq!(table.len(), limits::MAGLEV_TABLE_SIZE as usize);
        let want: BTreeSet<u32> = d.services[f].iter().map(|b| backend_id[b]).collect();
        let got: BTreeSet<u32> = table.iter().copied().collect();
        assert_eq!(
            got, want,
            "{f}: the table holds exactly the frontend's backends"
        );
        // Every backend it names exists before the table is written.
        for id in &got {
            let put = ops
                .iter()
                .position(|op| matches!(op, MapOp::PutBackend { id: i, .. } if i == id))
                .expect("backend written");
            assert!(put < table_pos);
        }
    }
    // ClusterIPs get no table.
    assert_eq!(
        ops.iter()
            .filter(|op| matches!(op, MapOp::PutMaglev { .. }))
            .count(),
        4
    );
    assert_eq!(next.maglev.len(), 4);
    assert_eq!(diff(&next, &d), vec![], "converged");
}

#[test]
fn diff_rewrites_a_maglev_table_when_backends_change_and_deletes_it_when_maglev_ends() {
    let (mut s, e) = web("NodePort");
    annotate(&mut s, "maglev");
    let (_, maglev) = state_after(
        &LbState::default(),
        &desired(std::slice::from_ref(&s), &[e], &node(false)),
    );

    // One backend left: every table entry is its id.
    let one = slice(
        "web",
        &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
        &[ready_on("10.244.2.5", OTHER_NODE)],
    );
    let d = desired(
        std::slice::from_ref(&s),
        std::slice::from_ref(&one),
        &node(false),
    );
    let (ops, shrunk) = state_after(&maglev, &d);
    let tables: Vec<&Vec<u32>> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::PutMaglev { table, .. } => Some(table),
            _ => None,
        })
        .collect();
    assert_eq!(tables.len(), 4);
    let id = shrunk
        .backends
        .iter()
        .find(|(_, b)| **b == be("10.244.2.5", 8080, Proto::Tcp))
        .map(|(&id, _)| id)
        .expect("backend id");
    let http_table = ops
        .iter()
        .find_map(|op| match op {
            MapOp::PutMaglev {
                proto: Proto::Tcp,
                table,
                ..
            } => Some(table),
            _ => None,
        })
        .expect("tcp table");
    assert!(http_table.iter().all(|&b| b == id));
    assert_eq!(diff(&shrunk, &d), vec![]);

    // The Service stops being Maglev: masters drop the flag first, then the tables go.
    annotate(&mut s, "random");
    let d = desired(std::slice::from_ref(&s), &[one], &node(false));
    let (ops, random) = state_after(&shrunk, &d);
    let deletes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, MapOp::DeleteMaglev { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(deletes.len(), 4, "{ops:?}");
    let masters: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            matches!(op, MapOp::PutMaster { flags, .. } if *flags == service_flags::EXTERNAL)
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(masters.len(), 4);
    assert!(masters.iter().max() < deletes.iter().min(), "{ops:?}");
    assert!(!ops.iter().any(|op| matches!(op, MapOp::PutMaglev { .. })));
    assert!(random.maglev.is_empty());
    assert_eq!(diff(&random, &d), vec![]);
}

#[test]
fn maglev_frontend_without_backends_has_no_table() {
    let (mut s, _) = web("NodePort");
    annotate(&mut s, "maglev");
    let d = desired(&[s], &[], &node(false));
    let f = fe(NODE_A, 30080, Proto::Tcp);
    assert_eq!(d.services[&f], vec![]);
    assert_eq!(
        flags(&d, &f),
        service_flags::EXTERNAL | service_flags::MAGLEV
    );
    let (ops, next) = state_after(&LbState::default(), &d);
    assert!(!ops.iter().any(|op| matches!(op, MapOp::PutMaglev { .. })));
    // The datapath refuses a frontend with count 0 before it looks for a table.
    assert_eq!(next.services[&f].master.map(|(count, _)| count), Some(0));
    assert_eq!(diff(&next, &d), vec![]);
}

#[test]
fn services_sharing_an_external_ip_port_converge() {
    // The MetalLB-style split of one address between a TCP and a UDP Service.
    let mut tcp = svc("dns-tcp", "ClusterIP", &[("dns", 53, "TCP", None)]);
    spec(&mut tcp).external_ips = Some(vec![Ipv4Addr::from(EXT_IP).to_string()]);
    let mut udp = svc("dns-udp", "ClusterIP", &[("dns", 53, "UDP", None)]);
    let ip = "10.96.0.21".to_string();
    spec(&mut udp).cluster_ip = Some(ip.clone());
    spec(&mut udp).cluster_ips = Some(vec![ip]);
    spec(&mut udp).external_ips = Some(vec![Ipv4Addr::from(EXT_IP).to_string()]);
    let d = desired(&[tcp, udp], &[], &node(false));
    assert_eq!(d.names[&fe(EXT_IP, 53, Proto::Tcp)], "shop/dns-tcp");
    assert_eq!(d.names[&fe(EXT_IP, 53, Proto::Udp)], "shop/dns-udp");

    let (_, first) = state_after(&LbState::default(), &d);
    let (second_ops, second) = state_after(&first, &d);
    assert_eq!(second_ops, vec![], "a second pass changes nothing");
    assert_eq!(diff(&second, &d), vec![]);
}

#[test]
fn diff_removes_external_frontends_with_their_tables_and_names_when_the_type_changes() {
    let (mut s, e) = web("LoadBalancer");
    annotate(&mut s, "maglev");
    set_ingress(&mut s, vec![lb_ip_ingress()]);
    let d = desired(
        std::slice::from_ref(&s),
        std::slice::from_ref(&e),
        &node(false),
    );
    let (_, lb) = state_after(&LbState::default(), &d);
    // ClusterIP x2, node addresses x2 x2, LB IP x2.
    assert_eq!(lb.services.len(), 8);
    assert_eq!(lb.maglev.len(), 6);
    // No two frontends share an (address, port): one reverse-NAT index and name each.
    assert_eq!(lb.names.len(), 8);

    spec(&mut s).type_ = Some("ClusterIP".into());
    let d = desired(&[s], &[e], &node(false));
    let (ops, cluster) = state_after(&lb, &d);
    assert_eq!(
        cluster.services.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            fe(CLUSTER_IP, 80, Proto::Tcp),
            fe(CLUSTER_IP, 53, Proto::Udp)
        ])
    );
    assert!(cluster.maglev.is_empty());
    assert_eq!(cluster.names.len(), 2);
    assert!(cluster.names.values().all(|n| n == "shop/web"));
    // Each removed external frontend stops being looked up (master gone) before its table.
    for op in &ops {
        if let MapOp::DeleteMaglev { index, proto } = op {
            let frontend = lb
                .services
                .iter()
                .find(|(f, e)| f.proto == *proto && e.master.map(|m| m.1) == Some(*index))
                .map(|(f, _)| *f)
                .expect("frontend of the table");
            let master_gone = ops
                .iter()
                .position(
                    |o| matches!(o, MapOp::DeleteSlot { frontend: f, slot: 0 } if *f == frontend),
                )
                .expect("master deleted");
            let table_gone = ops.iter().position(|o| o == op).expect("op");
            assert!(master_gone < table_gone, "{frontend}");
        }
    }
    assert_eq!(diff(&cluster, &d), vec![]);
}
