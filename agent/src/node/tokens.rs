//! The ServiceAccount tokens of a Pod's projected volumes: requested through the API's
//! TokenRequest (`serviceaccounts/<name>/token`) bound to the Pod, kept, and requested again
//! before they expire, as the kubelet's token manager does (pkg/kubelet/token): when 80% of
//! the lifetime has passed, or after a day, whichever comes first.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccount},
};
use kube::{Api, Client, api::PostParams};

/// What a projected `serviceAccountToken` source asks for (one token serves every source
/// that asks for the same).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey {
    /// Empty: the API server's own audiences.
    pub audience: String,
    pub expiration_seconds: i64,
}

/// A projected source's default lifetime (`ServiceAccountTokenProjection.expirationSeconds`).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token is requested again after this long, however long it lives (`maxTTL`).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl TokenKey {
    /// The key of a projection's `audience` and `expirationSeconds`.
    pub fn of(audience: Option<&str>, expiration_seconds: Option<i64>) -> Self {
        Self {
            audience: audience.unwrap_or_default().to_owned(),
            expiration_seconds: expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        }
    }
}

/// One issued token.
#[derive(Debug, Clone)]
struct Issued {
    token: String,
    issued: SystemTime,
    expires: SystemTime,
}

/// Whether a token issued at `issued`, expiring at `expires`, is due for a new one at `now`.
fn due(issued: SystemTime, expires: SystemTime, now: SystemTime) -> bool {
    let ttl = expires.duration_since(issued).unwrap_or_default();
    let age = now.duration_since(issued).unwrap_or_default();
    age >= ttl.mul_f64(0.8) || age >= MAX_AGE
}

/// Errors of requesting a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("requesting a token of ServiceAccount {namespace}/{account}")]
    Request {
        namespace: String,
        account: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server answered a TokenRequest without a token")]
    Empty,
}

/// A Pod's tokens.
#[derive(Debug, Default)]
pub struct TokenCache {
    held: Mutex<HashMap<TokenKey, Issued>>,
}

impl TokenCache {
    /// A current token for each of `wanted`, requesting those missing or due.
    pub async fn tokens(
        &self,
        client: &Client,
        pod: &Pod,
        wanted: &[TokenKey],
    ) -> Result<BTreeMap<TokenKey, String>, TokenError> {
        let now = SystemTime::now();
        let mut out = BTreeMap::new();
        for key in wanted {
            let held = self
                .held
                .lock()
                .ok()
                .and_then(|h| h.get(key).cloned())
                .filter(|i| !due(i.issued, i.expires, now));
            let issued = match held {
                Some(i) => i,
                None => {
                    let i = request(client, pod, key).await?;
                    if let Ok(mut h) = self.held.lock() {
                        h.insert(key.clone(), i.clone());
                    }
                    i
                }
            };
            out.insert(key.clone(), issued.token);
        }
        Ok(out)
    }
}

/// The keys of the Pod's projected `serviceAccountToken` sources.
pub fn wanted(pod: &Pod) -> Vec<TokenKey> {
    let mut keys: Vec<TokenKey> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| TokenKey::of(t.audience.as_deref(), t.expiration_seconds))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Asks the API server for a token of the Pod's ServiceAccount, bound to the Pod.
async fn request(client: &Client, pod: &Pod, key: &TokenKey) -> Result<Issued, TokenError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!key.audience.is_empty()).then(|| vec![key.audience.clone()]),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let issued = SystemTime::now();
    let answer = api
        .create_token_request(&account, &PostParams::default(), &tr)
        .await
        .map_err(|source| TokenError::Request {
            namespace: namespace.clone(),
            account: account.clone(),
            source,
        })?;
    let status = answer.status.ok_or(TokenError::Empty)?;
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Empty)?;
    // Without an expiry the token is taken to live what was asked.
    let expires = match status.expiration_timestamp {
        Some(t) => {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or_default())
        }
        None => {
            issued + Duration::from_secs(u64::try_from(key.expiration_seconds).unwrap_or_default())
        }
    };
    Ok(Issued {
        token,
        issued,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_token_is_renewed_at_four_fifths_of_its_life_or_after_a_day() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert!(!due(t0, t0 + hour, t0 + Duration::from_secs(2879)));
        assert!(due(t0, t0 + hour, t0 + Duration::from_secs(2880)));
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(!due(t0, t0 + year, t0 + Duration::from_secs(23 * 3600)));
        assert!(due(t0, t0 + year, t0 + MAX_AGE));
        // A clock that went back counts as fresh, not as a panic.
        assert!(!due(t0, t0 + hour, t0 - hour));
    }

    #[test]
    fn sources_asking_for_the_same_share_a_key() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}], "volumes": [
                {"name": "a", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"serviceAccountToken": {"path": "vault", "audience": "vault"}},
                ]}},
                {"name": "b", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "t", "expirationSeconds": 3607}},
                ]}},
            ]},
        }))
        .expect("test value");
        assert_eq!(
            wanted(&pod),
            vec![
                TokenKey::of(None, Some(3607)),
                TokenKey::of(Some("vault"), None)
            ]
        );
    }
}
