//! The loop's carried-forward view of the maps: after every incremental pass it must equal
//! what a read of the maps returns, or later passes would diff against a state the kernel
//! does not hold.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use kube::runtime::watcher;

use super::{Programmer, model::LbState, plan::NodeContext, plan::SERVICE_NAME_LABEL};
use crate::loader::testutil::TestDatapath;

fn svc(name: &str, ip: &str, node_port: Option<i32>, affinity: bool) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(
                if node_port.is_some() {
                    "NodePort"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            session_affinity: affinity.then(|| "ClientIP".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                node_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(service: &str, addrs: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-x")),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.into(),
                service.into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            addrs
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![(*a).into()],
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

#[test]
fn services_loop_carried_state_matches_the_maps_after_every_pass() {
    let t = TestDatapath::load("carried", None);
    let node = NodeContext {
        node_name: "n1".into(),
        node_ips: vec!["10.250.0.11".parse().expect("ip")],
        maglev_default: true,
    };
    let steps: Vec<(Vec<Service>, Vec<EndpointSlice>)> = vec![
        (
            vec![
                svc("a", "10.96.0.10", None, false),
                svc("b", "10.96.0.11", Some(30080), false),
            ],
            vec![
                slice("a", &["10.244.1.1", "10.244.1.2"]),
                slice("b", &["10.244.1.3", "10.244.1.4", "10.244.1.5"]),
            ],
        ),
        // One endpoint replaced, one Service gets session affinity.
        (
            vec![
                svc("a", "10.96.0.10", None, true),
                svc("b", "10.96.0.11", Some(30080), false),
            ],
            vec![
                slice("a", &["10.244.1.1", "10.244.1.9"]),
                slice("b", &["10.244.1.3", "10.244.1.5"]),
            ],
        ),
        // A Service goes, another comes and reuses a freed backend address.
        (
            vec![
                svc("a", "10.96.0.10", None, true),
                svc("c", "10.96.0.12", None, false),
            ],
            vec![
                slice("a", &["10.244.1.1", "10.244.1.9"]),
                slice("c", &["10.244.1.3"]),
            ],
        ),
        // Nothing changes.
        (
            vec![
                svc("a", "10.96.0.10", None, true),
                svc("c", "10.96.0.12", None, false),
            ],
            vec![
                slice("a", &["10.244.1.1", "10.244.1.9"]),
                slice("c", &["10.244.1.3"]),
            ],
        ),
        (vec![], vec![]),
    ];
    let mut programmer = Programmer::new(node);
    let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
    for (i, (services, slices)) in steps.iter().enumerate() {
        if i == 0 {
            // The first lists, as the watches deliver them after a start: a full pass.
            programmer.load(services.clone(), slices.clone());
        } else {
            // Then watch events: deletes of what is gone, updates of everything else.
            let (prev_services, prev_slices) = &steps[i - 1];
            for gone in prev_services.iter().filter(|p| {
                !services
                    .iter()
                    .any(|s| name(&s.metadata) == name(&p.metadata))
            }) {
                programmer.service_event(watcher::Event::Delete(gone.clone()));
            }
            for gone in prev_slices.iter().filter(|p| {
                !slices
                    .iter()
                    .any(|s| name(&s.metadata) == name(&p.metadata))
            }) {
                programmer.slice_event(watcher::Event::Delete(gone.clone()));
            }
            for s in services {
                programmer.service_event(watcher::Event::Apply(s.clone()));
            }
            for s in slices {
                programmer.slice_event(watcher::Event::Apply(s.clone()));
            }
        }
        assert_eq!(programmer.needs_read(), i == 0, "step {i}");
        let written = futures::executor::block_on(programmer.pass(&t.dp)).expect("pass");
        let read = t.dp.read_lb().expect("read maps");
        let known = programmer.programmed.as_ref().map(|p| &p.state);
        assert_eq!(known, Some(&read), "step {i}");
        if i == 3 {
            assert_eq!(written, 0, "an unchanged set writes nothing");
        }
        if i == 0 {
            assert!(
                !read.maglev.is_empty(),
                "the NodePort frontends have Maglev tables"
            );
        }
    }
    assert_eq!(
        programmer.programmed.map(|p| p.state),
        Some(LbState::default())
    );
}
