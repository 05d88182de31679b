//! The resource handlers: create, get, list, update, patch and delete of every served kind, and
//! the status, scale, binding and finalize subresources. Objects are JSON in the store under
//! `/registry/<group|core>/<plural>/[<namespace>/]<name>`; resourceVersion is the store
//! revision. The handlers know no kind by name: what varies by kind is the kind's strategy
//! (`registry::kinds`), which they call at the points kube-apiserver's generic registry
//! (k8s.io/apiserver pkg/registry/generic/registry/store.go) calls a strategy.
//!
//! One module per verb: [`options`] (the typed query and body options), [`body`] (the request
//! body decoder), [`create`], [`update`] (update and patch), [`delete`], [`list`] and
//! [`subresources`] (scale, binding), [`token`] (ServiceAccount tokens).

mod body;
mod create;
mod delete;
mod list;
pub mod options;
mod subresources;
mod token;
mod update;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

pub use body::decode_body;
pub use create::generate_name;
pub use list::{list_objects, scale_of};

use super::{
    ApiConfig, ApiState, UserInfo,
    alloc::InUse,
    authz::rbac::Policy,
    error::{ApiError, Cause},
    table,
};
use crate::{
    registry::{self, ResourceInfo, strategy::AdmissionContext},
    store::{KeyValue, Store},
};

/// Query parameters of resource requests.
pub type Params = HashMap<String, String>;

/// A parsed resource path.
#[derive(Debug, Clone)]
pub struct Target {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    pub fn key(&self) -> String {
        self.info.key(
            self.namespace.as_deref(),
            self.name.as_deref().unwrap_or_default(),
        )
    }

    fn not_found(&self) -> ApiError {
        ApiError::NotFound {
            resource: self.info.qualified_plural(),
            name: self.name.clone().unwrap_or_default(),
        }
    }
}

/// The path segment of namespaced resources.
const NAMESPACES: &str = "namespaces";

/// Resolves `rest` (the path after `/api/v1/` or `/apis/<g>/<v>/`) to a served kind.
pub fn parse_target(group: &str, version: &str, rest: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 3
        && segs[0] == NAMESPACES
        && let Some(info) = registry::lookup(group, version, segs[2]).filter(|i| i.namespaced)
    {
        if segs.len() > 5 {
            return Err(ApiError::NoSuchResource);
        }
        return Ok(Target {
            info,
            namespace: Some(segs[1].to_string()),
            name: segs.get(3).map(|s| (*s).to_string()),
            sub: segs.get(4).map(|s| (*s).to_string()),
        });
    }
    let info = segs
        .first()
        .and_then(|p| registry::lookup(group, version, p))
        .ok_or(ApiError::NoSuchResource)?;
    if segs.len() > 3 {
        return Err(ApiError::NoSuchResource);
    }
    Ok(Target {
        info,
        namespace: None,
        name: segs.get(1).map(|s| (*s).to_string()),
        sub: segs.get(2).map(|s| (*s).to_string()),
    })
}

/// `POST /api/v1/namespaces/<ns>/bindings` (the form kube-scheduler uses) names the bound object
/// in the Binding's metadata; it is served as `<plural>/<name>/binding` of the core kind with
/// a `binding` subresource.
fn binding_collection(group: &str, rest: &str, method: &Method, body: &[u8]) -> Option<Target> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if !group.is_empty()
        || *method != Method::POST
        || segs.len() != 3
        || segs[0] != NAMESPACES
        || segs[2] != "bindings"
    {
        return None;
    }
    let binding: Value = serde_json::from_slice(body).ok()?;
    let info = registry::RESOURCES
        .iter()
        .find(|r| r.group.is_empty() && r.namespaced && r.has_subresource("binding"))?;
    Some(Target {
        info,
        namespace: Some(segs[1].to_string()),
        name: Some(binding["metadata"]["name"].as_str()?.to_string()),
        sub: Some("binding".into()),
    })
}

/// `/api/v1/...`
pub async fn core_entry<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    Path(rest): Path<String>,
    method: Method,
    Query(params): Query<Params>,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = user.map(|Extension(u)| u);
    dispatch(&state, "", "v1", &rest, method, params, user, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `/apis/<group>/<version>/...`
pub async fn group_entry<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    Query(params): Query<Params>,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = user.map(|Extension(u)| u);
    dispatch(
        &state, &group, &version, &rest, method, params, user, headers, body,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

#[expect(clippy::too_many_arguments, reason = "the parts of one HTTP request")]
async fn dispatch<S: Store>(
    state: &Arc<ApiState<S>>,
    group: &str,
    version: &str,
    rest: &str,
    method: Method,
    params: Params,
    user: Option<UserInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut body = body;
    if matches!(method, Method::POST | Method::PUT) && !body.is_empty() {
        body = body::to_json(&headers, body)?;
    }
    let mut t = match binding_collection(group, rest, &method, &body) {
        Some(t) => t,
        None => parse_target(group, version, rest)?,
    };
    if let Some(sub) = &t.sub
        && !t.info.serves_subresource(sub)
    {
        return Err(ApiError::NoSuchResource);
    }
    // A kind stored as another kind's objects (events.k8s.io/v1 Events over core/v1 Events) is
    // converted on the way in and out; everything else is the stored kind's.
    let stored_as = t.info.strategy.stored_as();
    let served = t.info;
    if let Some(st) = stored_as {
        t.info =
            registry::lookup(st.group, st.version, st.plural).ok_or(ApiError::NoSuchResource)?;
        if matches!(method, Method::POST | Method::PUT) && !body.is_empty() {
            let obj = decode_body(t.info, &body)?;
            body = Bytes::from((st.to_stored)(obj).to_string());
        }
    }
    let req = Req {
        state,
        t,
        params,
        user,
        headers,
        body,
    };
    let Some(st) = stored_as else {
        return route(req, method).await;
    };
    let resp = match (&method, req.t.name.is_some()) {
        (&Method::PATCH, true) => req.patch_converted(st).await?,
        (&Method::GET, false) if req.flag("watch") => {
            return super::watch::serve_converted(
                req.state.clone(),
                &req.t,
                &req.params,
                &req.headers,
                Some(st.from_stored),
            )
            .await;
        }
        _ => Box::pin(route(req, method)).await?,
    };
    convert_response(resp, served, st.from_stored).await
}

/// Rewrites a JSON response body (an object or a list; Tables and Status pass) from the stored
/// kind to the served one.
async fn convert_response(
    resp: Response,
    served: &ResourceInfo,
    from_stored: fn(Value) -> Value,
) -> Result<Response, ApiError> {
    let (parts, body) = resp.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .to_bytes();
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            if kind == served.kind {
                v = from_stored(v);
            } else if kind == served.list_kind() {
                if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                    for item in items.iter_mut() {
                        *item = from_stored(item.take());
                    }
                }
                v["apiVersion"] = json!(served.api_version());
            }
            Bytes::from(v.to_string())
        }
        Err(_) => bytes,
    };
    Ok(Response::from_parts(parts, axum::body::Body::from(out)))
}

async fn route<S: Store>(req: Req<'_, S>, method: Method) -> Result<Response, ApiError> {
    let name_given = req.t.name.is_some();
    match (method, name_given, req.t.sub.as_deref()) {
        (Method::GET, false, None) => {
            if req.flag("watch") {
                super::watch::serve(req.state.clone(), &req.t, &req.params, &req.headers).await
            } else {
                req.list().await
            }
        }
        (Method::POST, false, None) => req.create().await,
        (Method::DELETE, false, None) => req.delete_collection().await,
        (Method::GET, true, None | Some("status")) => req.get().await,
        (Method::PUT, true, None) => req.update(Part::Main).await,
        (Method::PUT, true, Some("status")) => req.update(Part::Status).await,
        (Method::PUT, true, Some("finalize")) => req.update(Part::Finalize).await,
        (Method::PATCH, true, None) => req.patch(Part::Main).await,
        (Method::PATCH, true, Some("status")) => req.patch(Part::Status).await,
        (Method::DELETE, true, None) => req.delete().await,
        (Method::GET, true, Some("scale")) => req.get_scale().await,
        (Method::PUT | Method::PATCH, true, Some("scale")) => req.update_scale().await,
        (Method::POST, true, Some("binding")) => req.bind().await,
        (Method::POST, true, Some("token")) => req.token_request().await,
        (Method::GET, true, Some("log")) => {
            super::logs::proxy(req.state.as_ref(), &req.t, &req.params).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but status (for kinds with a status subresource).
    Main,
    /// Only status.
    Status,
    /// Only `spec.finalizers` (the `finalize` subresource).
    Finalize,
}

/// One request on one target.
struct Req<'a, S> {
    state: &'a Arc<ApiState<S>>,
    t: Target,
    params: Params,
    /// Who asked (`None`: the server itself).
    user: Option<UserInfo>,
    headers: HeaderMap,
    body: Bytes,
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn load(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    Ok(v)
}

/// The stored form of an object: without its resourceVersion (the store's revision is).
fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Renders the response body, as a Table when the client asked for one.
pub fn respond(
    code: StatusCode,
    info: &ResourceInfo,
    obj: Value,
    headers: &HeaderMap,
    params: &Params,
    warnings: &[String],
) -> Response {
    let body = if table::wants_table(headers) {
        let include = params
            .get("includeObject")
            .map(String::as_str)
            .unwrap_or("Metadata");
        table::to_table(info, &obj, include, headers)
    } else {
        obj
    };
    let mut resp = (code, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let mut resp = (code, v.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What admission reads through the state: the config, the Service allocation index, the
/// requester and the RBAC policy.
struct StateAdmission<'a, S> {
    state: &'a Arc<ApiState<S>>,
    user: Option<&'a UserInfo>,
}

impl<S: Store> AdmissionContext for StateAdmission<'_, S> {
    fn config(&self) -> &ApiConfig {
        &self.state.config
    }

    fn user(&self) -> Option<&UserInfo> {
        self.user
    }

    fn policy(&self) -> BoxFuture<'_, Result<Arc<Policy>, ApiError>> {
        Box::pin(self.state.policy.get(&self.state.store))
    }

    fn allocations<'a>(
        &'a self,
        prefix: &'a str,
        skip: (&'a str, &'a str),
    ) -> BoxFuture<'a, Result<Box<dyn InUse + Send + 'a>, ApiError>> {
        Box::pin(async move {
            let used = self
                .state
                .allocations
                .used(&*self.state.store, prefix, skip)
                .await?;
            Ok(Box::new(used) as Box<dyn InUse + Send + 'a>)
        })
    }
}

impl<S: Store> Req<'_, S> {
    fn flag(&self, name: &str) -> bool {
        self.params
            .get(name)
            .is_some_and(|v| v == "true" || v == "1")
    }

    fn invalid(&self, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::Invalid {
            kind: self.t.info.kind.to_string(),
            group: self.t.info.group.to_string(),
            name: name.to_string(),
            causes,
        }
    }

    fn conflict(&self, name: &str) -> ApiError {
        ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            self.t.info.qualified_plural()
        ))
    }

    async fn fetch(&self) -> Result<KeyValue, ApiError> {
        self.state
            .store
            .get(&self.t.key())
            .await?
            .ok_or_else(|| self.t.not_found())
    }

    async fn get(&self) -> Result<Response, ApiError> {
        let kv = self.fetch().await?;
        Ok(respond(
            StatusCode::OK,
            self.t.info,
            load(&kv)?,
            &self.headers,
            &self.params,
            &[],
        ))
    }

    /// Validation (generic metadata rules and the kind's), then the kind's admission (an
    /// allocation) when the object is valid.
    async fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut causes = registry::validation::validate(self.t.info, obj, old);
        if causes.is_empty() {
            let ctx = StateAdmission {
                state: self.state,
                user: self.user.as_ref(),
            };
            causes = self.t.info.strategy.admit(&ctx, obj, old).await?;
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(&name, causes))
        }
    }

    /// A write ticket for kinds whose admission hands out numbers (ClusterIPs, NodePorts): held
    /// from admission until the store write returns, so the allocation index keeps what
    /// admission gave until the store shows it (see `alloc::WriteGate`).
    async fn admission_guard(&self) -> Option<crate::api::alloc::WriteTicket> {
        if self.t.info.strategy.serial_admission() {
            Some(self.state.alloc_lock.lock().await)
        } else {
            None
        }
    }
}

/// Creates an object through the same path as a POST (defaulting, admission, validation), for
/// objects the server itself makes (system namespaces).
pub async fn create_internal<S: Store>(
    state: &Arc<ApiState<S>>,
    group: &str,
    version: &str,
    plural: &str,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<Value, ApiError> {
    let info = registry::lookup(group, version, plural).ok_or(ApiError::NoSuchResource)?;
    let body = serde_json::to_vec(obj).map_err(|e| ApiError::Internal(e.to_string()))?;
    let t = Target {
        info,
        namespace: namespace.map(str::to_string),
        name: None,
        sub: None,
    };
    let req = Req {
        state,
        t,
        params: Params::new(),
        user: None,
        headers: HeaderMap::new(),
        body: Bytes::from(body),
    };
    let resp = req.create().await?;
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Deletes an object through the same path as a DELETE request (graceful deletion,
/// finalizers), with Background propagation.
pub async fn delete_internal<S: Store>(
    state: &Arc<ApiState<S>>,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let t = Target {
        info,
        namespace: namespace.map(str::to_string),
        name: Some(name.to_string()),
        sub: None,
    };
    let req = Req {
        state,
        t,
        params: Params::new(),
        user: None,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    req.delete().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_parse_target_paths() {
        let t = parse_target("", "v1", "namespaces/default/pods/p1/status").expect("parses");
        assert_eq!(
            (
                t.info.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("p1"), Some("status"))
        );
        let t = parse_target("", "v1", "namespaces/default").expect("parses");
        assert_eq!(
            (t.info.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = parse_target("", "v1", "namespaces/kube-system/finalize").expect("parses");
        assert_eq!(
            (t.info.plural, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("kube-system"), Some("finalize"))
        );
        let t = parse_target("apps", "v1", "deployments").expect("parses");
        assert_eq!((t.info.plural, t.namespace), ("deployments", None));
        assert!(parse_target("", "v1", "widgets").is_err());
    }
}
