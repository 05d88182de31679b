//! Test support shared by the controller tests: a real `keelson server` in this process, a
//! guard that aborts spawned tasks, and polling of the API until a condition holds.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::server::{ServerConfig, admin_client, run};

/// Aborts a spawned task when dropped, even when an assertion fails.
pub(crate) struct Abort(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `f` every 50 ms until it yields Some, failing after `limit`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `keelson server` running in this process on a free loopback port, with its data in a
/// temporary directory. Dropping it aborts the server, then removes the directory.
pub(crate) struct TestServer {
    /// An admin client of the server, which already answered a list.
    pub(crate) client: kube::Client,
    // Field order is drop order: the server stops before its data directory goes away.
    _server: Abort,
    _dir: tempfile::TempDir,
}

/// Starts a `keelson server` (no LoadBalancer pool: the tests run their own controllers) and
/// waits up to 20 s until it answers an admin client.
pub(crate) async fn start_server() -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let cfg = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
        service_cidr: "10.96.0.0/16".into(),
        cluster_cidr: "10.244.0.0/16".into(),
        node_cidr_mask: 24,
        lb_pool: None,
        advertise: None,
        token_auth_file: None,
    };
    let server = Abort(tokio::spawn(async move {
        if let Err(e) = run(cfg).await {
            panic!("server failed: {e}");
        }
    }));
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let client = wait_for("the API server", Duration::from_secs(20), || {
        let kc = kubeconfig.clone();
        async move {
            let c = admin_client(&kc).await.ok()?;
            Api::<Node>::all(c.clone())
                .list(&ListParams::default())
                .await
                .ok()?;
            Some(c)
        }
    })
    .await;
    TestServer {
        client,
        _server: server,
        _dir: dir,
    }
}
