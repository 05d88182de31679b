//! ServiceAccounts of every Namespace: the `default` ServiceAccount exists in each active
//! Namespace and is made again when deleted, as kube-controller-manager's serviceaccounts
//! controller does (pkg/controller/serviceaccount/serviceaccounts_controller.go). A Namespace
//! being deleted gets none (its contents are going away).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::runtime::{Controller, Informers, Reconciler, Requeue, Touch, WorkQueue, key_of};

/// The ServiceAccount every Namespace has.
pub const DEFAULT: &str = "default";

/// What the plan sees besides the Namespace: the names of its ServiceAccounts.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub accounts: BTreeSet<String>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create the ServiceAccount of this name in the Namespace.
    Create(String),
}

/// Whether `ns` is active (neither marked for deletion nor Terminating).
fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// Plans the ServiceAccounts `ns` lacks.
pub fn plan(ns: &Namespace, snap: &Snapshot) -> Vec<Change> {
    if !active(ns) || snap.accounts.contains(DEFAULT) {
        return Vec::new();
    }
    vec![Change::Create(DEFAULT.to_owned())]
}

/// The ServiceAccounts loop.
pub(crate) struct ServiceAccountsLoop {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
}

impl Reconciler for ServiceAccountsLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let Some(ns) = self.namespaces.get(&ObjectRef::new(key)) else {
            return Ok(None);
        };
        let snap = Snapshot {
            accounts: self
                .accounts
                .state()
                .iter()
                .filter(|sa| sa.metadata.namespace.as_deref() == Some(key))
                .filter_map(|sa| sa.metadata.name.clone())
                .collect(),
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), key);
        for change in plan(&ns, &snap) {
            let Change::Create(name) = change;
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                // Made meanwhile (the store lags), or the Namespace started terminating.
                Err(kube::Error::Api(s)) if matches!(s.code, 409 | 403 | 404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// The ServiceAccounts controller: a Namespace's key for every change of it, and for every
/// deletion of one of its ServiceAccounts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceAccountsController;

impl Controller for ServiceAccountsController {
    const NAME: &'static str = "serviceaccount";
    type Loop = ServiceAccountsLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> ServiceAccountsLoop {
        let namespaces = informers.all::<Namespace>();
        let q = queue.clone();
        namespaces.on(move |t| match t {
            Touch::Changed(n) => q.add(key_of(n)),
            Touch::Deleted(_) => {}
            Touch::Relisted(all) => all.iter().for_each(|n| q.add(key_of(&**n))),
        });
        let namespaces = namespaces.store();
        let accounts = informers.all::<ServiceAccount>();
        let q = queue.clone();
        accounts.on(move |t| match t {
            Touch::Deleted(sa) => {
                if let Some(ns) = &sa.metadata.namespace {
                    q.add(ns.clone());
                }
            }
            Touch::Changed(_) => {}
            Touch::Relisted(all) => all
                .iter()
                .filter_map(|sa| sa.metadata.namespace.clone())
                .for_each(|ns| q.add(ns)),
        });
        let accounts = accounts.store();
        ServiceAccountsLoop {
            client: informers.client().clone(),
            namespaces,
            accounts,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn ns(deleting: bool, phase: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
                deletion_timestamp: deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: None,
            status: Some(NamespaceStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn an_active_namespace_gets_its_default_account_once() {
        let none = Snapshot::default();
        assert_eq!(
            plan(&ns(false, "Active"), &none),
            vec![Change::Create("default".into())]
        );
        let has = Snapshot {
            accounts: ["default".to_owned(), "builder".to_owned()].into(),
        };
        assert!(plan(&ns(false, "Active"), &has).is_empty());
        let others_only = Snapshot {
            accounts: ["builder".to_owned()].into(),
        };
        assert_eq!(plan(&ns(false, "Active"), &others_only).len(), 1);
    }

    #[test]
    fn a_terminating_namespace_gets_none() {
        assert!(plan(&ns(true, "Active"), &Snapshot::default()).is_empty());
        assert!(plan(&ns(false, "Terminating"), &Snapshot::default()).is_empty());
    }
}
