//! The Service programming loop's own copies of the watched Services and EndpointSlices:
//! slimmed to the fields the planner reads, kept in one contiguous `Vec` per kind so a pass
//! plans straight from them (no per-pass clone of every object), and updated in place from
//! watch events.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, runtime::watcher};

use super::plan::{LB_ALGORITHM_ANNOTATION, SERVICE_NAME_LABEL};

/// Objects of one kind by (namespace, name), as the last complete list plus the watch
/// events since.
#[derive(Debug)]
pub struct ObjectCache<K> {
    items: Vec<K>,
    index: HashMap<(String, String), usize>,
    /// Objects of a (re)list in progress: they replace `items` when it is complete, so a
    /// pass never sees a partial list (that would delete frontends the maps rightly hold).
    relist: Option<Vec<K>>,
    ready: bool,
}

impl<K> Default for ObjectCache<K> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            index: HashMap::new(),
            relist: None,
            ready: false,
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl<K: Resource> ObjectCache<K> {
    /// The objects, in no particular order.
    pub fn items(&self) -> &[K] {
        &self.items
    }

    /// A complete list has been received at least once.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Takes one watch event; returns whether the objects a pass sees changed.
    pub fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(obj) => {
                self.upsert(obj);
                true
            }
            watcher::Event::Delete(obj) => self.remove(&key_of(&obj)),
            watcher::Event::Init => {
                self.relist = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                self.relist.get_or_insert_with(Vec::new).push(obj);
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.items.clear();
                self.index.clear();
                for obj in listed {
                    self.upsert(obj);
                }
                self.items.shrink_to_fit();
                self.ready = true;
                true
            }
        }
    }

    fn upsert(&mut self, obj: K) {
        let key = key_of(&obj);
        match self.index.get(&key) {
            Some(&i) => self.items[i] = obj,
            None => {
                // Objects are large (a Service is about a kilobyte before its strings):
                // growing by an eighth rather than doubling keeps the spare capacity small at
                // tens of thousands of objects, still in amortised constant time.
                if self.items.len() == self.items.capacity() {
                    self.items.reserve_exact((self.items.len() / 8).max(64));
                }
                self.index.insert(key, self.items.len());
                self.items.push(obj);
            }
        }
    }

    fn remove(&mut self, key: &(String, String)) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        self.items.swap_remove(i);
        if let Some(moved) = self.items.get(i) {
            self.index.insert(key_of(moved), i);
        }
        true
    }
}

/// Metadata reduced to what planning reads: name, namespace and the labels/annotations of
/// `keep`. managedFields, last-applied annotations, owner references and the like are most
/// of a watched object's size and are never read.
fn slim_meta(meta: &mut ObjectMeta, keep_label: Option<&str>, keep_annotation: Option<&str>) {
    let keep = |map: Option<BTreeMap<String, String>>, key: Option<&str>| {
        let key = key?;
        let kept: BTreeMap<String, String> = map?.into_iter().filter(|(k, _)| k == key).collect();
        (!kept.is_empty()).then_some(kept)
    };
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: keep(meta.labels.take(), keep_label),
        annotations: keep(meta.annotations.take(), keep_annotation),
        ..ObjectMeta::default()
    };
}

/// A Service as the planner and the health-check servers read it.
pub fn slim_service(svc: &mut Service) {
    slim_meta(&mut svc.metadata, None, Some(LB_ALGORITHM_ANNOTATION));
    if let Some(status) = svc.status.as_mut() {
        status.conditions = None;
    }
}

/// An EndpointSlice as the planner, the health-check servers and the connection teardown
/// read it: its Service label, address type, ports, and per endpoint the addresses,
/// conditions and node.
pub fn slim_slice(slice: &mut EndpointSlice) {
    slim_meta(&mut slice.metadata, Some(SERVICE_NAME_LABEL), None);
    for ep in slice.endpoints.iter_mut().flatten() {
        ep.deprecated_topology = None;
        ep.hints = None;
        ep.hostname = None;
        ep.target_ref = None;
        ep.zone = None;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::Endpoint;

    use super::*;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        });
        s
    }

    fn ips(c: &ObjectCache<Service>) -> Vec<String> {
        let mut v: Vec<String> = c
            .items()
            .iter()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn services_cache_applies_watch_events_and_swaps_in_complete_lists() {
        let mut c = ObjectCache::<Service>::default();
        assert!(!c.apply(watcher::Event::Init));
        assert!(!c.apply(watcher::Event::InitApply(svc("a", "x", "10.96.0.1"))));
        assert!(!c.apply(watcher::Event::InitApply(svc("a", "y", "10.96.0.2"))));
        // Nothing is visible before the list is complete.
        assert!(!c.is_ready());
        assert!(c.items().is_empty());
        assert!(c.apply(watcher::Event::InitDone));
        assert!(c.is_ready());
        assert_eq!(ips(&c), ["10.96.0.1", "10.96.0.2"]);

        assert!(c.apply(watcher::Event::Apply(svc("a", "x", "10.96.0.3"))));
        assert!(c.apply(watcher::Event::Apply(svc("b", "x", "10.96.0.4"))));
        assert_eq!(ips(&c), ["10.96.0.2", "10.96.0.3", "10.96.0.4"]);
        // Deleting the first entry moves the last one into its place; both stay reachable.
        assert!(c.apply(watcher::Event::Delete(svc("a", "x", ""))));
        assert!(!c.apply(watcher::Event::Delete(svc("a", "x", ""))));
        assert!(c.apply(watcher::Event::Apply(svc("b", "x", "10.96.0.5"))));
        assert!(c.apply(watcher::Event::Delete(svc("a", "y", ""))));
        assert_eq!(ips(&c), ["10.96.0.5"]);

        // A relist replaces everything, keeping the old view until it is done.
        assert!(!c.apply(watcher::Event::Init));
        assert!(!c.apply(watcher::Event::InitApply(svc("c", "z", "10.96.0.9"))));
        assert_eq!(ips(&c), ["10.96.0.5"]);
        assert!(c.apply(watcher::Event::InitDone));
        assert_eq!(ips(&c), ["10.96.0.9"]);
        assert!(c.apply(watcher::Event::Delete(svc("c", "z", ""))));
        assert!(c.items().is_empty());
    }

    #[test]
    fn services_cache_grows_by_an_eighth() {
        let mut c = ObjectCache::<Service>::default();
        for i in 0..10_000 {
            c.apply(watcher::Event::Apply(svc(
                "a",
                &format!("s{i}"),
                "10.96.0.1",
            )));
        }
        assert_eq!(c.items().len(), 10_000);
        assert!(
            c.items.capacity() <= 10_000 + 10_000 / 8,
            "{}",
            c.items.capacity()
        );
    }

    #[test]
    fn services_cache_slims_objects_to_what_planning_reads() {
        let mut s = svc("a", "x", "10.96.0.1");
        s.metadata.annotations = Some(BTreeMap::from([
            (LB_ALGORITHM_ANNOTATION.to_string(), "maglev".to_string()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{}".into(),
            ),
        ]));
        s.metadata.uid = Some("u".into());
        s.metadata.managed_fields = Some(vec![Default::default()]);
        slim_service(&mut s);
        assert_eq!(s.metadata.name.as_deref(), Some("x"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("a"));
        assert!(s.metadata.managed_fields.is_none() && s.metadata.uid.is_none());
        assert_eq!(
            s.metadata.annotations,
            Some(BTreeMap::from([(
                LB_ALGORITHM_ANNOTATION.to_string(),
                "maglev".to_string()
            )]))
        );
        assert_eq!(
            s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.1")
        );

        let mut e = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(vec![Endpoint {
                addresses: vec!["10.244.0.5".into()],
                node_name: Some("n1".into()),
                hostname: Some("h".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        e.metadata.labels = Some(BTreeMap::from([
            (SERVICE_NAME_LABEL.to_string(), "x".to_string()),
            ("endpointslice.kubernetes.io/managed-by".into(), "m".into()),
        ]));
        slim_slice(&mut e);
        assert_eq!(
            e.metadata.labels,
            Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_string(),
                "x".to_string()
            )]))
        );
        assert_eq!(
            e.endpoints.as_ref().expect("endpoints")[0].addresses,
            ["10.244.0.5"]
        );
        assert_eq!(
            e.endpoints.as_ref().expect("endpoints")[0]
                .node_name
                .as_deref(),
            Some("n1")
        );
        assert!(
            e.endpoints.as_ref().expect("endpoints")[0]
                .hostname
                .is_none()
        );
    }
}
