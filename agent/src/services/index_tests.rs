//! The incremental planner against the full one: random Services and EndpointSlices change
//! one watch event at a time; after every incremental pass the maps (in memory) must be
//! exactly what a full plan of all objects from scratch asks for, and the carried indexes
//! what a fresh read would rebuild.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

use super::{
    Programmer,
    model::LbState,
    plan::{self, LB_ALGORITHM_ANNOTATION, NodeContext},
    programmed::Programmed,
    testutil::{Conditions, endpoint, endpoint_port, endpoint_slice, service, service_port},
};

const SERVICES: usize = 10;
const NAMESPACE: &str = "ns";

fn node() -> NodeContext {
    NodeContext {
        node_name: "n1".into(),
        node_ips: vec!["10.250.0.11".parse().expect("ip")],
        maglev_default: false,
    }
}

/// A random Service `s<i>`: ClusterIPs and externalIPs from small pools so that Services
/// collide on frontends and share reverse-NAT addresses, TCP and UDP ports of one number,
/// every type and policy.
fn random_service(rng: &mut StdRng, i: usize) -> Service {
    let ip = format!("10.96.0.{}", rng.random_range(1..=6));
    let mut ports = vec![service_port(Some("a"), 80, "TCP", Some(30_000 + i as i32))];
    if rng.random_bool(0.5) {
        ports.push(service_port(Some("b"), 80, "UDP", Some(30_100 + i as i32)));
    }
    if rng.random_bool(0.2) {
        ports.push(service_port(Some("c"), 53, "UDP", None));
    }
    let mut svc = service(NAMESPACE, &format!("s{i}"), &ip, ports);
    let spec: &mut ServiceSpec = svc.spec.as_mut().expect("spec");
    if rng.random_bool(0.1) {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
    }
    let ty = *["ClusterIP", "NodePort", "LoadBalancer"]
        .choose(rng)
        .expect("types");
    spec.type_ = Some(ty.into());
    if rng.random_bool(0.3) {
        spec.external_ips = Some(vec![format!("10.250.129.{}", rng.random_range(1..=3))]);
    }
    if rng.random_bool(0.3) {
        spec.external_traffic_policy = Some("Local".into());
    }
    if rng.random_bool(0.3) {
        spec.internal_traffic_policy = Some("Local".into());
    }
    if rng.random_bool(0.3) {
        spec.session_affinity = Some("ClientIP".into());
    }
    if ty == "LoadBalancer" {
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(format!("10.250.128.{}", rng.random_range(1..=3))),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
    }
    if rng.random_bool(0.5) {
        let algorithm = if rng.random_bool(0.5) {
            "maglev"
        } else {
            "random"
        };
        svc.metadata.annotations = Some(BTreeMap::from([(
            LB_ALGORITHM_ANNOTATION.to_string(),
            algorithm.to_string(),
        )]));
    }
    svc
}

/// A random slice `s<i>-<j>` of Service `s<i>` (sometimes of another Service: a slice may be
/// relabelled), endpoints from a small pool shared by all Services.
fn random_slice(rng: &mut StdRng, i: usize, j: usize) -> EndpointSlice {
    let owner = if rng.random_bool(0.1) {
        rng.random_range(0..SERVICES)
    } else {
        i
    };
    let mut ports = vec![endpoint_port(Some("a"), 8080, "TCP")];
    if rng.random_bool(0.7) {
        ports.push(endpoint_port(Some("b"), 8080, "UDP"));
    }
    if rng.random_bool(0.3) {
        ports.push(endpoint_port(Some("c"), 5353, "UDP"));
    }
    let endpoints = (0..rng.random_range(0..4))
        .map(|_| {
            let conditions: Conditions = (
                Some(rng.random_bool(0.8)),
                Some(rng.random_bool(0.8)),
                Some(rng.random_bool(0.2)),
            );
            let node = ["n1", "n2"].choose(rng).copied();
            endpoint(
                &format!("10.244.0.{}", rng.random_range(1..=8)),
                node,
                conditions,
            )
        })
        .collect();
    endpoint_slice(
        NAMESPACE,
        &format!("s{i}-{j}"),
        &format!("s{owner}"),
        ports,
        endpoints,
    )
}

fn name_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

#[test]
fn incremental_passes_reach_what_a_full_plan_asks_for() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        for i in 0..SERVICES {
            let s = random_service(&mut rng, i);
            services.insert(name_of(&s.metadata), s);
            for j in 0..2 {
                let e = random_slice(&mut rng, i, j);
                slices.insert(name_of(&e.metadata), e);
            }
        }
        let mut programmer = Programmer::new(node());
        programmer.load(services.values().cloned(), slices.values().cloned());
        let mut current = Programmed::new(LbState::default());
        programmer.replan();
        let ops = plan::diff(&current.state, &programmer.index.to_desired_state());
        current.apply(&ops);

        for step in 0..150 {
            let i = rng.random_range(0..SERVICES);
            let j = rng.random_range(0..2);
            match rng.random_range(0..5) {
                0 => {
                    let name = format!("s{i}");
                    if let Some(gone) = services.remove(&name) {
                        programmer.service_event(watcher::Event::Delete(gone));
                    }
                }
                1 | 2 => {
                    let s = random_service(&mut rng, i);
                    services.insert(name_of(&s.metadata), s.clone());
                    programmer.service_event(watcher::Event::Apply(s));
                }
                3 => {
                    let name = format!("s{i}-{j}");
                    if let Some(gone) = slices.remove(&name) {
                        programmer.slice_event(watcher::Event::Delete(gone));
                    }
                }
                _ => {
                    let e = random_slice(&mut rng, i, j);
                    slices.insert(name_of(&e.metadata), e.clone());
                    programmer.slice_event(watcher::Event::Apply(e));
                }
            }
            let touched = programmer.replan();
            let ops = programmer.index.diff(&current, &touched);
            current.apply(&ops);

            let svcs: Vec<Service> = services.values().cloned().collect();
            let eps: Vec<EndpointSlice> = slices.values().cloned().collect();
            let full = plan::desired(&svcs, &eps, &node());
            assert_eq!(
                plan::diff(&current.state, &full),
                vec![],
                "seed {seed} step {step}: the incremental pass left work for a full one"
            );
            assert_eq!(
                Programmed::new(current.state.clone()),
                current,
                "seed {seed} step {step}: carried indexes"
            );
        }
    }
}
