//! What the Service planner reads of the API's Services and EndpointSlices, taken out of the
//! watched objects as they arrive: per Service its addresses, ports and policies, per slice
//! its Service, ports and per endpoint an address and four flags.
//!
//! The agent keeps only these (a k8s-openapi `Service` is 824 bytes before any of its strings,
//! an endpoint of a slice 352; these are a tenth of that), and everything the planner decides
//! is decided from them, so parsing and defaulting happen once per object change rather than
//! once per pass.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::model::Proto;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Per-Service choice of the backend selection for per-packet flows: `maglev` or `random`
/// (Cilium's `service.cilium.io/lb-algorithm` in spirit).
pub const LB_ALGORITHM_ANNOTATION: &str = "service.keelson.io/lb-algorithm";
/// kube-proxy's default ClientIP affinity timeout: 3 hours (ServiceSpec API docs).
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// `namespace/name` of an object: how Services, slices and their plans are keyed.
pub type ObjectKey = Arc<str>;

/// The key of an object named `name` in `namespace` (unset: `default`).
pub fn object_key(namespace: Option<&str>, name: &str) -> ObjectKey {
    format!("{}/{name}", namespace.unwrap_or("default")).into()
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInput {
    /// The port's name: EndpointSlice ports carry the same name with the resolved targetPort.
    pub name: Box<str>,
    pub proto: Proto,
    pub port: u16,
    /// The nodePort, for NodePort and LoadBalancer Services that have one.
    pub node_port: Option<u16>,
}

/// A Service as the planner and the health-check servers read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInput {
    /// The ClusterIPs (one per family); empty for headless and ExternalName Services, which
    /// have nothing to balance.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports with a known protocol and a valid number.
    pub ports: Vec<ServicePortInput>,
    /// Addresses served per packet besides the node's: `spec.externalIPs`, and for
    /// LoadBalancer Services the `status.loadBalancer.ingress` IPs (what the LB-IPAM
    /// controller or a cloud assigned).
    pub external_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// The lb-algorithm annotation: `Some(true)` maglev, `Some(false)` random, `None` the
    /// agent's default.
    pub maglev: Option<bool>,
    /// The healthCheckNodePort of a LoadBalancer Service with `externalTrafficPolicy: Local`.
    pub health_check_node_port: Option<u16>,
}

impl ServiceInput {
    /// Reads a Service; `None` without a spec.
    pub fn from_service(svc: &Service) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let cluster_ips: Vec<IpAddr> = if ty == "ExternalName" {
            Vec::new()
        } else {
            match &spec.cluster_ips {
                Some(ips) if !ips.is_empty() => {
                    ips.iter().filter_map(|ip| ip.parse().ok()).collect()
                }
                _ => spec
                    .cluster_ip
                    .iter()
                    .filter_map(|ip| ip.parse().ok())
                    .collect(),
            }
        };
        let has_node_ports = ty == "NodePort" || ty == "LoadBalancer";
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                Some(ServicePortInput {
                    name: sp.name.as_deref().unwrap_or("").into(),
                    proto: Proto::from_k8s(sp.protocol.as_deref())?,
                    port: u16::try_from(sp.port).ok()?,
                    node_port: sp
                        .node_port
                        .filter(|_| has_node_ports)
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|&p| p != 0),
                })
            })
            .collect();
        let mut external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if ty == "LoadBalancer" {
            external_ips.extend(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref())
                    .filter_map(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let maglev = match svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
            .map(String::as_str)
        {
            Some("maglev") => Some(true),
            Some("random") => Some(false),
            _ => None,
        };
        // The API server allocates a healthCheckNodePort for exactly these Services.
        let health_check_node_port = spec
            .health_check_node_port
            .filter(|_| ty == "LoadBalancer" && external_local)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        Some(Self {
            cluster_ips,
            ports,
            external_ips,
            affinity,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local,
            maglev,
            health_check_node_port,
        })
    }
}

/// One port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortInput {
    pub name: Box<str>,
    pub proto: Proto,
    /// The resolved target port (unset on a slice whose Service port names no Pod port).
    pub port: Option<u16>,
}

/// One endpoint of a slice: its address and what decides whether traffic may go to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInput {
    /// The first address, which stands for the endpoint as in kube-proxy (the API allows
    /// exactly one today, the rest is reserved); of the slice's family.
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint runs on this node (its `nodeName` is the agent's node).
    pub local: bool,
}

/// An EndpointSlice as the planner, the health-check servers and the connection teardown read
/// it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInput {
    /// `namespace/name` of the Service of its `kubernetes.io/service-name` label.
    pub service: Option<ObjectKey>,
    /// `addressType: IPv6` (otherwise IPv4; FQDN slices have no endpoints here).
    pub ipv6: bool,
    /// Ports with a known protocol.
    pub ports: Vec<SlicePortInput>,
    pub endpoints: Vec<EndpointInput>,
}

impl SliceInput {
    /// Reads a slice for the node `node_name` (empty: no endpoint is local).
    ///
    /// Unset `ready`/`serving` count as true (`serving` follows `ready`), unset `terminating`
    /// as false (EndpointConditions API docs).
    pub fn from_slice(slice: &EndpointSlice, node_name: &str) -> Self {
        let namespace = slice.metadata.namespace.as_deref();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|name| object_key(namespace, name));
        let ipv6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => {
                return Self {
                    service,
                    ..Self::default()
                };
            }
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(SlicePortInput {
                    name: p.name.as_deref().unwrap_or("").into(),
                    proto: Proto::from_k8s(p.protocol.as_deref())?,
                    port: p.port.and_then(|p| u16::try_from(p).ok()),
                })
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|ep| {
                let address = ep
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .filter(|a| a.is_ipv6() == ipv6)?;
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                Some(EndpointInput {
                    address,
                    ready,
                    serving: cond.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                    local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
                })
            })
            .collect();
        Self {
            service,
            ipv6,
            ports,
            endpoints,
        }
    }

    /// The target port of the Service port `name`/`proto` in this slice: the first port of
    /// that name and protocol, if it has a number.
    pub fn port_of(&self, name: &str, proto: Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| &*p.name == name && p.proto == proto)
            .and_then(|p| p.port)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    use super::*;
    use crate::services::testutil::{
        endpoint, endpoint_port, endpoint_slice, service, service_port,
    };

    #[test]
    fn service_input_reads_addresses_ports_and_policies() {
        let mut svc = service(
            "web",
            "front",
            "10.96.0.10",
            vec![
                service_port(Some("http"), 80, "TCP", Some(30080)),
                service_port(Some("sctp"), 9, "SCTP", None),
                service_port(Some("odd"), 7, "QUIC", None),
            ],
        );
        let spec = svc.spec.as_mut().expect("spec");
        spec.type_ = Some("LoadBalancer".into());
        spec.external_ips = Some(vec!["10.250.129.7".into(), "bogus".into()]);
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(31000);
        spec.session_affinity = Some("ClientIP".into());
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.250.128.1".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let input = ServiceInput::from_service(&svc).expect("input");
        assert_eq!(
            input.cluster_ips,
            ["10.96.0.10".parse::<IpAddr>().expect("ip")]
        );
        // The unknown protocol is left out; the nodePort is kept for a LoadBalancer.
        assert_eq!(
            input.ports,
            [
                ServicePortInput {
                    name: "http".into(),
                    proto: Proto::Tcp,
                    port: 80,
                    node_port: Some(30080),
                },
                ServicePortInput {
                    name: "sctp".into(),
                    proto: Proto::Sctp,
                    port: 9,
                    node_port: None,
                },
            ]
        );
        assert_eq!(
            input.external_ips,
            [
                "10.250.129.7".parse::<IpAddr>().expect("ip"),
                "10.250.128.1".parse().expect("ip")
            ]
        );
        assert_eq!(input.affinity, Some(10_800));
        assert!(input.external_local && !input.internal_local);
        assert_eq!(input.health_check_node_port, Some(31000));
        assert_eq!(input.maglev, None);

        // The same Service as a NodePort: no ingress addresses, no health check port.
        svc.spec.as_mut().expect("spec").type_ = Some("NodePort".into());
        let input = ServiceInput::from_service(&svc).expect("input");
        assert_eq!(
            input.external_ips,
            ["10.250.129.7".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(input.health_check_node_port, None);
        assert_eq!(input.ports[0].node_port, Some(30080));
        // As a ClusterIP Service a stale nodePort means nothing.
        svc.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
        let input = ServiceInput::from_service(&svc).expect("input");
        assert_eq!(input.ports[0].node_port, None);
        // ExternalName and headless Services have no ClusterIP to balance.
        svc.spec.as_mut().expect("spec").type_ = Some("ExternalName".into());
        assert!(
            ServiceInput::from_service(&svc)
                .expect("input")
                .cluster_ips
                .is_empty()
        );
        let headless = service("web", "h", "None", vec![]);
        assert!(
            ServiceInput::from_service(&headless)
                .expect("input")
                .cluster_ips
                .is_empty()
        );
    }

    #[test]
    fn slice_input_reads_endpoints_of_its_family_with_defaulted_conditions() {
        let mut slice = endpoint_slice(
            "web",
            "front-abc",
            "front",
            vec![endpoint_port(Some("http"), 8080, "TCP")],
            vec![
                endpoint("10.244.1.5", Some("n1"), (None, None, None)),
                endpoint(
                    "10.244.2.5",
                    Some("n2"),
                    (Some(false), Some(true), Some(true)),
                ),
                endpoint("fd00::5", Some("n1"), (None, None, None)),
            ],
        );
        let input = SliceInput::from_slice(&slice, "n1");
        assert_eq!(input.service.as_deref(), Some("web/front"));
        assert_eq!(input.port_of("http", Proto::Tcp), Some(8080));
        assert_eq!(input.port_of("http", Proto::Udp), None);
        // The IPv6 address in an IPv4 slice is left out.
        assert_eq!(
            input.endpoints,
            [
                EndpointInput {
                    address: "10.244.1.5".parse().expect("ip"),
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                },
                EndpointInput {
                    address: "10.244.2.5".parse().expect("ip"),
                    ready: false,
                    serving: true,
                    terminating: true,
                    local: false,
                },
            ]
        );
        // Without a node name nothing is local; FQDN slices have no endpoints here.
        assert!(
            SliceInput::from_slice(&slice, "")
                .endpoints
                .iter()
                .all(|e| !e.local)
        );
        slice.address_type = "FQDN".into();
        let fqdn = SliceInput::from_slice(&slice, "n1");
        assert!(fqdn.endpoints.is_empty() && fqdn.ports.is_empty());
        assert_eq!(fqdn.service.as_deref(), Some("web/front"));
    }
}
