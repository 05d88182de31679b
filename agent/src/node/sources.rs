//! The API objects a Pod's containers are made from, read before they start and again while
//! they run: the ConfigMaps and Secrets its `env`, `envFrom` and volumes name (with `data` and
//! `binaryData` as bytes), the ServiceAccount tokens its projected volumes hold, and the
//! Services its environment lists.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, Client};

use super::tokens::{TokenCache, TokenKey};

/// Errors of reading a Pod's sources.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("the ServiceAccount token")]
    Token(#[source] super::tokens::TokenError),
    #[error("reading {kind} {namespace}/{name}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What a Pod refers to; a ConfigMap or Secret that does not exist is absent from its map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSources {
    pub config_maps: HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: HashMap<String, BTreeMap<String, Vec<u8>>>,
    /// The Services' variables ([`super::env::service_env`]).
    pub services: BTreeMap<String, String>,
    /// The tokens of the projected `serviceAccountToken` sources.
    pub tokens: BTreeMap<TokenKey, String>,
}

/// The names of the ConfigMaps and Secrets a Pod refers to anywhere: env, envFrom, and
/// `configMap`, `secret` and `projected` volumes.
pub fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = pod.spec.as_ref() else {
        return (cms, secrets);
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                cms.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
                secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
            }
        }
        for f in c.env_from.iter().flatten() {
            cms.extend(f.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(f.secret_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    for v in spec.volumes.iter().flatten() {
        cms.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            cms.extend(p.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(p.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    (cms, secrets)
}

impl PodSources {
    /// Reads everything the Pod refers to, its tokens from (or into) `tokens`; with
    /// `services`, also the Services of its environment (read once, before the first
    /// container starts, as the kubelet does).
    pub async fn fetch(
        client: &Client,
        pod: &Pod,
        services: bool,
        tokens: &TokenCache,
    ) -> Result<Self, SourcesError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (cms, secrets) = referenced(pod);
        let mut out = Self::default();
        if services {
            out.services = super::env::fetch_services(client, namespace, pod).await;
        }
        let read = |kind, name: &str, source| SourcesError::Read {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        };
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in cms {
            if let Some(cm) = cm_api
                .get_opt(&name)
                .await
                .map_err(|e| read("ConfigMap", &name, e))?
            {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                out.config_maps.insert(name, data);
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secrets {
            if let Some(sec) = secret_api
                .get_opt(&name)
                .await
                .map_err(|e| read("Secret", &name, e))?
            {
                // The API server folds stringData into data; a server that did not is read
                // the same way.
                let mut data: BTreeMap<String, Vec<u8>> = sec
                    .string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(
                    sec.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                out.secrets.insert(name, data);
            }
        }
        out.tokens = tokens
            .tokens(client, pod, &super::tokens::wanted(pod))
            .await
            .map_err(SourcesError::Token)?;
        Ok(out)
    }
}
