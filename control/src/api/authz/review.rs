//! `kubectl auth can-i`: `SelfSubjectAccessReview` (may I do this?) and
//! `SelfSubjectRulesReview` (`--list`: what may I do in this namespace?), answered by the same
//! decision as every request ([`super::allowed`], [`super::rbac::Policy::rules_for`]).

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    super::{
        ApiState, UserInfo,
        error::ApiError,
        protobuf::{Bool, Field, Msg, OBJECT_META, Str, f, r},
    },
    request_info::RequestInfo,
};
use crate::store::Store;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceAttributes {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    verb: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct NonResourceAttributes {
    #[serde(default)]
    path: String,
    #[serde(default)]
    verb: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessSpec {
    resource_attributes: Option<ResourceAttributes>,
    non_resource_attributes: Option<NonResourceAttributes>,
}

/// The protobuf messages of the reviews (authorization/v1 generated.proto).
const RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Str),
    f(2, "verb", Str),
    f(3, "group", Str),
    f(4, "version", Str),
    f(5, "resource", Str),
    f(6, "subresource", Str),
    f(7, "name", Str),
];
const NON_RESOURCE_ATTRIBUTES: &[Field] = &[f(1, "path", Str), f(2, "verb", Str)];
const ACCESS_SPEC: &[Field] = &[
    f(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
    f(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
];
/// A request's `status` is the server's to fill in, but kubectl's typed client sends it with
/// its zero values (generated marshalers write every non-pointer field).
const ACCESS_STATUS: &[Field] = &[
    f(1, "allowed", Bool),
    f(2, "reason", Str),
    f(3, "evaluationError", Str),
    f(4, "denied", Bool),
];
const ACCESS_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(ACCESS_SPEC)),
    f(3, "status", Msg(ACCESS_STATUS)),
];
const RESOURCE_RULE: &[Field] = &[
    r(1, "verbs", Str),
    r(2, "apiGroups", Str),
    r(3, "resources", Str),
    r(4, "resourceNames", Str),
];
const NON_RESOURCE_RULE: &[Field] = &[r(1, "verbs", Str), r(2, "nonResourceURLs", Str)];
const RULES_STATUS: &[Field] = &[
    r(1, "resourceRules", Msg(RESOURCE_RULE)),
    r(2, "nonResourceRules", Msg(NON_RESOURCE_RULE)),
    f(3, "incomplete", Bool),
    f(4, "evaluationError", Str),
];
const RULES_SPEC: &[Field] = &[f(1, "namespace", Str)];
const RULES_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(RULES_SPEC)),
    f(3, "status", Msg(RULES_STATUS)),
];

/// A review's body, JSON or protobuf (what kubectl's typed client sends).
fn body_of(headers: &HeaderMap, body: &[u8], schema: &'static [Field]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        return super::super::protobuf::decode_with(body, |_, _| Some(schema));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("couldn't decode the review: {e}")))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub async fn access<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    Extension(user): Extension<UserInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let review = body_of(&headers, &body, ACCESS_REVIEW)?;
    let spec: AccessSpec = serde_json::from_value(review["spec"].clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid spec: {e}")))?;
    let request = match (spec.resource_attributes, spec.non_resource_attributes) {
        (Some(r), _) => RequestInfo {
            resource_request: true,
            verb: r.verb,
            api_group: r.group,
            namespace: r.namespace,
            resource: r.resource,
            subresource: r.subresource,
            name: r.name,
            path: String::new(),
        },
        (None, Some(n)) => RequestInfo {
            verb: n.verb,
            path: n.path,
            ..RequestInfo::default()
        },
        (None, None) => {
            return Err(ApiError::Invalid {
                kind: "SelfSubjectAccessReview".into(),
                group: "authorization.k8s.io".into(),
                name: String::new(),
                causes: vec![crate::api::error::Cause::required(
                    "spec.resourceAttributes",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            });
        }
    };
    let mut status = json!({"allowed": false});
    if user.groups.iter().any(|g| g == super::MASTERS) {
        status["allowed"] = json!(true);
    } else if let Some(a) = state
        .policy
        .get(&state.store)
        .await?
        .allows(&user, &request)
    {
        status = json!({
            "allowed": true,
            "reason": format!("RBAC: allowed by {} of {} to User \"{}\"", a.binding, a.role, user.name),
        });
    }
    let out = json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": super::super::now_rfc3339()},
        "spec": review["spec"],
        "status": status,
    });
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews`.
pub async fn rules<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    Extension(user): Extension<UserInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let review = body_of(&headers, &body, RULES_REVIEW)?;
    let namespace = review["spec"]["namespace"].as_str().unwrap_or_default();
    let rules = state
        .policy
        .get(&state.store)
        .await?
        .rules_for(&user, namespace);
    let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
    for r in rules {
        if r.non_resource_urls.is_empty() {
            resource.push(json!({
                "verbs": r.verbs,
                "apiGroups": r.api_groups,
                "resources": r.resources,
                "resourceNames": r.resource_names,
            }));
        } else {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let out = json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": super::super::now_rfc3339()},
        "spec": review["spec"],
        "status": {"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false},
    });
    Ok((StatusCode::CREATED, Json(out)).into_response())
}
