//! The Service programming loop's own copies of the watched objects, reduced to the planner's
//! input ([`super::input`]) as they arrive and updated in place from watch events.

use std::collections::HashMap;

use kube::{Resource, runtime::watcher};

use super::input::{ObjectKey, object_key};

/// Objects of one kind by `namespace/name`, as the last complete list plus the watch events
/// since, each reduced to a `T`.
#[derive(Debug)]
pub struct ObjectCache<T> {
    items: HashMap<ObjectKey, T>,
    /// Objects of a (re)list in progress: they replace `items` when it is complete, so a
    /// pass never sees a partial list (that would delete frontends the maps rightly hold).
    relist: Option<Vec<(ObjectKey, T)>>,
    ready: bool,
}

impl<T> Default for ObjectCache<T> {
    fn default() -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
            ready: false,
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    object_key(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or(""),
    )
}

impl<T> ObjectCache<T> {
    pub fn get(&self, key: &str) -> Option<&T> {
        self.items.get(key)
    }

    /// The objects, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &T)> {
        self.items.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A complete list has been received at least once.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Takes one watch event, reducing its object with `reduce` (`None`: not kept). Every
    /// change of the objects a pass sees is reported to `changed` as (key, old, new), with
    /// the old object before it is dropped and the new one as stored; a completed relist
    /// reports every old object gone and every new one added. Returns whether anything
    /// changed.
    pub fn apply<K: Resource>(
        &mut self,
        event: watcher::Event<K>,
        reduce: impl Fn(&K) -> Option<T>,
        mut changed: impl FnMut(&ObjectKey, Option<&T>, Option<&T>),
    ) -> bool {
        match event {
            watcher::Event::Apply(obj) => {
                let key = key_of(&obj);
                let old = self.items.remove(&key);
                let new = reduce(&obj);
                changed(&key, old.as_ref(), new.as_ref());
                if let Some(new) = new {
                    self.items.insert(key, new);
                }
                true
            }
            watcher::Event::Delete(obj) => {
                let key = key_of(&obj);
                let Some(old) = self.items.remove(&key) else {
                    return false;
                };
                changed(&key, Some(&old), None);
                true
            }
            watcher::Event::Init => {
                self.relist = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let key = key_of(&obj);
                if let Some(new) = reduce(&obj) {
                    self.relist.get_or_insert_with(Vec::new).push((key, new));
                }
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                for (key, old) in self.items.drain() {
                    changed(&key, Some(&old), None);
                }
                self.items.reserve(listed.len());
                for (key, new) in listed {
                    changed(&key, None, Some(&new));
                    self.items.insert(key, new);
                }
                self.items.shrink_to_fit();
                self.ready = true;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Service, ServiceSpec};

    use super::*;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        });
        s
    }

    fn ip_of(s: &Service) -> Option<String> {
        s.spec.as_ref()?.cluster_ip.clone()
    }

    fn ips(c: &ObjectCache<String>) -> Vec<String> {
        let mut v: Vec<String> = c.iter().map(|(_, ip)| ip.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn services_cache_applies_watch_events_and_swaps_in_complete_lists() {
        let mut c = ObjectCache::<String>::default();
        let mut log: Vec<String> = Vec::new();
        let mut apply = |c: &mut ObjectCache<String>, e: watcher::Event<Service>| {
            c.apply(e, ip_of, |k, old, new| {
                log.push(format!("{k}:{old:?}->{new:?}"));
            })
        };
        assert!(!apply(&mut c, watcher::Event::Init));
        assert!(!apply(
            &mut c,
            watcher::Event::InitApply(svc("a", "x", "10.96.0.1"))
        ));
        assert!(!apply(
            &mut c,
            watcher::Event::InitApply(svc("a", "y", "10.96.0.2"))
        ));
        // Nothing is visible before the list is complete.
        assert!(!c.is_ready());
        assert!(c.is_empty());
        assert!(apply(&mut c, watcher::Event::InitDone));
        assert!(c.is_ready());
        assert_eq!(ips(&c), ["10.96.0.1", "10.96.0.2"]);

        assert!(apply(
            &mut c,
            watcher::Event::Apply(svc("a", "x", "10.96.0.3"))
        ));
        assert!(apply(
            &mut c,
            watcher::Event::Apply(svc("b", "x", "10.96.0.4"))
        ));
        assert_eq!(ips(&c), ["10.96.0.2", "10.96.0.3", "10.96.0.4"]);
        assert_eq!(c.get("a/x").map(String::as_str), Some("10.96.0.3"));
        assert!(apply(&mut c, watcher::Event::Delete(svc("a", "x", ""))));
        assert!(!apply(&mut c, watcher::Event::Delete(svc("a", "x", ""))));
        assert!(apply(&mut c, watcher::Event::Delete(svc("a", "y", ""))));
        assert_eq!(ips(&c), ["10.96.0.4"]);

        // A relist replaces everything, keeping the old view until it is done.
        assert!(!apply(&mut c, watcher::Event::Init));
        assert!(!apply(
            &mut c,
            watcher::Event::InitApply(svc("c", "z", "10.96.0.9"))
        ));
        assert_eq!(ips(&c), ["10.96.0.4"]);
        assert!(apply(&mut c, watcher::Event::InitDone));
        assert_eq!(ips(&c), ["10.96.0.9"]);
        assert!(apply(&mut c, watcher::Event::Delete(svc("c", "z", ""))));
        assert!(c.is_empty());
        assert_eq!(
            log,
            [
                "a/x:None->Some(\"10.96.0.1\")",
                "a/y:None->Some(\"10.96.0.2\")",
                "a/x:Some(\"10.96.0.1\")->Some(\"10.96.0.3\")",
                "b/x:None->Some(\"10.96.0.4\")",
                "a/x:Some(\"10.96.0.3\")->None",
                "a/y:Some(\"10.96.0.2\")->None",
                "b/x:Some(\"10.96.0.4\")->None",
                "c/z:None->Some(\"10.96.0.9\")",
                "c/z:Some(\"10.96.0.9\")->None",
            ]
        );
    }

    #[test]
    fn services_cache_objects_reduced_to_nothing_are_not_kept() {
        let mut c = ObjectCache::<String>::default();
        c.apply(watcher::Event::<Service>::InitDone, ip_of, |_, _, _| {});
        let mut no_spec = svc("a", "x", "");
        no_spec.spec = None;
        assert!(c.apply(
            watcher::Event::Apply(svc("a", "x", "10.96.0.1")),
            ip_of,
            |_, _, _| {}
        ));
        // The object lost what it was kept for: it is gone, and that is a change.
        let mut gone = false;
        assert!(
            c.apply(watcher::Event::Apply(no_spec), ip_of, |_, old, new| {
                gone = old.is_some() && new.is_none();
            })
        );
        assert!(gone);
        assert!(c.is_empty());
    }
}
