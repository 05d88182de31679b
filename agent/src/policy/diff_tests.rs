//! The diff of two plans: it gets the maps from one to the other, touches only endpoints the
//! map holds, and at no step of applying it is a flow denied that both plans allow.

use keelson_common::proto;
use serde_json::json;

use super::{
    compile::plan,
    diff::{diff, diff_endpoints},
    model::{Desired, EndpointPolicy, PodInfo, PolicyOp, Snapshot},
    testutil::*,
};

const ADDRS: [&str; 6] = [
    "10.0.1.1",
    "10.0.1.2",
    "10.0.2.1",
    "10.0.9.1",
    "8.8.8.8",
    "172.16.1.1",
];

fn pods() -> Vec<PodInfo> {
    let mut far = pod("a", "far", "10.0.9.1", &[("app", "client")]);
    far.node_name = "n2".into();
    vec![
        pod("a", "web", "10.0.1.1", &[("app", "web")]),
        pod("a", "db", "10.0.1.2", &[("app", "db")]),
        pod("b", "client", "10.0.2.1", &[("app", "client")]),
        far,
    ]
}

/// The maps as the CNI server leaves them: this node's endpoints, nothing else.
fn fresh(d: &Desired) -> Desired {
    Desired {
        endpoints: d
            .endpoints
            .keys()
            .map(|&ip| (ip, EndpointPolicy::default()))
            .collect(),
        ..Desired::default()
    }
}

fn web_policy(
    name: &str,
    from: serde_json::Value,
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    policy(
        "a",
        name,
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"from": from, "ports": [{"port": 80}, {"protocol": "UDP", "port": 53}]}],
               "egress": [{"to": [{"namespaceSelector": {}}]},
                          {"to": [{"ipBlock": {"cidr": "172.16.0.0/12"}}]}]}),
    )
}

/// Applies `ops` one at a time from `before` and checks every flow between `ADDRS` that
/// both `before` and `after` allow at every step; returns the final state.
fn check_no_wrong_denial(before: &Desired, after: &Desired, ops: &[PolicyOp]) -> Desired {
    let mut state = before.clone();
    let flows: Vec<(&str, &str, u8, u16)> = ADDRS
        .iter()
        .flat_map(|s| ADDRS.iter().map(move |d| (*s, *d)))
        .filter(|(s, d)| s != d)
        .flat_map(|(s, d)| {
            [
                (s, d, proto::TCP, 80),
                (s, d, proto::TCP, 443),
                (s, d, proto::UDP, 53),
            ]
        })
        .collect();
    let kept: Vec<_> = flows
        .iter()
        .filter(|(s, d, p, port)| allows(before, s, d, *p, *port) && allows(after, s, d, *p, *port))
        .collect();
    for (i, op) in ops.iter().enumerate() {
        state.apply(std::slice::from_ref(op));
        for (s, d, p, port) in &kept {
            assert!(
                allows(&state, s, d, *p, *port),
                "{s} -> {d} {p}/{port} denied after op {i} {op:?}"
            );
        }
    }
    state
}

fn transition(before: &Snapshot, after: &Snapshot) {
    let (mut b, a) = (plan(before, &node_ctx()), plan(after, &node_ctx()));
    // From what the last pass wrote, with the endpoints the CNI server holds: it has
    // recorded the new Pods already, and not yet forgotten the gone ones.
    for ip in a.endpoints.keys() {
        b.endpoints.entry(*ip).or_default();
    }
    let ops = diff(&b, &a);
    let mut end = check_no_wrong_denial(&b, &a, &ops);
    assert!(diff(&end, &a).is_empty());
    end.endpoints.retain(|ip, _| a.endpoints.contains_key(ip));
    assert_eq!(end, a);
}

#[test]
fn policy_diff_from_fresh_maps_gets_there_and_then_has_nothing_to_do() {
    let s = snapshot(
        pods(),
        vec![web_policy("web", json!([{"podSelector": {}}]))],
    );
    let d = plan(&s, &node_ctx());
    let mut current = fresh(&d);
    let ops = diff(&current, &d);
    current.apply(&ops);
    assert_eq!(current, d);
    assert!(diff(&d, &d).is_empty());
    // And back to nothing: everything the programmer owns goes, the endpoints stay.
    let empty = plan(&snapshot(pods(), vec![]), &node_ctx());
    let ops = diff(&d, &empty);
    current.apply(&ops);
    assert_eq!(current, empty);
    assert!(current.policy.is_empty() && current.policy_names.is_empty());
    assert_eq!(current.endpoints.len(), 3);
}

#[test]
fn policy_diff_touches_only_endpoints_the_map_holds() {
    let d = plan(&snapshot(pods(), vec![]), &node_ctx());
    let mut held = fresh(&d);
    held.endpoints.pop_first();
    let ops = diff_endpoints(&held.endpoints, &d.endpoints);
    assert_eq!(ops.len(), 2);
    assert!(ops.iter().all(|op| matches!(op, PolicyOp::SetEndpoint { address, .. } if held.endpoints.contains_key(address))));
    // An endpoint the plan does not know (its Pod not listed yet) is left alone.
    held.endpoints.insert(
        ip("10.0.1.77"),
        EndpointPolicy {
            identity: 5,
            flags: 3,
        },
    );
    assert_eq!(diff_endpoints(&held.endpoints, &d.endpoints).len(), 2);
}

#[test]
fn policy_diff_orders_puts_before_flags_before_deletes() {
    let before = snapshot(pods(), vec![]);
    let after = snapshot(
        pods(),
        vec![web_policy("web", json!([{"podSelector": {}}]))],
    );
    let (b, a) = (plan(&before, &node_ctx()), plan(&after, &node_ctx()));
    let rank = |op: &PolicyOp| match op {
        PolicyOp::PutPolicyName { .. } | PolicyOp::PutIdentityName { .. } => 0,
        PolicyOp::PutPolicy { .. } => 1,
        PolicyOp::PutIpcache { .. } => 2,
        PolicyOp::SetEndpoint { .. } => 3,
        PolicyOp::DeleteIpcache { .. } => 4,
        PolicyOp::DeletePolicy { .. } => 5,
        PolicyOp::DeletePolicyName { .. } | PolicyOp::DeleteIdentityName { .. } => 6,
    };
    for ops in [diff(&b, &a), diff(&a, &b)] {
        let ranks: Vec<u8> = ops.iter().map(rank).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
        assert!(ranks.contains(&3), "isolation changes");
    }
}

#[test]
fn policy_diff_never_denies_what_both_plans_allow() {
    let base = pods();
    let allow_a = || web_policy("web", json!([{"podSelector": {}}]));
    // A policy added, and removed.
    let none = snapshot(base.clone(), vec![]);
    let one = snapshot(base.clone(), vec![allow_a()]);
    transition(&none, &one);
    transition(&one, &none);

    // A peer relabelled, still matched: its identity changes under an isolated endpoint.
    let from_clients = || {
        web_policy(
            "web",
            json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}]),
        )
    };
    let mut relabelled = base.clone();
    relabelled[2].labels.insert("version".into(), "2".into());
    relabelled[3].labels.insert("version".into(), "2".into());
    let s1 = snapshot(base.clone(), vec![from_clients()]);
    let s2 = snapshot(relabelled.clone(), vec![from_clients()]);
    assert_ne!(
        id(&plan(&s1, &node_ctx()), "10.0.2.1"),
        id(&plan(&s2, &node_ctx()), "10.0.2.1")
    );
    transition(&s1, &s2);
    transition(&s2, &s1);

    // The isolated endpoint itself relabelled (new identity, same policy).
    let mut web_relabelled = base.clone();
    web_relabelled[0].labels.insert("tier".into(), "fe".into());
    transition(&s1, &snapshot(web_relabelled, vec![from_clients()]));

    // One policy replaced by another that allows the same and more (a new index for old
    // entries), and an ipBlock prefix added under an existing one.
    let wider = policy(
        "a",
        "a-wider",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"ports": [{"port": 80}, {"port": 443}, {"protocol": "UDP", "port": 53}]}],
               "egress": [{"to": [{"namespaceSelector": {}}]},
                          {"to": [{"ipBlock": {"cidr": "172.16.0.0/12"}}, {"ipBlock": {"cidr": "172.16.1.0/24"}}]}]}),
    );
    transition(&s1, &snapshot(base.clone(), vec![wider.clone()]));
    transition(&snapshot(base.clone(), vec![wider]), &s1);

    // A Pod moved to another address (deleted and recreated).
    let mut moved = base;
    moved[2].ip = Some(ip("10.0.2.9"));
    transition(&s1, &snapshot(moved, vec![from_clients()]));
}
