//! What the policy compiler reads of the watched Pods, Namespaces, Nodes and NetworkPolicies,
//! taken out of the objects as they arrive, and the watch events applied to the
//! [`Snapshot`]'s maps (a relist replaces a map only once it is complete).

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use keelson_common::policy::policy_proto;
use kube::{Resource, runtime::watcher};

use super::model::{ContainerPort, NamespaceInfo, NodeInfo, PodInfo};

/// `namespace/name` of a namespaced object (unset namespace: `default`), the name of a
/// cluster-scoped one.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("");
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        // A Pod that has terminated holds no address any more: kubelet released it and the
        // IPAM may have handed it to a new Pod already (Cilium likewise drops such Pods).
        let terminated = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let ip = status.filter(|_| !terminated).and_then(|s| {
            s.pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(s.pod_ip.as_deref())
                .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
        });
        // Named ports are those of the containers, and of the sidecars (init containers with
        // `restartPolicy: Always`, KEP-753), which run beside them.
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut ports: Vec<ContainerPort> = spec
            .containers
            .iter()
            .chain(sidecars)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(ContainerPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.container_port).ok().filter(|&n| n != 0)?,
                    proto: policy_proto(p.protocol.as_deref().unwrap_or("TCP"))?,
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        Some(Self {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone()?,
            ip,
            node_name: spec.node_name.clone().unwrap_or_default(),
            host_network: spec.host_network.unwrap_or(false),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        })
    }
}

impl NamespaceInfo {
    pub fn from_namespace(ns: &Namespace) -> Option<Self> {
        Some(Self {
            name: ns.metadata.name.clone()?,
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> Option<Self> {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
            .collect();
        Some(Self {
            name: node.metadata.name.clone()?,
            addresses,
        })
    }
}

/// A NetworkPolicy as the compiler keeps it: its namespace, name and spec (a watched object's
/// managed fields and annotations can be many times the size of its spec).
pub fn reduce_policy(np: &NetworkPolicy) -> Option<NetworkPolicy> {
    Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: np.metadata.name.clone(),
            namespace: np.metadata.namespace.clone(),
            ..Default::default()
        },
        spec: Some(np.spec.clone()?),
    })
}

/// The list-and-watch state of one kind of object, whose objects live in a map of the
/// [`Snapshot`](super::model::Snapshot).
#[derive(Debug)]
pub struct Watched<T> {
    /// Objects of a (re)list in progress: they replace the map when it is complete, so that a
    /// pass never sees a partial list (which would drop the allowances of the missing Pods).
    relist: Option<BTreeMap<String, T>>,
    ready: bool,
}

impl<T> Default for Watched<T> {
    fn default() -> Self {
        Self {
            relist: None,
            ready: false,
        }
    }
}

impl<T: PartialEq> Watched<T> {
    /// A complete list has been received at least once.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Applies one watch event to `items`, reducing its object with `reduce` (`None`: not
    /// kept). Returns whether `items` changed: an update that changes nothing the compiler
    /// reads (a Pod's conditions, a Node's heartbeat) is no change.
    pub fn apply<K: Resource>(
        &mut self,
        items: &mut BTreeMap<String, T>,
        event: watcher::Event<K>,
        reduce: impl Fn(&K) -> Option<T>,
    ) -> bool {
        match event {
            watcher::Event::Apply(obj) => {
                let key = key_of(&obj);
                match reduce(&obj) {
                    Some(new) if items.get(&key) == Some(&new) => false,
                    Some(new) => {
                        items.insert(key, new);
                        true
                    }
                    None => items.remove(&key).is_some(),
                }
            }
            watcher::Event::Delete(obj) => items.remove(&key_of(&obj)).is_some(),
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                if let Some(new) = reduce(&obj) {
                    self.relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key_of(&obj), new);
                }
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let changed = !self.ready || *items != listed;
                *items = listed;
                self.ready = true;
                changed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort as K8sPort, NodeAddress, NodeStatus, PodIP, PodSpec, PodStatus,
    };

    use super::*;

    fn pod(ips: &[&str], phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        K8sPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        },
                        K8sPort {
                            name: Some("dns".into()),
                            container_port: 53,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn policy_input_pods_read_their_ipv4_address_and_ports() {
        let p = PodInfo::from_pod(&pod(&["fd00::5", "10.244.1.5"], "Running")).expect("pod");
        assert_eq!(p.ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.node_name.as_str()),
            ("ns", "p", "n1")
        );
        assert_eq!(
            p.ports,
            [
                ContainerPort {
                    name: "dns".into(),
                    port: 53,
                    proto: keelson_common::proto::UDP
                },
                ContainerPort {
                    name: "http".into(),
                    port: 8080,
                    proto: keelson_common::proto::TCP
                },
            ]
        );
        // A terminated Pod's address may be another Pod's already.
        assert_eq!(
            PodInfo::from_pod(&pod(&["10.244.1.5"], "Succeeded"))
                .expect("pod")
                .ip,
            None
        );
        assert_eq!(
            PodInfo::from_pod(&pod(&[], "Pending")).expect("pod").ip,
            None
        );
    }

    #[test]
    fn policy_input_nodes_read_internal_ipv4_addresses() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "n1".into(),
                    },
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: "203.0.113.1".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "192.168.0.1".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "fd00::1".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let n = NodeInfo::from_node(&node).expect("node");
        assert_eq!(n.addresses, [Ipv4Addr::new(192, 168, 0, 1)]);
    }

    #[test]
    fn policy_input_watch_events_change_the_map_only_when_it_matters() {
        let mut items = BTreeMap::new();
        let mut w = Watched::<PodInfo>::default();
        let reduce = PodInfo::from_pod;
        assert!(!w.apply(&mut items, watcher::Event::Init, reduce));
        assert!(!w.apply(
            &mut items,
            watcher::Event::InitApply(pod(&["10.0.0.1"], "Running")),
            reduce
        ));
        assert!(items.is_empty() && !w.is_ready());
        assert!(w.apply(&mut items, watcher::Event::<Pod>::InitDone, reduce));
        assert!(w.is_ready());
        assert_eq!(items.len(), 1);
        // The same object again (a status heartbeat): no change.
        assert!(!w.apply(
            &mut items,
            watcher::Event::Apply(pod(&["10.0.0.1"], "Running")),
            reduce
        ));
        assert!(w.apply(
            &mut items,
            watcher::Event::Apply(pod(&["10.0.0.2"], "Running")),
            reduce
        ));
        assert_eq!(items["ns/p"].ip, Some(Ipv4Addr::new(10, 0, 0, 2)));
        // A relist that brings back the same objects changes nothing.
        w.apply(&mut items, watcher::Event::Init, reduce);
        w.apply(
            &mut items,
            watcher::Event::InitApply(pod(&["10.0.0.2"], "Running")),
            reduce,
        );
        assert!(!w.apply(&mut items, watcher::Event::<Pod>::InitDone, reduce));
        assert!(w.apply(
            &mut items,
            watcher::Event::Delete(pod(&[], "Running")),
            reduce
        ));
        assert!(!w.apply(
            &mut items,
            watcher::Event::Delete(pod(&[], "Running")),
            reduce
        ));
        assert!(items.is_empty());
    }
}
