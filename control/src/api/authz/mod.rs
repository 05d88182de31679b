//! Authorization, after authentication and before any handler, as kube-apiserver's
//! `WithAuthorization` filter: the request's attributes ([`request_info`]) are decided by
//! the Node authorizer for node agents ([`node`]), then RBAC ([`rbac`]) over the roles and
//! bindings in the store, with `system:masters` always
//! allowed (kube-apiserver's privileged group, which no binding can take away). A refusal is a
//! 403 Status worded as kube-apiserver words it. The policy is read once and kept until RBAC
//! changes ([`cache`]). [`bootstrap`] makes the default roles; [`review`] answers
//! `kubectl auth can-i`.

pub mod bootstrap;
pub mod cache;
pub mod escalation;
pub mod node;
pub mod rbac;
pub mod request_info;
pub mod review;

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiState, UserInfo, error::ApiError, handlers::load};
use crate::{registry, store::Store};
use rbac::{Binding, Policy, Rule};
use request_info::RequestInfo;

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";
/// The API group of the RBAC kinds.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Reads every role and binding from the store. Blocking only on the store's reads.
pub async fn load_policy<S: Store>(store: &S) -> Result<Policy, ApiError> {
    let mut policy = Policy::default();
    let rbac = "rbac.authorization.k8s.io";
    for plural in [
        "clusterroles",
        "roles",
        "clusterrolebindings",
        "rolebindings",
    ] {
        let info = registry::lookup(rbac, "v1", plural).ok_or(ApiError::NoSuchResource)?;
        let list = store
            .list(&info.list_prefix(None), None, usize::MAX)
            .await?;
        for kv in &list.items {
            let obj = load(kv)?;
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match plural {
                "clusterroles" => {
                    policy.cluster_roles.insert(name, Rule::list_of(&obj));
                }
                "roles" => {
                    policy.roles.insert((ns, name), Rule::list_of(&obj));
                }
                "clusterrolebindings" => policy.cluster_bindings.push(Binding::of(&obj)),
                _ => policy.bindings.push(Binding::of(&obj)),
            }
        }
    }
    Ok(policy)
}

/// Whether `user` may do `request`, decided on the cached policy.
pub async fn allowed<S: Store>(
    state: &ApiState<S>,
    user: &UserInfo,
    request: &RequestInfo,
) -> Result<bool, ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(true);
    }
    Ok(state
        .policy
        .get(&state.store)
        .await?
        .allows(user, request)
        .is_some())
}

/// `refusal` with the authorizer's reason appended, as kube-apiserver appends it.
fn with_reason(refusal: ApiError, why: &str) -> ApiError {
    match refusal {
        ApiError::Forbidden {
            group,
            kind,
            name,
            message,
        } => ApiError::Forbidden {
            group,
            kind,
            name,
            message: format!("{message}: {why}"),
        },
        other => other,
    }
}

/// Whether a request writes RBAC objects (after which the cached policy is stale).
fn writes_rbac(req: &Request) -> bool {
    !matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) && req
        .uri()
        .path()
        .starts_with("/apis/rbac.authorization.k8s.io/")
}

/// kube-apiserver's refusal (`responsewriters.ForbiddenStatusError`):
/// `pods "web" is forbidden: User "jane" cannot get resource "pods" in API group "" in the
/// namespace "default"`.
pub fn forbidden(user: &UserInfo, r: &RequestInfo) -> ApiError {
    if !r.resource_request {
        return ApiError::Forbidden {
            group: String::new(),
            kind: String::new(),
            name: String::new(),
            message: format!(
                "forbidden: User \"{}\" cannot {} path \"{}\"",
                user.name, r.verb, r.path
            ),
        };
    }
    let qualified = if r.api_group.is_empty() {
        r.resource.clone()
    } else {
        format!("{}.{}", r.resource, r.api_group)
    };
    let subject = if r.name.is_empty() {
        qualified.clone()
    } else {
        format!("{qualified} \"{}\"", r.name)
    };
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{}\"", r.namespace)
    };
    ApiError::Forbidden {
        group: r.api_group.clone(),
        kind: r.resource.clone(),
        name: r.name.clone(),
        message: format!(
            "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, r.verb, r.api_group
        ),
    }
}

/// The authorization filter: requests without a user (the anonymous health and version
/// endpoints authentication let through) pass; every other one must be allowed.
pub async fn authorize<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(user) = req.extensions().get::<UserInfo>() else {
        return next.run(req).await;
    };
    let rbac_write = writes_rbac(&req);
    // The privileged group needs no attributes (and costs no parsing).
    let response = if user.groups.iter().any(|g| g == MASTERS) {
        next.run(req).await
    } else {
        let user = user.clone();
        let info = request_info::parse(req.method(), req.uri().path(), req.uri().query());
        // Nodes first (kube-apiserver's `--authorization-mode=Node,RBAC`).
        if let Some(node) = node::node_of(&user) {
            match node::decide(&state, node, &info).await {
                Ok(node::Decision::Allow) => return next.run(req).await,
                Ok(node::Decision::Deny(why)) => {
                    return with_reason(forbidden(&user, &info), &why).into_response();
                }
                Ok(node::Decision::NoOpinion) => {}
                Err(e) => return e.into_response(),
            }
        }
        match allowed(&state, &user, &info).await {
            Ok(true) => next.run(req).await,
            Ok(false) => return forbidden(&user, &info).into_response(),
            Err(e) => return e.into_response(),
        }
    };
    if rbac_write {
        state.policy.invalidate();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_worded_as_kube_apiserver_words_them() {
        let jane = UserInfo {
            name: "jane".into(),
            groups: vec![],
        };
        let r = request_info::parse(
            &http::Method::GET,
            "/api/v1/namespaces/default/pods/web",
            None,
        );
        assert_eq!(
            forbidden(&jane, &r).to_string(),
            "pods \"web\" is forbidden: User \"jane\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let r = request_info::parse(&http::Method::GET, "/apis/apps/v1/deployments", None);
        assert_eq!(
            forbidden(&jane, &r).to_string(),
            "deployments.apps is forbidden: User \"jane\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let r = request_info::parse(
            &http::Method::POST,
            "/api/v1/namespaces/a/pods/web/exec",
            None,
        );
        assert!(
            forbidden(&jane, &r)
                .to_string()
                .contains("cannot create resource \"pods/exec\"")
        );
        let r = request_info::parse(&http::Method::GET, "/metrics", None);
        assert_eq!(
            forbidden(&jane, &r).to_string(),
            "forbidden: User \"jane\" cannot get path \"/metrics\""
        );
        let status = forbidden(
            &jane,
            &request_info::parse(&http::Method::GET, "/api/v1/nodes/n1", None),
        )
        .to_status();
        assert_eq!(
            (status["code"].as_u64(), status["reason"].as_str()),
            (Some(403), Some("Forbidden"))
        );
        assert_eq!(status["details"]["kind"], "nodes");
    }
}
