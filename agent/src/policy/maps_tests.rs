//! The policy maps for real (root): a plan applied to a loaded datapath's maps reads back
//! equal, endpoints keep what the CNI server wrote, the revision moves, a full map is an error.

use std::net::Ipv4Addr;

use keelson_common::{EndpointInfo, IpcacheValue, limits, policy::endpoint_flags};
use serde_json::json;

use super::{
    compile::plan,
    diff::diff,
    model::{Cidr, Desired, EndpointPolicy, PolicyOp},
    reconcile,
    testutil::*,
};
use crate::loader::{MapsError, testutil::TestDatapath};

fn snapshot_with_policy() -> super::model::Snapshot {
    let mut far = pod("a", "far", "10.0.9.1", &[("app", "client")]);
    far.node_name = "n2".into();
    snapshot(
        vec![
            with_ports(
                pod("a", "web", "10.0.1.1", &[("app", "web")]),
                &[("http", 8080, keelson_common::proto::TCP)],
            ),
            pod("b", "client", "10.0.2.1", &[("app", "client")]),
            far,
        ],
        vec![policy(
            "a",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "policyTypes": ["Ingress", "Egress"],
                   "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
                                "ports": [{"port": "http"}, {"port": 1000, "endPort": 2000}]}],
                   "egress": [{"to": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}}]}]}),
        )],
    )
}

/// What the CNI server writes for a Pod.
fn cni_entry(ifindex: u32) -> EndpointInfo {
    EndpointInfo {
        ifindex,
        flags: 0,
        identity: 0,
        pod_mac: [2, 0, 0, 0, 0, ifindex as u8],
        host_mac: [2, 0, 0, 0, 1, ifindex as u8],
    }
}

fn read(t: &TestDatapath) -> Desired {
    t.dp.with_maps(|m| m.read_policy_state())
        .expect("read policy state")
}

#[test]
fn policy_maps_apply_reads_back_equal_and_keeps_the_cni_servers_fields() {
    let t = TestDatapath::load("policy-maps", None);
    let (web, client) = (ip("10.0.1.1"), ip("10.0.2.1"));
    t.dp.with_maps(move |m| {
        m.put_endpoint(web, cni_entry(7))?;
        m.put_endpoint(client, cni_entry(8))
    })
    .expect("endpoints");
    let desired = plan(&snapshot_with_policy(), &node_ctx());
    assert!(desired.policy.len() > 8, "named port and a range");

    let current = read(&t);
    assert_eq!(current.endpoints.len(), 2);
    assert!(current.policy.is_empty() && current.ipcache.is_empty());
    let revision = t.dp.with_maps(|m| m.policy_revision()).expect("revision");
    let ops = diff(&current, &desired);
    let applied = ops.clone();
    t.dp.with_maps(move |m| {
        m.apply_policy(&applied)?;
        m.bump_policy_revision()
    })
    .expect("apply");
    assert_eq!(read(&t), desired);
    assert_eq!(
        t.dp.with_maps(|m| m.policy_revision()).expect("revision"),
        revision.wrapping_add(1)
    );
    let endpoints = t.dp.with_maps(|m| m.read_endpoints()).expect("endpoints");
    let (_, info) = endpoints.iter().find(|(a, _)| *a == web).expect("web");
    assert_eq!(
        (info.ifindex, info.pod_mac, info.host_mac),
        (7, cni_entry(7).pod_mac, cni_entry(7).host_mac)
    );
    assert_eq!(
        info.flags,
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED
    );
    assert_eq!(info.identity, desired.endpoints[&web].identity);

    // Back to no policy: entries, CIDRs and policy names go, endpoints lose their isolation.
    let mut unpoliced = snapshot_with_policy();
    unpoliced.policies.clear();
    let none = plan(&unpoliced, &node_ctx());
    let ops = diff(&read(&t), &none);
    t.dp.with_maps(move |m| m.apply_policy(&ops))
        .expect("apply");
    let left = read(&t);
    assert!(left.policy.is_empty() && left.policy_names.is_empty());
    assert_eq!(left, none);
    assert!(left.endpoints.values().all(|e| e.flags == 0));
}

#[test]
fn policy_maps_skip_missing_endpoints_and_refuse_when_full() {
    let t = TestDatapath::load("policy-full", None);
    let missing = PolicyOp::SetEndpoint {
        address: Ipv4Addr::new(10, 0, 0, 99),
        policy: EndpointPolicy {
            identity: 300,
            flags: endpoint_flags::INGRESS_ISOLATED,
        },
    };
    t.dp.with_maps(move |m| m.apply_policy(&[missing]))
        .expect("skipped");
    assert!(read(&t).endpoints.is_empty(), "not created");

    // The ipcache trie refuses its (MAX_IPCACHE + 1)th prefix: an error, not a silent drop.
    let ops: Vec<PolicyOp> = (0..=limits::MAX_IPCACHE)
        .map(|i| PolicyOp::PutIpcache {
            cidr: Cidr::host(Ipv4Addr::from(0x0a00_0000 + i)),
            value: IpcacheValue {
                identity: 300,
                flags: 0,
            },
        })
        .collect();
    let result = t.dp.with_maps(move |m| m.apply_policy(&ops));
    match result {
        Err(MapsError::Full { map, .. }) => assert_eq!(map, keelson_common::names::IPCACHE),
        other => panic!("expected a full ipcache, got {other:?}"),
    }
}

#[test]
fn policy_maps_reconcile_converges_from_what_the_maps_hold() {
    let t = TestDatapath::load("policy-reconcile", None);
    let web = ip("10.0.1.1");
    t.dp.with_maps(move |m| m.put_endpoint(web, cni_entry(3)))
        .expect("endpoint");
    // A stale entry of an earlier agent, and a stale name.
    let stale = Cidr::parse("203.0.113.0/24").expect("cidr");
    let junk = vec![
        PolicyOp::PutIpcache {
            cidr: stale,
            value: IpcacheValue {
                identity: 5000,
                flags: 0,
            },
        },
        PolicyOp::PutPolicyName {
            index: 42,
            name: "gone/policy".into(),
        },
    ];
    t.dp.with_maps(move |m| m.apply_policy(&junk))
        .expect("junk");
    let node = node_ctx();
    let written = reconcile(&t.dp, snapshot_with_policy(), &node).expect("reconcile");
    assert!(written > 0);
    let mut want = plan(&snapshot_with_policy(), &node);
    // Only the endpoint the CNI server recorded is in the map.
    want.endpoints.retain(|a, _| *a == web);
    assert_eq!(read(&t), want);
    // A second agent start finds nothing to do.
    assert_eq!(
        reconcile(&t.dp, snapshot_with_policy(), &node).expect("again"),
        0
    );
}
