//! The API server's Prometheus metrics (`GET /metrics`) and the layer that feeds them: every
//! request is classified from its method, path and query alone (kube-apiserver's
//! `RequestInfoFactory`, `staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`),
//! counted and timed under kube-apiserver's metric names and labels
//! (`staging/src/k8s.io/apiserver/pkg/endpoints/metrics/metrics.go`), and logged as one
//! `tracing` span.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64},
    },
    time::Instant,
};

use axum::{
    body::Body,
    extract::{Query, Request, State},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracing::Instrument as _;

/// kube-apiserver's buckets of `apiserver_request_duration_seconds` (metrics.go).
pub const REQUEST_DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The `component` label of every request metric (`metrics.APIServerComponent`).
const COMPONENT: &str = "apiserver";

/// Subresources whose requests are long-running (kube-apiserver's
/// `BasicLongRunningRequestCheck(sets.NewString("watch", "proxy"), sets.NewString("attach",
/// "exec", "proxy", "log", "portforward"))`).
const LONG_RUNNING_SUBRESOURCES: &[&str] = &["attach", "exec", "proxy", "log", "portforward"];

/// Subresources of a Namespace that are not a resource nested in it (requestinfo.go
/// `namespaceSubresources`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Non-resource paths reported with the path as `subresource`, as kube-apiserver instruments
/// its health, metrics and version handlers; other non-resource paths (discovery, OpenAPI and
/// unknown paths) get empty labels so a scan of random paths cannot grow the metrics.
const REPORTED_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/metrics", "/version"];

/// What a request asks for, as kube-apiserver's `RequestInfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Whether the path names an API resource (under `/api/v1` or `/apis/<group>/<version>`).
    pub is_resource_request: bool,
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection
    /// for resources; the lower-cased HTTP method for other paths.
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// Classifies a request from its method, path and raw query, without knowing which kinds are
/// served (requestinfo.go `NewRequestInfo`).
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let mut info = RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut rest: &[&str] = match parts.as_slice() {
        ["api", version, rest @ ..] => {
            info.api_version = (*version).to_string();
            rest
        }
        ["apis", group, version, rest @ ..] => {
            info.api_group = (*group).to_string();
            info.api_version = (*version).to_string();
            rest
        }
        _ => return info,
    };
    // /api/v1 and /apis/<group>/<version> themselves are discovery, not resources.
    if rest.is_empty() || rest == [""] {
        info.api_group.clear();
        info.api_version.clear();
        return info;
    }
    info.is_resource_request = true;
    info.verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_string();
    // The deprecated `/api/v1/watch/...` form.
    if rest.first() == Some(&"watch") {
        info.verb = "watch".into();
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces")
        && let Some(ns) = rest.get(1)
    {
        info.namespace = (*ns).to_string();
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    info.resource = rest.first().map(|s| (*s).to_string()).unwrap_or_default();
    info.name = rest.get(1).map(|s| (*s).to_string()).unwrap_or_default();
    if info.verb != "watch" {
        info.subresource = rest.get(2).map(|s| (*s).to_string()).unwrap_or_default();
    }
    if info.name.is_empty() && info.verb == "get" {
        let params = query_params(query);
        let watch = params.get("watch").is_some_and(|v| v == "true" || v == "1");
        info.verb = if watch { "watch" } else { "list" }.into();
        // A list of one name (`fieldSelector=metadata.name=x`, as `kubectl get x -w` sends) is
        // a request for that object.
        if let Some(name) = params.get("fieldSelector").and_then(|s| exact_name(s)) {
            info.name = name;
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".into();
    }
    info
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    let Some(q) = query else {
        return HashMap::new();
    };
    let uri: http::Uri = match format!("/?{q}").parse() {
        Ok(u) => u,
        Err(_) => return HashMap::new(),
    };
    Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|Query(p)| p)
        .unwrap_or_default()
}

/// The name a field selector requires exactly (`metadata.name=x` or `metadata.name==x`), if
/// that is its only requirement.
fn exact_name(selector: &str) -> Option<String> {
    let name = selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="))?;
    let valid = !name.is_empty() && !name.contains([',', '/', '%', '=', '!']);
    valid.then(|| name.to_string())
}

impl RequestInfo {
    /// Whether the request stays open (watches, logs, exec ...) and so is not in flight in the
    /// max-in-flight sense.
    pub fn is_long_running(&self) -> bool {
        self.is_resource_request
            && (self.verb == "watch"
                || self.verb == "proxy"
                || LONG_RUNNING_SUBRESOURCES.contains(&self.subresource.as_str()))
    }

    /// Whether the request only reads (max-in-flight's `nonMutatingRequestVerbs`).
    pub fn is_read_only(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// The `verb` label of the request metrics (metrics.go `CleanVerb`): upper case, POST for
    /// create, PUT for update, APPLY for a server-side apply patch, LIST and WATCH told apart.
    pub fn metric_verb(&self, method: &Method, content_type: Option<&str>) -> String {
        if !self.is_resource_request {
            return method.as_str().to_string();
        }
        match self.verb.as_str() {
            // pods/exec, attach and portforward are CONNECT actions; pods/log is a GET.
            _ if matches!(self.subresource.as_str(), "exec" | "attach" | "portforward") => {
                "CONNECT".into()
            }
            "create" => "POST".into(),
            "update" => "PUT".into(),
            "patch"
                if content_type
                    .is_some_and(|ct| ct.starts_with("application/apply-patch+yaml")) =>
            {
                "APPLY".into()
            }
            other => other.to_ascii_uppercase(),
        }
    }

    /// The `scope` label (metrics.go `CleanScope`).
    pub fn scope(&self) -> &'static str {
        if !self.name.is_empty() || self.verb == "create" {
            "resource"
        } else if !self.namespace.is_empty() {
            "namespace"
        } else if self.is_resource_request {
            "cluster"
        } else {
            ""
        }
    }
}

/// Labels of `apiserver_request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub dry_run: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
    pub code: String,
}

/// Labels of `apiserver_request_duration_seconds` and `apiserver_longrunning_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub verb: String,
    pub dry_run: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
}

impl RouteLabels {
    fn with_code(&self, code: u16) -> RequestLabels {
        RequestLabels {
            verb: self.verb.clone(),
            dry_run: self.dry_run.clone(),
            group: self.group.clone(),
            version: self.version.clone(),
            resource: self.resource.clone(),
            subresource: self.subresource.clone(),
            scope: self.scope.clone(),
            component: self.component.clone(),
            code: code.to_string(),
        }
    }
}

/// Labels of `apiserver_longrunning_requests` (no `dry_run`, as in kube-apiserver).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LongRunningLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
}

/// Labels of `apiserver_current_inflight_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InflightLabels {
    /// `readOnly` or `mutating`.
    pub request_kind: String,
}

/// Labels of `apiserver_watch_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub group: String,
    pub version: String,
    pub resource: String,
}

/// Labels of `apiserver_storage_objects`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// `<plural>` for the core group, `<plural>.<group>` otherwise (as kube-apiserver's
    /// `schema.GroupResource.String()`).
    pub resource: String,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// The API server's metrics.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    inflight: Family<InflightLabels, Gauge>,
    long_running: Family<LongRunningLabels, Gauge>,
    watch_events: Family<WatchLabels, Counter>,
    storage_objects: Family<StorageLabels, Gauge<i64, AtomicI64>>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        let inflight = Family::<InflightLabels, Gauge>::default();
        let long_running = Family::<LongRunningLabels, Gauge>::default();
        let watch_events = Family::<WatchLabels, Counter>::default();
        let storage_objects = Family::<StorageLabels, Gauge<i64, AtomicI64>>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
            durations.clone(),
        );
        registry.register(
            "apiserver_current_inflight_requests",
            "Maximal number of currently used inflight request limit of this apiserver per request kind in last second.",
            inflight.clone(),
        );
        registry.register(
            "apiserver_longrunning_requests",
            "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.",
            long_running.clone(),
        );
        registry.register(
            "apiserver_watch_events",
            "Number of events sent in watch clients",
            watch_events.clone(),
        );
        registry.register(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind.",
            storage_objects.clone(),
        );
        // Both kinds are always reported, even at zero, as kube-apiserver does.
        for kind in ["readOnly", "mutating"] {
            let _ = inflight.get_or_create(&InflightLabels {
                request_kind: kind.into(),
            });
        }
        Self {
            registry,
            requests,
            durations,
            inflight,
            long_running,
            watch_events,
            storage_objects,
        }
    }
}

impl ApiMetrics {
    /// Every metric in the text format (OpenMetrics, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Sets `apiserver_storage_objects` of one resource.
    pub fn set_storage_objects(&self, resource: &str, count: i64) {
        self.storage_objects
            .get_or_create(&StorageLabels {
                resource: resource.to_string(),
            })
            .set(count);
    }

    /// Forgets every `apiserver_storage_objects` series (before a recount).
    pub fn clear_storage_objects(&self) {
        self.storage_objects.clear();
    }

    /// The value of `apiserver_request_total` for `labels` (tests and benches).
    pub fn request_count(&self, labels: &RequestLabels) -> u64 {
        self.requests.get(labels).map_or(0, |c| c.get())
    }

    fn observe(&self, route: &RouteLabels, code: u16, elapsed: f64) {
        self.requests.get_or_create(&route.with_code(code)).inc();
        self.durations.get_or_create(route).observe(elapsed);
    }
}

/// `GET /metrics`.
pub async fn serve(metrics: Arc<ApiMetrics>) -> Response {
    let mut resp = metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// What the layer knows of a request once it is classified.
struct Tracked {
    metrics: Arc<ApiMetrics>,
    route: RouteLabels,
    started: Instant,
    code: u16,
    /// Held while the request runs: the in-flight or long-running gauge it raised.
    gauge: Gauge,
    span: tracing::Span,
}

impl Drop for Tracked {
    /// Runs when the answer is complete: at once for an ordinary request, when the stream ends
    /// or the client goes away for a watch (kube-apiserver records a watch when it ends too).
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.gauge.dec();
        self.metrics
            .observe(&self.route, self.code, elapsed.as_secs_f64());
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.record("status", self.code);
        self.span.record("latency_ms", latency_ms);
        tracing::debug!(parent: &self.span, status = self.code, latency_ms, "request done");
    }
}

/// The layer: classifies, counts in flight, times and logs every request.
pub async fn track(State(metrics): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let info = classify(&method, req.uri().path(), req.uri().query());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let verb = info.metric_verb(&method, content_type);
    let dry_run = req
        .uri()
        .query()
        .is_some_and(|q| query_params(Some(q)).contains_key("dryRun"));
    let reported_path = req.uri().path().trim_end_matches('/');
    let subresource = if info.is_resource_request {
        info.subresource.clone()
    } else if REPORTED_PATHS
        .iter()
        .any(|p| reported_path == *p || reported_path.starts_with(&format!("{p}/")))
    {
        reported_path.to_string()
    } else {
        String::new()
    };
    let route = RouteLabels {
        verb,
        dry_run: if dry_run { "All".into() } else { String::new() },
        group: info.api_group.clone(),
        version: info.api_version.clone(),
        resource: info.resource.clone(),
        subresource,
        scope: info.scope().into(),
        component: COMPONENT.into(),
    };
    let long_running = info.is_long_running();
    let gauge = if long_running {
        metrics
            .long_running
            .get_or_create(&LongRunningLabels {
                verb: route.verb.clone(),
                group: route.group.clone(),
                version: route.version.clone(),
                resource: route.resource.clone(),
                subresource: route.subresource.clone(),
                scope: route.scope.clone(),
                component: route.component.clone(),
            })
            .clone()
    } else {
        let kind = if info.is_read_only() {
            "readOnly"
        } else {
            "mutating"
        };
        metrics
            .inflight
            .get_or_create(&InflightLabels {
                request_kind: kind.into(),
            })
            .clone()
    };
    gauge.inc();
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %req.uri().path(),
        verb = %info.verb,
        resource = %info.resource,
        subresource = %info.subresource,
        namespace = %info.namespace,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let mut tracked = Tracked {
        metrics: Arc::clone(&metrics),
        route,
        started,
        code: resp.status().as_u16(),
        gauge,
        span,
    };
    if !long_running {
        drop(tracked);
        return resp;
    }
    // A long-running answer is accounted for when its body ends; a watch's events are counted
    // as they leave (one JSON line each).
    let watch = (info.verb == "watch").then(|| {
        metrics
            .watch_events
            .get_or_create(&WatchLabels {
                group: info.api_group.clone(),
                version: info.api_version.clone(),
                resource: info.resource.clone(),
            })
            .clone()
    });
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        if let (Ok(bytes), Some(counter)) = (&chunk, &watch) {
            let events = bytes.iter().filter(|b| **b == b'\n').count();
            counter.inc_by(events as u64);
        }
        // Keeps the accounting alive for as long as the stream is.
        let _ = &mut tracked;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Keeps `apiserver_storage_objects` current: counts every resource's keys once (a page at a
/// time, so a large store is never held in memory), then follows the store's changes.
/// Objects are stored under `/registry/<group|core>/<plural>/...`, so the resource is read off
/// the key and no kind needs to be known here.
pub async fn count_storage_objects<S: crate::store::Store>(
    store: Arc<S>,
    metrics: Arc<ApiMetrics>,
    synced: Arc<AtomicU64>,
) {
    const PAGE: usize = 1000;
    loop {
        let mut counts: HashMap<String, i64> = HashMap::new();
        let mut after: Option<String> = None;
        let mut revision = None;
        let listed = loop {
            let page = match (revision, &after) {
                (Some(rev), Some(a)) => store.list_at("/registry/", Some(a), PAGE, rev).await,
                _ => store.list("/registry/", None, PAGE).await,
            };
            match page {
                Ok(page) => {
                    revision.get_or_insert(page.revision);
                    for kv in &page.items {
                        if let Some(r) = resource_of_key(&kv.key) {
                            *counts.entry(r).or_default() += 1;
                        }
                    }
                    after = page.items.last().map(|kv| kv.key.clone());
                    if !page.more || after.is_none() {
                        break revision;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "counting stored objects");
                    break None;
                }
            }
        };
        let Some(revision) = listed else {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        };
        metrics.clear_storage_objects();
        for (r, n) in &counts {
            metrics.set_storage_objects(r, *n);
        }
        synced.store(
            u64::try_from(revision).unwrap_or_default().max(1),
            std::sync::atomic::Ordering::Release,
        );
        let Ok(mut changes) = store.watch("/registry/", revision).await else {
            continue;
        };
        while let Some(Ok(ev)) = changes.next().await {
            let (key, delta) = match &ev {
                crate::store::WatchEvent::Put { kv, prev: None } => (&kv.key, 1),
                crate::store::WatchEvent::Delete { prev, .. } => (&prev.key, -1),
                crate::store::WatchEvent::Put { .. } => continue,
            };
            if let Some(r) = resource_of_key(key) {
                let n = counts.entry(r.clone()).or_default();
                *n += delta;
                metrics.set_storage_objects(&r, *n);
            }
        }
        // The watch ended (compaction overtook it, or the store failed): count again.
    }
}

/// `/registry/core/pods/ns/name` → `pods`; `/registry/apps/deployments/ns/name` →
/// `deployments.apps`.
fn resource_of_key(key: &str) -> Option<String> {
    let mut segs = key.strip_prefix("/registry/")?.split('/');
    let group = segs.next()?;
    let plural = segs.next().filter(|p| !p.is_empty())?;
    segs.next()?;
    Some(if group == "core" {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, query: Option<&str>) -> RequestInfo {
        classify(&Method::GET, path, query)
    }

    #[test]
    fn api_metrics_classify_get_list_and_watch() {
        let i = get("/api/v1/namespaces/default/pods/web", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.scope()
            ),
            ("get", "pods", "web", "resource")
        );
        let i = get("/api/v1/namespaces/default/pods", Some("limit=500"));
        assert_eq!((i.verb.as_str(), i.scope()), ("list", "namespace"));
        let i = get("/api/v1/pods", Some("watch=true&resourceVersion=5"));
        assert_eq!((i.verb.as_str(), i.scope()), ("watch", "cluster"));
        assert!(i.is_long_running());
        let i = get("/api/v1/pods", Some("watch=1"));
        assert_eq!(i.verb, "watch");
        let i = get("/api/v1/pods", Some("watch=false"));
        assert_eq!(i.verb, "list");
        assert!(!i.is_long_running());
        // The deprecated watch path.
        let i = get("/api/v1/watch/namespaces/default/pods", None);
        assert_eq!(
            (i.verb.as_str(), i.namespace.as_str(), i.resource.as_str()),
            ("watch", "default", "pods")
        );
        // `kubectl get pod web -w`.
        let i = get(
            "/api/v1/namespaces/default/pods",
            Some("fieldSelector=metadata.name%3Dweb&watch=true"),
        );
        assert_eq!(
            (i.verb.as_str(), i.name.as_str(), i.scope()),
            ("watch", "web", "resource")
        );
    }

    #[test]
    fn api_metrics_classify_writes_groups_and_subresources() {
        let i = classify(
            &Method::POST,
            "/apis/apps/v1/namespaces/prod/deployments",
            None,
        );
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group.as_str(),
                i.api_version.as_str(),
                i.resource.as_str(),
                i.scope()
            ),
            ("create", "apps", "v1", "deployments", "resource")
        );
        assert_eq!(i.metric_verb(&Method::POST, None), "POST");
        let i = classify(
            &Method::PUT,
            "/apis/apps/v1/namespaces/prod/deployments/web/scale",
            None,
        );
        assert_eq!(
            (i.verb.as_str(), i.subresource.as_str()),
            ("update", "scale")
        );
        assert_eq!(i.metric_verb(&Method::PUT, None), "PUT");
        let i = classify(&Method::PATCH, "/api/v1/nodes/n1/status", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str()
            ),
            ("patch", "nodes", "n1", "status")
        );
        assert_eq!(
            i.metric_verb(&Method::PATCH, Some("application/merge-patch+json")),
            "PATCH"
        );
        assert_eq!(
            i.metric_verb(&Method::PATCH, Some("application/apply-patch+yaml")),
            "APPLY"
        );
        let i = classify(&Method::DELETE, "/api/v1/namespaces/a/configmaps", None);
        assert_eq!(
            (i.verb.as_str(), i.metric_verb(&Method::DELETE, None)),
            ("deletecollection", "DELETECOLLECTION".into())
        );
        let i = classify(&Method::DELETE, "/api/v1/namespaces/a/configmaps/c", None);
        assert_eq!(i.verb, "delete");
        let i = get("/api/v1/namespaces/a/pods/p/log", Some("follow=true"));
        assert!(i.is_long_running());
        assert_eq!(i.metric_verb(&Method::GET, None), "GET");
        let i = classify(&Method::POST, "/api/v1/namespaces/a/pods/p/exec", None);
        assert_eq!(i.metric_verb(&Method::POST, None), "CONNECT");
    }

    #[test]
    fn api_metrics_classify_namespaces_themselves() {
        let i = get("/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.namespace.as_str()),
            ("namespaces", "kube-system", "kube-system")
        );
        let i = classify(&Method::PUT, "/api/v1/namespaces/doomed/finalize", None);
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.subresource.as_str()),
            ("namespaces", "doomed", "finalize")
        );
        let i = get("/api/v1/namespaces", None);
        assert_eq!((i.verb.as_str(), i.scope()), ("list", "cluster"));
    }

    #[test]
    fn api_metrics_classify_non_resource_paths() {
        for path in [
            "/api",
            "/api/",
            "/apis",
            "/apis/apps",
            "/api/v1",
            "/apis/apps/v1",
            "/healthz",
            "/metrics",
            "/openapi/v3",
        ] {
            let i = get(path, None);
            assert!(!i.is_resource_request, "{path}");
            assert_eq!(i.verb, "get", "{path}");
            assert_eq!(i.scope(), "", "{path}");
            assert_eq!(i.metric_verb(&Method::GET, None), "GET");
        }
    }

    #[test]
    fn api_metrics_render_kube_apiserver_names() {
        let m = ApiMetrics::default();
        let route = RouteLabels {
            verb: "LIST".into(),
            dry_run: String::new(),
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            subresource: String::new(),
            scope: "namespace".into(),
            component: COMPONENT.into(),
        };
        m.observe(&route, 200, 0.003);
        m.set_storage_objects("deployments.apps", 3);
        let text = m.render();
        assert!(
            text.contains(r#"apiserver_request_total{verb="LIST",dry_run="",group="",version="v1",resource="pods",subresource="",scope="namespace",component="apiserver",code="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_request_duration_seconds_bucket{le="0.005",verb="LIST""#)
                || text.contains(r#"le="0.005""#),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_storage_objects{resource="deployments.apps"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_current_inflight_requests{request_kind="mutating"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn api_metrics_resource_of_key() {
        assert_eq!(
            resource_of_key("/registry/core/pods/default/web").as_deref(),
            Some("pods")
        );
        assert_eq!(
            resource_of_key("/registry/apps/deployments/default/web").as_deref(),
            Some("deployments.apps")
        );
        assert_eq!(
            resource_of_key("/registry/core/nodes/n1").as_deref(),
            Some("nodes")
        );
        assert_eq!(resource_of_key("/registry/core/pods").as_deref(), None);
        assert_eq!(resource_of_key("/other/x/y/z").as_deref(), None);
    }
}
