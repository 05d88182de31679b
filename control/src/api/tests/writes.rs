//! Write-time behaviour as kube-apiserver has it, through the real kubectl: Secret
//! `stringData` folded into `data` and never returned, ConfigMap data limited to 1 MiB,
//! `generateName` creates that never fail on a suffix clash, and YAML request bodies.

use super::{KUBECTL, kubectl, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_writes_as_kube_apiserver_keeps_them_through_kubectl() {
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

    // stringData is merged into data (base64) and not kept.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {user: admin}\ndata: {pass: czNjcjN0}\n";
    let (ok, _, err) = run(argv("apply -f -"), Some(secret.into()))
        .await
        .expect("join");
    assert!(ok, "{err}");
    let (ok, out, _) = run(argv("get secret creds -o json"), None)
        .await
        .expect("join");
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["data"]["user"], "YWRtaW4=", "{v}");
    assert_eq!(v["data"]["pass"], "czNjcjN0", "{v}");
    assert!(v.get("stringData").is_none(), "{v}");

    // ConfigMap data over 1 MiB: 422 with kube-apiserver's message.
    let big = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}",
        "x".repeat(1024 * 1024 + 1)
    );
    let (ok, _, err) = run(argv("create -f -"), Some(big)).await.expect("join");
    assert!(!ok, "a ConfigMap over 1 MiB was accepted");
    assert!(
        err.contains("Too long: must have at most 1048576 bytes"),
        "{err}"
    );

    // generateName: 40 creates of one prefix, every one a new name.
    let generated =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: gen-}\ndata: {a: b}\n";
    for _ in 0..40 {
        let (ok, out, err) = run(argv("create -f -"), Some(generated.into()))
            .await
            .expect("join");
        assert!(ok && out.starts_with("configmap/gen-"), "{out}{err}");
    }
    let (ok, out, _) = run(argv("get configmaps -o name"), None)
        .await
        .expect("join");
    assert!(ok);
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("configmap/gen-"))
            .count(),
        40,
        "{out}"
    );

    server.abort();
}

/// kube-apiserver decodes `application/yaml` request bodies (its serializer list has YAML).
#[tokio::test]
async fn api_writes_accept_yaml_bodies() {
    use axum::{
        body::Body,
        http::{Request, StatusCode, header},
    };
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    let h = super::harness().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n";
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/namespaces/default/configmaps")
        .header(header::AUTHORIZATION, format!("Bearer {}", super::TOKEN))
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(yaml))
        .expect("request");
    let resp = h.app.clone().oneshot(req).await.expect("answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let got = h
        .get("/api/v1/namespaces/default/configmaps/from-yaml")
        .await;
    assert_eq!(got.body["data"]["k"], "v");
}
