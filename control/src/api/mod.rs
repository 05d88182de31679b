//! The Kubernetes REST API over the store: routing, authentication, and the request handlers
//! (discovery, OpenAPI, CRUD, list/watch, patch, subresources, Table output, admission).

pub mod admission;
pub mod agent;
pub mod alloc;
pub mod authn;
pub mod authz;
pub mod discovery;
pub mod error;
pub mod handlers;
pub mod health;
pub mod kubernetes_service;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod namespaces;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod selectors;
pub mod stream;
pub mod table;
#[cfg(test)]
mod tests;
pub mod tokenfile;
pub mod tokens;
pub mod watch;

use std::{net::Ipv4Addr, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use ipnetwork::Ipv4Network;

use crate::store::Store;
use error::ApiError;

/// Who made a request, as authentication established it (RBAC decides on this later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// One accepted bearer token and the user it authenticates.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub token: String,
    pub user: UserInfo,
}

/// What the API is configured with.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// ClusterIPs are allocated from here; the first address (.1) is reserved.
    pub service_cidr: Ipv4Network,
    /// NodePorts are allocated from this inclusive range.
    pub node_port_range: (u16, u16),
    /// Bearer tokens accepted by authentication.
    pub tokens: Vec<TokenEntry>,
    /// The client certificate presented to agents' node APIs (logs, exec, attach,
    /// port-forward), over TLS; `None` (tests) dials agents in plain TCP.
    pub agent_client: Option<Arc<agent::AgentClient>>,
    /// Signs and checks ServiceAccount tokens.
    pub issuer: Arc<tokens::Issuer>,
}

impl ApiConfig {
    /// A config with one admin token (`system:masters`).
    pub fn with_admin_token(service_cidr: Ipv4Network, token: String) -> Self {
        Self {
            service_cidr,
            node_port_range: (30000, 32767),
            agent_client: None,
            issuer: Arc::new(
                tokens::Issuer::generate(tokens::DEFAULT_ISSUER)
                    .expect("generating a P-256 key with ring"),
            ),
            tokens: vec![TokenEntry {
                token,
                user: UserInfo {
                    name: "keelson-admin".into(),
                    groups: vec!["system:masters".into(), "system:authenticated".into()],
                },
            }],
        }
    }

    /// The reserved first address of the Service CIDR (the `kubernetes` Service's IP in
    /// kube-apiserver).
    pub fn reserved_ip(&self) -> Ipv4Addr {
        kubernetes_service::cluster_ip(self.service_cidr)
    }
}

/// Shared state of every handler.
#[derive(Debug)]
pub struct ApiState<S> {
    pub store: Arc<S>,
    pub config: ApiConfig,
    /// Tracks Service writes in flight (a ticket from admission until the store write
    /// returns), so the index holds what admission gave them until the store shows it. It
    /// never serialises writes: two creates cannot take one ClusterIP or NodePort because
    /// admission reserves in the index.
    pub alloc_lock: alloc::WriteGate,
    /// The allocations of every stored Service, kept current from the store's watch.
    pub allocations: alloc::AllocationIndex,
    /// `/metrics`, fed by the request layer and the storage object counter.
    pub metrics: Arc<metrics::ApiMetrics>,
    /// What the health checks read: set by the server as it starts and stops.
    pub lifecycle: health::Lifecycle,
    /// The checks of `/healthz`, `/livez` and `/readyz`.
    pub health: health::HealthChecks,
    /// The RBAC policy requests are decided on.
    pub policy: authz::cache::PolicyCache,
}

impl<S: Store> ApiState<S> {
    pub fn new(store: Arc<S>, config: ApiConfig) -> Arc<Self> {
        let allocations = alloc::AllocationIndex::new(&config);
        let lifecycle = health::Lifecycle::default();
        let health = health::HealthChecks::for_server(Arc::clone(&store), &lifecycle);
        Arc::new(Self {
            store,
            alloc_lock: allocations.gate(),
            allocations,
            config,
            metrics: Arc::default(),
            lifecycle,
            health,
            policy: authz::cache::PolicyCache::default(),
        })
    }
}

/// Authentication: a request carries `Authorization: Bearer <token>` with a known token or
/// comes over a connection that presented a client certificate of the cluster CA
/// ([`authn`]); one without credentials is `system:anonymous`, an unknown token is 401. The
/// health and version endpoints are served to anyone. A bearer token is a static one or a
/// ServiceAccount token ([`tokens`]). As kube-apiserver's union of authenticators, the first
/// that knows the request decides. The authenticated user travels on as a request extension.
async fn authenticate<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let health = ["/healthz", "/livez", "/readyz"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    if health || path == "/version" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let user = presented
        .and_then(|t| {
            state
                .config
                .tokens
                .iter()
                .find(|e| constant_time_eq(e.token.as_bytes(), t.as_bytes()))
        })
        .map(|e| e.user.clone());
    let user = match (user, presented) {
        (None, Some(t)) if tokens::looks_like_jwt(t) => {
            authn::service_account_user(state.store.as_ref(), &state.config.issuer, t).await
        }
        (user, _) => user,
    }
    .or_else(|| authn::user_of_connection(req.extensions()));
    let user = match (user, presented) {
        (Some(user), _) => user,
        // Credentials that name no one: 401, as kube-apiserver answers a bad token.
        (None, Some(_)) => return ApiError::Unauthorized.into_response(),
        // None at all: the anonymous user (kube-apiserver's `--anonymous-auth`, on by default),
        // whom authorization then refuses everything the default roles do not give it.
        (None, None) => UserInfo {
            name: authn::ANONYMOUS.into(),
            groups: vec![authn::UNAUTHENTICATED.into()],
        },
    };
    match authn::impersonated(&state, user, req.headers()).await {
        Ok(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1; the Python client sends `bearer`), as kube-apiserver's bearer token
/// authenticator reads it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The whole API as an axum router.
pub fn router<S: Store>(state: Arc<ApiState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(health_root::<S>))
        .route("/livez", get(health_root::<S>))
        .route("/readyz", get(health_root::<S>))
        .route("/healthz/{*check}", get(health_check::<S>))
        .route("/livez/{*check}", get(health_check::<S>))
        .route("/readyz/{*check}", get(health_check::<S>))
        .route("/metrics", get(serve_metrics::<S>))
        .route("/version", get(discovery::version))
        // kube-apiserver answers the trailing-slash forms too; the Python client's
        // `get_api_versions()` asks for `/api/`.
        .route("/api", get(discovery::api_versions))
        .route("/api/", get(discovery::api_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/", get(discovery::api_groups))
        .route("/apis/{group}", get(discovery::api_group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            axum::routing::post(authn::self_subject_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            axum::routing::post(authz::review::access::<S>),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            axum::routing::post(authz::review::rules::<S>),
        )
        .route(
            "/.well-known/openid-configuration",
            get(authn::openid_configuration::<S>),
        )
        .route("/openid/v1/jwks", get(authn::jwks::<S>))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*path}", get(openapi::document))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            any(stream::exec::<S>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            any(stream::attach::<S>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            any(stream::port_forward::<S>),
        )
        .route("/api/v1/{*rest}", any(handlers::core_entry::<S>))
        .route(
            "/apis/{group}/{version}/{*rest}",
            any(handlers::group_entry::<S>),
        )
        .fallback(|| async { ApiError::NoSuchResource })
        // The limit is enforced at the door (limits::body_limit); this one only keeps axum's
        // extractors from buffering more if a body ever reaches them unchecked.
        .layer(axum::extract::DefaultBodyLimit::max(
            limits::MAX_REQUEST_BODY_BYTES,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authz::authorize::<S>,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<S>,
        ))
        .layer(middleware::from_fn(limits::body_limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            metrics::track,
        ))
        .with_state(state)
}

/// Which of `/healthz`, `/livez`, `/readyz` a path is under.
fn health_endpoint(path: &str) -> &'static str {
    ["livez", "readyz"]
        .into_iter()
        .find(|e| path.trim_start_matches('/').starts_with(e))
        .unwrap_or("healthz")
}

async fn health_root<S: Store>(State(state): State<Arc<ApiState<S>>>, req: Request) -> Response {
    let endpoint = health_endpoint(req.uri().path());
    let query = health::HealthQuery::parse(req.uri().query());
    health::run_all(endpoint, state.health.of(endpoint), &query)
        .await
        .into_response()
}

async fn health_check<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    axum::extract::Path(check): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let endpoint = health_endpoint(req.uri().path());
    match health::run_one(state.health.of(endpoint), &check).await {
        Some(answer) => answer.into_response(),
        None => ApiError::NoSuchResource.into_response(),
    }
}

async fn serve_metrics<S: Store>(State(state): State<Arc<ApiState<S>>>) -> Response {
    metrics::serve(Arc::clone(&state.metrics)).await
}

/// Current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random RFC 4122 version 4 UID, as kube-apiserver's `uuid.NewUUID` makes it.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}
