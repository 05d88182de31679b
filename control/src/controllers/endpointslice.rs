//! The EndpointSlice controller: for every Service with a selector, EndpointSlices listing the
//! selected Pods' IPv4 addresses with their ready/serving/terminating conditions (KEP-1672) and
//! the Service's ports resolved per Pod (a named targetPort can resolve differently per Pod, so
//! Pods are grouped by their resolved ports, one set of slices per group, at most 100 endpoints
//! a slice like Kubernetes' default `--max-endpoints-per-slice`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::objects::{
    controller_ref_to, is_terminating, map_selects, pod_is_ready, pod_is_terminal,
};
use super::runtime::{Controller, Informers, Touch, WorkQueue, key_of};
use super::runtime::{Expectations, Reconciler, Requeue, Seen, delete_background, split_key};

/// Label naming the Service of a slice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`] (the upstream controller's, so tools recognise the slices).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Node label holding the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Most endpoints in one slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// What the EndpointSlice plan sees besides the Service.
#[derive(Debug, Default)]
pub struct Snapshot<'a> {
    /// Pods of the Service's namespace.
    pub pods: Vec<&'a Pod>,
    /// EndpointSlices of the Service's namespace (the plan picks the Service's own).
    pub slices: Vec<&'a EndpointSlice>,
    /// Zone of each Node that has one.
    pub node_zones: BTreeMap<String, String>,
}

/// One step towards the Service's desired slices.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create this slice (metadata.generateName set).
    Create(Box<EndpointSlice>),
    /// Replace this slice (name and resourceVersion from the existing one).
    Update(Box<EndpointSlice>),
    /// Delete the slice with this name.
    Delete(String),
}

/// True when the slice is ours and belongs to Service `name`.
pub fn is_slice_of(slice: &EndpointSlice, service: &str) -> bool {
    let labels = slice.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(MANAGED_BY)
        && labels
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            == Some(service)
}

/// The Service's selector when the controller should manage its endpoints: Services without a
/// selector (an empty one counts as none, as the API server stores it) or of type ExternalName
/// are left to whoever manages them.
pub fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// The port a Service port reaches on `pod`, or None when a named targetPort names no port of
/// the Pod (the Pod then lacks that port, as in Kubernetes' `podutil.FindPort`).
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            if let Ok(p) = name.parse::<i32>() {
                return Some(p);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|cp| {
                    (cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(cp.container_port)
                })
        }
    }
}

/// The endpoint of `pod` for `svc` (Kubernetes' `podToEndpoint`).
pub fn endpoint_for(
    svc: &Service,
    pod: &Pod,
    ip: &str,
    node_zones: &BTreeMap<String, String>,
) -> Endpoint {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let terminating = is_terminating(&pod.metadata);
    let serving = publish || pod_is_ready(pod);
    // A terminating endpoint is never ready unless the Service publishes not-ready addresses.
    let ready = serving && (!terminating || publish);
    let spec = pod.spec.as_ref();
    let node = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let svc_name = svc.metadata.name.as_deref();
    let hostname = spec
        .filter(|s| s.subdomain.as_deref().is_some() && s.subdomain.as_deref() == svc_name)
        .and_then(|s| s.hostname.clone());
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        zone: node.as_ref().and_then(|n| node_zones.get(n).cloned()),
        node_name: node,
        hostname,
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Pod's IPv4 address, if it has one.
pub fn pod_ipv4(pod: &Pod) -> Option<&str> {
    let st = pod.status.as_ref()?;
    let is_v4 = |ip: &&str| ip.parse::<std::net::Ipv4Addr>().is_ok();
    st.pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .find(is_v4)
        .or_else(|| st.pod_ip.as_deref().filter(is_v4))
}

type PortsKey = Vec<(Option<String>, Option<String>, Option<i32>, Option<String>)>;

fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    ports
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.protocol.clone(),
                p.port,
                p.app_protocol.clone(),
            )
        })
        .collect()
}

/// The desired endpoints grouped by resolved ports.
fn desired_groups(
    svc: &Service,
    selector: &BTreeMap<String, String>,
    snap: &Snapshot<'_>,
) -> BTreeMap<PortsKey, (Vec<EndpointPort>, Vec<Endpoint>)> {
    let mut pods: Vec<&Pod> = snap
        .pods
        .iter()
        .copied()
        .filter(|p| map_selects(selector, p.metadata.labels.as_ref()) && !pod_is_terminal(p))
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut groups: BTreeMap<PortsKey, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ipv4(pod) else { continue };
        let ports: Vec<EndpointPort> = svc_ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    port: Some(resolve_target_port(sp, pod)?),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let entry = groups
            .entry(ports_key(&ports))
            .or_insert_with(|| (ports, Vec::new()));
        entry.1.push(endpoint_for(svc, pod, ip, &snap.node_zones));
    }
    groups
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            SERVICE_NAME_LABEL.to_string(),
            svc.metadata.name.clone().unwrap_or_default(),
        ),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

fn new_slice(svc: &Service, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                svc.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![controller_ref_to(svc)]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

/// Plans the EndpointSlices of `svc`.
pub fn plan(svc: &Service, snap: &Snapshot<'_>) -> Vec<Change> {
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let Some(selector) = managed_selector(svc) else {
        return Vec::new();
    };
    let mut groups = desired_groups(svc, selector, snap);
    if groups.is_empty() {
        // A Service without endpoints still gets one (empty) slice, as in Kubernetes.
        groups.insert(Vec::new(), (Vec::new(), Vec::new()));
    }
    let mut existing: Vec<&EndpointSlice> = snap
        .slices
        .iter()
        .copied()
        .filter(|s| {
            is_slice_of(s, name) && s.address_type == "IPv4" && !is_terminating(&s.metadata)
        })
        .collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut by_ports: BTreeMap<PortsKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in existing {
        by_ports
            .entry(ports_key(s.ports.as_deref().unwrap_or_default()))
            .or_default()
            .push(s);
    }
    let labels = slice_labels(svc);
    let owner = controller_ref_to(svc);
    let mut changes = Vec::new();
    let mut missing: Vec<(Vec<EndpointPort>, Vec<Endpoint>)> = Vec::new();
    let mut spare: Vec<&EndpointSlice> = Vec::new();
    for (key, (ports, endpoints)) in groups {
        let mut have = by_ports.remove(&key).unwrap_or_default().into_iter();
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for chunk in chunks {
            match have.next() {
                Some(cur) => {
                    let labels_ok = labels.iter().all(|(k, v)| {
                        cur.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)
                    });
                    let owner_ok = cur
                        .metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| o.contains(&owner));
                    if cur.endpoints.as_deref().unwrap_or_default() != chunk.as_slice()
                        || !labels_ok
                        || !owner_ok
                    {
                        changes.push(Change::Update(Box::new(rewrite(
                            cur,
                            &labels,
                            &owner,
                            ports.clone(),
                            chunk,
                        ))));
                    }
                }
                None => missing.push((ports.clone(), chunk)),
            }
        }
        spare.extend(have);
    }
    spare.extend(by_ports.into_values().flatten());
    // Slices whose ports no longer match are rewritten before any new slice is created, so a
    // change of ports (or the last Pod going away) keeps the slice count stable.
    let mut spare = spare.into_iter();
    for (ports, chunk) in missing {
        match spare.next() {
            Some(cur) => changes.push(Change::Update(Box::new(rewrite(
                cur, &labels, &owner, ports, chunk,
            )))),
            None => changes.push(Change::Create(Box::new(new_slice(svc, ports, chunk)))),
        }
    }
    changes.extend(spare.map(|s| Change::Delete(s.metadata.name.clone().unwrap_or_default())));
    changes
}

fn rewrite(
    cur: &EndpointSlice,
    labels: &BTreeMap<String, String>,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut s = cur.clone();
    s.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels.clone());
    s.metadata.owner_references = Some(vec![owner.clone()]);
    s.endpoints = Some(endpoints);
    s.ports = Some(ports);
    s
}

/// Plans the removal of the slices of a Service that no longer exists (or lost its selector).
pub fn plan_orphaned(service: &str, slices: &[&EndpointSlice]) -> Vec<Change> {
    slices
        .iter()
        .filter(|s| is_slice_of(s, service) && !is_terminating(&s.metadata))
        .map(|s| Change::Delete(s.metadata.name.clone().unwrap_or_default()))
        .collect()
}

/// The EndpointSlice loop: reconciles a Service key against Pods, slices and Nodes.
pub(crate) struct EndpointSliceLoop {
    pub(crate) client: Client,
    pub(crate) services: Store<Service>,
    pub(crate) pods: Store<Pod>,
    pub(crate) slices: Store<EndpointSlice>,
    pub(crate) nodes: Store<Node>,
    pub(crate) expectations: Expectations,
}

impl Reconciler for EndpointSliceLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let (ns, name) = split_key(key);
        let ns = ns.unwrap_or_default();
        let slice_store = self.slices.clone();
        let seen = |n: &str| match slice_store.get(&ObjectRef::new(n).within(ns)) {
            None => Seen::Absent,
            Some(s) if is_terminating(&s.metadata) => Seen::Terminating,
            Some(_) => Seen::Live,
        };
        if !self.expectations.satisfied(key, seen) {
            return Ok(Some(Duration::from_secs(1)));
        }
        let in_ns = |m: &ObjectMeta| m.namespace.as_deref() == Some(ns);
        let slices: Vec<Arc<EndpointSlice>> = self
            .slices
            .state_filter(|s| in_ns(&s.metadata) && is_slice_of(s, name));
        let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        let svc = self.services.get(&ObjectRef::new(name).within(ns));
        let changes = match svc.as_deref() {
            Some(svc) if managed_selector(svc).is_some() => {
                let pods: Vec<Arc<Pod>> = self.pods.state_filter(|p| in_ns(&p.metadata));
                let node_zones = self
                    .nodes
                    .state()
                    .iter()
                    .filter_map(|n| {
                        Some((
                            n.metadata.name.clone()?,
                            n.metadata.labels.as_ref()?.get(ZONE_LABEL)?.clone(),
                        ))
                    })
                    .collect();
                let snap = Snapshot {
                    pods: pods.iter().map(|p| &**p).collect(),
                    slices: slice_refs,
                    node_zones,
                };
                plan(svc, &snap)
            }
            _ => plan_orphaned(name, &slice_refs),
        };
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let mut created = Vec::new();
        let mut deleted = Vec::new();
        let mut result = Ok(None);
        for change in changes {
            let step = match change {
                Change::Create(s) => api.create(&PostParams::default(), &s).await.map(|s| {
                    tracing::debug!(
                        service = key,
                        slice = s.metadata.name,
                        "created endpointslice"
                    );
                    created.extend(s.metadata.name);
                }),
                Change::Update(s) => {
                    let n = s.metadata.name.clone().unwrap_or_default();
                    api.replace(&n, &PostParams::default(), &s)
                        .await
                        .map(|_| ())
                }
                Change::Delete(n) => delete_background(&api, &n).await.map(|gone| {
                    if gone {
                        deleted.push(n);
                    }
                }),
            };
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        if !created.is_empty() || !deleted.is_empty() {
            self.expectations.expect(key, created, deleted);
        }
        result
    }
}

/// The EndpointSlice controller: a Service's key for every change of it or of a slice it
/// manages, and for any change of a Pod the key of every selecting Service of the Pod's
/// namespace (its labels may have changed, and the old ones are not in the event).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointSliceController;

impl Controller for EndpointSliceController {
    const NAME: &'static str = "endpointslice";
    type Loop = EndpointSliceLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> EndpointSliceLoop {
        let services = informers.all::<Service>();
        let q = queue.clone();
        services.on(move |t| match t {
            Touch::Changed(s) | Touch::Deleted(s) => q.add(key_of(s)),
            Touch::Relisted(all) => all.iter().for_each(|s| q.add(key_of(&**s))),
        });
        let services = services.store();
        let pods = informers.all::<Pod>();
        let (q, svcs) = (queue.clone(), services.clone());
        pods.on(move |t| match t {
            Touch::Changed(p) | Touch::Deleted(p) => {
                let ns = p.metadata.namespace.as_deref();
                for svc in svcs.state() {
                    if svc.metadata.namespace.as_deref() == ns && managed_selector(&svc).is_some() {
                        q.add(key_of(&*svc));
                    }
                }
            }
            Touch::Relisted(_) => svcs.state().iter().for_each(|s| q.add(key_of(&**s))),
        });
        let pods = pods.store();
        let slices = informers.all::<EndpointSlice>();
        let q = queue.clone();
        slices.on(move |t| {
            let service = |s: &EndpointSlice| {
                let labels = s.metadata.labels.as_ref();
                let managed = labels
                    .and_then(|l| l.get(MANAGED_BY_LABEL))
                    .map(String::as_str)
                    == Some(MANAGED_BY);
                if let (true, Some(svc)) = (managed, labels.and_then(|l| l.get(SERVICE_NAME_LABEL)))
                {
                    q.add(format!(
                        "{}/{svc}",
                        s.metadata.namespace.as_deref().unwrap_or_default()
                    ));
                }
            };
            match t {
                Touch::Changed(s) | Touch::Deleted(s) => service(s),
                Touch::Relisted(all) => all.iter().for_each(|s| service(s)),
            }
        });
        let slices = slices.store();
        EndpointSliceLoop {
            client: informers.client().clone(),
            services,
            pods,
            slices,
            nodes: informers.all::<Node>().store(),
            expectations: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::testutil::*;
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, ServiceSpec};

    fn service(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(labels(&[("app", "web")])),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn port(name: &str, port: i32, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn web_pod(name: &str, ip: &str, ready: bool, container_ports: &[(&str, i32)]) -> Pod {
        let mut p = running(pod(name, 0), "n1", ip, ready.then_some(1));
        p.metadata.labels = Some(labels(&[("app", "web")]));
        p.spec.as_mut().expect("spec").containers = vec![Container {
            name: "c".into(),
            ports: Some(
                container_ports
                    .iter()
                    .map(|(n, p)| ContainerPort {
                        name: Some(n.to_string()),
                        container_port: *p,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }];
        p
    }

    /// Plans `svc` against these Pods and stored slices (no Node zones).
    fn plan_with(svc: &Service, pods: &[&Pod], slices: &[&EndpointSlice]) -> Vec<Change> {
        plan(
            svc,
            &Snapshot {
                pods: pods.to_vec(),
                slices: slices.to_vec(),
                ..Default::default()
            },
        )
    }

    fn created(changes: &[Change]) -> Vec<&EndpointSlice> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Create(s) => Some(&**s),
                _ => None,
            })
            .collect()
    }

    fn conditions(e: &Endpoint) -> (Option<bool>, Option<bool>, Option<bool>) {
        let c = e.conditions.as_ref().expect("conditions");
        (c.ready, c.serving, c.terminating)
    }

    #[test]
    fn slice_has_labels_owner_ports_and_endpoints() {
        let svc = service(vec![port("http", 80, IntOrString::Int(8080))]);
        let p = web_pod("a", "10.244.1.5", true, &[]);
        let other = {
            let mut o = web_pod("b", "10.244.1.6", true, &[]);
            o.metadata.labels = Some(labels(&[("app", "db")]));
            o
        };
        let snap = Snapshot {
            pods: vec![&p, &other],
            node_zones: BTreeMap::from([("n1".to_string(), "zone-a".to_string())]),
            ..Default::default()
        };
        let changes = plan(&svc, &snap);
        let slices = created(&changes);
        assert_eq!(slices.len(), 1);
        let s = slices[0];
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        let l = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(l.get(SERVICE_NAME_LABEL).map(String::as_str), Some("web"));
        assert_eq!(
            l.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.api_version.as_str()
            ),
            ("Service", "svc-uid", "v1")
        );
        assert_eq!(s.address_type, "IPv4");
        let ports = s.ports.as_ref().expect("ports");
        assert_eq!(
            (
                ports[0].name.as_deref(),
                ports[0].port,
                ports[0].protocol.as_deref()
            ),
            (Some("http"), Some(8080), Some("TCP"))
        );
        let eps = s.endpoints.as_ref().expect("endpoints");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addresses, vec!["10.244.1.5".to_string()]);
        assert_eq!(eps[0].node_name.as_deref(), Some("n1"));
        assert_eq!(eps[0].zone.as_deref(), Some("zone-a"));
        assert_eq!(
            eps[0].target_ref.as_ref().and_then(|r| r.name.as_deref()),
            Some("a")
        );
        assert_eq!(conditions(&eps[0]), (Some(true), Some(true), Some(false)));
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let svc = service(vec![port("http", 80, IntOrString::Int(80))]);
        let ready = web_pod("a-ready", "10.0.0.1", true, &[]);
        let not_ready = web_pod("b-not-ready", "10.0.0.2", false, &[]);
        let term_ready = terminating(web_pod("c-term-ready", "10.0.0.3", true, &[]), 5);
        let term_not_ready = terminating(web_pod("d-term-not-ready", "10.0.0.4", false, &[]), 5);
        let no_ip = {
            let mut p = web_pod("e-no-ip", "", true, &[]);
            p.status.as_mut().expect("status").pod_ip = None;
            p
        };
        let pods = [&ready, &not_ready, &term_ready, &term_not_ready, &no_ip];
        let changes = plan_with(&svc, &pods, &[]);
        let eps = created(&changes)[0].endpoints.clone().expect("endpoints");
        assert_eq!(eps.len(), 4, "pods without an IP are left out");
        assert_eq!(conditions(&eps[0]), (Some(true), Some(true), Some(false)));
        assert_eq!(conditions(&eps[1]), (Some(false), Some(false), Some(false)));
        assert_eq!(conditions(&eps[2]), (Some(false), Some(true), Some(true)));
        assert_eq!(conditions(&eps[3]), (Some(false), Some(false), Some(true)));

        let mut publish = svc.clone();
        publish
            .spec
            .as_mut()
            .expect("spec")
            .publish_not_ready_addresses = Some(true);
        let eps = created(&plan_with(&publish, &pods, &[]))[0]
            .endpoints
            .clone()
            .expect("endpoints");
        assert_eq!(conditions(&eps[1]), (Some(true), Some(true), Some(false)));
        assert_eq!(conditions(&eps[3]), (Some(true), Some(true), Some(true)));
    }

    #[test]
    fn named_target_ports_resolve_per_pod_into_separate_slices() {
        let svc = service(vec![port("http", 80, IntOrString::String("web".into()))]);
        let a = web_pod("a", "10.0.0.1", true, &[("web", 8080)]);
        let b = web_pod("b", "10.0.0.2", true, &[("web", 9090)]);
        let c = web_pod("c", "10.0.0.3", true, &[("web", 8080)]);
        let changes = plan_with(&svc, &[&a, &b, &c], &[]);
        let slices = created(&changes);
        assert_eq!(slices.len(), 2);
        let mut seen: Vec<(i32, usize)> = slices
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().expect("p")[0].port.expect("port"),
                    s.endpoints.as_ref().expect("e").len(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(seen, vec![(8080, 2), (9090, 1)]);
    }

    #[test]
    fn unresolvable_named_port_is_left_out_for_that_pod() {
        let svc = service(vec![
            port("http", 80, IntOrString::String("web".into())),
            port("raw", 81, IntOrString::Int(81)),
        ]);
        let a = web_pod("a", "10.0.0.1", true, &[("other", 1)]);
        let s = created(&plan_with(&svc, &[&a], &[]))[0].clone();
        let ports = s.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(81));
    }

    #[test]
    fn more_than_100_endpoints_split_across_slices() {
        let svc = service(vec![port("http", 80, IntOrString::Int(80))]);
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                web_pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    true,
                    &[],
                )
            })
            .collect();
        let snap = Snapshot {
            pods: pods.iter().collect(),
            ..Default::default()
        };
        let slices = created(&plan(&svc, &snap))
            .into_iter()
            .map(|s| s.endpoints.as_ref().expect("e").len())
            .collect::<Vec<_>>();
        assert_eq!(slices, vec![100, 100, 50]);
    }

    #[test]
    fn existing_slices_are_updated_kept_or_deleted() {
        let svc = service(vec![port("http", 80, IntOrString::Int(80))]);
        let a = web_pod("a", "10.0.0.1", true, &[]);
        let first = created(&plan_with(&svc, &[&a], &[]))[0].clone();
        let mut stored = first.clone();
        stored.metadata.name = Some("web-x1".into());
        stored.metadata.resource_version = Some("7".into());
        // Same Pods: nothing to do.
        assert!(plan_with(&svc, &[&a], &[&stored]).is_empty());
        // A Pod turns not ready: the slice is replaced in place, keeping its name and version.
        let a2 = web_pod("a", "10.0.0.1", false, &[]);
        let changes = plan_with(&svc, &[&a2], &[&stored]);
        match &changes[..] {
            [Change::Update(s)] => {
                assert_eq!(s.metadata.name.as_deref(), Some("web-x1"));
                assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
                assert_eq!(
                    conditions(&s.endpoints.as_ref().expect("e")[0]).0,
                    Some(false)
                );
            }
            other => panic!("expected one update, got {other:?}"),
        }
        // A duplicate slice is deleted; no Pods leaves one empty slice.
        let mut dup = stored.clone();
        dup.metadata.name = Some("web-x2".into());
        let changes = plan_with(&svc, &[], &[&stored, &dup]);
        assert!(
            changes.contains(&Change::Delete("web-x2".into())),
            "{changes:?}"
        );
        assert!(changes.iter().any(
            |c| matches!(c, Change::Update(s) if s.endpoints.as_ref().is_some_and(Vec::is_empty))
        ));
    }

    #[test]
    fn services_without_selector_are_left_alone_and_deleted_services_lose_slices() {
        let mut svc = service(vec![port("http", 80, IntOrString::Int(80))]);
        svc.spec.as_mut().expect("spec").selector = None;
        let a = web_pod("a", "10.0.0.1", true, &[]);
        assert!(plan_with(&svc, &[&a], &[]).is_empty());
        svc.spec.as_mut().expect("spec").selector = Some(BTreeMap::new());
        assert!(plan_with(&svc, &[&a], &[]).is_empty());

        let with_sel = service(vec![port("http", 80, IntOrString::Int(80))]);
        let mut s = created(&plan_with(&with_sel, &[&a], &[]))[0].clone();
        s.metadata.name = Some("web-1".into());
        let mut foreign = s.clone();
        foreign.metadata.name = Some("custom".into());
        foreign
            .metadata
            .labels
            .as_mut()
            .expect("l")
            .insert(MANAGED_BY_LABEL.into(), "someone-else".into());
        assert_eq!(
            plan_orphaned("web", &[&s, &foreign]),
            vec![Change::Delete("web-1".into())]
        );
    }

    #[test]
    fn terminal_pods_are_excluded() {
        let svc = service(vec![port("http", 80, IntOrString::Int(80))]);
        let mut done = web_pod("a", "10.0.0.1", false, &[]);
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        let eps = created(&plan_with(&svc, &[&done], &[]))[0].clone();
        assert!(eps.endpoints.expect("e").is_empty());
        assert!(eps.ports.expect("p").is_empty());
    }
}
