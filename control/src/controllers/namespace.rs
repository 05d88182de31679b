//! Namespace deletion: a Namespace being deleted keeps the `kubernetes` finalizer in
//! spec.finalizers until every object in it is gone. This controller deletes the contents of
//! every namespaced resource the API serves (found through discovery, like Kubernetes'
//! namespace controller) and, once nothing is left, removes the finalizer through the
//! `namespaces/{name}/finalize` subresource so the API server can delete the Namespace.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{ObjectRef, Store};

use super::runtime::{Controller, Informers, Touch, WorkQueue, key_of};
use super::runtime::{Reconciler, Requeue, delete_background};

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How often a Namespace whose contents are still going away is looked at again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What the namespace plan sees besides the Namespace.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Objects left in the Namespace, per resource (as `plural.group`).
    pub remaining: Vec<(String, usize)>,
}

/// One step of emptying a Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Delete every object of this resource in the Namespace.
    DeleteAll(String),
    /// Write spec.finalizers without ours.
    Finalize(Vec<String>),
    /// Look again after this long.
    CheckAfter(Duration),
}

/// True when the Namespace is being deleted and waits for us.
pub fn needs_finalizing(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Plans the next step of deleting `ns`.
pub fn plan(ns: &Namespace, snap: &Snapshot) -> Vec<Change> {
    if !needs_finalizing(ns) {
        return Vec::new();
    }
    let left: Vec<Change> = snap
        .remaining
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, _)| Change::DeleteAll(r.clone()))
        .collect();
    if left.is_empty() {
        let rest = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect();
        return vec![Change::Finalize(rest)];
    }
    let mut changes = left;
    changes.push(Change::CheckAfter(RECHECK));
    changes
}

fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

/// How long discovery results are reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

/// The namespace loop.
pub(crate) struct NamespaceLoop {
    pub(crate) client: Client,
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) resources: Option<(Instant, Vec<ApiResource>)>,
}

impl NamespaceLoop {
    /// Namespaced resources that can be listed and deleted, from discovery (cached).
    async fn resources(&mut self) -> Result<Vec<ApiResource>, kube::Error> {
        if let Some((at, r)) = &self.resources
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(r.clone());
        }
        let discovery = Discovery::new(self.client.clone()).run().await?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope == Scope::Namespaced
                    && caps.supports_operation(verbs::LIST)
                    && caps.supports_operation(verbs::DELETE)
                {
                    out.push(ar);
                }
            }
        }
        self.resources = Some((Instant::now(), out.clone()));
        Ok(out)
    }
}

impl Reconciler for NamespaceLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let Some(ns) = self.namespaces.get(&ObjectRef::new(key)) else {
            return Ok(None);
        };
        if !needs_finalizing(&ns) {
            return Ok(None);
        }
        let resources = self.resources().await?;
        let mut remaining = Vec::new();
        let mut listed: Vec<(String, ApiResource, Vec<String>)> = Vec::new();
        for ar in resources {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), key, &ar);
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    let names: Vec<String> = list
                        .items
                        .iter()
                        .filter(|o| o.metadata.deletion_timestamp.is_none())
                        .filter_map(|o| o.metadata.name.clone())
                        .collect();
                    remaining.push((resource_name(&ar), list.items.len()));
                    listed.push((resource_name(&ar), ar, names));
                }
                Err(e) => {
                    tracing::debug!(namespace = key, resource = ar.plural, error = %e, "cannot list; skipped")
                }
            }
        }
        let mut requeue = None;
        for change in plan(&ns, &Snapshot { remaining }) {
            match change {
                Change::DeleteAll(resource) => {
                    let Some((_, ar, names)) = listed.iter().find(|(r, _, _)| *r == resource)
                    else {
                        continue;
                    };
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(self.client.clone(), key, ar);
                    for name in names {
                        if delete_background(&api, name).await? {
                            tracing::debug!(namespace = key, resource, name, "deleted");
                        }
                    }
                }
                Change::Finalize(finalizers) => {
                    let mut obj = (*ns).clone();
                    obj.spec.get_or_insert_with(Default::default).finalizers = Some(finalizers);
                    Api::<Namespace>::all(self.client.clone())
                        .replace_subresource("finalize", key, &PostParams::default(), &obj)
                        .await?;
                    tracing::info!(namespace = key, "namespace emptied; finalized");
                }
                Change::CheckAfter(d) => requeue = Some(d),
            }
        }
        Ok(requeue)
    }
}

/// The Namespace controller: a Namespace's key for every change of it (a deleted one has
/// nothing left to do).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NamespaceController;

impl Controller for NamespaceController {
    const NAME: &'static str = "namespace";
    type Loop = NamespaceLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> NamespaceLoop {
        let namespaces = informers.all::<Namespace>();
        let q = queue.clone();
        namespaces.on(move |t| match t {
            Touch::Changed(n) => q.add(key_of(n)),
            Touch::Deleted(_) => {}
            Touch::Relisted(all) => all.iter().for_each(|n| q.add(key_of(&**n))),
        });
        let namespaces = namespaces.store();
        NamespaceLoop {
            client: informers.client().clone(),
            namespaces,
            resources: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn ns(deleting: bool, finalizers: &[&str]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
                deletion_timestamp: deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
            }),
            status: None,
        }
    }

    #[test]
    fn live_namespaces_are_left_alone() {
        let snap = Snapshot {
            remaining: vec![("pods".into(), 3)],
        };
        assert!(plan(&ns(false, &[FINALIZER]), &snap).is_empty());
        assert!(
            plan(&ns(true, &[]), &snap).is_empty(),
            "finalizer already removed"
        );
    }

    #[test]
    fn contents_are_deleted_before_finalizing() {
        let snap = Snapshot {
            remaining: vec![
                ("pods".into(), 2),
                ("services".into(), 0),
                ("deployments.apps".into(), 1),
            ],
        };
        assert_eq!(
            plan(&ns(true, &[FINALIZER]), &snap),
            vec![
                Change::DeleteAll("pods".into()),
                Change::DeleteAll("deployments.apps".into()),
                Change::CheckAfter(RECHECK)
            ]
        );
    }

    #[test]
    fn empty_namespace_is_finalized_keeping_other_finalizers() {
        let snap = Snapshot {
            remaining: vec![("pods".into(), 0)],
        };
        assert_eq!(
            plan(&ns(true, &["example.com/x", FINALIZER]), &snap),
            vec![Change::Finalize(vec!["example.com/x".into()])]
        );
    }
}
