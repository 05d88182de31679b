//! `keelson server`: wires the store, the API, the scheduler and the controllers together.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use ipnetwork::Ipv4Network;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use crate::{
    api::{self, ApiConfig, ApiState, kubernetes_service, pki},
    listen::{self, ListenError},
    store::{SqliteStore, Store, StoreError},
};

/// Everything `keelson server` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds the SQLite store, the CA and serving certificates and `admin.kubeconfig`.
    pub data_dir: PathBuf,
    /// Where the HTTPS API listens, e.g. 127.0.0.1:6443.
    pub listen: SocketAddr,
    /// ClusterIPs are allocated from here (e.g. 10.96.0.0/16).
    pub service_cidr: String,
    /// Node podCIDRs are carved from here (e.g. 10.244.0.0/16).
    pub cluster_cidr: String,
    /// Prefix length of each Node's podCIDR (e.g. 24).
    pub node_cidr_mask: u8,
    /// Pool of LoadBalancer addresses (comma-separated CIDRs); `None`: no LB-IPAM.
    pub lb_pool: Option<String>,
    /// Where Pods reach the server (kube-apiserver's `--advertise-address`); `None`: the
    /// listen address, unless that is a loopback or wildcard address no Pod can reach.
    pub advertise: Option<Advertise>,
    /// Static bearer tokens (kube-apiserver's `--token-auth-file`, [`api::tokenfile`]).
    pub token_auth_file: Option<PathBuf>,
}

/// The address the `kubernetes` Service's endpoint names, and where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    pub address: IpAddr,
    /// Default: the listen port.
    pub port: Option<u16>,
    /// When set, the server also listens on the advertised address and port inside this
    /// network namespace (a local cluster's underlay, which its nodes are plugged into).
    pub netns: Option<PathBuf>,
}

impl ServerConfig {
    /// The address and port the `kubernetes` EndpointSlice lists, if Pods can reach one.
    pub fn advertised(&self) -> Option<SocketAddr> {
        match &self.advertise {
            Some(a) => Some(SocketAddr::new(
                a.address,
                a.port.unwrap_or(self.listen.port()),
            )),
            None => {
                let ip = self.listen.ip();
                (!ip.is_loopback() && !ip.is_unspecified()).then_some(self.listen)
            }
        }
    }
}

/// Errors of the server as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server failed: {0}")]
    Other(String),
    #[error("invalid service CIDR {cidr:?}: {source}")]
    ServiceCidr {
        cidr: String,
        #[source]
        source: ipnetwork::IpNetworkError,
    },
    #[error("credentials: {0}")]
    Pki(#[source] pki::PkiError),
    #[error("store: {0}")]
    Store(#[source] StoreError),
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("serving HTTPS on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("building the in-process Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("reading the admin kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
}

/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// History kept by compaction: at least this many revisions and at least this long.
const KEEP_REVISIONS: i64 = 10_000;
const KEEP_FOR: Duration = Duration::from_secs(300);

fn tls_config(creds: &pki::Credentials) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Other(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|e| ServerError::Other(format!("serving key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates of the cluster CA authenticate (api::authn); without one a client
    // goes on to the bearer token, so the certificate is asked for but not required.
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| ServerError::Other(format!("cluster CA: {e}")))?;
        roots.add(ca).map_err(ServerError::Tls)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ServerError::Other(format!("client certificate verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(ServerError::Tls)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Creates the system namespaces that are missing, and labels every stored Namespace with
/// `kubernetes.io/metadata.name` (those stored before keelson set the label).
pub async fn ensure_system_namespaces<S: Store>(
    state: &Arc<ApiState<S>>,
) -> Result<(), ServerError> {
    for ns in SYSTEM_NAMESPACES {
        let obj =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match api::handlers::create_internal(state, "", "v1", "namespaces", None, &obj).await {
            Ok(_) | Err(api::error::ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ServerError::Other(format!("creating namespace {ns}: {e}"))),
        }
    }
    // Their `default` ServiceAccounts too, so that the first Pods of a new server (keelson's
    // own DNS) need not wait for the ServiceAccounts controller.
    for ns in SYSTEM_NAMESPACES {
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns}});
        match api::handlers::create_internal(state, "", "v1", "serviceaccounts", Some(ns), &sa)
            .await
        {
            Ok(_) | Err(api::error::ApiError::AlreadyExists { .. }) => {}
            Err(e) => {
                return Err(ServerError::Other(format!(
                    "creating the default ServiceAccount of {ns}: {e}"
                )));
            }
        }
    }
    api::authz::bootstrap::ensure(state)
        .await
        .map_err(|e| ServerError::Other(format!("creating the default RBAC roles: {e}")))?;
    let relabelled = api::namespaces::label_stored_namespaces(state)
        .await
        .map_err(|e| ServerError::Other(format!("labelling namespaces: {e}")))?;
    if !relabelled.is_empty() {
        tracing::info!(namespaces = ?relabelled, "added the kubernetes.io/metadata.name label");
    }
    // The post-start hook of health checks (`poststarthook/start-system-namespaces-controller`).
    state
        .lifecycle
        .system_namespaces
        .store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Decides compaction from the revisions observed over time: history goes only when it is
/// both older than [`KEEP_FOR`] and more than [`KEEP_REVISIONS`] behind the current revision.
#[derive(Debug, Default)]
struct CompactionPlan {
    /// (time since start, revision) observations younger than KEEP_FOR.
    seen: std::collections::VecDeque<(Duration, i64)>,
    /// The newest revision observed at least KEEP_FOR ago.
    floor: Option<i64>,
    compacted: i64,
}

impl CompactionPlan {
    /// Records `current` at `now`; returns the revision to compact to, if it moved.
    fn observe(&mut self, now: Duration, current: i64) -> Option<i64> {
        self.seen.push_back((now, current));
        while let Some(&(at, rev)) = self.seen.front() {
            if now.saturating_sub(at) < KEEP_FOR {
                break;
            }
            self.floor = Some(rev);
            self.seen.pop_front();
        }
        let target = self.floor?.min(current - KEEP_REVISIONS);
        (target > self.compacted).then(|| {
            self.compacted = target;
            target
        })
    }
}

/// Compacts the store's history once a minute per [`CompactionPlan`].
async fn compaction_loop<S: Store>(store: Arc<S>) {
    let start = tokio::time::Instant::now();
    let mut plan = CompactionPlan::default();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Ok(current) = store.current_revision().await else {
            continue;
        };
        if let Some(target) = plan.observe(start.elapsed(), current)
            && let Err(e) = store.compact(target).await
        {
            tracing::warn!(error = %e, "compaction failed");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Builds a client of this server from the admin kubeconfig it wrote.
pub async fn admin_client(kubeconfig: &std::path::Path) -> Result<kube::Client, ServerError> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(ServerError::Kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(ServerError::Kubeconfig)?;
    kube::Client::try_from(config).map_err(ServerError::Client)
}

/// Runs the control plane until the process is told to stop.
pub async fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    // kube-rs' TLS (the in-process client) uses the process default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let service_cidr: Ipv4Network =
        cfg.service_cidr
            .parse()
            .map_err(|source| ServerError::ServiceCidr {
                cidr: cfg.service_cidr.clone(),
                source,
            })?;
    let advertised = cfg.advertised();
    let cluster_ip = kubernetes_service::cluster_ip(service_cidr);
    let extra_names: Vec<IpAddr> = std::iter::once(IpAddr::V4(cluster_ip))
        .chain(advertised.map(|a| a.ip()))
        .collect();
    let creds = pki::ensure(&cfg.data_dir, cfg.listen, &extra_names).map_err(ServerError::Pki)?;
    // Both sockets are bound before anything else starts, so a port in use fails the start.
    let mut listeners = vec![(cfg.listen, listen::bind(cfg.listen, None)?)];
    if let (Some(addr), Some(netns)) = (
        advertised,
        cfg.advertise.as_ref().and_then(|a| a.netns.as_deref()),
    ) {
        listeners.push((addr, listen::bind(addr, Some(netns))?));
    }
    let store =
        Arc::new(SqliteStore::open(&cfg.data_dir.join("state.db")).map_err(ServerError::Store)?);
    let mut config = ApiConfig {
        agent_client: Some(Arc::new(
            api::agent::AgentClient::from_pem(
                &creds.agent_client_cert_pem,
                &creds.agent_client_key_pem,
            )
            .map_err(|e| ServerError::Other(e.to_string()))?,
        )),
        issuer: Arc::new(
            api::tokens::Issuer::from_pem(
                api::tokens::DEFAULT_ISSUER,
                &creds.service_account_key_pem,
            )
            .map_err(|e| ServerError::Other(format!("the ServiceAccount issuer: {e}")))?,
        ),
        ..ApiConfig::with_admin_token(service_cidr, creds.token.clone())
    };
    if let Some(path) = &cfg.token_auth_file {
        let tokens = api::tokenfile::read(path).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            ServerError::Other(format!("{e}{cause}"))
        })?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "static tokens");
        config.tokens.extend(tokens);
    }
    let state = ApiState::new(store.clone(), config);
    ensure_system_namespaces(&state).await?;
    // Everything spawned here stops when `run` returns or is dropped (a cancelled `run` must
    // not leave tasks holding the store and the port).
    let mut tasks = Tasks::default();
    tasks.spawn(api::metrics::count_storage_objects(
        store.clone(),
        Arc::clone(&state.metrics),
        Arc::clone(&state.lifecycle.informers_synced),
    ));
    let shutting_down = Arc::clone(&state.lifecycle.shutting_down);
    let bootstrapped = Arc::clone(&state.lifecycle.bootstrap_controller);
    tasks.spawn(compaction_loop(store));
    tasks.spawn(api::namespaces::finalize_loop(state.clone()));

    let tls = axum_server::tls_rustls::RustlsConfig::from_config(tls_config(&creds)?);
    let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
    let app = api::router(state);
    let mut servers = tokio::task::JoinSet::new();
    for (addr, listener) in listeners {
        let server = axum_server::from_tcp_rustls(listener, tls.clone())
            .map_err(|source| ServerError::Serve { addr, source })?
            // Like kube-apiserver (Go's net package sets it on every TCP connection): a
            // response or watch event written in more than one segment must not wait for the
            // client's delayed ACK (Nagle's algorithm; up to 40 ms on Linux).
            .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
            .handle(handle.clone());
        let app = app.clone();
        servers.spawn(async move {
            let res = server.serve(app.into_make_service()).await;
            (addr, res)
        });
        tracing::info!(%addr, kubeconfig = %creds.kubeconfig_path.display(), "API server listening");
    }
    let client = admin_client(&creds.kubeconfig_path).await?;
    let controllers_cfg = crate::controllers::ControllersConfig {
        cluster_cidr: cfg.cluster_cidr.clone(),
        node_cidr_mask: cfg.node_cidr_mask,
        lb_pool: cfg.lb_pool.clone(),
        root_ca_pem: Some(creds.ca_pem.clone()),
    };
    tasks.spawn({
        let client = client.clone();
        async move {
            if let Err(e) = crate::controllers::run_all(client, controllers_cfg).await {
                tracing::error!(error = %e, "controllers stopped");
            }
        }
    });
    if advertised.is_none() {
        tracing::warn!(
            listen = %cfg.listen,
            "no address Pods can reach: the kubernetes Service has no endpoints (set --advertise-address)"
        );
    }
    tasks.spawn(kubernetes_service::run(
        client.clone(),
        kubernetes_service::Desired {
            cluster_ip,
            endpoint: advertised.map(|a| (a.ip(), a.port())),
        },
        bootstrapped,
    ));
    tasks.spawn(async move {
        if let Err(e) = crate::scheduler::run(client).await {
            tracing::error!(error = %e, "scheduler stopped");
        }
    });

    let result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            shutting_down.store(true, std::sync::atomic::Ordering::Release);
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
            let drained = tokio::time::timeout(Duration::from_secs(10), async {
                let mut first = Ok(());
                while let Some(done) = servers.join_next().await {
                    if let (Ok((addr, Err(source))), Ok(())) = (done, &first) {
                        first = Err(ServerError::Serve { addr, source });
                    }
                }
                first
            });
            drained.await.unwrap_or(Ok(()))
        }
        // Any listener stopping stops the server.
        Some(done) = servers.join_next() => match done {
            Ok((_, Ok(()))) => Ok(()),
            Ok((addr, Err(source))) => Err(ServerError::Serve { addr, source }),
            Err(e) => Err(ServerError::Other(format!("HTTPS server task: {e}"))),
        },
    };
    drop(tasks);
    result
}

/// Background tasks of the server, aborted together when dropped.
#[derive(Debug, Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn spawn(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(fut).abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_compaction_keeps_time_and_revisions() {
        let mut plan = CompactionPlan::default();
        let s = Duration::from_secs;
        assert_eq!(plan.observe(s(0), 100), None);
        assert_eq!(
            plan.observe(s(60), 20_000),
            None,
            "nothing is five minutes old yet"
        );
        assert_eq!(plan.observe(s(300), 30_000), Some(100));
        assert_eq!(plan.observe(s(360), 30_500), Some(20_000));
        assert_eq!(
            plan.observe(s(420), 30_600),
            None,
            "the floor has not moved"
        );
        // Few writes: the revision window holds history back even when it is old.
        assert_eq!(plan.observe(s(1000), 30_700), Some(20_700));
    }
}
