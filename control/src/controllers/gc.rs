//! Garbage collection through ownerReferences: a ReplicaSet, Pod or EndpointSlice whose owners
//! are all gone is deleted with Background propagation. An owner counts as gone only when its
//! kind is one we watch and no object of that kind has its uid; before deleting, the loop asks
//! the API server for each owner by name (as Kubernetes' garbage collector does), so a store
//! that lags behind a freshly created owner never costs a dependent. Terminating objects are
//! left alone, and dependents with an owner of a kind we do not watch are never touched.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};

use super::runtime::{Reconciler, Requeue, is_not_found, key_of};

/// The owner kinds whose objects we watch: (apiVersion, kind).
pub const OWNER_KINDS: [(&str, &str); 3] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "Service"),
];

/// What the GC plan sees besides the dependent.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The uids of every live object of the [`OWNER_KINDS`].
    pub owner_uids: &'a HashSet<String>,
}

/// One GC step.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The dependent's owners all look gone: confirm each with the API, then delete.
    DeleteIfOwnersGone(Vec<OwnerReference>),
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// True when we watch the owner's kind (any version of its group).
pub fn is_watched_kind(r: &OwnerReference) -> bool {
    OWNER_KINDS
        .iter()
        .any(|(v, k)| *k == r.kind && group_of(v) == group_of(&r.api_version))
}

/// Plans the collection of one dependent.
pub fn plan(meta: &ObjectMeta, snap: &Snapshot<'_>) -> Vec<Change> {
    let Some(refs) = meta.owner_references.as_ref().filter(|r| !r.is_empty()) else {
        return Vec::new();
    };
    if meta.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let all_gone = refs
        .iter()
        .all(|r| is_watched_kind(r) && !snap.owner_uids.contains(&r.uid));
    if all_gone {
        vec![Change::DeleteIfOwnersGone(refs.clone())]
    } else {
        Vec::new()
    }
}

/// The GC loop. Keys: `<Kind>/<namespace>/<name>` for one dependent, or `all` to scan every
/// dependent (after an owner is deleted or a watch re-lists).
pub(crate) struct GcLoop {
    pub(crate) client: Client,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) replicasets: Store<ReplicaSet>,
    pub(crate) services: Store<Service>,
    pub(crate) pods: Store<Pod>,
    pub(crate) slices: Store<EndpointSlice>,
}

/// The key of a dependent in the GC queue.
pub fn gc_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}", K::kind(&()), key_of(obj))
}

impl GcLoop {
    fn owner_uids(&self) -> HashSet<String> {
        let mut uids = HashSet::new();
        let mut add = |m: &ObjectMeta| {
            if let Some(u) = &m.uid {
                uids.insert(u.clone());
            }
        };
        self.deployments
            .state()
            .iter()
            .for_each(|o| add(&o.metadata));
        self.replicasets
            .state()
            .iter()
            .for_each(|o| add(&o.metadata));
        self.services.state().iter().for_each(|o| add(&o.metadata));
        uids
    }

    /// Asks the API server whether `r` (in `ns`) still exists with the same uid.
    async fn owner_exists(&self, ns: &str, r: &OwnerReference) -> Result<bool, kube::Error> {
        let c = self.client.clone();
        let found = match r.kind.as_str() {
            "Deployment" => Api::<Deployment>::namespaced(c, ns)
                .get_opt(&r.name)
                .await?
                .map(|o| o.metadata.uid),
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(c, ns)
                .get_opt(&r.name)
                .await?
                .map(|o| o.metadata.uid),
            "Service" => Api::<Service>::namespaced(c, ns)
                .get_opt(&r.name)
                .await?
                .map(|o| o.metadata.uid),
            _ => return Ok(true),
        };
        Ok(found.flatten().as_deref() == Some(r.uid.as_str()))
    }

    async fn collect<K>(&self, obj: &K, uids: &HashSet<String>) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let meta = obj.meta();
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        for change in plan(meta, &Snapshot { owner_uids: uids }) {
            let Change::DeleteIfOwnersGone(owners) = change;
            for r in &owners {
                if self.owner_exists(&ns, r).await? {
                    return Ok(());
                }
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(kind = %K::kind(&()), namespace = ns, name, "garbage collected: owner gone")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Reconciler for GcLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let uids = self.owner_uids();
        if key == "all" {
            for rs in self.replicasets.state() {
                self.collect(&*rs, &uids).await?;
            }
            for p in self.pods.state() {
                self.collect(&*p, &uids).await?;
            }
            for s in self.slices.state() {
                self.collect(&*s, &uids).await?;
            }
            return Ok(None);
        }
        let mut parts = key.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        let r = |n: &str| (n.to_string(), ns.to_string());
        let (name, ns) = r(name);
        match kind {
            "ReplicaSet" => {
                if let Some(o) = self.replicasets.get(&ObjectRef::new(&name).within(&ns)) {
                    self.collect(&*o, &uids).await?;
                }
            }
            "Pod" => {
                if let Some(o) = self.pods.get(&ObjectRef::new(&name).within(&ns)) {
                    self.collect(&*o, &uids).await?;
                }
            }
            "EndpointSlice" => {
                if let Some(o) = self.slices.get(&ObjectRef::new(&name).within(&ns)) {
                    self.collect(&*o, &uids).await?;
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn owner(api_version: &str, kind: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "o".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn meta(refs: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("d".into()),
            namespace: Some("default".into()),
            owner_references: Some(refs),
            ..Default::default()
        }
    }

    #[test]
    fn dependent_of_deleted_owner_is_collected() {
        let uids = HashSet::from(["live".to_string()]);
        let snap = Snapshot { owner_uids: &uids };
        let refs = vec![owner("apps/v1", "ReplicaSet", "dead")];
        assert_eq!(
            plan(&meta(refs.clone()), &snap),
            vec![Change::DeleteIfOwnersGone(refs)]
        );
        assert!(plan(&meta(vec![owner("apps/v1", "ReplicaSet", "live")]), &snap).is_empty());
        assert!(plan(&meta(vec![owner("v1", "Service", "live")]), &snap).is_empty());
    }

    #[test]
    fn one_live_owner_keeps_the_dependent() {
        let uids = HashSet::from(["live".to_string()]);
        let snap = Snapshot { owner_uids: &uids };
        let refs = vec![
            owner("apps/v1", "Deployment", "dead"),
            owner("v1", "Service", "live"),
        ];
        assert!(plan(&meta(refs), &snap).is_empty());
    }

    #[test]
    fn unknown_owner_kinds_and_orphans_are_left_alone() {
        let uids = HashSet::new();
        let snap = Snapshot { owner_uids: &uids };
        assert!(plan(&meta(vec![owner("batch/v1", "Job", "x")]), &snap).is_empty());
        assert!(
            plan(
                &meta(vec![owner("example.com/v1", "ReplicaSet", "x")]),
                &snap
            )
            .is_empty(),
            "same kind, other group"
        );
        assert!(plan(&meta(vec![]), &snap).is_empty());
        assert!(plan(&ObjectMeta::default(), &snap).is_empty());
    }

    #[test]
    fn terminating_dependents_are_not_touched() {
        let uids = HashSet::new();
        let mut m = meta(vec![owner("apps/v1", "ReplicaSet", "dead")]);
        m.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(plan(&m, &Snapshot { owner_uids: &uids }).is_empty());
    }

    #[test]
    fn keys_name_kind_namespace_and_name() {
        let p = Pod {
            metadata: meta(vec![]),
            ..Default::default()
        };
        assert_eq!(gc_key(&p), "Pod/default/d");
    }
}
