//! The server as an operator meets it, through the real kubectl: `/metrics` with
//! kube-apiserver's request counters, `/readyz?verbose` with its checks, the trailing-slash
//! discovery paths real clients ask for, an oversized body answered with a 413 Status, and the
//! `kubernetes` Service.

use super::{KUBECTL, kubectl, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_operability_metrics_readyz_and_limits_through_kubectl() {
    if !std::path::Path::new(KUBECTL).exists() {
        println!("skipping: kubectl not found at {KUBECTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, kc) = start_server(dir.path()).await;
    let run = |args: Vec<String>, stdin: Option<String>| {
        let kc = kc.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&kc, &args, stdin.as_deref())
        })
    };
    let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();

    // Some traffic to count: a create, a get and a list of ConfigMaps.
    let (ok, _, err) = run(argv("create configmap ops-cm --from-literal=a=b"), None)
        .await
        .expect("join");
    assert!(ok, "{err}");
    assert!(
        run(argv("get configmap ops-cm"), None)
            .await
            .expect("join")
            .0
    );
    assert!(run(argv("get configmaps"), None).await.expect("join").0);

    // Readiness turns true once the store has been read; poll like a probe would.
    let mut ready = String::new();
    for _ in 0..50 {
        let (ok, out, _) = run(argv("get --raw /readyz?verbose"), None)
            .await
            .expect("join");
        if ok {
            ready = out;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for line in [
        "[+]ping ok",
        "[+]etcd ok",
        "[+]informer-sync ok",
        "[+]poststarthook/bootstrap-controller ok",
        "[+]shutdown ok",
        "readyz check passed",
    ] {
        assert!(ready.contains(line), "no {line:?} in {ready}");
    }
    // The kubernetes Service on the first address of the service CIDR, as kubectl shows it;
    // this server listens on loopback only, so its slice names no endpoint.
    let (ok, out, err) = run(
        argv("get svc kubernetes -o jsonpath={.spec.clusterIP}/{.spec.ports[0].port}"),
        None,
    )
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "10.96.0.1/443");
    let (ok, out, err) = run(argv("get svc kubernetes"), None).await.expect("join");
    assert!(
        ok && out.contains("10.96.0.1") && out.contains("443/TCP"),
        "{out}{err}"
    );
    let (ok, out, err) = run(argv("get endpointslice kubernetes -o json"), None)
        .await
        .expect("join");
    assert!(ok, "{err}");
    let slice: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
    let (ok, out, _) = run(argv("get --raw /livez/ping"), None)
        .await
        .expect("join");
    assert!(ok && out.trim() == "ok", "{out}");

    let (ok, metrics, err) = run(argv("get --raw /metrics"), None).await.expect("join");
    assert!(ok, "{err}");
    let counted = |verb: &str| {
        metrics.lines().any(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(&format!("verb=\"{verb}\""))
                && l.contains("resource=\"configmaps\"")
        })
    };
    for verb in ["POST", "GET", "LIST"] {
        assert!(counted(verb), "no {verb} configmaps count in\n{metrics}");
    }
    for family in [
        "apiserver_request_duration_seconds_bucket",
        "apiserver_storage_objects",
        "apiserver_current_inflight_requests",
    ] {
        assert!(metrics.contains(family), "no {family}");
    }

    // The Python client's get_api_versions() asks with a trailing slash.
    for path in ["/api/", "/apis/"] {
        let (ok, out, err) = run(vec!["get".into(), "--raw".into(), path.into()], None)
            .await
            .expect("join");
        assert!(ok, "{path}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert!(
            v["kind"] == "APIVersions" || v["kind"] == "APIGroupList",
            "{path}: {v}"
        );
    }

    // A body over 3 MiB: 413 with kube-apiserver's message, not a closed connection.
    let big = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let (ok, _, err) = run(
        vec![
            "create".into(),
            "--raw".into(),
            "/api/v1/namespaces/default/configmaps".into(),
            "-f".into(),
            "-".into(),
        ],
        Some(big),
    )
    .await
    .expect("join");
    assert!(!ok, "a 4 MiB body was accepted");
    assert!(
        err.contains("Request entity too large: limit is 3145728"),
        "{err}"
    );
    server.abort();
}
