//! Garbage collection through ownerReferences: a ReplicaSet, Pod or EndpointSlice whose owners
//! are all gone is deleted with Background propagation. An owner counts as gone only when its
//! kind is one we watch and no object of that kind has its uid; before deleting, the loop asks
//! the API server for each owner by name (as Kubernetes' garbage collector does), so a store
//! that lags behind a freshly created owner never costs a dependent. Terminating objects are
//! left alone, and dependents with an owner of a kind we do not watch are never touched.
//!
//! Owners deleted with `propagationPolicy: Foreground` or `Orphan` carry the
//! `foregroundDeletion` or `orphan` finalizer: the collector deletes (foreground) or releases
//! (orphan) their dependents, then removes the finalizer so the API server can finish the
//! deletion.
//!
//! Pods bound to a Node that does not exist are force-deleted, terminating or not, since no
//! kubelet is left to finish them (Kubernetes' PodGC); a Pod younger than [`ORPHAN_QUARANTINE`]
//! is given that long for its Node to register.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};

use super::runtime::{Controller, Informer, Informers, Touch, WorkQueue};
use super::runtime::{Reconciler, Requeue, delete_background, is_not_found, key_of};

/// The owner kinds whose objects we watch: (apiVersion, kind).
pub const OWNER_KINDS: [(&str, &str); 4] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "DaemonSet"),
    ("v1", "Service"),
];

/// Whether an owner is live: an object of one of the [`OWNER_KINDS`] with the reference's uid.
pub trait Owners {
    fn is_live(&self, owner: &OwnerReference) -> bool;
}

/// The uids of every live owner.
impl Owners for HashSet<String> {
    fn is_live(&self, owner: &OwnerReference) -> bool {
        self.contains(&owner.uid)
    }
}

/// What the GC plan sees besides the dependent.
pub struct Snapshot<'a> {
    pub owners: &'a (dyn Owners + Sync),
}

impl std::fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
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
        .all(|r| is_watched_kind(r) && !snap.owners.is_live(r));
    if all_gone {
        vec![Change::DeleteIfOwnersGone(refs.clone())]
    } else {
        Vec::new()
    }
}

/// The finalizer of an owner deleted with Foreground propagation.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of an owner deleted with Orphan propagation.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// A dependent as the owner plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Dependent<'a> {
    /// Its kind (one of the dependent kinds: ReplicaSet, Pod, EndpointSlice).
    pub kind: &'a str,
    /// Its metadata.
    pub meta: &'a ObjectMeta,
}

/// One step of finishing an owner's Foreground or Orphan deletion.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerChange {
    /// Delete this dependent; `foreground` propagates the foreground deletion down a chain
    /// (a ReplicaSet's Pods go before the ReplicaSet does).
    DeleteDependent {
        kind: String,
        name: String,
        foreground: bool,
    },
    /// Replace the dependent's ownerReferences with these (the owner's removed).
    Orphan {
        kind: String,
        name: String,
        owner_references: Vec<OwnerReference>,
    },
    /// Every dependent is handled: drop this finalizer from the owner.
    RemoveFinalizer(String),
}

/// Plans the Foreground/Orphan part of an owner's deletion. `dependents` are the objects of
/// the owner's namespace; the plan picks those referencing the owner's uid.
pub fn plan_owner(owner: &ObjectMeta, dependents: &[Dependent<'_>]) -> Vec<OwnerChange> {
    if owner.deletion_timestamp.is_none() {
        return Vec::new();
    }
    let finalizers = owner.finalizers.as_deref().unwrap_or_default();
    let uid = owner.uid.as_deref().unwrap_or_default();
    let mine: Vec<&Dependent<'_>> = dependents
        .iter()
        .filter(|d| {
            d.meta
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid)
        })
        .collect();
    let name = |d: &Dependent<'_>| d.meta.name.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        if mine.is_empty() {
            return vec![OwnerChange::RemoveFinalizer(ORPHAN_FINALIZER.into())];
        }
        return mine
            .iter()
            .map(|d| OwnerChange::Orphan {
                kind: d.kind.into(),
                name: name(d),
                owner_references: d
                    .meta
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect(),
            })
            .collect();
    }
    if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        if mine.is_empty() {
            return vec![OwnerChange::RemoveFinalizer(FOREGROUND_FINALIZER.into())];
        }
        // Dependents already terminating are waited for.
        return mine
            .iter()
            .filter(|d| d.meta.deletion_timestamp.is_none())
            .map(|d| OwnerChange::DeleteDependent {
                kind: d.kind.into(),
                name: name(d),
                foreground: d.kind == "ReplicaSet",
            })
            .collect();
    }
    Vec::new()
}

/// How long a Pod bound to an unknown Node is left alone (Kubernetes' PodGC quarantine).
pub const ORPHAN_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(40);

/// The Node a Pod is bound to when that Node is not among `nodes` (terminating Pods included:
/// without their Node nobody finishes them).
pub fn pod_on_gone_node<'a>(pod: &'a Pod, node_exists: &dyn Fn(&str) -> bool) -> Option<&'a str> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    (!node_exists(node)).then_some(node)
}

/// The GC loop. Keys: `<Kind>/<namespace>/<name>` for one dependent, `owner:<Kind>/<namespace>/
/// <name>` for an owner being deleted with a propagation finalizer, or `all` to scan every
/// dependent (after an owner is deleted or a watch re-lists).
pub(crate) struct GcLoop {
    pub(crate) client: Client,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) daemonsets: Store<DaemonSet>,
    pub(crate) replicasets: Store<ReplicaSet>,
    pub(crate) services: Store<Service>,
    pub(crate) pods: Store<Pod>,
    pub(crate) slices: Store<EndpointSlice>,
    pub(crate) nodes: Store<Node>,
}

/// The owners the GC loop's stores hold: an owner reference is looked up by its kind, the
/// dependent's namespace and its name, and is live when the stored object has its uid.
struct StoreOwners<'a> {
    gc: &'a GcLoop,
    ns: &'a str,
}

impl Owners for StoreOwners<'_> {
    fn is_live(&self, r: &OwnerReference) -> bool {
        fn uid_of<K>(store: &Store<K>, name: &str, ns: &str) -> Option<String>
        where
            K: Resource<DynamicType = ()> + Clone,
        {
            store
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.meta().uid.clone())
        }
        let (name, ns) = (r.name.as_str(), self.ns);
        let uid = match r.kind.as_str() {
            "Deployment" => uid_of(&self.gc.deployments, name, ns),
            "ReplicaSet" => uid_of(&self.gc.replicasets, name, ns),
            "DaemonSet" => uid_of(&self.gc.daemonsets, name, ns),
            "Service" => uid_of(&self.gc.services, name, ns),
            _ => None,
        };
        uid.as_deref() == Some(r.uid.as_str())
    }
}

/// The key of a dependent in the GC queue.
pub fn gc_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}", K::kind(&()), key_of(obj))
}

impl GcLoop {
    /// Whether the Node store holds `name`: one lookup, not a copy of every Node's name, since
    /// this runs for every Pod event.
    fn node_exists(&self, name: &str) -> bool {
        self.nodes.get(&ObjectRef::new(name)).is_some()
    }

    /// Force-deletes a Pod bound to a Node that no longer exists (confirmed with the API): no
    /// kubelet will ever finish it (Kubernetes' PodGC `gcOrphaned`). A Pod younger than
    /// [`ORPHAN_QUARANTINE`] is given time for its Node to register; the answer is when to look
    /// again.
    async fn collect_orphaned_pod(&self, pod: &Pod) -> Result<Requeue, kube::Error> {
        let Some(node) = pod_on_gone_node(pod, &|n| self.node_exists(n)) else {
            return Ok(None);
        };
        let age = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second())
            .unwrap_or(i64::MAX);
        let quarantine = ORPHAN_QUARANTINE.as_secs() as i64;
        if age < quarantine {
            return Ok(Some(std::time::Duration::from_secs(
                (quarantine - age + 1) as u64,
            )));
        }
        if Api::<Node>::all(self.client.clone())
            .get_opt(node)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        match Api::<Pod>::namespaced(self.client.clone(), ns)
            .delete(name, &dp)
            .await
        {
            Ok(_) => tracing::info!(
                namespace = ns,
                pod = name,
                node,
                "deleted pod of a deleted node"
            ),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(None)
    }

    /// Asks the API server whether `r` (in `ns`) still exists with the same uid.
    async fn owner_exists(&self, ns: &str, r: &OwnerReference) -> Result<bool, kube::Error> {
        let c = self.client.clone();
        let found = match r.kind.as_str() {
            "Deployment" => Api::<Deployment>::namespaced(c, ns)
                .get_opt(&r.name)
                .await?
                .map(|o| o.metadata.uid),
            "DaemonSet" => Api::<DaemonSet>::namespaced(c, ns)
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

    async fn collect<K>(&self, obj: &K) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let meta = obj.meta();
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let owners = StoreOwners { gc: self, ns: &ns };
        for change in plan(meta, &Snapshot { owners: &owners }) {
            let Change::DeleteIfOwnersGone(owners) = change;
            for r in &owners {
                if self.owner_exists(&ns, r).await? {
                    return Ok(());
                }
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
            if delete_background(&api, &name).await? {
                tracing::info!(kind = %K::kind(&()), namespace = ns, name, "garbage collected: owner gone")
            }
        }
        Ok(())
    }
}

/// The key of an owner whose deletion the collector must finish.
pub fn owner_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("owner:{}", gc_key(obj))
}

/// The owner keys of a dependent's ownerReferences.
pub fn owner_keys_of(meta: &ObjectMeta) -> Vec<String> {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    meta.owner_references
        .iter()
        .flatten()
        .filter(|r| is_watched_kind(r))
        .map(|r| format!("owner:{}/{ns}/{}", r.kind, r.name))
        .collect()
}

/// True when the object waits for the collector to finish its deletion.
pub fn has_propagation_finalizer(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
        && meta
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FOREGROUND_FINALIZER || f == ORPHAN_FINALIZER)
}

impl GcLoop {
    async fn finish_owner(&self, key: &str) -> Result<Requeue, kube::Error> {
        let mut parts = key.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        let r = ObjectRef::new(name).within(ns);
        let c = self.client.clone();
        match kind {
            "Deployment" => match self.deployments.get(&ObjectRef::new(name).within(ns)) {
                Some(o) => self.finish::<Deployment>(&o, Api::namespaced(c, ns)).await,
                None => Ok(None),
            },
            "DaemonSet" => match self.daemonsets.get(&ObjectRef::new(name).within(ns)) {
                Some(o) => self.finish::<DaemonSet>(&o, Api::namespaced(c, ns)).await,
                None => Ok(None),
            },
            "ReplicaSet" => match self.replicasets.get(&r) {
                Some(o) => self.finish::<ReplicaSet>(&o, Api::namespaced(c, ns)).await,
                None => Ok(None),
            },
            "Service" => match self.services.get(&ObjectRef::new(name).within(ns)) {
                Some(o) => self.finish::<Service>(&o, Api::namespaced(c, ns)).await,
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    async fn finish<K>(&self, owner: &K, api: Api<K>) -> Result<Requeue, kube::Error>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        if !has_propagation_finalizer(owner.meta()) {
            return Ok(None);
        }
        let ns = owner.meta().namespace.clone().unwrap_or_default();
        let in_ns = |m: &ObjectMeta| m.namespace.as_deref() == Some(ns.as_str());
        let rss = self.replicasets.state_filter(|o| in_ns(&o.metadata));
        let pods = self.pods.state_filter(|o| in_ns(&o.metadata));
        let slices = self.slices.state_filter(|o| in_ns(&o.metadata));
        let mut deps: Vec<Dependent<'_>> = Vec::new();
        deps.extend(rss.iter().map(|o| Dependent {
            kind: "ReplicaSet",
            meta: &o.metadata,
        }));
        deps.extend(pods.iter().map(|o| Dependent {
            kind: "Pod",
            meta: &o.metadata,
        }));
        deps.extend(slices.iter().map(|o| Dependent {
            kind: "EndpointSlice",
            meta: &o.metadata,
        }));
        let changes = plan_owner(owner.meta(), &deps);
        let owner_name = owner.meta().name.clone().unwrap_or_default();
        let mut waiting = false;
        for change in changes {
            match change {
                OwnerChange::DeleteDependent {
                    kind,
                    name,
                    foreground,
                } => {
                    let dp = if foreground {
                        DeleteParams::foreground()
                    } else {
                        DeleteParams::background()
                    };
                    let res = match kind.as_str() {
                        "ReplicaSet" => Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
                            .delete(&name, &dp)
                            .await
                            .map(|_| ()),
                        "Pod" => Api::<Pod>::namespaced(self.client.clone(), &ns)
                            .delete(&name, &dp)
                            .await
                            .map(|_| ()),
                        _ => Api::<EndpointSlice>::namespaced(self.client.clone(), &ns)
                            .delete(&name, &dp)
                            .await
                            .map(|_| ()),
                    };
                    match res {
                        Ok(()) => tracing::info!(
                            owner = owner_name,
                            kind,
                            name,
                            "deleted dependent (foreground)"
                        ),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(e),
                    }
                    waiting = true;
                }
                OwnerChange::Orphan {
                    kind,
                    name,
                    owner_references,
                } => {
                    let patch =
                        serde_json::json!({ "metadata": { "ownerReferences": owner_references } });
                    let pp = PatchParams::default();
                    let res = match kind.as_str() {
                        "ReplicaSet" => Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
                            .patch(&name, &pp, &Patch::Merge(&patch))
                            .await
                            .map(|_| ()),
                        "Pod" => Api::<Pod>::namespaced(self.client.clone(), &ns)
                            .patch(&name, &pp, &Patch::Merge(&patch))
                            .await
                            .map(|_| ()),
                        _ => Api::<EndpointSlice>::namespaced(self.client.clone(), &ns)
                            .patch(&name, &pp, &Patch::Merge(&patch))
                            .await
                            .map(|_| ()),
                    };
                    match res {
                        Ok(()) => {
                            tracing::info!(owner = owner_name, kind, name, "orphaned dependent")
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(e),
                    }
                    waiting = true;
                }
                OwnerChange::RemoveFinalizer(f) => {
                    let mut obj = owner.clone();
                    if let Some(fs) = obj.meta_mut().finalizers.as_mut() {
                        fs.retain(|x| *x != f);
                    }
                    api.replace(&owner_name, &PostParams::default(), &obj)
                        .await?;
                    tracing::info!(
                        owner = owner_name,
                        finalizer = f,
                        "dependents handled; finalizer removed"
                    );
                }
            }
        }
        // Dependent events bring the owner back too; this covers a store that lags our writes.
        Ok(waiting.then(|| std::time::Duration::from_millis(500)))
    }
}

impl Reconciler for GcLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        if let Some(owner) = key.strip_prefix("owner:") {
            return self.finish_owner(owner).await;
        }
        if key == "all" {
            for rs in self.replicasets.state() {
                self.collect(&*rs).await?;
            }
            let mut later: Requeue = None;
            for p in self.pods.state() {
                self.collect(&*p).await?;
                if let Some(d) = self.collect_orphaned_pod(&p).await? {
                    later = Some(later.map_or(d, |l| l.min(d)));
                }
            }
            for s in self.slices.state() {
                self.collect(&*s).await?;
            }
            return Ok(later);
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
                    self.collect(&*o).await?;
                }
            }
            "Pod" => {
                if let Some(o) = self.pods.get(&ObjectRef::new(&name).within(&ns)) {
                    self.collect(&*o).await?;
                    return self.collect_orphaned_pod(&o).await;
                }
            }
            "EndpointSlice" => {
                if let Some(o) = self.slices.get(&ObjectRef::new(&name).within(&ns)) {
                    self.collect(&*o).await?;
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// The garbage collector. For every kind that owns or is owned: the keys of an object's owners
/// when it changes or goes (an owner waiting on its dependents may be done), its own
/// [`gc_key`] when it changes (its owners may be gone), its [`owner_key`] when it waits for
/// its dependents (foreground or orphan deletion), and the sweep key `"all"` when an owner is
/// deleted or a watch re-lists (deleted owners may have left dependents behind).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GarbageCollector;

/// Maps an owner kind's changes: waiting owners get their [`owner_key`], deletions a sweep.
fn watch_owners<K>(informer: &mut Informer<K>, queue: &WorkQueue)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let q = queue.clone();
    informer.on(move |t| match t {
        Touch::Changed(o) => {
            if has_propagation_finalizer(o.meta()) {
                q.add(owner_key(o));
            }
        }
        Touch::Deleted(_) => q.add("all"),
        Touch::Relisted(all) => {
            all.iter()
                .filter(|o| has_propagation_finalizer(o.meta()))
                .for_each(|o| q.add(owner_key(&**o)));
            q.add("all");
        }
    });
}

/// Maps a dependent kind's changes: its owners' keys (`and_own`: and its own owner key when
/// it waits for dependents itself), its [`gc_key`] on a change, `sweep` on a deletion.
fn watch_dependents<K>(informer: &mut Informer<K>, queue: &WorkQueue, and_own: bool, sweep: bool)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let q = queue.clone();
    informer.on(move |t| {
        let touch = |o: &K| {
            owner_keys_of(o.meta()).into_iter().for_each(|k| q.add(k));
            if and_own && has_propagation_finalizer(o.meta()) {
                q.add(owner_key(o));
            }
        };
        match t {
            Touch::Changed(o) => {
                touch(o);
                q.add(gc_key(o));
            }
            Touch::Deleted(o) => {
                touch(o);
                if sweep {
                    q.add("all");
                }
            }
            Touch::Relisted(all) => {
                all.iter().for_each(|o| touch(o));
                q.add("all");
            }
        }
    });
}

impl Controller for GarbageCollector {
    const NAME: &'static str = "gc";
    type Loop = GcLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> GcLoop {
        // Owners only.
        watch_owners(informers.all::<Deployment>(), queue);
        watch_owners(informers.all::<Service>(), queue);
        let daemonsets = informers.all::<DaemonSet>();
        {
            let q = queue.clone();
            daemonsets.on(move |t| match t {
                Touch::Changed(d) => {
                    if has_propagation_finalizer(&d.metadata) {
                        q.add(owner_key(d));
                    }
                }
                Touch::Deleted(_) | Touch::Relisted(_) => q.add("all"),
            });
        }
        // Owned, and owners themselves.
        watch_dependents(informers.all::<ReplicaSet>(), queue, true, true);
        // Owned only.
        let pods = informers.all::<Pod>();
        {
            let q = queue.clone();
            pods.on(move |t| match t {
                Touch::Changed(p) => {
                    owner_keys_of(&p.metadata)
                        .into_iter()
                        .for_each(|k| q.add(k));
                    q.add(gc_key(p));
                }
                Touch::Deleted(p) => owner_keys_of(&p.metadata)
                    .into_iter()
                    .for_each(|k| q.add(k)),
                Touch::Relisted(_) => q.add("all"),
            });
        }
        watch_dependents(informers.all::<EndpointSlice>(), queue, false, false);
        // A gone Node's Pods are collected.
        let nodes = informers.all::<Node>();
        {
            let q = queue.clone();
            nodes.on(move |t| {
                if let Touch::Deleted(_) = t {
                    q.add("all");
                }
            });
        }
        GcLoop {
            client: informers.client().clone(),
            deployments: informers.all::<Deployment>().store(),
            daemonsets: informers.all::<DaemonSet>().store(),
            replicasets: informers.all::<ReplicaSet>().store(),
            services: informers.all::<Service>().store(),
            pods: informers.all::<Pod>().store(),
            slices: informers.all::<EndpointSlice>().store(),
            nodes: informers.all::<Node>().store(),
        }
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
        let snap = Snapshot { owners: &uids };
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
        let snap = Snapshot { owners: &uids };
        let refs = vec![
            owner("apps/v1", "Deployment", "dead"),
            owner("v1", "Service", "live"),
        ];
        assert!(plan(&meta(refs), &snap).is_empty());
    }

    #[test]
    fn unknown_owner_kinds_and_orphans_are_left_alone() {
        let uids = HashSet::new();
        let snap = Snapshot { owners: &uids };
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
        assert!(plan(&m, &Snapshot { owners: &uids }).is_empty());
    }

    fn deleting(finalizer: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("owner".into()),
            namespace: Some("default".into()),
            uid: Some("o-uid".into()),
            deletion_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            finalizers: Some(vec![finalizer.into()]),
            ..Default::default()
        }
    }

    #[test]
    fn foreground_deletion_deletes_dependents_then_drops_finalizer() {
        let owner_meta = deleting(FOREGROUND_FINALIZER);
        let rs = meta(vec![owner("apps/v1", "Deployment", "o-uid")]);
        let mut going = meta(vec![owner("apps/v1", "Deployment", "o-uid")]);
        going.name = Some("going".into());
        going.deletion_timestamp = owner_meta.deletion_timestamp.clone();
        let other = meta(vec![owner("apps/v1", "Deployment", "x")]);
        let deps = [
            Dependent {
                kind: "ReplicaSet",
                meta: &rs,
            },
            Dependent {
                kind: "Pod",
                meta: &going,
            },
            Dependent {
                kind: "Pod",
                meta: &other,
            },
        ];
        assert_eq!(
            plan_owner(&owner_meta, &deps),
            vec![OwnerChange::DeleteDependent {
                kind: "ReplicaSet".into(),
                name: "d".into(),
                foreground: true
            }]
        );
        // Only a terminating dependent left: wait.
        assert!(plan_owner(&owner_meta, &deps[1..]).is_empty());
        assert_eq!(
            plan_owner(&owner_meta, &deps[2..]),
            vec![OwnerChange::RemoveFinalizer(FOREGROUND_FINALIZER.into())]
        );
    }

    #[test]
    fn orphan_deletion_releases_dependents_then_drops_finalizer() {
        let owner_meta = deleting(ORPHAN_FINALIZER);
        let keep = owner("v1", "Service", "keep");
        let dep = meta(vec![owner("apps/v1", "Deployment", "o-uid"), keep.clone()]);
        assert_eq!(
            plan_owner(
                &owner_meta,
                &[Dependent {
                    kind: "Pod",
                    meta: &dep
                }]
            ),
            vec![OwnerChange::Orphan {
                kind: "Pod".into(),
                name: "d".into(),
                owner_references: vec![keep]
            }]
        );
        assert_eq!(
            plan_owner(&owner_meta, &[]),
            vec![OwnerChange::RemoveFinalizer(ORPHAN_FINALIZER.into())]
        );
        // An owner not being deleted needs nothing.
        let mut live = owner_meta.clone();
        live.deletion_timestamp = None;
        assert!(
            plan_owner(
                &live,
                &[Dependent {
                    kind: "Pod",
                    meta: &dep
                }]
            )
            .is_empty()
        );
        assert!(has_propagation_finalizer(&owner_meta) && !has_propagation_finalizer(&live));
        assert_eq!(
            owner_keys_of(&dep),
            vec![
                "owner:Deployment/default/o".to_string(),
                "owner:Service/default/o".to_string()
            ]
        );
    }

    #[test]
    fn pods_of_deleted_nodes_are_found() {
        let nodes = HashSet::from(["n1".to_string()]);
        let mut p = Pod {
            metadata: meta(vec![]),
            ..Default::default()
        };
        assert_eq!(
            pod_on_gone_node(&p, &|n| nodes.contains(n)),
            None,
            "unscheduled"
        );
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        });
        assert_eq!(pod_on_gone_node(&p, &|n| nodes.contains(n)), None);
        p.spec.as_mut().expect("spec").node_name = Some("n2".into());
        assert_eq!(pod_on_gone_node(&p, &|n| nodes.contains(n)), Some("n2"));
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
