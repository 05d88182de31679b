//! The resource handlers: create, get, list, update, patch and delete of every served kind, and
//! the status, scale, binding, finalize and log subresources. Objects are JSON in the store under
//! `/registry/<group|core>/<plural>/[<namespace>/]<name>`; resourceVersion is the store revision.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

use super::{
    ApiState, alloc,
    error::{ApiError, Cause},
    new_uid, now_rfc3339, patch,
    selectors::{FieldSelector, LabelSelector, label_selector_string},
    table,
};
use crate::{
    registry::{self, ResourceInfo, convert, defaults, schema, validation},
    store::{KeyValue, Store, StoreError},
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

/// Resolves `rest` (the path after `/api/v1/` or `/apis/<g>/<v>/`) to a served kind.
pub fn parse_target(group: &str, version: &str, rest: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 3
        && segs[0] == "namespaces"
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

/// `POST /api/v1/namespaces/<ns>/bindings` (the form kube-scheduler uses) names the Pod in the
/// Binding's metadata; it is served as `pods/<name>/binding`.
fn binding_collection(group: &str, rest: &str, method: &Method, body: &[u8]) -> Option<Target> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if !group.is_empty()
        || *method != Method::POST
        || segs.len() != 3
        || segs[0] != "namespaces"
        || segs[2] != "bindings"
    {
        return None;
    }
    let binding: Value = serde_json::from_slice(body).ok()?;
    Some(Target {
        info: registry::lookup("", "v1", "pods")?,
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dispatch(&state, "", "v1", &rest, method, params, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `/apis/<group>/<version>/...`
pub async fn group_entry<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dispatch(
        &state, &group, &version, &rest, method, params, headers, body,
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut t = match binding_collection(group, rest, &method, &body) {
        Some(t) => t,
        None => parse_target(group, version, rest)?,
    };
    if let Some(sub) = &t.sub
        && !t.info.has_subresource(sub)
        && !(t.info.kind == "Namespace" && sub == "finalize")
    {
        return Err(ApiError::NoSuchResource);
    }
    let mut body = body;
    if matches!(method, Method::POST | Method::PUT) && !body.is_empty() {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json" | "" | "*/*" => {}
            "application/vnd.kubernetes.protobuf" => {
                let obj = super::protobuf::decode(&body)?;
                body = Bytes::from(obj.to_string());
            }
            _ => {
                return Err(ApiError::UnsupportedMediaType(
                    "application/json, application/vnd.kubernetes.protobuf".into(),
                ));
            }
        }
    }
    // events.k8s.io/v1 is served over the stored core/v1 Events: convert on the way in and out.
    let events_v1 = t.info.group == "events.k8s.io";
    if events_v1 {
        t.info = registry::lookup("", "v1", "events").ok_or(ApiError::NoSuchResource)?;
        if matches!(method, Method::POST | Method::PUT) && !body.is_empty() {
            let obj = decode_body(t.info, &body)?;
            body = Bytes::from(convert::event_to_core(obj).to_string());
        }
    }
    let req = Req {
        state,
        t,
        params,
        headers,
        body,
    };
    if events_v1 {
        let resp = match (&method, req.t.name.is_some()) {
            (&Method::PATCH, true) => req.patch_events_v1().await?,
            (&Method::GET, false) if req.flag("watch") => {
                return super::watch::serve_converted(
                    req.state.clone(),
                    &req.t,
                    &req.params,
                    &req.headers,
                    Some(convert::event_from_core),
                )
                .await;
            }
            _ => Box::pin(route(req, method)).await?,
        };
        return convert_response(resp).await;
    }
    route(req, method).await
}

/// Rewrites a JSON response body from core/v1 Events to events.k8s.io/v1.
async fn convert_response(resp: Response) -> Result<Response, ApiError> {
    let (parts, body) = resp.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .to_bytes();
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Bytes::from(convert::events_response_from_core(v).to_string()),
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
    /// Only `spec.finalizers` (namespaces/finalize).
    Finalize,
}

struct Req<'a, S> {
    state: &'a Arc<ApiState<S>>,
    t: Target,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
}

/// Parses a request body into a JSON object (400 BadRequest otherwise).
pub fn decode_body(info: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: expected an object",
            info.kind, info.version, info.kind
        )));
    }
    Ok(v)
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

/// Kinds whose status is reset on create and kept on main-resource updates.
fn has_status_subresource(info: &ResourceInfo) -> bool {
    info.has_subresource("status")
}

/// Kinds that carry metadata.generation (bumped on spec change).
fn tracks_generation(info: &ResourceInfo) -> bool {
    matches!(
        info.kind,
        "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "Pod"
            | "Service"
            | "Namespace"
            | "NetworkPolicy"
    )
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

fn random_suffix() -> String {
    // kube-apiserver's alphabet for generateName: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

impl<S: Store> Req<'_, S> {
    fn flag(&self, name: &str) -> bool {
        self.params
            .get(name)
            .is_some_and(|v| v == "true" || v == "1")
    }

    fn dry_run(&self) -> bool {
        self.params.get("dryRun").is_some_and(|v| v == "All")
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

    async fn list(&self) -> Result<Response, ApiError> {
        let list = list_consistent(self.state.store.as_ref(), &self.t, &self.params).await?;
        Ok(respond(
            StatusCode::OK,
            self.t.info,
            list,
            &self.headers,
            &self.params,
            &[],
        ))
    }

    /// Unknown-field handling per `fieldValidation` (Strict: 400; Warn, the default: warning;
    /// Ignore). Unknown fields are dropped from the stored object in every mode but Strict.
    fn field_validation(&self, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        let unknown = schema::prune_unknown_fields(self.t.info, obj);
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let mode = self
            .params
            .get("fieldValidation")
            .map(String::as_str)
            .unwrap_or("Warn");
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match mode {
            "Strict" => Err(ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                self.t.info.kind,
                self.t.info.version,
                self.t.info.kind,
                msgs.join(", ")
            ))),
            "Ignore" => Ok(Vec::new()),
            _ => Ok(msgs),
        }
    }

    /// Checks apiVersion/kind of a body against the endpoint.
    fn check_type(&self, obj: &mut Value) -> Result<(), ApiError> {
        let info = self.t.info;
        let (api_version, kind) = (info.api_version(), info.kind);
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && k != kind
        {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({}) does not match the expected API version ({api_version}) or kind {k} does not match {kind}",
                obj["apiVersion"].as_str().unwrap_or_default()
            )));
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
            && av != api_version
        {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({api_version})"
            )));
        }
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        Ok(())
    }

    /// Takes the namespace from the path, refusing a body that names another one.
    fn check_namespace(&self, obj: &mut Value) -> Result<(), ApiError> {
        let meta = meta_mut(obj);
        if !self.t.info.namespaced {
            meta.remove("namespace");
            return Ok(());
        }
        let ns = self
            .t
            .namespace
            .clone()
            .ok_or_else(|| ApiError::BadRequest("namespace is required".into()))?;
        if let Some(body_ns) = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            && body_ns != ns
        {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        meta.insert("namespace".into(), json!(ns));
        Ok(())
    }

    async fn namespace_exists(&self) -> Result<(), ApiError> {
        let Some(ns) = self
            .t
            .namespace
            .as_deref()
            .filter(|_| self.t.info.namespaced)
        else {
            return Ok(());
        };
        let key = registry::lookup("", "v1", "namespaces")
            .map(|i| i.key(None, ns))
            .unwrap_or_default();
        match self.state.store.get(&key).await? {
            Some(kv) => {
                let nso = load(&kv)?;
                if nso["metadata"]["deletionTimestamp"].is_string() {
                    return Err(ApiError::Invalid {
                        kind: self.t.info.kind.to_string(),
                        group: self.t.info.group.to_string(),
                        name: String::new(),
                        causes: vec![Cause::forbidden(
                            "metadata.namespace",
                            &format!(
                                "unable to create new content in namespace {ns} because it is being terminated"
                            ),
                        )],
                    });
                }
                Ok(())
            }
            None => Err(ApiError::NotFound {
                resource: "namespaces".into(),
                name: ns.to_string(),
            }),
        }
    }

    /// Admission that needs the store (Service allocations), then validation.
    async fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut causes = validation::validate(self.t.info, obj, old);
        if causes.is_empty() && self.t.info.kind == "Service" && self.t.info.group.is_empty() {
            let svc_info = self.t.info;
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // The index answers as a fresh list of every Service would, without listing them
            // per admission (which made creating N Services cost O(N^2)).
            let used = self
                .state
                .allocations
                .used(&*self.state.store, &svc_info.prefix(), (&ns, &name))
                .await?;
            causes = alloc::admit_service(&self.state.config, obj, old, &used);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(&name, causes))
        }
    }

    async fn create(&self) -> Result<Response, ApiError> {
        let info = self.t.info;
        let mut obj = decode_body(info, &self.body)?;
        self.check_type(&mut obj)?;
        self.check_namespace(&mut obj)?;
        let warnings = self.field_validation(&mut obj)?;
        let meta = meta_mut(&mut obj);
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        {
            let name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
        for f in [
            "resourceVersion",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if tracks_generation(info) {
            meta.insert("generation".into(), json!(1));
        }
        if has_status_subresource(info) && !matches!(info.kind, "Node" | "Namespace") {
            obj["status"] = json!({});
        }
        if info.kind == "Service" {
            obj["status"] = json!({"loadBalancer": {}});
        }
        defaults::apply(info, &mut obj);
        self.namespace_exists().await?;
        let _guard = if info.kind == "Service" {
            Some(self.state.alloc_lock.lock().await)
        } else {
            None
        };
        self.admit(&mut obj, None).await?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = info.key(self.t.namespace.as_deref(), &name);
        if self.dry_run() {
            return Ok(respond(
                StatusCode::CREATED,
                info,
                obj,
                &self.headers,
                &self.params,
                &warnings,
            ));
        }
        let rev = match self.state.store.create(&key, encode(&obj)?).await {
            Ok(rev) => rev,
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ApiError::AlreadyExists {
                    resource: info.qualified_plural(),
                    name,
                });
            }
            Err(e) => return Err(e.into()),
        };
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        Ok(respond(
            StatusCode::CREATED,
            info,
            obj,
            &self.headers,
            &self.params,
            &warnings,
        ))
    }

    /// Merges a requested new version of an object with the stored one per `part`, runs
    /// defaulting, admission and validation, and writes it with compare-and-swap.
    async fn write_update(
        &self,
        mut obj: Value,
        old_kv: &KeyValue,
        part: Part,
        warnings: Vec<String>,
    ) -> Result<Response, ApiError> {
        let info = self.t.info;
        let old = load(old_kv)?;
        let name = self.t.name.clone().unwrap_or_default();
        if let Some(rv) = obj["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && rv != old_kv.mod_revision.to_string()
        {
            return Err(self.conflict(&name));
        }
        obj = match part {
            Part::Main => {
                if has_status_subresource(info) {
                    match old.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            if let Some(m) = obj.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                obj
            }
            Part::Status => {
                let mut merged = old.clone();
                merged["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                merged
            }
            Part::Finalize => {
                let mut merged = old.clone();
                merged["spec"]["finalizers"] = obj["spec"]
                    .get("finalizers")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                merged
            }
        };
        // Identity and system fields are the server's.
        {
            let old_meta = old["metadata"].clone();
            let meta = meta_mut(&mut obj);
            if let Some(body_name) = meta.get("name").and_then(Value::as_str)
                && body_name != name
            {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            meta.insert("name".into(), json!(name));
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match old_meta.get(f) {
                    Some(v) => meta.insert(f.into(), v.clone()),
                    None => meta.remove(f),
                };
            }
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        obj["apiVersion"] = json!(info.api_version());
        obj["kind"] = json!(info.kind);
        defaults::apply(info, &mut obj);
        if tracks_generation(info) && obj.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut obj).insert("generation".into(), json!(g));
        }
        let _guard = if info.kind == "Service" {
            Some(self.state.alloc_lock.lock().await)
        } else {
            None
        };
        self.admit(&mut obj, Some(&old)).await?;
        if self.dry_run() {
            return Ok(respond(
                StatusCode::OK,
                info,
                obj,
                &self.headers,
                &self.params,
                &warnings,
            ));
        }
        let key = self.t.key();
        // An object being deleted whose finalizers are all gone is removed now.
        let finalizers_done = obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
            && obj["spec"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        let graceful = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|g| g > 0);
        if obj["metadata"]["deletionTimestamp"].is_string() && finalizers_done && !graceful {
            let (_, rev) = self
                .state
                .store
                .delete(&key, Some(old_kv.mod_revision))
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => self.conflict(&name),
                    other => other.into(),
                })?;
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
            return Ok(respond(
                StatusCode::OK,
                info,
                obj,
                &self.headers,
                &self.params,
                &warnings,
            ));
        }
        let rev = self
            .state
            .store
            .update(&key, encode(&obj)?, old_kv.mod_revision)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => self.conflict(&name),
                StoreError::NotFound(_) => self.t.not_found(),
                other => other.into(),
            })?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        Ok(respond(
            StatusCode::OK,
            info,
            obj,
            &self.headers,
            &self.params,
            &warnings,
        ))
    }

    async fn update(&self, part: Part) -> Result<Response, ApiError> {
        let mut obj = decode_body(self.t.info, &self.body)?;
        self.check_type(&mut obj)?;
        self.check_namespace(&mut obj)?;
        let warnings = self.field_validation(&mut obj)?;
        let old_kv = self.fetch().await?;
        self.write_update(obj, &old_kv, part, warnings).await
    }

    async fn patch(&self, part: Part) -> Result<Response, ApiError> {
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let ty = patch::PatchType::from_content_type(ct)?;
        if ty == patch::PatchType::Apply {
            if self.params.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::Invalid {
                    kind: "PatchOptions".into(),
                    group: "meta.k8s.io".into(),
                    name: String::new(),
                    causes: vec![Cause::required(
                        "fieldManager",
                        "is required for apply patch",
                    )],
                });
            }
            if part == Part::Main && self.state.store.get(&self.t.key()).await?.is_none() {
                let body = decode_body(self.t.info, &self.body)?;
                let name = self.t.name.as_deref().unwrap_or_default();
                if body["metadata"]["name"].as_str() != Some(name) {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        body["metadata"]["name"].as_str().unwrap_or_default()
                    )));
                }
                return self.create().await;
            }
        }
        // A patch races other writers only between our read and our write: retry on conflict
        // as kube-apiserver does, unless the patch itself pins a resourceVersion.
        for _ in 0..5 {
            let old_kv = self.fetch().await?;
            let mut obj = load(&old_kv)?;
            let pinned = obj["metadata"]["resourceVersion"].clone();
            patch::apply(ty, &mut obj, &self.body)?;
            if obj["metadata"]["resourceVersion"] == pinned {
                meta_mut(&mut obj).remove("resourceVersion");
            }
            self.check_type(&mut obj)?;
            let warnings = self.field_validation(&mut obj)?;
            match self.write_update(obj, &old_kv, part, warnings).await {
                Err(ApiError::Conflict(msg))
                    if !msg.is_empty() && !body_pins_version(&self.body) =>
                {
                    continue;
                }
                other => return other,
            }
        }
        Err(self.conflict(self.t.name.as_deref().unwrap_or_default()))
    }

    /// PATCH of an events.k8s.io/v1 Event: the patch applies to the events.k8s.io view of the
    /// stored core Event, which is then written back in core form.
    async fn patch_events_v1(&self) -> Result<Response, ApiError> {
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let ty = patch::PatchType::from_content_type(ct)?;
        for _ in 0..5 {
            let old_kv = self.fetch().await?;
            let mut view = convert::event_from_core(load(&old_kv)?);
            let pinned = view["metadata"]["resourceVersion"].clone();
            patch::apply(ty, &mut view, &self.body)?;
            let mut obj = convert::event_to_core(view);
            if obj["metadata"]["resourceVersion"] == pinned {
                meta_mut(&mut obj).remove("resourceVersion");
            }
            let warnings = self.field_validation(&mut obj)?;
            match self.write_update(obj, &old_kv, Part::Main, warnings).await {
                Err(ApiError::Conflict(_)) if !body_pins_version(&self.body) => continue,
                other => return other,
            }
        }
        Err(self.conflict(self.t.name.as_deref().unwrap_or_default()))
    }

    fn delete_options(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))
    }

    async fn delete(&self) -> Result<Response, ApiError> {
        let opts = self.delete_options()?;
        let grace_param = self
            .params
            .get("gracePeriodSeconds")
            .and_then(|v| v.parse::<i64>().ok())
            .or_else(|| opts["gracePeriodSeconds"].as_i64());
        let propagation = self
            .params
            .get("propagationPolicy")
            .cloned()
            .or_else(|| opts["propagationPolicy"].as_str().map(str::to_string))
            .unwrap_or_else(|| "Background".into());
        let name = self.t.name.clone().unwrap_or_default();
        for _ in 0..5 {
            let kv = self.fetch().await?;
            let mut obj = load(&kv)?;
            if let Some(uid) = opts["preconditions"]["uid"].as_str()
                && obj["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    obj["metadata"]["uid"].as_str().unwrap_or_default()
                )));
            }
            if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str()
                && rv != kv.mod_revision.to_string()
            {
                return Err(self.conflict(&name));
            }
            let info = self.t.info;
            let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let propagation_finalizer = match propagation.as_str() {
                "Foreground" => Some("foregroundDeletion"),
                "Orphan" => Some("orphan"),
                _ => None,
            };
            if let Some(f) = propagation_finalizer
                && !finalizers.contains(&json!(f))
            {
                finalizers.push(json!(f));
            }
            // Graceful deletion of a Pod bound to a node: the node's agent stops it and deletes
            // it finally with gracePeriodSeconds=0 (pkg/registry/core/pod/strategy.go CheckGracefulDelete).
            let pod_grace = if info.kind == "Pod" && info.group.is_empty() {
                let bound = obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
                let terminal = matches!(
                    obj["status"]["phase"].as_str(),
                    Some("Succeeded" | "Failed")
                );
                let grace = grace_param.unwrap_or_else(|| {
                    obj["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                });
                if bound && !terminal && grace > 0 {
                    Some(grace)
                } else {
                    None
                }
            } else {
                None
            };
            let namespace_finalizers = info.kind == "Namespace"
                && obj["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
            let needs_wait = !finalizers.is_empty() || pod_grace.is_some() || namespace_finalizers;
            if !needs_wait {
                if self.dry_run() {
                    return Ok(respond(
                        StatusCode::OK,
                        info,
                        obj,
                        &self.headers,
                        &self.params,
                        &[],
                    ));
                }
                match self
                    .state
                    .store
                    .delete(&kv.key, Some(kv.mod_revision))
                    .await
                {
                    Ok((_, rev)) => {
                        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                        return Ok(respond(
                            StatusCode::OK,
                            info,
                            obj,
                            &self.headers,
                            &self.params,
                            &[],
                        ));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => return Err(self.t.not_found()),
                    Err(e) => return Err(e.into()),
                }
            }
            // Mark for deletion; finalizers (GC, namespace controller) or the agent finish it.
            let meta = meta_mut(&mut obj);
            let already = meta.get("deletionTimestamp").is_some();
            let now = jiff::Timestamp::now();
            let grace = pod_grace.unwrap_or(0);
            let shorter = meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_none_or(|g| grace < g);
            if !already || shorter {
                let at = now + jiff::SignedDuration::from_secs(grace);
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            meta.insert("finalizers".into(), Value::Array(finalizers));
            meta.remove("resourceVersion");
            if info.kind == "Namespace" {
                obj["status"]["phase"] = json!("Terminating");
            }
            if self.dry_run() {
                return Ok(respond(
                    StatusCode::OK,
                    info,
                    obj,
                    &self.headers,
                    &self.params,
                    &[],
                ));
            }
            match self
                .state
                .store
                .update(&kv.key, encode(&obj)?, kv.mod_revision)
                .await
            {
                Ok(rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(respond(
                        StatusCode::ACCEPTED,
                        info,
                        obj,
                        &self.headers,
                        &self.params,
                        &[],
                    ));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.conflict(&name))
    }

    async fn delete_collection(&self) -> Result<Response, ApiError> {
        let mut params = self.params.clone();
        params.remove("limit");
        params.remove("continue");
        let list = list_objects(self.state.store.as_ref(), &self.t, &params).await?;
        for item in list["items"].as_array().into_iter().flatten() {
            let t = Target {
                info: self.t.info,
                namespace: item["metadata"]["namespace"].as_str().map(str::to_string),
                name: item["metadata"]["name"].as_str().map(str::to_string),
                sub: None,
            };
            let req = Req {
                state: self.state,
                t,
                params: self.params.clone(),
                headers: HeaderMap::new(),
                body: self.body.clone(),
            };
            match req.delete().await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(respond(
            StatusCode::OK,
            self.t.info,
            list,
            &self.headers,
            &self.params,
            &[],
        ))
    }

    async fn get_scale(&self) -> Result<Response, ApiError> {
        let obj = load(&self.fetch().await?)?;
        Ok(json_ok(scale_of(&obj)))
    }

    async fn update_scale(&self) -> Result<Response, ApiError> {
        let name = self.t.name.clone().unwrap_or_default();
        for _ in 0..5 {
            let kv = self.fetch().await?;
            let obj = load(&kv)?;
            let mut scale = scale_of(&obj);
            let is_patch = self
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("patch"));
            if is_patch {
                let ct = self
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                patch::apply(
                    patch::PatchType::from_content_type(ct)?,
                    &mut scale,
                    &self.body,
                )?;
            } else {
                scale = decode_body(self.t.info, &self.body)?;
                if let Some(rv) = scale["metadata"]["resourceVersion"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    && rv != kv.mod_revision.to_string()
                {
                    return Err(self.conflict(&name));
                }
            }
            let replicas = &scale["spec"]["replicas"];
            if replicas.as_i64().is_none_or(|r| r < 0) && !replicas.is_null() {
                return Err(ApiError::Invalid {
                    kind: "Scale".into(),
                    group: "autoscaling".into(),
                    name,
                    causes: vec![Cause::invalid(
                        "spec.replicas",
                        replicas,
                        "must be greater than or equal to 0",
                    )],
                });
            }
            let mut updated = obj.clone();
            updated["spec"]["replicas"] = json!(replicas.as_i64().unwrap_or(0));
            meta_mut(&mut updated).remove("resourceVersion");
            match self
                .write_update(updated, &kv, Part::Main, Vec::new())
                .await
            {
                Ok(_) => {
                    let fresh = load(&self.fetch().await?)?;
                    return Ok(json_ok(scale_of(&fresh)));
                }
                Err(ApiError::Conflict(_)) if is_patch => continue,
                Err(e) => return Err(e),
            }
        }
        Err(self.conflict(&name))
    }

    /// pods/binding: sets spec.nodeName once (409 if the Pod is bound already).
    async fn bind(&self) -> Result<Response, ApiError> {
        let binding = decode_body(self.t.info, &self.body)?;
        let node = binding["target"]["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Invalid {
                kind: "Binding".into(),
                group: String::new(),
                name: self.t.name.clone().unwrap_or_default(),
                causes: vec![Cause::required("target.name", "")],
            })?;
        let name = self.t.name.clone().unwrap_or_default();
        for _ in 0..5 {
            let kv = self.fetch().await?;
            let mut pod = load(&kv)?;
            if let Some(uid) = binding["metadata"]["uid"].as_str()
                && pod["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}"
                )));
            }
            if pod["metadata"]["deletionTimestamp"].is_string() {
                return Err(ApiError::Conflict(format!(
                    "pod {name} is being deleted, cannot be assigned to a host"
                )));
            }
            if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
                return Err(ApiError::Conflict(format!(
                    "pod {name} is already assigned to node \"{bound}\""
                )));
            }
            pod["spec"]["nodeName"] = json!(node);
            let now = now_rfc3339();
            let mut conditions: Vec<Value> = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
            pod["status"]["conditions"] = Value::Array(conditions);
            meta_mut(&mut pod).remove("resourceVersion");
            match self
                .state
                .store
                .update(&kv.key, encode(&pod)?, kv.mod_revision)
                .await
            {
                Ok(_) => {
                    return Ok(json_created(
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    ));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.conflict(&name))
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

/// Deletes an object through the same path as a DELETE request (graceful Pod deletion,
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
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    req.delete().await.map(|_| ())
}

fn body_pins_version(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|v| v["metadata"]["resourceVersion"].is_string())
}

fn json_ok(v: Value) -> Response {
    let mut resp = (StatusCode::OK, v.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_created(v: Value) -> Response {
    let mut resp = (StatusCode::CREATED, v.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": label_selector_string(&obj["spec"]["selector"]),
        },
    })
}

/// How long a list waits for the store to reach a resourceVersion it has not seen yet before
/// answering 504 "Too large resource version" (the watch cache's `blockTimeout`).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The apiVersion field of continue tokens (apiserver's storage.EncodeContinue format).
const CONTINUE_VERSION: &str = "meta.k8s.io/v1";

/// kube-apiserver's message when an exact list revision is compacted.
const EXPIRED_LIST: &str = "The resourceVersion for the provided list is too old.";

/// The continue token: `{"v":"meta.k8s.io/v1","rv":<revision of the first page>,"start":<key>}`
/// in unpadded URL-safe base64, as kube-apiserver encodes it. `start` is the key to resume at,
/// relative to the list prefix: the last returned key followed by NUL, the smallest key after it.
fn encode_continue(rev: i64, prefix: &str, last_key: &str) -> String {
    let start = format!("{}\0", last_key.strip_prefix(prefix).unwrap_or(last_key));
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": CONTINUE_VERSION, "rv": rev, "start": start}).to_string())
}

/// Decodes a continue token of the list under `prefix` into the revision of its first page (-1:
/// the latest) and the key the next page starts after.
fn decode_continue(token: &str, prefix: &str) -> Result<(i64, String), ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("invalid continue token: {why}"));
    const INVALID: &str = "continue key is not valid";
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| bad(&format!("{INVALID}: {e}")))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(&format!("{INVALID}: {e}")))?;
    if v["v"].as_str() != Some(CONTINUE_VERSION) {
        return Err(bad(&format!(
            "{INVALID}: server does not recognize this encoded version {}",
            v["v"].as_str().unwrap_or_default()
        )));
    }
    let rev = v["rv"].as_i64().unwrap_or(0);
    if rev == 0 {
        return Err(bad(&format!(
            "{INVALID}: incorrect encoded start resourceVersion (version {CONTINUE_VERSION})"
        )));
    }
    let start = v["start"].as_str().unwrap_or_default();
    if start.is_empty() {
        return Err(bad(&format!(
            "{INVALID}: encoded start key empty (version {CONTINUE_VERSION})"
        )));
    }
    // The key must not climb out of the prefix (the apiserver requires path.Clean(key) == key),
    // and this server's tokens always resume right after a key (the trailing NUL).
    let rel = start.strip_prefix('/').unwrap_or(start);
    let clean = !rel.is_empty()
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    match rel.strip_suffix('\0') {
        Some(after) if clean && !after.is_empty() => Ok((rev, format!("{prefix}{after}"))),
        _ => Err(bad(&format!("{INVALID}: {start}"))),
    }
}

/// Which revision a list reads, from its query (the apiserver's ListOptions rules).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadAt {
    /// The current revision (resourceVersion unset or "0").
    Latest,
    /// At least this revision: the current one once the store has reached it.
    NotOlderThan(i64),
    /// Exactly this revision.
    Exact(i64),
}

/// The `ListOptions.meta.k8s.io "" is invalid` error of malformed list options.
fn invalid_list_options(causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        kind: "ListOptions".into(),
        group: "meta.k8s.io".into(),
        name: String::new(),
        causes,
    }
}

/// Validates resourceVersion / resourceVersionMatch / continue as kube-apiserver does
/// (apimachinery ValidateListOptions, storage ValidateListOptions) and resolves what to read.
/// See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions.
fn read_at(params: &Params, limit: usize, continuing: bool) -> Result<ReadAt, ApiError> {
    let rv = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let matching = params
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or_default();
    let field = "resourceVersionMatch";
    let mut causes = Vec::new();
    if !matching.is_empty() {
        if rv.is_empty() {
            causes.push(Cause::forbidden(
                field,
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if continuing {
            causes.push(Cause::forbidden(
                field,
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if matching != "Exact" && matching != "NotOlderThan" {
            causes.push(Cause::not_supported(
                field,
                &json!(matching),
                &["Exact", "NotOlderThan", ""],
            ));
        }
        if matching == "Exact" && rv == "0" {
            causes.push(Cause::forbidden(
                field,
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid_list_options(causes));
    }
    if continuing {
        if !rv.is_empty() && rv != "0" {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        // The token's revision decides.
        return Ok(ReadAt::Latest);
    }
    if rv.is_empty() {
        return Ok(ReadAt::Latest);
    }
    let parsed = rv.parse::<u64>().ok().and_then(|r| i64::try_from(r).ok());
    let Some(rev) = parsed else {
        return Err(ApiError::BadRequest(format!(
            "invalid resource version: resourceVersion: Invalid value: \"{rv}\": must be a non-negative integer"
        )));
    };
    Ok(match matching {
        "Exact" => ReadAt::Exact(rev),
        // Unset match with a limit reads exactly that revision (the legacy paging rule).
        "" if limit > 0 && rev > 0 => ReadAt::Exact(rev),
        _ if rev == 0 => ReadAt::Latest,
        _ => ReadAt::NotOlderThan(rev),
    })
}

/// Waits up to [`FRESHNESS_WAIT`] for the store to reach `rev`; TooLarge when it does not.
async fn wait_for_revision<S: Store>(store: &S, rev: i64) -> Result<(), ApiError> {
    let current = store.current_revision().await?;
    if current >= rev {
        return Ok(());
    }
    // Any write anywhere moves the revision: watch every key from the current revision.
    let mut changes = store.watch("", current).await?;
    let reached = tokio::time::timeout(FRESHNESS_WAIT, async {
        while let Some(change) = changes.next().await {
            if change?.revision() >= rev {
                return Ok(true);
            }
        }
        Ok::<_, StoreError>(false)
    })
    .await;
    match reached {
        Ok(Ok(true)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(false)) | Err(_) => Err(ApiError::TooLargeResourceVersion {
            requested: rev,
            current: store.current_revision().await?,
        }),
    }
}

/// Lists objects of `t` (one namespace or all) with selectors and paging applied, as a `<Kind>List`.
pub async fn list_objects<S: Store>(
    store: &S,
    t: &Target,
    params: &Params,
) -> Result<Value, ApiError> {
    list_consistent(store, t, params).await
}

/// Reads the list at the revision its query asks for. Every page of a paginated list is read at
/// the revision of the first page, which the continue token carries, so objects created,
/// changed or deleted between pages do not show up (KEP-365 API chunking).
async fn list_consistent<S: Store>(
    store: &S,
    t: &Target,
    params: &Params,
) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let fields = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0);
    let prefix = t.info.list_prefix(t.namespace.as_deref());
    let token = params.get("continue").filter(|c| !c.is_empty());
    let at = read_at(params, limit, token.is_some())?;
    let listed = match token {
        Some(token) => {
            let (rev, start) = decode_continue(token, &prefix)?;
            let listed = if rev < 0 {
                store.list(&prefix, Some(&start), limit).await
            } else {
                store.list_at(&prefix, Some(&start), limit, rev).await
            };
            match listed {
                Err(StoreError::Compacted { .. }) => {
                    let resume = json!({"v": CONTINUE_VERSION, "rv": -1, "start": format!(
                        "{}\0",
                        start.strip_prefix(&prefix).unwrap_or(&start)
                    )});
                    return Err(ApiError::ContinueExpired {
                        resume: base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(resume.to_string()),
                    });
                }
                Err(StoreError::FutureRevision { requested, current }) => {
                    return Err(ApiError::TooLargeResourceVersion { requested, current });
                }
                other => other?,
            }
        }
        None => match at {
            ReadAt::Latest => store.list(&prefix, None, limit).await?,
            ReadAt::NotOlderThan(rev) => {
                wait_for_revision(store, rev).await?;
                store.list(&prefix, None, limit).await?
            }
            ReadAt::Exact(rev) => {
                wait_for_revision(store, rev).await?;
                match store.list_at(&prefix, None, limit, rev).await {
                    Err(StoreError::Compacted { .. }) => {
                        return Err(ApiError::Gone(EXPIRED_LIST.into()));
                    }
                    other => other?,
                }
            }
        },
    };
    let mut items = Vec::new();
    for kv in &listed.items {
        let obj = load(kv)?;
        if labels.matches(&obj["metadata"]["labels"]) && fields.matches(&obj) {
            items.push(obj);
        }
    }
    let mut meta = json!({"resourceVersion": listed.revision.to_string()});
    if listed.more
        && let Some(last) = listed.items.last()
    {
        meta["continue"] = json!(encode_continue(listed.revision, &prefix, &last.key));
    }
    Ok(json!({
        "kind": t.info.list_kind(),
        "apiVersion": t.info.api_version(),
        "metadata": meta,
        "items": items,
    }))
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

    #[test]
    fn api_continue_token_roundtrip() {
        let prefix = "/registry/core/pods/default/";
        let tok = encode_continue(42, prefix, "/registry/core/pods/default/p");
        assert_eq!(
            decode_continue(&tok, prefix).expect("decodes"),
            (42, "/registry/core/pods/default/p".to_string())
        );
        // The apiserver's encoding of the same position.
        let raw = r#"{"v":"meta.k8s.io/v1","rv":42,"start":"p\u0000"}"#;
        let theirs = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            decode_continue(&theirs, prefix).expect("decodes").1,
            format!("{prefix}p")
        );
        assert!(decode_continue("!!", prefix).is_err());
        for bad in [
            r#"{"v":"meta.k8s.io/v1","rv":0,"start":"p\u0000"}"#,
            r#"{"v":"meta.k8s.io/v1","rv":4,"start":""}"#,
            r#"{"v":"meta.k8s.io/v1","rv":4,"start":"../kube-system/p\u0000"}"#,
            r#"{"v":"meta.k8s.io/v2","rv":4,"start":"p\u0000"}"#,
        ] {
            let tok = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bad);
            assert!(
                matches!(decode_continue(&tok, prefix), Err(ApiError::BadRequest(_))),
                "{bad} must be refused"
            );
        }
    }
}
