//! The compiler against the NetworkPolicy semantics, judged through the datapath model of
//! [`super::testutil`]: default deny, allow-all, every peer form, ipBlock with except, ports,
//! protocols, port ranges, named ports, unions, identities and what other nodes' Pods get.

use keelson_common::{
    policy::{direction, endpoint_flags, identity, ipcache_flags},
    proto,
};
use serde_json::json;

use super::{
    compile::plan,
    model::{Cidr, Desired},
    testutil::*,
};

/// web and db in namespace a, client in b (all on this node), far: a web Pod of a on n2.
fn pods() -> Vec<super::model::PodInfo> {
    let mut far = pod("a", "far", "10.0.9.1", &[("app", "web")]);
    far.node_name = "n2".into();
    vec![
        pod("a", "web", "10.0.1.1", &[("app", "web")]),
        pod("a", "db", "10.0.1.2", &[("app", "db")]),
        pod("b", "client", "10.0.2.1", &[("app", "client")]),
        far,
    ]
}

fn planned(policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>) -> Desired {
    plan(&snapshot(pods(), policies), &node_ctx())
}

const WEB: &str = "10.0.1.1";
const DB: &str = "10.0.1.2";
const CLIENT: &str = "10.0.2.1";
const FAR: &str = "10.0.9.1";
const OUTSIDE: &str = "8.8.8.8";

#[test]
fn policy_compile_without_policies_nothing_is_isolated() {
    let d = planned(vec![]);
    assert!(d.policy.is_empty() && d.policy_names.is_empty());
    assert!(d.endpoints.values().all(|e| e.flags == 0));
    assert_eq!(d.endpoints.len(), 3, "this node's Pods only");
    assert!(tcp(&d, CLIENT, WEB, 80) && tcp(&d, OUTSIDE, WEB, 80) && tcp(&d, WEB, OUTSIDE, 443));
}

#[test]
fn policy_compile_default_deny_ingress_and_egress() {
    let deny_in = policy(
        "a",
        "deny-in",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let d = planned(vec![deny_in]);
    for p in [WEB, DB] {
        assert_eq!(d.endpoints[&ip(p)].flags, endpoint_flags::INGRESS_ISOLATED);
        assert!(entries_of(&d, p, direction::INGRESS).is_empty());
    }
    assert_eq!(d.endpoints[&ip(CLIENT)].flags, 0, "another namespace");
    assert!(!tcp(&d, CLIENT, WEB, 80) && !tcp(&d, DB, WEB, 80) && !tcp(&d, OUTSIDE, WEB, 80));
    assert!(
        tcp(&d, NODE_IP.to_string().as_str(), WEB, 8080),
        "kubelet probes pass"
    );
    assert!(tcp(&d, WEB, CLIENT, 80), "egress is not isolated");

    let deny_out = policy(
        "a",
        "deny-out",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let d = planned(vec![deny_out]);
    assert_eq!(d.endpoints[&ip(WEB)].flags, endpoint_flags::EGRESS_ISOLATED);
    assert!(!tcp(&d, WEB, CLIENT, 80) && !tcp(&d, WEB, OUTSIDE, 53));
    assert!(tcp(&d, CLIENT, WEB, 80), "ingress is not isolated");
    // The policy selects Pods of this node, so flows can name it.
    assert_eq!(d.policy_names.values().collect::<Vec<_>>(), ["a/deny-out"]);
}

#[test]
fn policy_compile_allow_all_forms() {
    // `ingress: [{}]`: one rule without peers or ports allows everything in.
    let all_in = policy("a", "all-in", json!({"podSelector": {}, "ingress": [{}]}));
    let all_out = policy(
        "a",
        "all-out",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [], "ports": []}]}),
    );
    let d = planned(vec![all_in, all_out]);
    assert_eq!(
        d.endpoints[&ip(WEB)].flags,
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED
    );
    assert_eq!(
        entries_of(&d, WEB, direction::INGRESS),
        [(72, identity::ANY, 0, 0)]
    );
    assert!(tcp(&d, OUTSIDE, WEB, 1) && allows(&d, CLIENT, WEB, proto::UDP, 53));
    assert!(tcp(&d, WEB, OUTSIDE, 443) && tcp(&d, WEB, CLIENT, 22));
}

#[test]
fn policy_compile_pod_selector_peers_are_of_the_policys_namespace() {
    // A Pod labelled app=client in namespace a too: only it matches, not b's client.
    let mut all = pods();
    all.push(pod("a", "client-a", "10.0.1.3", &[("app", "client")]));
    let p = policy(
        "a",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
    );
    let d = plan(&snapshot(all, vec![p]), &node_ctx());
    assert!(tcp(&d, "10.0.1.3", WEB, 80));
    assert!(!tcp(&d, CLIENT, WEB, 80), "same labels, other namespace");
    assert!(!tcp(&d, DB, WEB, 80) && !tcp(&d, OUTSIDE, WEB, 80));
    assert_eq!(d.endpoints[&ip(DB)].flags, 0, "not selected");
    assert!(tcp(&d, CLIENT, DB, 80));
}

#[test]
fn policy_compile_namespace_selector_peers_and_both_together() {
    let ns_only = policy(
        "a",
        "from-y",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
    );
    let d = planned(vec![ns_only]);
    assert!(tcp(&d, CLIENT, DB, 5432));
    assert!(!tcp(&d, WEB, DB, 5432), "namespace a is team x");

    // namespaceSelector and podSelector in one peer: both must hold.
    let both = policy(
        "a",
        "both",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{
                   "namespaceSelector": {"matchLabels": {"team": "y"}},
                   "podSelector": {"matchLabels": {"app": "web"}}}]}]}),
    );
    let mut all = pods();
    all.push(pod("b", "web-b", "10.0.2.2", &[("app", "web")]));
    let d = plan(&snapshot(all.clone(), vec![both]), &node_ctx());
    assert!(tcp(&d, "10.0.2.2", DB, 5432));
    assert!(!tcp(&d, CLIENT, DB, 5432), "right namespace, wrong labels");
    assert!(!tcp(&d, WEB, DB, 5432), "right labels, wrong namespace");

    // Two peers in one rule: either.
    let either = policy(
        "a",
        "either",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [
                   {"namespaceSelector": {"matchLabels": {"team": "y"}},
                    "podSelector": {"matchLabels": {"app": "web"}}},
                   {"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
    );
    let d = plan(&snapshot(all, vec![either]), &node_ctx());
    assert!(tcp(&d, "10.0.2.2", DB, 5432) && tcp(&d, WEB, DB, 5432) && tcp(&d, FAR, DB, 5432));
    assert!(!tcp(&d, CLIENT, DB, 5432));
    // All Pods of one label set are one peer: web and far share an identity.
    assert_eq!(id(&d, WEB), id(&d, FAR));
    let peers: Vec<u32> = entries_of(&d, DB, direction::INGRESS)
        .iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    // An empty namespaceSelector is every namespace.
    let any_ns = policy(
        "a",
        "any-ns",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    let d = planned(vec![any_ns]);
    assert!(tcp(&d, CLIENT, DB, 1) && tcp(&d, WEB, DB, 1) && tcp(&d, FAR, DB, 1));
    assert!(!tcp(&d, OUTSIDE, DB, 1), "Pods only, not the world");
}

#[test]
fn policy_compile_ip_block_with_except_and_more_specific_prefixes() {
    let web = policy(
        "a",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.5.0/24"]}}]}]}),
    );
    // Another policy names a more specific prefix inside web's block: its addresses resolve
    // to that prefix's identity, which web's rule must allow as well.
    let db = policy(
        "a",
        "db",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "egress": [{"to": [{"ipBlock": {"cidr": "172.17.1.0/24"}}]}]}),
    );
    let d = planned(vec![web, db]);
    let specific = Cidr::parse("172.17.1.0/24").expect("cidr");
    assert!(d.ipcache[&specific].identity >= identity::FIRST_CIDR);
    assert_eq!(id(&d, "172.17.1.9"), d.ipcache[&specific].identity);
    assert!(tcp(&d, "172.16.0.1", WEB, 80));
    assert!(
        tcp(&d, "172.17.1.9", WEB, 80),
        "more specific prefix of another policy"
    );
    assert!(!tcp(&d, "172.16.5.7", WEB, 80), "except");
    assert!(!tcp(&d, "172.32.0.1", WEB, 80) && !tcp(&d, OUTSIDE, WEB, 80));
    assert!(tcp(&d, DB, "172.17.1.200", 443) && !tcp(&d, DB, "172.16.0.1", 443));
    assert_eq!(
        d.identities[&d.ipcache[&specific].identity],
        "cidr=172.17.1.0/24"
    );

    // ipBlock does not match Pod or node addresses inside it: they keep their identities.
    let wide = policy(
        "a",
        "wide",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
    );
    let d = planned(vec![wide]);
    assert!(tcp(&d, "10.9.9.9", WEB, 80));
    assert!(!tcp(&d, CLIENT, WEB, 80), "a Pod inside the block");

    // 0.0.0.0/0 is WORLD and every CIDR identity; it has no ipcache entry of its own.
    let world = policy(
        "a",
        "world",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]}),
    );
    let d = planned(vec![world]);
    assert!(tcp(&d, WEB, OUTSIDE, 443));
    assert!(!tcp(&d, WEB, "10.1.1.1", 443) && !tcp(&d, WEB, CLIENT, 443));
    assert!(
        !d.ipcache
            .contains_key(&Cidr::parse("0.0.0.0/0").expect("cidr"))
    );
}

#[test]
fn policy_compile_ports_protocols_and_ranges() {
    let p = policy(
        "a",
        "ports",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"ports": [
                   {"port": 80, "endPort": 81},
                   {"protocol": "UDP", "port": 1000, "endPort": 2000},
                   {"protocol": "SCTP"},
                   {"protocol": "TCP", "port": 443}]}]}),
    );
    let d = planned(vec![p]);
    let entries = entries_of(&d, WEB, direction::INGRESS);
    let (tcp_n, udp_n, sctp_n) = (proto::TCP, proto::UDP, proto::SCTP);
    let mut want = vec![
        (80, identity::ANY, sctp_n, 0),
        (95, identity::ANY, tcp_n, 80),
        (96, identity::ANY, tcp_n, 443),
    ];
    for (len, base) in [
        (93, 1000),
        (92, 1008),
        (87, 1024),
        (88, 1536),
        (89, 1792),
        (90, 1920),
        (92, 1984),
        (96, 2000),
    ] {
        want.push((len, identity::ANY, udp_n, base));
    }
    let mut got = entries.clone();
    got.sort_by_key(|e| (e.2, e.3, e.0));
    want.sort_by_key(|e| (e.2, e.3, e.0));
    assert_eq!(got, want);
    assert!(tcp(&d, CLIENT, WEB, 80) && tcp(&d, CLIENT, WEB, 81) && !tcp(&d, CLIENT, WEB, 82));
    assert!(!tcp(&d, CLIENT, WEB, 79) && tcp(&d, CLIENT, WEB, 443) && !tcp(&d, CLIENT, WEB, 1000));
    for (port, ok) in [
        (999, false),
        (1000, true),
        (1500, true),
        (2000, true),
        (2001, false),
    ] {
        assert_eq!(allows(&d, CLIENT, WEB, udp_n, port), ok, "udp {port}");
    }
    assert!(allows(&d, CLIENT, WEB, sctp_n, 9) && !allows(&d, CLIENT, WEB, udp_n, 80));
    // A rule whose only port the API would refuse allows nothing, not everything.
    let bad = policy(
        "a",
        "bad",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
    );
    let d = planned(vec![bad]);
    assert!(d.policy.is_empty() && !tcp(&d, CLIENT, WEB, 80));
}

#[test]
fn policy_compile_named_ports_ingress_and_egress() {
    let tcp_n = proto::TCP;
    let mut all = pods();
    all[0] = with_ports(
        all[0].clone(),
        &[("http", 8080, tcp_n), ("metrics", 9090, tcp_n)],
    );
    all[1] = with_ports(
        all[1].clone(),
        &[("http", 8081, tcp_n), ("sql", 5432, tcp_n)],
    );
    let ingress = policy(
        "a",
        "in",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}]}),
    );
    let d = plan(&snapshot(all.clone(), vec![ingress]), &node_ctx());
    // Each selected Pod's own container port of that name.
    assert!(tcp(&d, CLIENT, WEB, 8080) && !tcp(&d, CLIENT, WEB, 8081));
    assert!(tcp(&d, CLIENT, DB, 8081) && !tcp(&d, CLIENT, DB, 8080));
    assert!(!tcp(&d, CLIENT, WEB, 9090) && !allows(&d, CLIENT, WEB, proto::UDP, 8080));

    let egress = policy(
        "b",
        "out",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "egress": [
                   {"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                    "ports": [{"port": "sql"}, {"port": "http"}]},
                   {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "http"}]},
                   {"ports": [{"port": "sql"}]}]}),
    );
    let d = plan(&snapshot(all, vec![egress]), &node_ctx());
    // Each peer's container port of that name.
    assert!(tcp(&d, CLIENT, DB, 5432) && tcp(&d, CLIENT, DB, 8081) && tcp(&d, CLIENT, WEB, 8080));
    assert!(!tcp(&d, CLIENT, WEB, 5432) && !tcp(&d, CLIENT, DB, 8080));
    // Towards an ipBlock or any peer a named port names nothing.
    assert!(!tcp(&d, CLIENT, OUTSIDE, 8080) && !tcp(&d, CLIENT, OUTSIDE, 5432));
    assert!(
        entries_of(&d, CLIENT, direction::EGRESS)
            .iter()
            .all(|e| e.1 != identity::ANY)
    );
}

#[test]
fn policy_compile_policies_are_a_union_named_by_the_first() {
    let p1 = policy(
        "a",
        "p1",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}]}),
    );
    let p2 = policy(
        "a",
        "p2",
        json!({"podSelector": {},
               "ingress": [{"ports": [{"port": 80}, {"port": 443}]}]}),
    );
    let d = planned(vec![p2, p1]);
    assert!(tcp(&d, CLIENT, WEB, 80) && tcp(&d, OUTSIDE, WEB, 443) && !tcp(&d, CLIENT, WEB, 22));
    let (i1, i2) = (index_of(&d, "a/p1"), index_of(&d, "a/p2"));
    assert_ne!(i1, i2);
    let ip_web = ip(WEB);
    let client = id(&d, CLIENT);
    assert_eq!(
        lookup(&d, ip_web, client, direction::INGRESS, proto::TCP, 80),
        Some(i1)
    );
    assert_eq!(
        lookup(
            &d,
            ip_web,
            identity::ANY,
            direction::INGRESS,
            proto::TCP,
            443
        ),
        Some(i2)
    );
    // One entry allowed by both policies carries the first by namespace/name.
    let both = policy(
        "a",
        "p0",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]}),
    );
    let d = planned(vec![
        both,
        policy(
            "a",
            "p2",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]}),
        ),
    ]);
    assert_eq!(
        lookup(
            &d,
            ip_web,
            identity::ANY,
            direction::INGRESS,
            proto::TCP,
            443
        ),
        Some(index_of(&d, "a/p0"))
    );
}

#[test]
fn policy_compile_identities_follow_labels() {
    let d = planned(vec![]);
    let web = id(&d, WEB);
    assert!((identity::FIRST_LABELS..identity::FIRST_CIDR).contains(&web));
    assert_eq!(d.endpoints[&ip(WEB)].identity, web);
    assert_eq!(d.identities[&web], "ns=a;app=web;ns:team=x");
    assert_ne!(id(&d, DB), web);

    // A label change is a new identity, the same on every node that sees the same objects.
    let mut all = pods();
    all[0].labels.insert("tier".into(), "fe".into());
    let d2 = plan(&snapshot(all.clone(), vec![]), &node_ctx());
    assert_ne!(id(&d2, WEB), web);
    assert_eq!(id(&d2, FAR), web, "far keeps the old label set");
    let other_node = super::model::NodeContext {
        node_name: "n2".into(),
        node_ip: OTHER_NODE_IP,
    };
    let d3 = plan(&snapshot(all, vec![]), &other_node);
    assert_eq!(d3.identities, d2.identities);
    assert_eq!(id(&d3, WEB), id(&d2, WEB));

    // A namespace label is part of the identity too.
    let mut s = snapshot(pods(), vec![]);
    s.add_namespace(namespace("a", &[("team", "z")]));
    let d4 = plan(&s, &node_ctx());
    assert_ne!(id(&d4, WEB), web);
}

#[test]
fn policy_compile_remote_pods_nodes_and_excluded_pods() {
    let p = policy(
        "a",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let mut all = pods();
    let mut host = pod("a", "host", "192.168.0.1", &[("app", "agent")]);
    host.host_network = true;
    let mut pending = pod("a", "pending", "10.0.1.9", &[]);
    pending.ip = None;
    all.extend([host, pending]);
    let d = plan(&snapshot(all, vec![p]), &node_ctx());
    // Another node's Pod: in the ipcache, but no endpoint and no entries here.
    let far = d.ipcache[&Cidr::host(ip(FAR))];
    assert_eq!(far.flags, ipcache_flags::REMOTE_POD);
    assert_eq!(
        d.ipcache[&Cidr::host(ip(WEB))].flags,
        ipcache_flags::LOCAL_POD
    );
    assert!(!d.endpoints.contains_key(&ip(FAR)));
    assert!(entries_of(&d, FAR, direction::INGRESS).is_empty());
    assert_eq!(
        id(&d, &NODE_IP.to_string()),
        identity::HOST,
        "hostNetwork Pods are the node"
    );
    assert_eq!(id(&d, &OTHER_NODE_IP.to_string()), identity::REMOTE_NODE);
    assert_eq!(id(&d, OUTSIDE), identity::WORLD);
    assert_eq!(d.endpoints.len(), 3);
    assert!(!d.identities.values().any(|t| t.contains("agent")));
    // A policy whose Pods are all elsewhere is not named on this node.
    let elsewhere = policy(
        "a",
        "far",
        json!({"podSelector": {"matchLabels": {"app": "nothing-here"}}}),
    );
    assert!(planned(vec![elsewhere]).policy_names.is_empty());
}

#[test]
fn policy_compile_policy_types_default() {
    // policyTypes unset: Ingress, plus Egress since there are egress rules.
    let p = policy(
        "a",
        "both",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
    );
    let d = planned(vec![p]);
    assert_eq!(
        d.endpoints[&ip(WEB)].flags,
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED
    );
    assert!(allows(&d, WEB, OUTSIDE, proto::UDP, 53) && !tcp(&d, WEB, OUTSIDE, 53));
    assert!(!tcp(&d, CLIENT, WEB, 80));
    // policyTypes [Ingress] with egress rules: the egress rules do not apply.
    let p = policy(
        "a",
        "in-only",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
               "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
    );
    let d = planned(vec![p]);
    assert_eq!(
        d.endpoints[&ip(WEB)].flags,
        endpoint_flags::INGRESS_ISOLATED
    );
    assert!(entries_of(&d, WEB, direction::EGRESS).is_empty());
    assert!(tcp(&d, WEB, OUTSIDE, 53));
}
