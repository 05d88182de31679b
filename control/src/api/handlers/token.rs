//! The `token` subresource (TokenRequest, authentication.k8s.io/v1): a token of the
//! ServiceAccount, signed by the server's issuer, for the audiences and lifetime asked, and
//! bound to a Pod, Secret or Node when asked, so that it stops working when that object goes
//! (pkg/registry/core/serviceaccount/storage/token.go). `kubectl create token` and the node
//! agents' projected volumes ask for them.

use axum::{http::StatusCode, response::Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Req, json_response, load};
use crate::{
    api::{
        error::{ApiError, Cause},
        tokens::{self, Grant, Ref},
    },
    registry,
    store::Store,
};

/// The request's `spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    expiration_seconds: Option<i64>,
    #[serde(default)]
    bound_object_ref: Option<BoundRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BoundRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
}

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest".into(),
        group: "authentication.k8s.io".into(),
        name: name.to_owned(),
        causes,
    }
}

impl<S: Store> Req<'_, S> {
    /// `POST .../serviceaccounts/<name>/token`.
    pub(super) async fn token_request(&self) -> Result<Response, ApiError> {
        let sa = load(&self.fetch().await?)?;
        let account = self.t.name.clone().unwrap_or_default();
        let namespace = self.t.namespace.clone().unwrap_or_default();
        let body: Value = if self.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&self.body)
                .map_err(|e| ApiError::BadRequest(format!("couldn't decode the request: {e}")))?
        };
        if let Some(kind) = body["kind"].as_str().filter(|k| *k != "TokenRequest") {
            return Err(ApiError::BadRequest(format!(
                "{kind} is not a TokenRequest"
            )));
        }
        let spec: Spec = match body.get("spec") {
            Some(s) if !s.is_null() => serde_json::from_value(s.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid spec: {e}")))?,
            _ => Spec::default(),
        };
        let expiration = spec
            .expiration_seconds
            .unwrap_or(tokens::DEFAULT_EXPIRATION_SECONDS);
        if expiration < tokens::MIN_EXPIRATION_SECONDS {
            return Err(invalid(
                "",
                vec![Cause::invalid(
                    "spec.expirationSeconds",
                    &json!(expiration),
                    "may not specify a duration less than 10 minutes",
                )],
            ));
        }
        if expiration > tokens::MAX_EXPIRATION_SECONDS {
            return Err(invalid(
                "",
                vec![Cause::invalid(
                    "spec.expirationSeconds",
                    &json!(expiration),
                    "may not specify a duration larger than 2^32 seconds",
                )],
            ));
        }
        let mut grant = Grant {
            namespace: namespace.clone(),
            serviceaccount: Ref {
                name: account.clone(),
                uid: sa["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            },
            audiences: spec.audiences.clone().unwrap_or_default(),
            expiration_seconds: expiration,
            pod: None,
            secret: None,
            node: None,
        };
        let pod_node = match &spec.bound_object_ref {
            Some(bound) => self.bind_token(&mut grant, bound).await?,
            None => None,
        };
        // NodeRestriction: a node asks only for tokens bound to a Pod it runs.
        if let Some(node) = self
            .user
            .as_ref()
            .and_then(crate::api::authz::node::node_of)
        {
            let why = match (&grant.pod, pod_node.as_deref()) {
                (None, _) => Some("node requested token not bound to a pod"),
                (Some(_), Some(n)) if n == node => None,
                (Some(_), _) => {
                    Some("node requested token bound to a pod scheduled on a different node")
                }
            };
            if let Some(why) = why {
                return Err(ApiError::Forbidden {
                    group: String::new(),
                    kind: "serviceaccounts".into(),
                    name: account.clone(),
                    message: format!("serviceaccounts \"{account}\" is forbidden: {why}"),
                });
            }
        }
        let issuer = &self.state.config.issuer;
        let claims = issuer.claims(&grant, jiff::Timestamp::now().as_second());
        let token = issuer
            .sign(&claims)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let expires = jiff::Timestamp::from_second(claims.exp)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut spec_out = body.get("spec").cloned().unwrap_or_else(|| json!({}));
        if !spec_out.is_object() {
            spec_out = json!({});
        }
        spec_out["audiences"] = json!(claims.aud);
        spec_out["expirationSeconds"] = json!(expiration);
        let out = json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": account,
                "namespace": namespace,
                "creationTimestamp": crate::api::now_rfc3339(),
            },
            "spec": spec_out,
            "status": {"token": token, "expirationTimestamp": expires},
        });
        Ok(json_response(StatusCode::CREATED, &out))
    }

    /// Checks the object a token is bound to and names it (and a Pod's Node) in the grant;
    /// returns the node a bound Pod runs on.
    async fn bind_token(
        &self,
        grant: &mut Grant,
        bound: &BoundRef,
    ) -> Result<Option<String>, ApiError> {
        let account = grant.serviceaccount.name.clone();
        let plural = match (bound.kind.as_str(), bound.api_version.as_str()) {
            ("Pod", "v1" | "") => "pods",
            ("Secret", "v1" | "") => "secrets",
            ("Node", "v1" | "") => "nodes",
            (kind, version) => {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount \"{account}\" to object of kind \
                     \"{kind}\" in version \"{version}\""
                )));
            }
        };
        let obj = self
            .bound_object(plural, &grant.namespace, &bound.name)
            .await?;
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !bound.uid.is_empty() && bound.uid != uid {
            return Err(ApiError::Conflict(format!(
                "the UID in the bound object reference ({}) does not match the UID in record. \
                 The object might have been deleted and then recreated",
                bound.uid
            )));
        }
        let this = Some(Ref {
            name: bound.name.clone(),
            uid,
        });
        let mut pod_node = None;
        match plural {
            "pods" => {
                let runs_as = obj["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default");
                if runs_as != account {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token for serviceaccount \"{account}\" to pod running \
                         with different serviceaccount name."
                    )));
                }
                // The Node the Pod runs on is named too (KEP-4193), when it is known.
                let node = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
                pod_node = node.map(str::to_owned);
                if let Some(node) = node
                    && let Ok(n) = self.bound_object("nodes", "", node).await
                {
                    grant.node = Some(Ref {
                        name: node.to_owned(),
                        uid: n["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                    });
                }
                grant.pod = this;
            }
            "secrets" => grant.secret = this,
            _ => grant.node = this,
        }
        Ok(pod_node)
    }

    /// The stored object `plural`/`name` (in `namespace` when namespaced), or its NotFound.
    async fn bound_object(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let info = registry::lookup("", "v1", plural).ok_or(ApiError::NoSuchResource)?;
        let ns = info.namespaced.then_some(namespace);
        match self.state.store.get(&info.key(ns, name)).await? {
            Some(kv) => load(&kv),
            None => Err(ApiError::NotFound {
                resource: info.qualified_plural(),
                name: name.to_owned(),
            }),
        }
    }
}
