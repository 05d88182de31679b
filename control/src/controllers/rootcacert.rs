//! The `kube-root-ca.crt` ConfigMap of every Namespace: the cluster CA, with which in-cluster
//! clients verify the API server behind the `kubernetes` Service, as kube-controller-manager's
//! root-ca-cert-publisher keeps it (pkg/controller/certificates/rootcacertpublisher, KEP-1205).
//! Pods see it through their projected ServiceAccount volume (`ca.crt`). Made when missing,
//! put back when changed, left alone in a Namespace being deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::runtime::{Controller, Informers, Reconciler, Requeue, Touch, WorkQueue, key_of};

/// The ConfigMap's name, and the key of the CA bundle in it.
pub const NAME: &str = "kube-root-ca.crt";
pub const KEY: &str = "ca.crt";
/// The description kube-controller-manager gives it.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
     when using internal endpoints such as the internal service IP or kubernetes.default.svc. \
     No other usage is guaranteed across distributions of Kubernetes clusters.";

/// What the plan sees besides the Namespace: the data of its `kube-root-ca.crt`, if any.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub existing: Option<BTreeMap<String, String>>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    /// Its data is not the CA bundle alone.
    Replace,
}

fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// Plans what `ns`'s ConfigMap needs to hold `ca` and nothing else.
pub fn plan(ns: &Namespace, snap: &Snapshot, ca: &str) -> Option<Change> {
    if !active(ns) {
        return None;
    }
    match &snap.existing {
        None => Some(Change::Create),
        Some(data) if data.len() != 1 || data.get(KEY).map(String::as_str) != Some(ca) => {
            Some(Change::Replace)
        }
        Some(_) => None,
    }
}

/// The ConfigMap `ns` gets.
fn desired(ca: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            annotations: Some(
                [(
                    "kubernetes.io/description".to_owned(),
                    DESCRIPTION.to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some([(KEY.to_owned(), ca.to_owned())].into()),
        ..Default::default()
    }
}

/// The publisher's loop.
pub(crate) struct RootCaLoop {
    client: Client,
    ca: String,
    namespaces: Store<Namespace>,
    config_maps: Store<ConfigMap>,
}

impl Reconciler for RootCaLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let Some(ns) = self.namespaces.get(&ObjectRef::new(key)) else {
            return Ok(None);
        };
        let existing = self
            .config_maps
            .get(&ObjectRef::new(NAME).within(key))
            .map(|cm| cm.data.clone().unwrap_or_default());
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), key);
        let result = match plan(&ns, &Snapshot { existing }, &self.ca) {
            None => return Ok(None),
            Some(Change::Create) => {
                match api.create(&PostParams::default(), &desired(&self.ca)).await {
                    // Made meanwhile (the informer lags), or the Namespace started
                    // terminating.
                    Err(kube::Error::Api(s)) if matches!(s.code, 409 | 403 | 404) => Ok(()),
                    r => r.map(drop),
                }
            }
            Some(Change::Replace) => {
                let mut cm = desired(&self.ca);
                // Over the copy the plan saw: a write in between is a conflict, retried with
                // the fresh copy.
                if let Some(stored) = self.config_maps.get(&ObjectRef::new(NAME).within(key)) {
                    cm.metadata.resource_version = stored.metadata.resource_version.clone();
                }
                match api.replace(NAME, &PostParams::default(), &cm).await {
                    Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404) => Ok(()),
                    r => r.map(drop),
                }
            }
        };
        result.map(|()| None)
    }
}

/// The publisher: a Namespace's key for every change of it, and for every change or deletion
/// of its `kube-root-ca.crt`.
#[derive(Debug, Clone)]
pub(crate) struct RootCaController {
    pub ca: String,
}

impl Controller for RootCaController {
    const NAME: &'static str = "root-ca-cert-publisher";
    type Loop = RootCaLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> RootCaLoop {
        let namespaces = informers.all::<Namespace>();
        let q = queue.clone();
        namespaces.on(move |t| match t {
            Touch::Changed(n) => q.add(key_of(n)),
            Touch::Deleted(_) => {}
            Touch::Relisted(all) => all.iter().for_each(|n| q.add(key_of(&**n))),
        });
        let namespaces = namespaces.store();
        let config_maps = informers.all::<ConfigMap>();
        let q = queue.clone();
        let ours = |cm: &ConfigMap| cm.metadata.name.as_deref() == Some(NAME);
        config_maps.on(move |t| {
            let touched: Vec<&ConfigMap> = match &t {
                Touch::Changed(cm) | Touch::Deleted(cm) => vec![*cm],
                Touch::Relisted(all) => all.iter().map(|c| &**c).collect(),
            };
            for cm in touched.into_iter().filter(|c| ours(c)) {
                if let Some(ns) = &cm.metadata.namespace {
                    q.add(ns.clone());
                }
            }
        });
        let config_maps = config_maps.store();
        RootCaLoop {
            client: informers.client().clone(),
            ca: self.ca,
            namespaces,
            config_maps,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceStatus;

    use super::*;

    fn ns(phase: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
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
    fn every_active_namespace_holds_the_ca_alone() {
        let ca = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";
        assert_eq!(
            plan(&ns("Active"), &Snapshot::default(), ca),
            Some(Change::Create)
        );
        let right = Snapshot {
            existing: Some([(KEY.to_owned(), ca.to_owned())].into()),
        };
        assert_eq!(plan(&ns("Active"), &right, ca), None);
        let stale = Snapshot {
            existing: Some([(KEY.to_owned(), "old".to_owned())].into()),
        };
        assert_eq!(plan(&ns("Active"), &stale, ca), Some(Change::Replace));
        let extra = Snapshot {
            existing: Some(
                [
                    (KEY.to_owned(), ca.to_owned()),
                    ("more".to_owned(), "x".to_owned()),
                ]
                .into(),
            ),
        };
        assert_eq!(plan(&ns("Active"), &extra, ca), Some(Change::Replace));
        assert_eq!(plan(&ns("Terminating"), &Snapshot::default(), ca), None);
        let cm = desired(ca);
        assert_eq!(cm.data.expect("data")[KEY], ca);
    }
}
