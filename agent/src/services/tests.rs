//! Tests of the pure Service planner: desired state from API objects, diffs against maps.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    model::{BackendAddr, Frontend, LbState, MapOp, Proto},
    plan::{NodeContext, apply_to_state, desired, diff},
    testutil::{
        endpoint, endpoint_port, endpoint_slice, fe, only_services, service, service_port,
        state_after,
    },
};

fn svc(name: &str, cluster_ip: &str, ports: &[(Option<&str>, i32, &str)]) -> Service {
    service(
        "default",
        name,
        cluster_ip,
        ports
            .iter()
            .map(|&(n, p, proto)| service_port(n, p, proto, None))
            .collect(),
    )
}

/// (address, ready, serving, terminating)
type Ep<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

fn slice(
    name: &str,
    service: &str,
    ports: &[(Option<&str>, i32, &str)],
    endpoints: &[Ep<'_>],
) -> EndpointSlice {
    endpoint_slice(
        "default",
        name,
        service,
        ports
            .iter()
            .map(|&(n, p, proto)| endpoint_port(n, p, proto))
            .collect(),
        endpoints
            .iter()
            .map(|&(ip, ready, serving, terminating)| {
                endpoint(ip, None, (ready, serving, terminating))
            })
            .collect(),
    )
}

fn be(ip: [u8; 4], port: u16, proto: Proto) -> BackendAddr {
    BackendAddr {
        address: Ipv4Addr::from(ip).into(),
        port,
        proto,
    }
}

/// The backends the planner gives port 80/TCP of ClusterIP 10.96.0.10 of `s` from `slices`.
fn web_backends(s: &Service, slices: &[EndpointSlice]) -> Vec<BackendAddr> {
    let d = desired(std::slice::from_ref(s), slices, &NodeContext::default());
    d.services[&fe([10, 96, 0, 10], 80, Proto::Tcp)].clone()
}

const READY: (Option<bool>, Option<bool>, Option<bool>) = (Some(true), Some(true), Some(false));

#[test]
fn desired_resolves_ports_by_name_across_slices() {
    let s = svc(
        "web",
        "10.96.0.10",
        &[(Some("http"), 80, "TCP"), (Some("dns"), 53, "UDP")],
    );
    let a = slice(
        "web-a",
        "web",
        &[(Some("http"), 8080, "TCP"), (Some("dns"), 5353, "UDP")],
        &[
            ("10.244.2.4", READY.0, READY.1, READY.2),
            ("10.244.1.3", None, None, None),
        ],
    );
    // A second slice whose Pods serve http on another target port.
    let b = slice(
        "web-b",
        "web",
        &[(Some("http"), 9090, "TCP")],
        &[("10.244.3.5", Some(true), None, None)],
    );
    let d = desired(&[s], &[a, b], &NodeContext::default());
    assert_eq!(
        d.services[&fe([10, 96, 0, 10], 80, Proto::Tcp)],
        vec![
            be([10, 244, 1, 3], 8080, Proto::Tcp),
            be([10, 244, 2, 4], 8080, Proto::Tcp),
            be([10, 244, 3, 5], 9090, Proto::Tcp)
        ]
    );
    assert_eq!(
        d.services[&fe([10, 96, 0, 10], 53, Proto::Udp)],
        vec![
            be([10, 244, 1, 3], 5353, Proto::Udp),
            be([10, 244, 2, 4], 5353, Proto::Udp)
        ]
    );
}

#[test]
fn desired_skips_headless_external_name_and_other_services_slices() {
    let headless = svc("h", "None", &[(None, 80, "TCP")]);
    let mut ext = svc("e", "10.96.0.11", &[(None, 80, "TCP")]);
    if let Some(spec) = ext.spec.as_mut() {
        spec.type_ = Some("ExternalName".into());
    }
    let plain = svc("p", "10.96.0.12", &[(None, 80, "TCP")]);
    let other = slice(
        "o",
        "other",
        &[(None, 80, "TCP")],
        &[("10.244.1.9", None, None, None)],
    );
    let d = desired(&[headless, ext, plain], &[other], &NodeContext::default());
    assert_eq!(d.services.len(), 1);
    // No endpoints: programmed with no backends, so connecting is refused.
    assert_eq!(d.services[&fe([10, 96, 0, 12], 80, Proto::Tcp)], vec![]);
}

#[test]
fn desired_falls_back_to_serving_terminating_only_without_ready_endpoints() {
    let s = svc("web", "10.96.0.10", &[(None, 80, "TCP")]);
    // The backends of port 80 with `endpoints` in slice `name` of the Service.
    let backends = |name: &str, endpoints: &[Ep<'_>]| {
        web_backends(&s, &[slice(name, "web", &[(None, 8080, "TCP")], endpoints)])
    };
    let mixed = [
        ("10.244.1.1", Some(true), Some(true), Some(false)),
        ("10.244.1.2", Some(false), Some(true), Some(true)),
        ("10.244.1.3", Some(false), Some(false), Some(false)),
    ];
    assert_eq!(
        backends("m", &mixed),
        vec![be([10, 244, 1, 1], 8080, Proto::Tcp)]
    );

    let terminating = [
        ("10.244.1.2", Some(false), Some(true), Some(true)),
        ("10.244.1.4", Some(false), Some(false), Some(true)),
        ("10.244.1.3", Some(false), Some(false), Some(false)),
    ];
    assert_eq!(
        backends("t", &terminating),
        vec![be([10, 244, 1, 2], 8080, Proto::Tcp)]
    );
}

fn resolved(state: &LbState) -> BTreeMap<Frontend, Vec<BackendAddr>> {
    state
        .services
        .keys()
        .map(|f| {
            (
                *f,
                state
                    .backends_of(f)
                    .into_iter()
                    .map(|b| b.expect("dangling slot"))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn diff_from_empty_writes_backends_before_services_and_converges() {
    let f = fe([10, 96, 0, 10], 80, Proto::Tcp);
    let backends = vec![
        be([10, 244, 1, 3], 8080, Proto::Tcp),
        be([10, 244, 2, 4], 8080, Proto::Tcp),
    ];
    let desired = only_services([(f, backends.clone())]);
    let (ops, next) = state_after(&LbState::default(), &desired);
    assert_eq!(
        ops,
        vec![
            MapOp::PutBackend {
                id: 1,
                backend: backends[0]
            },
            MapOp::PutBackend {
                id: 2,
                backend: backends[1]
            },
            MapOp::PutRevNat {
                index: 1,
                frontend: f
            },
            MapOp::PutSlot {
                frontend: f,
                slot: 1,
                backend_id: 1
            },
            MapOp::PutSlot {
                frontend: f,
                slot: 2,
                backend_id: 2
            },
            MapOp::PutMaster {
                frontend: f,
                count: 2,
                rev_nat_index: 1,
                affinity_timeout: None,
                flags: 0,
            },
        ]
    );
    assert_eq!(resolved(&next), desired.services);
    // Converged: nothing more to do (also what an agent restart sees).
    assert_eq!(diff(&next, &desired), vec![]);
}

#[test]
fn diff_shrinks_master_first_and_removes_unused_backends_last() {
    let f = fe([10, 96, 0, 10], 80, Proto::Tcp);
    let (b1, b2, b3) = (
        be([10, 244, 1, 1], 80, Proto::Tcp),
        be([10, 244, 1, 2], 80, Proto::Tcp),
        be([10, 244, 1, 3], 80, Proto::Tcp),
    );
    let (_, three) = state_after(&LbState::default(), &only_services([(f, vec![b1, b2, b3])]));
    let desired = only_services([(f, vec![b1, b3])]);
    let (ops, next) = state_after(&three, &desired);
    assert_eq!(
        ops,
        vec![
            MapOp::PutSlot {
                frontend: f,
                slot: 2,
                backend_id: 3
            },
            MapOp::PutMaster {
                frontend: f,
                count: 2,
                rev_nat_index: 1,
                affinity_timeout: None,
                flags: 0,
            },
            MapOp::DeleteSlot {
                frontend: f,
                slot: 3
            },
            MapOp::DeleteBackend { id: 2 },
        ]
    );
    assert_eq!(resolved(&next), desired.services);
}

#[test]
fn diff_removes_gone_frontends_master_first_and_reuses_freed_ids() {
    let f1 = fe([10, 96, 0, 10], 80, Proto::Tcp);
    let f2 = fe([10, 96, 0, 11], 53, Proto::Udp);
    let b1 = be([10, 244, 1, 1], 80, Proto::Tcp);
    let b2 = be([10, 244, 1, 2], 53, Proto::Udp);
    let (_, both) = state_after(
        &LbState::default(),
        &only_services([(f1, vec![b1]), (f2, vec![b2])]),
    );
    let only_f2 = only_services([(f2, vec![b2])]);
    let (ops, next) = state_after(&both, &only_f2);
    assert_eq!(
        ops,
        vec![
            MapOp::DeleteSlot {
                frontend: f1,
                slot: 0
            },
            MapOp::DeleteSlot {
                frontend: f1,
                slot: 1
            },
            MapOp::DeleteRevNat { index: 1 },
            MapOp::DeleteBackend { id: 1 },
        ]
    );
    assert_eq!(resolved(&next), only_f2.services);
    // A new frontend gets the lowest free ids again.
    let b3 = be([10, 244, 1, 3], 80, Proto::Tcp);
    let f3 = fe([10, 96, 0, 12], 80, Proto::Tcp);
    let again = only_services([(f2, vec![b2]), (f3, vec![b3])]);
    let (ops, next) = state_after(&next, &again);
    assert!(
        ops.contains(&MapOp::PutBackend { id: 1, backend: b3 }),
        "{ops:?}"
    );
    assert!(
        ops.contains(&MapOp::PutRevNat {
            index: 1,
            frontend: f3
        }),
        "{ops:?}"
    );
    assert_eq!(resolved(&next), again.services);
}

#[test]
fn diff_shares_reverse_nat_between_protocols_of_one_port() {
    let tcp = fe([10, 96, 0, 10], 53, Proto::Tcp);
    let udp = fe([10, 96, 0, 10], 53, Proto::Udp);
    let desired = only_services([
        (tcp, vec![be([10, 244, 1, 1], 53, Proto::Tcp)]),
        (udp, vec![be([10, 244, 1, 1], 53, Proto::Udp)]),
    ]);
    let (ops, next) = state_after(&LbState::default(), &desired);
    assert_eq!(
        ops.iter()
            .filter(|op| matches!(op, MapOp::PutRevNat { .. }))
            .count(),
        1
    );
    assert_eq!(
        next.services[&tcp].master.map(|m| m.1),
        next.services[&udp].master.map(|m| m.1)
    );
}

#[test]
fn diff_repairs_a_partially_written_state() {
    // What an agent killed between writes may leave behind: a slot without master, a
    // backend nothing uses.
    let f = fe([10, 96, 0, 10], 80, Proto::Tcp);
    let b = be([10, 244, 1, 1], 80, Proto::Tcp);
    let mut partial = LbState::default();
    partial.backends.insert(4, b);
    partial
        .backends
        .insert(9, be([10, 244, 9, 9], 80, Proto::Tcp));
    partial.services.entry(f).or_default().slots.insert(1, 4);
    let desired = only_services([(f, vec![b])]);
    let (ops, next) = state_after(&partial, &desired);
    assert!(
        !ops.iter()
            .any(|op| matches!(op, MapOp::PutBackend { .. } | MapOp::PutSlot { .. })),
        "{ops:?}"
    );
    assert!(ops.contains(&MapOp::DeleteBackend { id: 9 }));
    assert_eq!(resolved(&next), desired.services);
    assert_eq!(diff(&next, &desired), vec![]);
}

#[test]
fn reconcile_programs_real_maps_and_a_restarted_agent_changes_nothing() {
    use crate::loader::{Datapath, DatapathConfig, testutil::TestDatapath};

    let t = TestDatapath::load("reconcile", None);
    let s = svc("web", "10.96.0.10", &[(Some("http"), 80, "TCP")]);
    let eps = slice(
        "web-a",
        "web",
        &[(Some("http"), 8080, "TCP")],
        &[
            ("10.244.1.3", Some(true), None, None),
            ("10.244.2.4", Some(true), None, None),
        ],
    );
    let written = super::reconcile(
        &t.dp,
        std::slice::from_ref(&s),
        std::slice::from_ref(&eps),
        &NodeContext::default(),
    )
    .expect("reconcile");
    assert_eq!(
        written, 7,
        "2 backends, 1 revnat, 1 name, 2 slots, 1 master"
    );
    let f = fe([10, 96, 0, 10], 80, Proto::Tcp);
    let state = t.dp.read_lb().expect("read");
    assert_eq!(
        state.backends_of(&f),
        vec![
            Some(be([10, 244, 1, 3], 8080, Proto::Tcp)),
            Some(be([10, 244, 2, 4], 8080, Proto::Tcp))
        ]
    );

    // A new agent process on the same pins: reads the maps back, finds nothing to change.
    let restarted = Datapath::load(DatapathConfig {
        pin_dir: t.pins.0.clone(),
        cgroup_root: t.cgroup.0.clone(),
        node_netns: None,
    })
    .expect("reload");
    assert_eq!(
        super::reconcile(
            &restarted,
            std::slice::from_ref(&s),
            &[eps],
            &NodeContext::default()
        )
        .expect("reconcile"),
        0
    );

    // The Service loses its endpoints: programmed with no backends, backends removed.
    assert!(
        super::reconcile(&restarted, &[s], &[], &NodeContext::default()).expect("reconcile") > 0
    );
    let state = restarted.read_lb().expect("read");
    assert_eq!(state.backends_of(&f), vec![]);
    assert!(state.backends.is_empty());
    assert_eq!(state.services[&f].master.map(|m| m.0), Some(0));
}

/// A minimal Kubernetes API on loopback: lists of the given objects, watches that stay open
/// without events. Enough for the reflectors of [`super::run`].
async fn fake_api(
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
) -> (String, tokio::task::JoinHandle<()>) {
    use axum::{Router, body::Body, extract::Query, response::Response, routing::get};
    use std::collections::HashMap;

    fn respond(
        query: &HashMap<String, String>,
        kind: &str,
        api_version: &str,
        items: serde_json::Value,
    ) -> Response {
        let body = if query.get("watch").map(String::as_str) == Some("true") {
            Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>())
        } else {
            Body::from(
                serde_json::json!({
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": { "resourceVersion": "1" },
                    "items": items,
                })
                .to_string(),
            )
        };
        Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .expect("response")
    }

    let svcs = serde_json::to_value(&services).expect("services json");
    let eps = serde_json::to_value(&slices).expect("slices json");
    let app = Router::new()
        .route(
            "/api/v1/services",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let svcs = svcs.clone();
                async move { respond(&q, "ServiceList", "v1", svcs) }
            }),
        )
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let eps = eps.clone();
                async move { respond(&q, "EndpointSliceList", "discovery.k8s.io/v1", eps) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_programs_the_maps_from_the_api() {
    use crate::loader::testutil::TestDatapath;

    let t = TestDatapath::load("run", None);
    let dp = std::sync::Arc::new(t.dp);
    let s = svc("dns", "10.96.0.53", &[(Some("dns"), 53, "UDP")]);
    let eps = slice(
        "dns-a",
        "dns",
        &[(Some("dns"), 5353, "UDP")],
        &[("10.244.1.7", Some(true), None, None)],
    );
    let (url, server) = fake_api(vec![s], vec![eps]).await;
    let config = kube::Config::new(url.parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let (synced, mut synced_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(super::run(
        client,
        dp.clone(),
        NodeContext::default(),
        synced,
    ));

    let f = fe([10, 96, 0, 53], 53, Proto::Udp);
    let want = vec![Some(be([10, 244, 1, 7], 5353, Proto::Udp))];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if dp.read_lb().expect("read").backends_of(&f) == want {
            break;
        }
        assert!(!task.is_finished(), "services loop ended: {:?}", task.await);
        assert!(
            tokio::time::Instant::now() < deadline,
            "services never programmed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The maps hold the initial lists: the Pods of the node may start.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        synced_rx.wait_for(|s| *s),
    )
    .await
    .expect("synced in time")
    .expect("sender alive");
    task.abort();
    let _ = task.await;
    server.abort();
    // The datapath goes first, then `t`'s pins and cgroup at the end of the scope.
    drop(dp);
}

#[test]
fn session_affinity_is_planned_and_toggled_on_the_master_entry() {
    use k8s_openapi::api::core::v1::{ClientIPConfig, SessionAffinityConfig};

    let mut s = svc("sticky", "10.96.0.20", &[(None, 80, "TCP")]);
    let eps = slice(
        "sticky-a",
        "sticky",
        &[(None, 8080, "TCP")],
        &[("10.244.1.1", None, None, None)],
    );
    let f = fe([10, 96, 0, 20], 80, Proto::Tcp);
    let plain = desired(
        std::slice::from_ref(&s),
        std::slice::from_ref(&eps),
        &NodeContext::default(),
    );
    assert!(plain.affinity.is_empty());
    if let Some(spec) = s.spec.as_mut() {
        spec.session_affinity = Some("ClientIP".into());
    }
    let sticky = desired(
        std::slice::from_ref(&s),
        std::slice::from_ref(&eps),
        &NodeContext::default(),
    );
    assert_eq!(
        sticky.affinity.get(&f),
        Some(&10_800),
        "kube-proxy's default timeout"
    );
    if let Some(spec) = s.spec.as_mut() {
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
    }
    let sticky = desired(
        std::slice::from_ref(&s),
        std::slice::from_ref(&eps),
        &NodeContext::default(),
    );
    assert_eq!(sticky.affinity.get(&f), Some(&60));

    // Turning affinity on and off rewrites only the master entry.
    let (_, current) = state_after(&LbState::default(), &plain);
    let (ops, on) = state_after(&current, &sticky);
    assert_eq!(
        ops,
        vec![MapOp::PutMaster {
            frontend: f,
            count: 1,
            rev_nat_index: 1,
            affinity_timeout: Some(60),
            flags: 0,
        }]
    );
    assert_eq!(diff(&on, &sticky), vec![]);
    let (ops, _) = state_after(&on, &plain);
    assert_eq!(
        ops,
        vec![MapOp::PutMaster {
            frontend: f,
            count: 1,
            rev_nat_index: 1,
            affinity_timeout: None,
            flags: 0,
        }]
    );
}

#[test]
fn dual_stack_services_get_backends_of_their_own_family() {
    let mut s = svc("web", "10.96.0.10", &[(None, 80, "TCP")]);
    if let Some(spec) = s.spec.as_mut() {
        spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00:96::10".into()]);
    }
    let v4 = slice(
        "web-v4",
        "web",
        &[(None, 8080, "TCP")],
        &[("10.244.1.3", None, None, None)],
    );
    let mut v6 = slice(
        "web-v6",
        "web",
        &[(None, 8080, "TCP")],
        &[("fd00:244::3", None, None, None)],
    );
    v6.address_type = "IPv6".into();
    let d = desired(&[s], &[v4, v6], &NodeContext::default());
    let f6 = Frontend {
        address: "fd00:96::10".parse().expect("ip"),
        port: 80,
        proto: Proto::Tcp,
    };
    assert_eq!(
        d.services[&fe([10, 96, 0, 10], 80, Proto::Tcp)],
        vec![be([10, 244, 1, 3], 8080, Proto::Tcp)]
    );
    assert_eq!(
        d.services[&f6],
        vec![BackendAddr {
            address: "fd00:244::3".parse().expect("ip"),
            port: 8080,
            proto: Proto::Tcp
        }]
    );
    // One id space over both families: no backend id or revnat index is used twice.
    let (ops, next) = state_after(&LbState::default(), &d);
    assert_eq!(resolved(&next), d.services);
    let revnat: Vec<u16> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::PutRevNat { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(revnat, vec![1, 2]);
    assert_eq!(next.backends.len(), 2);
}

#[test]
fn listed_backends_outside_the_slots_keep_their_entry_until_unlisted() {
    let s = svc("web", "10.96.0.10", &[(Some("http"), 80, "TCP")]);
    // The desired state with `endpoints` in the Service's one slice.
    let plan = |endpoints: &[Ep<'_>]| {
        let web_a = slice("web-a", "web", &[(Some("http"), 8080, "TCP")], endpoints);
        desired(std::slice::from_ref(&s), &[web_a], &NodeContext::default())
    };
    let f = fe([10, 96, 0, 10], 80, Proto::Tcp);
    let terminating = be([10, 244, 1, 4], 8080, Proto::Tcp);
    // Both served at first (the second was ready then).
    let mut state = LbState::default();
    let first = plan(&[
        ("10.244.1.3", Some(true), Some(true), Some(false)),
        ("10.244.1.4", Some(true), Some(true), Some(false)),
    ]);
    let ops = diff(&state, &first);
    apply_to_state(&mut state, &ops);
    let id = *state
        .backends
        .iter()
        .find(|(_, b)| **b == terminating)
        .expect("backend")
        .0;

    // Terminating while another endpoint is ready: out of the slots, still in the backends
    // map, so its conntrack entries (keyed by backend id) are not purged.
    let d = plan(&[
        ("10.244.1.3", Some(true), Some(true), Some(false)),
        ("10.244.1.4", Some(false), Some(true), Some(true)),
    ]);
    assert_eq!(d.services[&f], vec![be([10, 244, 1, 3], 8080, Proto::Tcp)]);
    assert!(d.retained.contains(&terminating));
    let ops = diff(&state, &d);
    assert!(!ops.contains(&MapOp::DeleteBackend { id }), "{ops:?}");
    apply_to_state(&mut state, &ops);
    assert_eq!(state.backends.get(&id), Some(&terminating));

    // Gone from the slice: now the backend goes.
    let d = plan(&[("10.244.1.3", Some(true), Some(true), Some(false))]);
    assert!(diff(&state, &d).contains(&MapOp::DeleteBackend { id }));
}
