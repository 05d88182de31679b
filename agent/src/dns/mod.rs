//! Cluster DNS (`keelson dns`): the `kube-dns` Service's server, answering the Kubernetes DNS
//! specification's records from Services, EndpointSlices and Pods it watches, forwarding other
//! names upstream — what CoreDNS's `kubernetes` and `forward` plugins do, on hickory-server.
//!
//! It runs as a Pod (the `keelson-dns` Deployment of a local cluster) rather than inside the
//! agent, so it keeps answering while a node's agent restarts.

pub mod records;
pub mod server;
pub mod udp;
pub mod watch;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use self::{
    records::Zone,
    server::{DnsMetrics, Handler, ServerError, Upstream},
    watch::{SharedSnapshot, WatchError},
};

/// How `keelson dns` is run (its flags follow CoreDNS's kubernetes plugin).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP address of the server.
    pub listen: SocketAddr,
    /// `cluster.local`.
    pub cluster_domain: String,
    /// None: the in-cluster config (service account token and CA), as `kube::Config::infer`.
    pub kubeconfig: Option<PathBuf>,
    /// None: the nameservers of /etc/resolv.conf.
    pub upstream: Option<Vec<SocketAddr>>,
    /// HTTP `/health`, `/ready` and `/metrics`.
    pub health_listen: SocketAddr,
}

/// Errors that stop `keelson dns`.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid cluster domain {domain:?}")]
    Domain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("reading /etc/resolv.conf for the upstream resolvers")]
    ResolvConf(#[source] std::io::Error),
    #[error("no upstream resolver (none given, none in /etc/resolv.conf)")]
    NoUpstream,
    #[error("connecting to the Kubernetes API")]
    Client(#[source] Box<crate::AgentError>),
    #[error("binding the health address {addr}")]
    HealthBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving health")]
    Health(#[source] std::io::Error),
    #[error("DNS server")]
    Server(#[source] ServerError),
    #[error("watching the cluster")]
    Watch(#[source] WatchError),
}

#[derive(Clone)]
struct HealthState {
    snapshot: Arc<SharedSnapshot>,
    metrics: Arc<DnsMetrics>,
}

/// Runs the DNS server until a part of it fails or the process is stopped.
pub async fn run(cfg: DnsConfig) -> Result<(), DnsError> {
    let zone = Zone::new(&cfg.cluster_domain).map_err(|source| DnsError::Domain {
        domain: cfg.cluster_domain.clone(),
        source,
    })?;
    let upstream = match cfg.upstream {
        Some(servers) => Upstream { servers },
        None => Upstream::from_resolv_conf(
            &tokio::fs::read_to_string("/etc/resolv.conf")
                .await
                .map_err(DnsError::ResolvConf)?,
        ),
    };
    if upstream.servers.is_empty() {
        return Err(DnsError::NoUpstream);
    }
    let client = crate::kube_client(cfg.kubeconfig.as_deref())
        .await
        .map_err(|e| DnsError::Client(Box::new(e)))?;
    let snapshot = Arc::new(SharedSnapshot::default());
    let metrics = Arc::new(DnsMetrics::default());
    let health = HealthState {
        snapshot: Arc::clone(&snapshot),
        metrics: Arc::clone(&metrics),
    };
    let listener = tokio::net::TcpListener::bind(cfg.health_listen)
        .await
        .map_err(|source| DnsError::HealthBind {
            addr: cfg.health_listen,
            source,
        })?;
    let handler = Handler {
        zone,
        snapshot: Arc::clone(&snapshot),
        upstream: upstream.clone(),
        metrics,
    };
    tracing::info!(
        listen = %cfg.listen,
        domain = %cfg.cluster_domain,
        upstream = ?upstream.servers,
        health = %cfg.health_listen,
        "cluster DNS starting"
    );
    tokio::select! {
        r = server::serve(cfg.listen, handler) => r.map_err(DnsError::Server),
        r = watch::run(client, snapshot) => r.map_err(DnsError::Watch),
        r = axum::serve(listener, health_router(health)) => r.map_err(DnsError::Health),
    }
}

fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route(
            "/ready",
            get(|State(s): State<HealthState>| async move {
                if s.snapshot.is_ready() {
                    (StatusCode::OK, "OK")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not synced")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HealthState>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(state)
}

#[cfg(test)]
mod records_tests;
