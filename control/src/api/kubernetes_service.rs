//! The `kubernetes` Service and EndpointSlice in `default`: how Pods find the API server.
//!
//! kube-apiserver's bootstrap controller (`pkg/controlplane/controller/kubernetesservice`)
//! keeps a ClusterIP Service named `kubernetes` on the first address of the service CIDR,
//! port 443 `https`, and its endpoint reconciler keeps the endpoints at the advertise address
//! and secure port; both are re-checked every 10 s, so a deleted or edited object comes back.
//! The same here: [`plan`] compares what is stored with what should be, [`run`] applies it.
//! The Service has no selector, so the EndpointSlice controller leaves its slice alone (it
//! manages only the slices labelled as its own).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ipnetwork::Ipv4Network;
use k8s_openapi::Resource as _;
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::{Api, Client, api::PostParams};

/// Name of the Service and its EndpointSlice.
pub const NAME: &str = "kubernetes";
/// Their namespace.
pub const NAMESPACE: &str = "default";
/// The Service's port and its name, as kube-apiserver serves them.
pub const SERVICE_PORT: i32 = 443;
pub const PORT_NAME: &str = "https";
/// How often the objects are re-checked (kube-apiserver's `EndpointReconcileInterval`).
const INTERVAL: Duration = Duration::from_secs(10);
/// kube-apiserver's labels on the Service.
const LABELS: [(&str, &str); 2] = [("component", "apiserver"), ("provider", "kubernetes")];
/// The label tying an EndpointSlice to its Service (discovery.k8s.io/v1).
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service's ClusterIP: the first address of the service CIDR, which the allocator never
/// hands to another Service.
pub fn cluster_ip(service_cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_cidr.network()).saturating_add(1))
}

/// Where the Service points: the ClusterIP it holds and the address and port Pods reach the
/// API server on (none when the server listens only where no Pod can reach it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub cluster_ip: Ipv4Addr,
    pub endpoint: Option<(IpAddr, u16)>,
}

/// A write [`plan`] asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    CreateService(Box<Service>),
    /// The stored Service with its ports and type put back (its ClusterIP cannot change).
    ReplaceService(Box<Service>),
    CreateSlice(Box<EndpointSlice>),
    ReplaceSlice(Box<EndpointSlice>),
}

fn meta(labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(NAME.into()),
        namespace: Some(NAMESPACE.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

/// The Service's ports: 443 `https` to the API server's port.
fn service_ports(target: u16) -> Vec<ServicePort> {
    vec![ServicePort {
        name: Some(PORT_NAME.into()),
        port: SERVICE_PORT,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(i32::from(target))),
        ..ServicePort::default()
    }]
}

/// The Service as kube-apiserver creates it.
pub fn desired_service(d: &Desired) -> Service {
    let target = d.endpoint.map_or(6443, |(_, port)| port);
    Service {
        metadata: meta(&LABELS),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(d.cluster_ip.to_string()),
            cluster_ips: Some(vec![d.cluster_ip.to_string()]),
            ports: Some(service_ports(target)),
            session_affinity: Some("None".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The EndpointSlice: the API server's address, ready, on port `https`.
pub fn desired_slice(d: &Desired) -> EndpointSlice {
    let (endpoints, ports) = match d.endpoint {
        Some((ip, port)) => (
            vec![Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            }],
            vec![EndpointPort {
                name: Some(PORT_NAME.into()),
                port: Some(i32::from(port)),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }],
        ),
        None => (Vec::new(), Vec::new()),
    };
    EndpointSlice {
        metadata: meta(&[(SERVICE_NAME_LABEL, NAME)]),
        address_type: match d.endpoint {
            Some((IpAddr::V6(_), _)) => "IPv6".into(),
            _ => "IPv4".into(),
        },
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

/// The writes that make the stored Service and slice what `d` says. A Service whose ports or
/// type were edited gets them back (as kube-apiserver's `getMasterServiceUpdateIfNeeded`);
/// anything else of it is left as it is.
pub fn plan(d: &Desired, service: Option<&Service>, slice: Option<&EndpointSlice>) -> Vec<Change> {
    let want_svc = desired_service(d);
    let want_slice = desired_slice(d);
    let mut changes = Vec::new();
    match service {
        None => changes.push(Change::CreateService(Box::new(want_svc))),
        Some(svc) => {
            let spec = svc.spec.clone().unwrap_or_default();
            let want_spec = want_svc.spec.as_ref();
            let ports_ok = spec.ports == want_spec.and_then(|s| s.ports.clone());
            let type_ok = spec.type_.as_deref() == Some("ClusterIP");
            if !(ports_ok && type_ok) {
                let mut fixed = svc.clone();
                let s = fixed.spec.get_or_insert_with(ServiceSpec::default);
                s.ports = want_spec.and_then(|w| w.ports.clone());
                s.type_ = Some("ClusterIP".into());
                changes.push(Change::ReplaceService(Box::new(fixed)));
            }
        }
    }
    match slice {
        None => changes.push(Change::CreateSlice(Box::new(want_slice))),
        Some(have)
            if have.endpoints.as_deref().unwrap_or_default()
                != want_slice.endpoints.as_deref().unwrap_or_default()
                || have.ports.as_deref().unwrap_or_default()
                    != want_slice.ports.as_deref().unwrap_or_default()
                || have.address_type != want_slice.address_type =>
        {
            let mut fixed = have.clone();
            fixed.endpoints = want_slice.endpoints;
            fixed.ports = want_slice.ports;
            fixed.address_type = want_slice.address_type;
            changes.push(Change::ReplaceSlice(Box::new(fixed)));
        }
        Some(_) => {}
    }
    changes
}

/// Applies one change.
async fn apply(client: &Client, change: Change) -> Result<(), kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let pp = PostParams::default();
    match change {
        Change::CreateService(s) => services.create(&pp, &s).await.map(drop),
        Change::ReplaceService(s) => services.replace(NAME, &pp, &s).await.map(drop),
        Change::CreateSlice(s) => slices.create(&pp, &s).await.map(drop),
        Change::ReplaceSlice(s) => slices.replace(NAME, &pp, &s).await.map(drop),
    }
}

/// One pass: reads both objects and applies [`plan`].
pub async fn reconcile(client: &Client, d: &Desired) -> Result<(), kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let service = services.get_opt(NAME).await?;
    let slice = slices.get_opt(NAME).await?;
    for change in plan(d, service.as_ref(), slice.as_ref()) {
        tracing::info!(
            kind = match &change {
                Change::CreateService(_) | Change::ReplaceService(_) => Service::KIND,
                Change::CreateSlice(_) | Change::ReplaceSlice(_) => EndpointSlice::KIND,
            },
            "reconciling the kubernetes Service"
        );
        apply(client, change).await?;
    }
    Ok(())
}

/// Keeps the objects as [`Desired`] says, every [`INTERVAL`]; sets `done` after the first pass
/// that succeeded (`poststarthook/bootstrap-controller`).
pub async fn run(client: Client, d: Desired, done: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match reconcile(&client, &d).await {
            Ok(()) => done.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(error = %e, "reconciling the kubernetes Service");
                // A failed first pass (say, a conflict with a write in flight) is retried soon.
                if !done.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    tick.reset_immediately();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            endpoint: Some((IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1)), 6443)),
        }
    }

    #[test]
    fn nothing_stored_creates_both_as_kube_apiserver_does() {
        let changes = plan(&desired(), None, None);
        let [Change::CreateService(svc), Change::CreateSlice(slice)] = changes.as_slice() else {
            panic!("unexpected plan {changes:?}");
        };
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
        assert_eq!(spec.selector, None);
        let port = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.target_port.clone()),
            (Some("https"), 443, Some(IntOrString::Int(6443)))
        );
        let labels = svc.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["component"], "apiserver");
        assert_eq!(labels["provider"], "kubernetes");
        assert_eq!(
            slice.metadata.labels.as_ref().expect("labels")[SERVICE_NAME_LABEL],
            "kubernetes"
        );
        let endpoints = slice.endpoints.as_ref().expect("endpoints");
        assert_eq!(endpoints[0].addresses, vec!["10.250.0.1".to_string()]);
        assert_eq!(slice.ports.as_ref().expect("ports")[0].port, Some(6443));
    }

    #[test]
    fn objects_as_wanted_need_nothing_and_edits_are_put_back() {
        let d = desired();
        let svc = desired_service(&d);
        let slice = desired_slice(&d);
        assert!(plan(&d, Some(&svc), Some(&slice)).is_empty());

        let mut edited = svc.clone();
        edited.spec.as_mut().expect("spec").ports = Some(service_ports(1234));
        edited.spec.as_mut().expect("spec").type_ = Some("NodePort".into());
        let mut moved = slice.clone();
        moved.endpoints.as_mut().expect("endpoints")[0].addresses = vec!["10.250.0.9".into()];
        let changes = plan(&d, Some(&edited), Some(&moved));
        let [Change::ReplaceService(s), Change::ReplaceSlice(e)] = changes.as_slice() else {
            panic!("unexpected plan {changes:?}");
        };
        assert_eq!(s.spec, svc.spec);
        assert_eq!(e.endpoints, slice.endpoints);
    }

    #[test]
    fn without_a_reachable_address_the_slice_is_empty() {
        let d = Desired {
            endpoint: None,
            ..desired()
        };
        let slice = desired_slice(&d);
        assert_eq!(slice.endpoints, Some(Vec::new()));
        assert_eq!(slice.ports, Some(Vec::new()));
        // An endpoint that went away is removed from a stored slice.
        let stored = desired_slice(&desired());
        let changes = plan(&d, Some(&desired_service(&d)), Some(&stored));
        assert!(
            matches!(changes.as_slice(), [Change::ReplaceSlice(s)] if s.endpoints == Some(Vec::new())),
            "{changes:?}"
        );
    }
}
