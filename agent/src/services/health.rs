//! healthCheckNodePort servers: for each LoadBalancer Service with `externalTrafficPolicy:
//! Local`, an HTTP server in the node's network namespace that tells an external load balancer
//! whether this node has local endpoints of the Service, as kube-proxy's service health server
//! (pkg/proxy/healthcheck) does.
//!
//! With eTP Local a node without a local endpoint drops the Service's external traffic (the
//! client source is kept, so the node may not forward elsewhere); the cloud load balancer
//! probes `http://<node>:<healthCheckNodePort>/` and only sends traffic to nodes answering 200.
//!
//! [`desired`] is pure; [`HealthServers::sync`] binds, updates and closes the listeners. The
//! agent stays in the root namespace: each listener is bound on a thread that entered the node
//! namespace (a socket belongs to the namespace it was created in, whatever thread uses it
//! later) and is then served by the agent's tokio runtime.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Serialize;
use tokio::{runtime::Handle, sync::oneshot, task::JoinHandle};

use super::input::{ObjectKey, ServiceInput, SliceInput, object_key};
use crate::netns::{NetnsError, in_netns};

/// What one health server reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEntry {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node (distinct addresses).
    pub local_endpoints: usize,
}

/// Errors of starting a health server on one port.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("node network namespace")]
    Netns(#[source] NetnsError),
    #[error("binding health check port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// The health servers of LoadBalancer Services with `externalTrafficPolicy: Local`, by
/// healthCheckNodePort, from the API's Services and EndpointSlices.
///
/// A Service counts when its type is LoadBalancer, its eTP is Local and it has a
/// healthCheckNodePort (the API server allocates one for exactly these Services). Its local
/// endpoints are the distinct addresses of ready endpoints with `nodeName == node_name` in the
/// slices labelled `kubernetes.io/service-name=<name>` of its namespace, across all ports and
/// address families, as kube-proxy counts them (an unset `ready` counts as ready, per the
/// EndpointConditions API docs). Should two Services claim one port, the first by
/// namespace/name keeps it.
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
    node_name: &str,
) -> BTreeMap<u16, HealthEntry> {
    let slices: Vec<SliceInput> = slices
        .iter()
        .map(|s| SliceInput::from_slice(s, node_name))
        .collect();
    let services: Vec<(ObjectKey, ServiceInput)> = services
        .iter()
        .filter_map(|svc| {
            let key = object_key(
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref()?,
            );
            Some((key, ServiceInput::from_service(svc)?))
        })
        .collect();
    desired_of(services.iter().map(|(k, s)| (k, s)), |key| {
        local_ready_endpoints(slices.iter().filter(|s| s.service.as_deref() == Some(key)))
    })
}

/// [`desired`] from the planner's input: `local_endpoints` counts a Service's (by
/// `namespace/name`) ready local endpoints.
pub fn desired_of<'a>(
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a ServiceInput)>,
    local_endpoints: impl Fn(&str) -> usize,
) -> BTreeMap<u16, HealthEntry> {
    let mut out: BTreeMap<u16, HealthEntry> = BTreeMap::new();
    for (key, svc) in services {
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        let entry = HealthEntry {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            local_endpoints: local_endpoints(key),
        };
        match out.get(&port) {
            Some(held) if (&held.namespace, &held.name) <= (&entry.namespace, &entry.name) => {}
            _ => {
                out.insert(port, entry);
            }
        }
    }
    out
}

/// The distinct addresses of the ready endpoints on this node in `slices`.
pub fn local_ready_endpoints<'a>(slices: impl IntoIterator<Item = &'a SliceInput>) -> usize {
    slices
        .into_iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.ready && e.local)
        .map(|e| e.address)
        .collect::<BTreeSet<_>>()
        .len()
}

type Shared = Arc<RwLock<HealthEntry>>;

#[derive(Debug)]
struct Running {
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Graceful shutdown closes the listener at once and lets an answer in flight finish;
        // should the task not be running any more, aborting is harmless.
        if let Some(tx) = self.shutdown.take()
            && tx.send(()).is_err()
        {
            self.task.abort();
        }
    }
}

/// The running health servers of one node, by port.
#[derive(Debug)]
pub struct HealthServers {
    runtime: Handle,
    netns: Option<PathBuf>,
    running: BTreeMap<u16, Running>,
}

impl HealthServers {
    /// Servers bound in `netns` (`None`: the agent's own namespace) and served on `runtime`.
    pub fn new(runtime: Handle, netns: Option<&Path>) -> Self {
        HealthServers {
            runtime,
            netns: netns.map(Path::to_owned),
            running: BTreeMap::new(),
        }
    }

    /// The ports being served.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.running.keys().copied()
    }

    /// Makes the running servers equal `desired`: closes servers of ports no longer wanted,
    /// updates what existing servers report (without rebinding, so a prober never sees the
    /// port closed), and starts servers for new ports. Returns the ports that could not be
    /// started; they are tried again on the next call.
    pub fn sync(&mut self, desired: &BTreeMap<u16, HealthEntry>) -> BTreeMap<u16, HealthError> {
        self.running.retain(|port, _| desired.contains_key(port));
        let mut errors = BTreeMap::new();
        for (&port, entry) in desired {
            if let Some(r) = self.running.get(&port) {
                let mut held = r.state.write().unwrap_or_else(PoisonError::into_inner);
                if *held != *entry {
                    *held = entry.clone();
                }
                continue;
            }
            match self.start(port, entry.clone()) {
                Ok(r) => {
                    self.running.insert(port, r);
                }
                Err(e) => {
                    errors.insert(port, e);
                }
            }
        }
        errors
    }

    fn start(&self, port: u16, entry: HealthEntry) -> Result<Running, HealthError> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let std_listener = in_netns(self.netns.as_deref(), || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(HealthError::Netns)?
        .map_err(|source| HealthError::Bind { port, source })?;
        let listener = {
            let _rt = self.runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
                .map_err(|source| HealthError::Bind { port, source })?
        };
        let state: Shared = Arc::new(RwLock::new(entry));
        let app = Router::new().fallback(answer).with_state(state.clone());
        let (tx, rx) = oneshot::channel();
        let task = self.runtime.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(port, error = %e, "health check server stopped");
            }
        });
        Ok(Running {
            state,
            shutdown: Some(tx),
            task,
        })
    }
}

/// kube-proxy's answer body (pkg/proxy/healthcheck/service_health.go).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceRef<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// Any method and path: 200 with at least one local endpoint, 503 without.
async fn answer(State(state): State<Shared>) -> Response {
    let entry = state.read().unwrap_or_else(PoisonError::into_inner).clone();
    let body = Body {
        service: ServiceRef {
            namespace: &entry.namespace,
            name: &entry.name,
        },
        local_endpoints: entry.local_endpoints,
        // This server is part of the agent that programs the datapath: while it answers, the
        // proxy is running.
        service_proxy_healthy: true,
    };
    let status = if entry.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        json,
    )
        .into_response()
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
