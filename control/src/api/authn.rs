//! Authentication by x509 client certificate, as kube-apiserver's `--client-ca-file`
//! authenticator does: a certificate the TLS handshake verified against the cluster CA names
//! the user in its subject's common name and the groups in its organizations
//! (staging/src/k8s.io/apiserver/pkg/authentication/request/x509, `CommonNameUserConversion`).
//! The TLS layer (rustls with client authentication optional) does the verifying; axum-server
//! hands the presented chain to every request of the connection as `TlsInfo`. Also
//! impersonation (`kubectl --as`, `--as-group`; the `Impersonate-*` headers, allowed by the
//! `impersonate` verb on users, groups and serviceaccounts as kube-apiserver's
//! `WithImpersonation` filter checks it), `SelfSubjectReview` (`kubectl auth whoami`): the
//! requester's own user info, and ServiceAccount tokens checked against the objects they name
//! (pkg/serviceaccount/claims.go `Validate`), with the issuer's discovery document and keys.

use std::sync::Arc;

use axum::{
    Extension, Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::UserInfo;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user of a request without credentials, and its group.
pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

/// The user a verified client certificate (DER) names: its subject's first CN, and its
/// organizations as groups, plus `system:authenticated`. `None` without a CN.
pub fn user_of_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.to_owned());
    }
    Some(UserInfo { name, groups })
}

/// The user of the client certificate the request's connection presented, if any.
pub fn user_of_connection(extensions: &http::Extensions) -> Option<UserInfo> {
    let info = extensions.get::<Arc<axum_server::tls::TlsInfo>>()?;
    user_of_certificate(info.peer_certificates.first()?)
}

/// The user a request acts as: `user` itself, or the one its `Impersonate-User` (and
/// `Impersonate-Group`) headers name when `user` may impersonate each of them.
pub async fn impersonated<S: crate::store::Store>(
    state: &super::ApiState<S>,
    user: UserInfo,
    headers: &http::HeaderMap,
) -> Result<UserInfo, super::error::ApiError> {
    use super::authz::{self, request_info::RequestInfo};
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let target = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let Some(target) = target else {
        if groups.is_empty() {
            return Ok(user);
        }
        return Err(super::error::ApiError::BadRequest(format!(
            "requested {groups:?} without impersonating a user"
        )));
    };
    // What impersonating each name takes (a ServiceAccount user is impersonated through its
    // serviceaccounts object).
    let mut asks = Vec::new();
    match target
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, name)) => asks.push(("serviceaccounts", ns.to_owned(), name.to_owned())),
        None => asks.push(("users", String::new(), target.clone())),
    }
    asks.extend(groups.iter().map(|g| ("groups", String::new(), g.clone())));
    // One read of the policy for every name asked (the privileged group needs none).
    let masters = user.groups.iter().any(|g| g == authz::MASTERS);
    let policy = if masters {
        None
    } else {
        Some(state.policy.get(&state.store).await?)
    };
    for (resource, namespace, name) in asks {
        let request = RequestInfo {
            resource_request: true,
            verb: "impersonate".into(),
            namespace,
            resource: resource.into(),
            name,
            ..RequestInfo::default()
        };
        let allowed = masters
            || policy
                .as_ref()
                .is_some_and(|p| p.allows(&user, &request).is_some());
        if !allowed {
            return Err(authz::forbidden(&user, &request));
        }
    }
    let mut all_groups = groups;
    if let Some((ns, _)) = target
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        for g in [
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !all_groups.contains(&g) {
                all_groups.push(g);
            }
        }
    }
    if !all_groups.iter().any(|g| g == AUTHENTICATED) {
        all_groups.push(AUTHENTICATED.to_owned());
    }
    Ok(UserInfo {
        name: target,
        groups: all_groups,
    })
}

/// The ServiceAccount user of `token` when the issuer signed it, it is current, and its
/// ServiceAccount (and the Pod, Secret or Node it is bound to) still exists with the UID it
/// names: kube-apiserver's bound token validator. `None` refuses the token (401).
pub async fn service_account_user<S: crate::store::Store>(
    store: &S,
    issuer: &super::tokens::Issuer,
    token: &str,
) -> Option<UserInfo> {
    let claims = match issuer.verify(token) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "refused a ServiceAccount token");
            return None;
        }
    };
    let k = &claims.kubernetes;
    let ns = k.namespace.as_str();
    let alive = |plural: &'static str, namespaced: bool, r: &super::tokens::Ref| {
        let key = crate::registry::lookup("", "v1", plural)
            .map(|info| info.key(namespaced.then_some(ns), &r.name));
        let uid = r.uid.clone();
        async move {
            let kv = store.get(&key?).await.ok()??;
            let obj = super::handlers::load(&kv).ok()?;
            // Deleted (or being deleted) objects take their tokens with them.
            (obj["metadata"]["uid"] == uid.as_str()
                && obj["metadata"]["deletionTimestamp"].is_null())
            .then_some(())
        }
    };
    alive("serviceaccounts", true, &k.serviceaccount).await?;
    if let Some(pod) = &k.pod {
        alive("pods", true, pod).await?;
    }
    if let Some(secret) = &k.secret {
        alive("secrets", true, secret).await?;
    }
    // A Pod-bound token names its Node for information; only a Node-bound one depends on it.
    if let (Some(node), None) = (&k.node, &k.pod) {
        alive("nodes", false, node).await?;
    }
    let mut groups = super::tokens::groups(ns);
    groups.push(AUTHENTICATED.to_owned());
    Some(UserInfo {
        name: super::tokens::username(ns, &k.serviceaccount.name),
        groups,
    })
}

/// `GET /.well-known/openid-configuration`: the ServiceAccount issuer's discovery document.
pub async fn openid_configuration<S: crate::store::Store>(
    axum::extract::State(state): axum::extract::State<Arc<super::ApiState<S>>>,
) -> Response {
    Json(state.config.issuer.discovery()).into_response()
}

/// `GET /openid/v1/jwks`: the keys that verify the issuer's tokens.
pub async fn jwks<S: crate::store::Store>(
    axum::extract::State(state): axum::extract::State<Arc<super::ApiState<S>>>,
) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/jwk-set+json")],
        Json(state.config.issuer.jwks()),
    )
        .into_response()
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: the requester as authentication
/// saw it (staging/src/k8s.io/api/authentication/v1 `SelfSubjectReview`).
pub async fn self_subject_review(Extension(user): Extension<UserInfo>) -> Response {
    let review = json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": super::now_rfc3339()},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
    });
    (StatusCode::CREATED, Json(review)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jane");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "dev");
        let cert = params.self_signed(&key).expect("cert");
        let user = user_of_certificate(cert.der()).expect("user");
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, ["dev", AUTHENTICATED]);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let nameless = params.self_signed(&key).expect("cert");
        assert_eq!(user_of_certificate(nameless.der()), None);
        assert_eq!(user_of_certificate(b"not a certificate"), None);
    }
}
