//! Builders of the API objects the Service planner reads (Services, EndpointSlices and their
//! ports and endpoints) and of the model's frontends, and one planning step, for the
//! planner's tests.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    model::{BackendAddr, DesiredState, Frontend, LbState, MapOp, Proto},
    plan::{SERVICE_NAME_LABEL, apply_to_state, diff},
};

/// A Service `namespace/name` with one ClusterIP and `ports`, of no explicit type.
pub(crate) fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn service_port(
    name: Option<&str>,
    port: i32,
    protocol: &str,
    node_port: Option<i32>,
) -> ServicePort {
    ServicePort {
        name: name.map(Into::into),
        port,
        protocol: Some(protocol.into()),
        node_port,
        ..Default::default()
    }
}

/// An IPv4 EndpointSlice `namespace/name` of Service `service`.
pub(crate) fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.into(),
                service.into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

pub(crate) fn endpoint_port(name: Option<&str>, port: i32, protocol: &str) -> EndpointPort {
    EndpointPort {
        name: name.map(Into::into),
        port: Some(port),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// The `ready`, `serving` and `terminating` conditions of an endpoint.
pub(crate) type Conditions = (Option<bool>, Option<bool>, Option<bool>);

/// An endpoint with one address, on `node_name` if given.
pub(crate) fn endpoint(address: &str, node_name: Option<&str>, conditions: Conditions) -> Endpoint {
    let (ready, serving, terminating) = conditions;
    Endpoint {
        addresses: vec![address.into()],
        node_name: node_name.map(Into::into),
        conditions: Some(EndpointConditions {
            ready,
            serving,
            terminating,
        }),
        ..Default::default()
    }
}

pub(crate) fn fe(ip: [u8; 4], port: u16, proto: Proto) -> Frontend {
    Frontend {
        address: Ipv4Addr::from(ip).into(),
        port,
        proto,
    }
}

/// The ops that take `current` to `desired`, and the state they leave.
pub(crate) fn state_after(current: &LbState, desired: &DesiredState) -> (Vec<MapOp>, LbState) {
    let ops = diff(current, desired);
    let mut next = current.clone();
    apply_to_state(&mut next, &ops);
    (ops, next)
}

/// A desired state of `services` and nothing else (no flags, names, affinity or Maglev).
pub(crate) fn only_services<const N: usize>(
    services: [(Frontend, Vec<BackendAddr>); N],
) -> DesiredState {
    DesiredState {
        services: BTreeMap::from(services),
        ..Default::default()
    }
}
