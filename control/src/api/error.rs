//! The one error type of the API: every failure of a request becomes a `meta.k8s.io/v1` Status
//! object through the single `IntoResponse` impl below, as clients (kubectl, kube-rs) expect.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::store::StoreError;

/// One field-level problem of an invalid object (`details.causes[]` of a Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Kubernetes cause type: FieldValueInvalid, FieldValueRequired, FieldValueDuplicate, ...
    pub reason: &'static str,
    /// The path of the field at fault, e.g. `spec.ports[0].port`.
    pub field: String,
    /// The message as kube-apiserver words it, e.g. `Invalid value: 70000: must be ...`.
    pub message: String,
}

impl Cause {
    /// `field: Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: &serde_json::Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", render_value(value)),
        }
    }

    /// `field: Required value`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `field: Not found: <value>`.
    pub fn not_found(field: impl Into<String>, value: &serde_json::Value) -> Self {
        Self {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {}", render_value(value)),
        }
    }

    /// `field: Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: &serde_json::Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", render_value(value)),
        }
    }

    /// `field: Unsupported value: "x": supported values: "A", "B"`.
    pub fn not_supported(
        field: impl Into<String>,
        value: &serde_json::Value,
        supported: &[&str],
    ) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {list}",
                render_value(value)
            ),
        }
    }

    /// `field: Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// Renders a value the way Go's `%#v`-ish formatting in field errors shows it: strings quoted,
/// numbers bare, maps as `map[k:v]`.
pub fn render_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => format!("\"{s}\""),
        serde_json::Value::Object(map) => {
            let inner = map
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}:{s}"),
                    other => format!("{k}:{}", render_value(other)),
                })
                .collect::<Vec<_>>()
                .join(" ");
            format!("map[{inner}]")
        }
        serde_json::Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error("the server could not find the requested resource")]
    NoSuchResource,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{}{} \"{name}\" is invalid: {}", kind, if group.is_empty() { String::new() } else { format!(".{group}") }, render_causes(.causes))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    /// Authorization refused the request; `message` is kube-apiserver's sentence naming the
    /// user and what was refused, `kind`/`group`/`name` the Status details.
    #[error("{message}")]
    Forbidden {
        group: String,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    Gone(String),
    /// A continue token whose revision is compacted (410 Expired). `resume` continues the list
    /// at the latest revision; kube-apiserver offers it in the Status's ListMeta.
    #[error("{INCONSISTENT_CONTINUE}")]
    ContinueExpired { resume: String },
    /// The store has not reached the revision asked for within the freshness wait (504,
    /// apiserver storage.NewTooLargeResourceVersionError).
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: i64, current: i64 },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("storage: {0}")]
    Store(#[source] StoreError),
    /// A request body over the limit (apierrors.NewRequestEntityTooLargeError).
    #[error("Request entity too large: limit is {0}")]
    RequestEntityTooLarge(usize),
}

/// kube-apiserver's message when a continue token's revision is compacted; the 410 carries a
/// token that resumes at the latest revision (storage/etcd3 handleCompactedErrorForPaging).
pub const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn render_causes(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::Gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            other => ApiError::Store(other),
        }
    }
}

impl ApiError {
    fn code_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchResource => {
                (StatusCode::NOT_FOUND, "NotFound")
            }
            ApiError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Gone(_) | ApiError::ContinueExpired { .. } => (StatusCode::GONE, "Expired"),
            ApiError::TooLargeResourceVersion { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ApiError::ServiceUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            ApiError::Store(StoreError::Conflict { .. }) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Store(StoreError::NotFound(_)) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::Store(StoreError::AlreadyExists(_)) => {
                (StatusCode::CONFLICT, "AlreadyExists")
            }
            ApiError::Store(StoreError::Compacted { .. }) => (StatusCode::GONE, "Expired"),
            ApiError::RequestEntityTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
            }
            ApiError::Internal(_) | ApiError::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        }
    }

    /// The Status object this error is reported as.
    pub fn to_status(&self) -> serde_json::Value {
        let (code, reason) = self.code_reason();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        let details = match self {
            ApiError::NotFound { resource, name } | ApiError::AlreadyExists { resource, name } => {
                let (kind, group) = match resource.split_once('.') {
                    Some((k, g)) => (k.to_string(), g.to_string()),
                    None => (resource.clone(), String::new()),
                };
                Some(json!({ "name": name, "group": group, "kind": kind }))
            }
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
            } => Some(json!({
                "name": name,
                "group": group,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason,
                    "message": c.message,
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::Forbidden {
                group, kind, name, ..
            } => Some(json!({ "name": name, "group": group, "kind": kind })),
            ApiError::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{
                    "reason": "ResourceVersionTooLarge",
                    "message": "Too large resource version",
                }],
                "retryAfterSeconds": 1,
            })),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        if let ApiError::ContinueExpired { resume } = self {
            status["metadata"] = json!({ "continue": resume });
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.code_reason();
        if code.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let status = self.to_status();
        // As the apiserver's response writer does, a retry hint in the Status is also a
        // Retry-After header, which client-go honours for 5xx answers.
        let retry_after = status["details"]["retryAfterSeconds"]
            .as_u64()
            .filter(|s| *s > 0);
        let mut resp = (code, status.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        resp
    }
}
