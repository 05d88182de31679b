//! Creation rate of Services against ConfigMaps through the router, at high concurrency on
//! one store: the cost Service admission adds to a create. Run with
//! `cargo test -p keelson-control --release -- --ignored api_alloc_create_rate --nocapture`
//! (`KEELSON_RATE_N` objects of each kind, `KEELSON_RATE_CONCURRENCY` in flight).
use std::{sync::Arc, time::Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::json;
use tower::ServiceExt as _;

use crate::api::{ApiConfig, ApiState, router};
use crate::store::SqliteStore;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates `n` objects made by `body(i)` at `uri` with `conc` in flight; creates/s.
async fn rate(
    app: &axum::Router,
    uri: &'static str,
    n: usize,
    conc: usize,
    body: fn(usize) -> serde_json::Value,
) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu0 = cpu_ms();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (app, next) = (app.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let req = Request::builder()
                    .method("POST")
                    .uri(uri)
                    .header(header::AUTHORIZATION, "Bearer t")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body(i).to_string()))
                    .expect("request");
                let resp = app.clone().oneshot(req).await.expect("router answers");
                assert_eq!(resp.status(), StatusCode::CREATED, "create {i} at {uri}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
    println!("CPU {uri}: {} ms for {n} creates", cpu_ms() - cpu0);
    n as f64 / start.elapsed().as_secs_f64()
}

/// CPU time of this process so far (user + system, proc(5) `utime` and `stime`, in ticks
/// of 10 ms), to tell a phase bound by CPU from one waiting on a lock or the disk.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<u64>() * 10
}

async fn post(app: &axum::Router, uri: &str, body: serde_json::Value) -> StatusCode {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer t")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    app.clone()
        .oneshot(req)
        .await
        .expect("router answers")
        .status()
}

/// Concurrent creates (no lock is held across their writes) never share a ClusterIP or a
/// nodePort, and of many asking for one nodePort exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_alloc_concurrent_creates_never_share() {
    use crate::store::Store as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
    let mut cfg = ApiConfig::with_admin_token("10.96.0.0/24".parse().expect("cidr"), "t".into());
    cfg.node_port_range = (30000, 30299);
    let state = ApiState::new(store.clone(), cfg);
    crate::server::ensure_system_namespaces(&state)
        .await
        .expect("namespaces");
    let app = router(state);
    let uri = "/api/v1/namespaces/default/services";
    // Many asking for one address and port at once: one gets them.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let app = app.clone();
        tasks.spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("want-{i}")},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.250",
                         "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30299}]}});
            post(&app, uri, body).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        statuses.push(r.expect("task"));
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{statuses:?}");
    // Many allocating at once, as many as the ranges have room for, less the one above.
    for i in 0..251 {
        let app = app.clone();
        tasks.spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s-{i}")},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
            post(&app, uri, body).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        statuses.push(r.expect("task"));
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 251, "{statuses:?}");
    let listed = store
        .list("/registry/core/services/", None, 0)
        .await
        .expect("list");
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for kv in &listed.items {
        let svc: serde_json::Value = serde_json::from_slice(&kv.value).expect("json");
        let ip = svc["spec"]["clusterIP"].as_str().expect("ip").to_string();
        assert!(ips.insert(ip.clone()), "{ip} given twice");
        let port = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("port");
        assert!(ports.insert(port), "{port} given twice");
    }
    assert_eq!(ips.len(), 252, "the whole /24 but .0, .1 and .255");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run by hand with --release --nocapture"]
async fn api_alloc_create_rate() {
    let (n, conc) = (
        env("KEELSON_RATE_N", 5000),
        env("KEELSON_RATE_CONCURRENCY", 64),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
    let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), "t".into());
    let state = ApiState::new(store, cfg);
    crate::server::ensure_system_namespaces(&state)
        .await
        .expect("namespaces");
    let app = router(state);
    let cm = rate(
        &app,
        "/api/v1/namespaces/default/configmaps",
        n,
        conc,
        |i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}})
        },
    )
    .await;
    let svc = rate(&app, "/api/v1/namespaces/default/services", n, conc, |i| {
        let ty = if i % 2 == 0 { "ClusterIP" } else { "NodePort" };
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": format!("svc-{i}")},
               "spec": {"type": ty, "selector": {"app": "a"},
                        "ports": [{"port": 80, "protocol": "TCP"}]}})
    })
    .await;
    println!(
        "RATE n={n} concurrency={conc} configmaps/s={cm:.0} services/s={svc:.0} ratio={:.2}",
        svc / cm
    );
}
