//! Handler-level tests of the API: the router driven with `tower::ServiceExt::oneshot` over a
//! SQLite store in a temp dir, and an end-to-end test of the real server with the real kubectl.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{ApiConfig, ApiState, router};
use crate::store::{SqliteStore, Store};

#[cfg(test)]
mod authn;
mod netpol;
#[cfg(test)]
mod operability;
#[cfg(test)]
mod serviceaccounts;
#[cfg(test)]
mod writes;

const TOKEN: &str = "test-token";

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    state: Arc<ApiState<SqliteStore>>,
    app: Router,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store opens"));
    let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), TOKEN.into());
    let state = ApiState::new(store.clone(), cfg);
    crate::server::ensure_system_namespaces(&state)
        .await
        .expect("namespaces");
    // No bootstrap controller runs here (it needs a listening server); its health hook is
    // tested with the whole server (tests/operability.rs).
    state
        .lifecycle
        .bootstrap_controller
        .store(true, std::sync::atomic::Ordering::Release);
    Harness {
        _dir: dir,
        store,
        app: router(state.clone()),
        state,
    }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Resp {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, uri: &str, v: Value) -> Resp {
        self.call("POST", uri, "application/json", v.to_string())
            .await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.call("GET", uri, "application/json", Body::empty())
            .await
    }

    async fn with_accept(&self, uri: &str, accept: &str) -> Resp {
        let req = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Opens a watch and returns a receiver of its event lines.
    async fn watch(&self, uri: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
        let req = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("router answers");
        assert_eq!(resp.status(), StatusCode::OK);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = resp.into_body().into_data_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line)
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        rx
    }
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event in time")
        .expect("stream open")
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

fn pod(name: &str, labels: Value, node: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

fn deployment(name: &str, selector: &str, template: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": selector}},
                 "template": {"metadata": {"labels": {"app": template}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}}}})
}

#[tokio::test]
async fn api_crud_and_optimistic_concurrency() {
    let h = harness().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let created = h.post(base, configmap("cm1")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let rv = created.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    assert!(
        created.body["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    assert!(created.body["metadata"]["creationTimestamp"].is_string());

    let dup = h.post(base, configmap("cm1")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["reason"], "AlreadyExists");

    let got = h.get(&format!("{base}/cm1")).await;
    assert_eq!(got.body["data"]["k"], "v");
    assert_eq!(got.body["metadata"]["resourceVersion"], rv.as_str());

    let mut upd = got.body.clone();
    upd["data"]["k"] = json!("v2");
    let ok = h
        .call(
            "PUT",
            &format!("{base}/cm1"),
            "application/json",
            upd.to_string(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_ne!(ok.body["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(ok.body["metadata"]["uid"], created.body["metadata"]["uid"]);

    // The same stale resourceVersion again: 409 Conflict.
    let stale = h
        .call(
            "PUT",
            &format!("{base}/cm1"),
            "application/json",
            upd.to_string(),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.body["reason"], "Conflict");
    assert!(
        stale.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the object has been modified"))
    );

    let del = h
        .call(
            "DELETE",
            &format!("{base}/cm1"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(del.status, StatusCode::OK);
    let gone = h.get(&format!("{base}/cm1")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["kind"], "Status");
    assert_eq!(gone.body["message"], "configmaps \"cm1\" not found");

    let missing_ns = h
        .post("/api/v1/namespaces/nope/configmaps", configmap("x"))
        .await;
    assert_eq!(missing_ns.status, StatusCode::NOT_FOUND);

    let generated = h
        .post(
            base,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}}),
        )
        .await;
    assert_eq!(generated.status, StatusCode::CREATED);
    assert!(
        generated.body["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
    );
}

#[tokio::test]
async fn api_authentication_is_required() {
    let h = harness().await;
    let req = Request::builder()
        .uri("/api/v1/namespaces")
        .body(Body::empty())
        .expect("request");
    // No credentials: the anonymous user, refused by authorization.
    let resp = h.app.clone().oneshot(req).await.expect("answers");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    // A token that names no one: 401.
    let req = Request::builder()
        .uri("/api/v1/namespaces")
        .header("Authorization", "Bearer not-a-token")
        .body(Body::empty())
        .expect("request");
    let resp = h.app.clone().oneshot(req).await.expect("answers");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["reason"], "Unauthorized");
    let req = Request::builder()
        .uri("/healthz")
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        h.app.clone().oneshot(req).await.expect("answers").status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn api_validation_messages_and_bad_json() {
    let h = harness().await;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 70000}]}});
    let r = h.post("/api/v1/namespaces/default/services", svc).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(
        r.body["message"],
        "Service \"x\" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    assert_eq!(
        r.body["details"]["causes"][0]["field"],
        "spec.ports[0].port"
    );

    let r = h
        .post(
            "/apis/apps/v1/namespaces/default/deployments",
            deployment("d", "a", "b"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["message"],
        "Deployment.apps \"d\" is invalid: spec.template.metadata.labels: Invalid value: map[app:b]: `selector` does not match template `labels`"
    );

    let r = h
        .call(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            "{\"metadata\": ",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["reason"], "BadRequest");

    let r = h
        .post(
            "/api/v1/namespaces/default/pods",
            pod("Bad_Name", json!({}), None),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
}

#[tokio::test]
async fn api_field_validation_modes() {
    let h = harness().await;
    let mut cm = configmap("strict");
    cm["spec"] = json!({"x": 1});
    cm["metadata"]["bogus"] = json!(true);
    let r = h
        .post(
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            cm.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.body["message"].as_str().expect("message");
    assert!(
        msg.contains("strict decoding error")
            && msg.contains("unknown field \"spec\"")
            && msg.contains("metadata.bogus"),
        "{msg}"
    );

    let r = h
        .post(
            "/api/v1/namespaces/default/configmaps?fieldValidation=Warn",
            cm.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let warnings: Vec<&str> = r
        .headers
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("unknown field \\\"spec\\\"")),
        "{warnings:?}"
    );
    assert!(r.body.get("spec").is_none(), "unknown fields are dropped");

    cm["metadata"]["name"] = json!("ignored");
    let r = h
        .post(
            "/api/v1/namespaces/default/configmaps?fieldValidation=Ignore",
            cm,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.headers.get("warning").is_none());
}

#[tokio::test]
async fn api_defaulting_and_cluster_ip_allocation() {
    let h = harness().await;
    let svc = |name: &str, ip: Option<&str>| {
        let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}});
        if let Some(ip) = ip {
            s["spec"]["clusterIP"] = json!(ip);
        }
        s
    };
    let a = h
        .post("/api/v1/namespaces/default/services", svc("a", None))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let ip = a.body["spec"]["clusterIP"]
        .as_str()
        .expect("allocated")
        .to_string();
    assert!(ip.starts_with("10.96.") && ip != "10.96.0.1", "{ip}");
    assert_eq!(a.body["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(a.body["spec"]["type"], "ClusterIP");
    assert_eq!(a.body["spec"]["sessionAffinity"], "None");
    assert_eq!(a.body["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(a.body["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(a.body["spec"]["ipFamilyPolicy"], "SingleStack");

    let clash = h
        .post("/api/v1/namespaces/default/services", svc("b", Some(&ip)))
        .await;
    assert_eq!(clash.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        clash.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("provided IP is already allocated"))
    );
    let out = h
        .post(
            "/api/v1/namespaces/default/services",
            svc("c", Some("192.168.0.1")),
        )
        .await;
    assert_eq!(out.status, StatusCode::UNPROCESSABLE_ENTITY);
    let chosen = h
        .post(
            "/api/v1/namespaces/default/services",
            svc("d", Some("10.96.5.5")),
        )
        .await;
    assert_eq!(chosen.body["spec"]["clusterIP"], "10.96.5.5");
    let headless = h
        .post(
            "/api/v1/namespaces/default/services",
            svc("e", Some("None")),
        )
        .await;
    assert_eq!(headless.body["spec"]["clusterIP"], "None");

    // An update that leaves clusterIP out keeps it; NodePort type allocates a node port.
    let mut upd = a.body.clone();
    upd["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIP");
    upd["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIPs");
    upd["spec"]["type"] = json!("NodePort");
    let r = h
        .call(
            "PUT",
            "/api/v1/namespaces/default/services/a",
            "application/json",
            upd.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"]["clusterIP"], ip.as_str());
    let np = r.body["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("nodePort");
    assert!((30000..=32767).contains(&np));

    let p = h
        .post("/api/v1/namespaces/default/pods", pod("p", json!({}), None))
        .await;
    assert_eq!(p.body["spec"]["restartPolicy"], "Always");
    assert_eq!(p.body["spec"]["schedulerName"], "default-scheduler");
    assert_eq!(
        p.body["spec"]["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(p.body["status"]["phase"], "Pending");
}

#[tokio::test]
async fn api_list_selectors_and_paging() {
    let h = harness().await;
    for (name, tier, node) in [("p1", "fe", "n1"), ("p2", "be", "n1"), ("p3", "fe", "n2")] {
        let r = h
            .post(
                "/api/v1/namespaces/default/pods",
                pod(name, json!({"tier": tier}), Some(node)),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let r = h
        .get("/api/v1/namespaces/default/pods?labelSelector=tier%3Dfe")
        .await;
    assert_eq!(names(&r.body), ["p1", "p3"]);
    assert_eq!(r.body["kind"], "PodList");
    let r = h
        .get("/api/v1/pods?labelSelector=tier%20notin%20(fe)")
        .await;
    assert_eq!(names(&r.body), ["p2"]);
    let r = h
        .get("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1,metadata.name!%3Dp1")
        .await;
    assert_eq!(names(&r.body), ["p2"]);
    let r = h
        .get("/api/v1/pods?fieldSelector=status.phase%3DPending")
        .await;
    assert_eq!(names(&r.body).len(), 3);

    let page1 = h.get("/api/v1/namespaces/default/pods?limit=2").await;
    assert_eq!(names(&page1.body), ["p1", "p2"]);
    let token = page1.body["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    let page2 = h
        .get(&format!(
            "/api/v1/namespaces/default/pods?limit=2&continue={token}"
        ))
        .await;
    assert_eq!(names(&page2.body), ["p3"]);
    assert!(page2.body["metadata"].get("continue").is_none());

    // Once history is compacted, an old continue token and an exact old revision are Gone.
    h.post("/api/v1/namespaces/default/configmaps", configmap("later"))
        .await;
    let current = h.store.current_revision().await.expect("revision");
    h.store.compact(current).await.expect("compacts");
    let stale = h
        .get(&format!(
            "/api/v1/namespaces/default/pods?limit=2&continue={token}"
        ))
        .await;
    assert_eq!(stale.status, StatusCode::GONE);
    let exact = h
        .get("/api/v1/pods?resourceVersion=1&resourceVersionMatch=Exact")
        .await;
    assert_eq!(exact.status, StatusCode::GONE);
    assert_eq!(exact.body["reason"], "Expired");
}

#[tokio::test]
async fn api_watch_events_and_gone() {
    let h = harness().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let first = h.post(base, configmap("w0")).await;
    let rv = first.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut rx = h
        .watch(&format!(
            "{base}?watch=true&resourceVersion={rv}&labelSelector=watched%3Dyes"
        ))
        .await;
    let mut all = h
        .watch(&format!("{base}?watch=1&resourceVersion={rv}"))
        .await;

    let mut cm = configmap("w1");
    cm["metadata"]["labels"] = json!({"watched": "yes"});
    let created = h.post(base, cm).await;
    h.post(base, configmap("w2")).await;
    let ev = next_event(&mut rx).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w1"))
    );

    let mut upd = created.body.clone();
    upd["data"]["k"] = json!("changed");
    h.call(
        "PUT",
        &format!("{base}/w1"),
        "application/json",
        upd.to_string(),
    )
    .await;
    let ev = next_event(&mut rx).await;
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["data"]["k"], "changed");

    // Dropping the label takes the object out of the selected set: DELETED for this watcher.
    let r = h
        .call(
            "PATCH",
            &format!("{base}/w1"),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"watched":null}}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ev = next_event(&mut rx).await;
    assert_eq!(ev["type"], "DELETED");

    h.call(
        "DELETE",
        &format!("{base}/w2"),
        "application/json",
        Body::empty(),
    )
    .await;
    let types: Vec<String> = {
        let mut t = Vec::new();
        for _ in 0..5 {
            let ev = next_event(&mut all).await;
            t.push(format!(
                "{}:{}",
                ev["type"].as_str().unwrap_or_default(),
                ev["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
            ));
        }
        t
    };
    assert_eq!(
        types,
        [
            "ADDED:w1",
            "ADDED:w2",
            "MODIFIED:w1",
            "MODIFIED:w1",
            "DELETED:w2"
        ]
    );

    // History below the compacted revision is gone: 410 Expired.
    let current = h.store.current_revision().await.expect("revision");
    h.store.compact(current).await.expect("compacts");
    let r = h
        .get(&format!("{base}?watch=true&resourceVersion={rv}"))
        .await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.body["reason"], "Expired");
    assert_eq!(r.body["code"], 410);

    // resourceVersion=0 starts with the current objects as ADDED, and bookmarks are sent.
    let mut fresh = h
        .watch(&format!(
            "{base}?watch=true&resourceVersion=0&allowWatchBookmarks=true&sendInitialEvents=true"
        ))
        .await;
    let ev = next_event(&mut fresh).await;
    assert_eq!(ev["type"], "ADDED");
    let mut saw_bookmark = false;
    for _ in 0..3 {
        let ev = next_event(&mut fresh).await;
        if ev["type"] == "BOOKMARK" {
            assert_eq!(
                ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            saw_bookmark = true;
            break;
        }
    }
    assert!(saw_bookmark);
}

#[tokio::test]
async fn api_patch_types_on_deployments() {
    let h = harness().await;
    let base = "/apis/apps/v1/namespaces/default/deployments";
    let created = h.post(base, deployment("web", "web", "web")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["metadata"]["generation"], 1);
    assert_eq!(created.body["spec"]["replicas"], 1);
    assert_eq!(created.body["spec"]["strategy"]["type"], "RollingUpdate");

    let smp = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
        "containers": [{"name": "web", "image": "nginx:1.28"}, {"name": "side", "image": "busybox"}]}}}});
    let r = h
        .call(
            "PATCH",
            &format!("{base}/web"),
            "application/strategic-merge-patch+json",
            smp.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let cs = &r.body["spec"]["template"]["spec"]["containers"];
    assert_eq!(cs[0]["image"], "nginx:1.28");
    assert_eq!(
        cs[0]["ports"][0]["containerPort"], 80,
        "merged by name, ports kept"
    );
    assert_eq!(cs[1]["name"], "side");
    assert_eq!(
        cs[1]["imagePullPolicy"], "Always",
        "defaults applied to patched containers"
    );
    assert_eq!(r.body["metadata"]["generation"], 2);

    let r = h
        .call(
            "PATCH",
            &format!("{base}/web"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":3}}"#,
        )
        .await;
    assert_eq!(r.body["spec"]["replicas"], 3);
    let r = h
        .call(
            "PATCH",
            &format!("{base}/web"),
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
        )
        .await;
    assert_eq!(r.body["spec"]["replicas"], 4);

    // Status is only written through the status subresource.
    let r = h
        .call(
            "PATCH",
            &format!("{base}/web"),
            "application/merge-patch+json",
            r#"{"status":{"replicas":9}}"#,
        )
        .await;
    assert!(r.body["status"].get("replicas").is_none());
    let r = h
        .call(
            "PATCH",
            &format!("{base}/web/status"),
            "application/merge-patch+json",
            r#"{"status":{"replicas":9},"spec":{"replicas":1}}"#,
        )
        .await;
    assert_eq!(r.body["status"]["replicas"], 9);
    assert_eq!(r.body["spec"]["replicas"], 4);

    let scale = h.get(&format!("{base}/web/scale")).await;
    assert_eq!(scale.body["kind"], "Scale");
    assert_eq!(scale.body["spec"]["replicas"], 4);
    assert_eq!(scale.body["status"]["selector"], "app=web");
    let r = h
        .call(
            "PATCH",
            &format!("{base}/web/scale"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":2}}"#,
        )
        .await;
    assert_eq!(r.body["spec"]["replicas"], 2);
    assert_eq!(
        h.get(&format!("{base}/web")).await.body["spec"]["replicas"],
        2
    );

    let r = h
        .call("PATCH", &format!("{base}/web"), "application/xml", "{}")
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Server-side apply: creates when absent, merges the applied configuration when present.
    let applied = deployment("ssa", "ssa", "ssa");
    let r = h
        .call(
            "PATCH",
            &format!("{base}/ssa"),
            "application/apply-patch+yaml",
            applied.to_string(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fieldManager is required"
    );
    let uri = format!("{base}/ssa?fieldManager=test");
    let r = h
        .call(
            "PATCH",
            &uri,
            "application/apply-patch+yaml",
            applied.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut again = applied.clone();
    again["spec"]["replicas"] = json!(3);
    let r = h
        .call(
            "PATCH",
            &uri,
            "application/apply-patch+yaml",
            again.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"]["replicas"], 3);
}

#[tokio::test]
async fn api_pod_binding_and_graceful_delete() {
    let h = harness().await;
    let base = "/api/v1/namespaces/default/pods";
    h.post(base, pod("p", json!({}), None)).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let r = h.post(&format!("{base}/p/binding"), binding.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h.post(&format!("{base}/p/binding"), binding).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let got = h.get(&format!("{base}/p")).await;
    assert_eq!(got.body["spec"]["nodeName"], "n1");
    h.post(base, pod("viacollection", json!({}), None)).await;
    let r = h
        .post(
            "/api/v1/namespaces/default/bindings",
            json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "viacollection"}, "target": {"name": "n2"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        h.get(&format!("{base}/viacollection")).await.body["spec"]["nodeName"],
        "n2"
    );

    // A bound Pod is marked for deletion and waits for its node to finish it.
    let r = h
        .call(
            "DELETE",
            &format!("{base}/p"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert!(r.status.is_success());
    let got = h.get(&format!("{base}/p")).await;
    assert!(got.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(got.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let r = h
        .call(
            "DELETE",
            &format!("{base}/p?gracePeriodSeconds=0"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        h.get(&format!("{base}/p")).await.status,
        StatusCode::NOT_FOUND
    );

    // An unbound Pod goes at once.
    h.post(base, pod("q", json!({}), None)).await;
    h.call(
        "DELETE",
        &format!("{base}/q"),
        "application/json",
        Body::empty(),
    )
    .await;
    assert_eq!(
        h.get(&format!("{base}/q")).await.status,
        StatusCode::NOT_FOUND
    );

    // Foreground propagation leaves the object for the garbage collector with a finalizer.
    let base = "/apis/apps/v1/namespaces/default/deployments";
    h.post(base, deployment("fg", "fg", "fg")).await;
    let r = h
        .call(
            "DELETE",
            &format!("{base}/fg"),
            "application/json",
            r#"{"propagationPolicy":"Foreground"}"#,
        )
        .await;
    assert!(r.status.is_success());
    let got = h.get(&format!("{base}/fg")).await;
    assert_eq!(
        got.body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    let r = h
        .call(
            "PATCH",
            &format!("{base}/fg"),
            "application/merge-patch+json",
            r#"{"metadata":{"finalizers":null}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        h.get(&format!("{base}/fg")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn api_namespace_deletion_empties_then_removes_it() {
    let h = harness().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}});
    let r = h.post("/api/v1/namespaces", ns).await;
    assert_eq!(r.body["spec"]["finalizers"], json!(["kubernetes"]));
    h.post("/api/v1/namespaces/gone/configmaps", configmap("c"))
        .await;
    // What the ServiceAccounts controller makes (admission wants it for the Pod).
    h.post(
        "/api/v1/namespaces/gone/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
    h.post(
        "/api/v1/namespaces/gone/pods",
        pod("bound", json!({}), Some("n1")),
    )
    .await;
    let r = h
        .call(
            "DELETE",
            "/api/v1/namespaces/gone",
            "application/json",
            Body::empty(),
        )
        .await;
    assert!(r.status.is_success());
    assert_eq!(
        h.get("/api/v1/namespaces/gone").await.body["status"]["phase"],
        "Terminating"
    );
    let refused = h
        .post("/api/v1/namespaces/gone/configmaps", configmap("late"))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    // First pass: the ConfigMap goes, the bound Pod starts graceful termination.
    assert!(
        super::namespaces::finalize_once(&h.state)
            .await
            .expect("pass")
            .is_empty()
    );
    assert_eq!(
        h.get("/api/v1/namespaces/gone/configmaps/c").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        h.get("/api/v1/namespaces/gone/pods/bound").await.body["metadata"]["deletionTimestamp"]
            .is_string()
    );
    // The node's agent finishes the Pod; the next pass removes the Namespace.
    h.call(
        "DELETE",
        "/api/v1/namespaces/gone/pods/bound?gracePeriodSeconds=0",
        "application/json",
        Body::empty(),
    )
    .await;
    let removed = super::namespaces::finalize_once(&h.state)
        .await
        .expect("pass");
    assert_eq!(removed, ["gone"]);
    assert_eq!(
        h.get("/api/v1/namespaces/gone").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn api_events_v1_share_storage_with_core_events() {
    let h = harness().await;
    let v1 = "/apis/events.k8s.io/v1/namespaces/default/events";
    let mut watch = h.watch(&format!("{v1}?watch=true&resourceVersion=0")).await;
    let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
        "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}, "note": "started", "reason": "Started",
        "type": "Normal", "reportingController": "keelson/agent", "reportingInstance": "n1",
        "eventTime": "2026-01-01T00:00:00.000000Z", "action": "Start"});
    let r = h.post(v1, ev).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["apiVersion"], "events.k8s.io/v1");
    assert_eq!(r.body["note"], "started");
    let core = h.get("/api/v1/namespaces/default/events/e1").await;
    assert_eq!(core.body["message"], "started");
    assert_eq!(core.body["involvedObject"]["name"], "p");
    let seen = next_event(&mut watch).await;
    assert_eq!(
        (seen["type"].as_str(), seen["object"]["note"].as_str()),
        (Some("ADDED"), Some("started"))
    );

    let r = h
        .call(
            "PATCH",
            &format!("{v1}/e1"),
            "application/merge-patch+json",
            r#"{"series":{"count":2,"lastObservedTime":"2026-01-01T00:00:05.000000Z"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["series"]["count"], 2);
    let list = h.get(v1).await;
    assert_eq!(list.body["kind"], "EventList");
    assert_eq!(list.body["items"][0]["regarding"]["name"], "p");
    let r = h
        .call(
            "DELETE",
            &format!("{v1}/e1"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        h.get("/api/v1/namespaces/default/events/e1").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn api_tables_discovery_and_openapi() {
    let h = harness().await;
    h.post(
        "/api/v1/namespaces/default/pods",
        pod("p", json!({}), Some("n1")),
    )
    .await;
    let t = h
        .with_accept(
            "/api/v1/namespaces/default/pods",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .await;
    assert_eq!(t.body["kind"], "Table");
    let cols: Vec<&str> = t.body["columnDefinitions"]
        .as_array()
        .expect("cols")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t.body["rows"][0]["cells"][6], "n1");
    let t = h
        .with_accept(
            "/api/v1/namespaces?includeObject=Object",
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .await;
    assert_eq!(t.body["rows"].as_array().map(Vec::len), Some(4));
    assert_eq!(t.body["rows"][0]["object"]["kind"], "Namespace");

    let v = h.get("/version").await;
    assert_eq!(v.body["gitVersion"], "v1.36.0+keelson");
    let apis = h.get("/apis").await;
    assert!(
        apis.body["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "apps")
    );
    let core = h.get("/api/v1").await;
    assert!(
        core.body["resources"]
            .as_array()
            .expect("res")
            .iter()
            .any(|r| r["name"] == "pods/binding")
    );
    let agg = h
        .with_accept(
            "/apis",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .await;
    assert_eq!(agg.body["kind"], "APIGroupDiscoveryList");
    assert!(
        agg.headers[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|c| c.contains("apidiscovery.k8s.io"))
    );
    let idx = h.get("/openapi/v3").await;
    let url = idx.body["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("url")
        .to_string();
    let doc = h.get(&url).await;
    assert!(doc.body["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
}

/// Finds a free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

const KUBECTL: &str = "/root/.local/share/keelson/venv/bin/kubectl";

fn kubectl(
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(KUBECTL);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.env("KUBECACHEDIR", kubeconfig.with_file_name("kubecache"));
    cmd.env(
        "HOME",
        kubeconfig.parent().unwrap_or(std::path::Path::new("/tmp")),
    );
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl finishes");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("$ kubectl {}\n{stdout}{stderr}", args.join(" "));
    (out.status.success(), stdout, stderr)
}

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
"#;

/// A TLS configuration for a stand-in agent: a self-signed certificate (and its SHA-256 in
/// hex), client certificates required from the server's agent client CA in `server_dir`.
fn fake_agent_tls(server_dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, String) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.der());
    let hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let ca = std::fs::read(server_dir.join(super::pki::AGENT_CLIENT_CA_FILE)).expect("client CA");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
        )
        .expect("config");
    (Arc::new(cfg), hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_real_kubectl_against_real_server() {
    if !std::path::Path::new(KUBECTL).exists() {
        println!("skipping: kubectl not found at {KUBECTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, kc) = start_server(dir.path()).await;

    let kc2 = kc.clone();
    let run = move |args: Vec<&'static str>, stdin: Option<&'static str>| {
        let kc = kc2.clone();
        tokio::task::spawn_blocking(move || kubectl(&kc, &args, stdin))
    };

    let (ok, out, _) = run(vec!["apply", "-f", "-"], Some(MANIFEST))
        .await
        .expect("join");
    assert!(ok, "apply failed");
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
    // A second apply computes a strategic merge patch against last-applied.
    let changed: &'static str = Box::leak(
        MANIFEST
            .replace("nginx:1.27", "nginx:1.28")
            .into_boxed_str(),
    );
    let (ok, out, _) = run(vec!["apply", "-f", "-"], Some(changed))
        .await
        .expect("join");
    assert!(
        ok && out.contains("deployment.apps/web configured"),
        "{out}"
    );
    let (ok, out, _) = run(
        vec![
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out == "nginx:1.28", "{out}");

    // Service ports through apply: add a named second port, then drop the first one.
    let two_ports: &'static str = "apiVersion: v1\nkind: Service\nmetadata: {name: ports}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80}\n  - {name: https, port: 443}\n";
    let one_port: &'static str = "apiVersion: v1\nkind: Service\nmetadata: {name: ports}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: https, port: 443}\n";
    let (ok, _, _) = run(vec!["apply", "-f", "-"], Some(two_ports))
        .await
        .expect("join");
    assert!(ok);
    let (ok, out, _) = run(vec!["apply", "-f", "-"], Some(one_port))
        .await
        .expect("join");
    assert!(ok && out.contains("service/ports configured"), "{out}");
    let (ok, out, _) = run(
        vec![
            "get",
            "svc",
            "ports",
            "-o",
            "jsonpath={.spec.ports[*].port}",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out == "443", "{out}");

    let (ok, out, _) = run(vec!["get", "deployments,services", "-o", "wide"], None)
        .await
        .expect("join");
    assert!(ok, "get failed");
    assert!(
        out.contains("UP-TO-DATE") && out.contains("CLUSTER-IP") && out.contains("80/TCP"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["get", "ns"], None).await.expect("join");
    assert!(
        ok && out.contains("kube-system") && out.contains("Active"),
        "{out}"
    );

    let (ok, out, _) = run(vec!["scale", "deployment/web", "--replicas=5"], None)
        .await
        .expect("join");
    assert!(ok && out.contains("scaled"), "{out}");
    let (_, out, _) = run(
        vec!["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
        None,
    )
    .await
    .expect("join");
    assert_eq!(out, "5");

    let bad_port: &'static str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports:\n  - port: 70000\n";
    let (ok, _, err) = run(vec!["apply", "-f", "-"], Some(bad_port))
        .await
        .expect("join");
    assert!(!ok && err.contains("spec.ports[0].port"), "{err}");

    let bad_sel: &'static str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n";
    let (ok, _, err) = run(vec!["apply", "-f", "-"], Some(bad_sel))
        .await
        .expect("join");
    assert!(
        !ok && err.contains("spec.template.metadata.labels"),
        "{err}"
    );

    let unknown: &'static str =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unk}\ndata: {a: b}\nbogus: 1\n";
    let (ok, _, err) = run(vec!["apply", "-f", "-"], Some(unknown))
        .await
        .expect("join");
    assert!(!ok && err.contains("unknown field \"bogus\""), "{err}");

    let (ok, _, err) = run(
        vec![
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        Some("{not json"),
    )
    .await
    .expect("join");
    assert!(
        !ok && (err.contains("BadRequest")
            || err.contains("json parse error")
            || err.contains("400")),
        "{err}"
    );

    let (ok, out, _) = run(vec!["version"], None).await.expect("join");
    assert!(
        ok && out.contains("Server Version: v1.36.0+keelson"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["api-resources"], None).await.expect("join");
    assert!(
        ok && out.contains("endpointslices") && out.contains("deploy") && out.contains("leases"),
        "{out}"
    );
    let (ok, out, err) = run(vec!["describe", "service", "web"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("IP:") && out.contains("80/TCP"),
        "{out}{err}"
    );
    let (ok, out, _) = run(vec!["describe", "deployment", "web"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("Name:") && out.contains("nginx:1.28") && out.contains("RollingUpdate"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["get", "all"], None).await.expect("join");
    assert!(
        ok && out.contains("deployment.apps/web") && out.contains("service/web"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["explain", "deployment.spec.replicas"], None)
        .await
        .expect("join");
    assert!(ok && out.contains("replicas"), "{out}");
    let ssa: &'static str =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: b}\n";
    let (ok, out, _) = run(vec!["apply", "--server-side", "-f", "-"], Some(ssa))
        .await
        .expect("join");
    assert!(
        ok && out.contains("configmap/ssa serverside-applied"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["create", "namespace", "extra"], None)
        .await
        .expect("join");
    assert!(ok && out.contains("namespace/extra created"), "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "create",
            "configmap",
            "c1",
            "--from-literal=a=b",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok, "{out}");
    let (ok, out, _) = run(vec!["-n", "extra", "get", "configmaps", "-o", "name"], None)
        .await
        .expect("join");
    assert!(ok && out.contains("configmap/c1"), "{out}");
    // Typed clients send protobuf bodies.
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=k=v",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok, "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "get",
            "secret",
            "s1",
            "-o",
            "jsonpath={.data.k}",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out == "dg==", "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "create",
            "deployment",
            "d1",
            "--image=nginx:1.27",
            "--replicas=3",
            "--port=8080",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out.contains("deployment.apps/d1 created"), "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "get",
            "deploy",
            "d1",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out == "3 8080", "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "create",
            "service",
            "nodeport",
            "np1",
            "--tcp=80:8080",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out.contains("service/np1 created"), "{out}");
    let (ok, out, _) = run(vec!["-n", "extra", "create", "serviceaccount", "sa1"], None)
        .await
        .expect("join");
    assert!(ok, "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "run",
            "r1",
            "--image=busybox",
            "--",
            "sleep",
            "3600",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out.contains("pod/r1 created"), "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "expose",
            "deployment",
            "d1",
            "--port=80",
            "--target-port=8080",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out.contains("service/d1 exposed"), "{out}");
    let (ok, out, _) = run(vec!["-n", "extra", "get", "svc"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("NodePort") && out.contains("80:3"),
        "{out}"
    );

    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "set",
            "image",
            "deployment/d1",
            "nginx=nginx:1.28",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out.contains("image updated"), "{out}");
    let (ok, out, _) = run(
        vec!["-n", "extra", "label", "deployment", "d1", "tier=web"],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out.contains("labeled"), "{out}");
    let (ok, out, _) = run(
        vec![
            "-n",
            "extra",
            "get",
            "deploy",
            "-l",
            "tier=web",
            "-o",
            "jsonpath={.items[0].spec.template.spec.containers[0].image}",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out == "nginx:1.28", "{out}");
    let (ok, out, err) = run(vec!["delete", "namespace", "extra", "--timeout=60s"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("namespace \"extra\" deleted"),
        "{out}{err}"
    );
    let (_, _, err) = run(vec!["get", "namespace", "extra"], None)
        .await
        .expect("join");
    assert!(err.contains("NotFound"), "{err}");

    // pods/log goes to the agent named by the node's annotation, over TLS: the agent admits
    // the server's client certificate (of `agent-client-ca.crt`) and the server pins the
    // agent's certificate by the digest the Node publishes.
    let agent = std::net::TcpListener::bind("127.0.0.1:0").expect("agent port");
    agent.set_nonblocking(true).expect("nonblocking");
    let agent_addr = agent.local_addr().expect("addr");
    let agent_app = Router::new().route(
        "/containerLogs/{ns}/{pod}/{container}",
        axum::routing::get(
            |axum::extract::Path((ns, pod, c)): axum::extract::Path<(String, String, String)>,
             axum::extract::Query(q): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >| async move {
                format!(
                    "log of {ns}/{pod}/{c} tail={}\n",
                    q.get("tailLines").cloned().unwrap_or_default()
                )
            },
        ),
    );
    let (agent_tls, agent_digest) = fake_agent_tls(dir.path());
    let agent_server = axum_server::from_tcp_rustls(
        agent,
        axum_server::tls_rustls::RustlsConfig::from_config(agent_tls),
    )
    .expect("agent server");
    let agent_task =
        tokio::spawn(async move { agent_server.serve(agent_app.into_make_service()).await });
    let node: &'static str = Box::leak(
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  annotations: {{keelson.io/agent-api: \"{agent_addr}\", keelson.io/agent-api-cert-sha256: \"{agent_digest}\"}}\n")
            .into_boxed_str(),
    );
    let (ok, _, _) = run(vec!["apply", "-f", "-"], Some(node))
        .await
        .expect("join");
    assert!(ok);
    let pod_yaml: &'static str = "apiVersion: v1\nkind: Pod\nmetadata: {name: lp}\nspec:\n  nodeName: n1\n  containers: [{name: main, image: busybox}]\n";
    let (ok, _, _) = run(vec!["apply", "-f", "-"], Some(pod_yaml))
        .await
        .expect("join");
    assert!(ok);
    let (_, uid, _) = run(
        vec!["get", "pod", "lp", "-o", "jsonpath={.metadata.uid}"],
        None,
    )
    .await
    .expect("join");
    let event: &'static str = Box::leak(
        format!("apiVersion: v1\nkind: Event\nmetadata: {{name: lp.1}}\ninvolvedObject: {{kind: Pod, name: lp, namespace: default, uid: {uid}}}\nreason: Scheduled\nmessage: assigned to n1\ntype: Normal\n")
            .into_boxed_str(),
    );
    let (ok, _, _) = run(vec!["create", "-f", "-"], Some(event))
        .await
        .expect("join");
    assert!(ok);
    let (ok, out, err) = run(vec!["describe", "pod", "lp"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("Node:") && out.contains("assigned to n1"),
        "{out}{err}"
    );
    let (ok, out, _) = run(vec!["logs", "lp", "--tail=5"], None)
        .await
        .expect("join");
    assert!(ok && out == "log of default/lp/main tail=5\n", "{out}");
    let (ok, out, _) = run(vec!["get", "pods", "-o", "wide"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("NOMINATED NODE") && out.contains("n1") && out.contains("Pending"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["get", "nodes"], None).await.expect("join");
    assert!(ok && out.contains("n1") && out.contains("Unknown"), "{out}");
    let (ok, out, _) = run(vec!["cordon", "n1"], None).await.expect("join");
    assert!(ok && out.contains("cordoned"), "{out}");
    let (ok, out, _) = run(vec!["get", "nodes"], None).await.expect("join");
    assert!(ok && out.contains("SchedulingDisabled"), "{out}");
    let (ok, out, _) = run(
        vec![
            "get",
            "pods",
            "--watch",
            "--request-timeout=2s",
            "--output-watch-events",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(out.contains("ADDED") && out.contains("lp"), "{ok} {out}");
    // A bound Pod terminates gracefully; the agent's final delete (grace 0) removes it.
    let (ok, _, _) = run(vec!["delete", "pod", "lp", "--wait=false"], None)
        .await
        .expect("join");
    assert!(ok);
    let (_, out, _) = run(vec!["get", "pod", "lp"], None).await.expect("join");
    assert!(out.contains("Terminating"), "{out}");
    let (ok, _, _) = run(
        vec!["delete", "pod", "lp", "--grace-period=0", "--force"],
        None,
    )
    .await
    .expect("join");
    assert!(ok);
    agent_task.abort();

    let (ok, out, _) = run(vec!["delete", "-f", "-"], Some(MANIFEST))
        .await
        .expect("join");
    assert!(ok && out.contains("deleted"), "{out}");
    let (_, out, err) = run(vec!["get", "deploy", "web"], None).await.expect("join");
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{out}{err}"
    );

    server.abort();
}

/// Starts the real server on a free loopback port in `dir`; returns the task and the kubeconfig.
async fn start_server(
    dir: &std::path::Path,
) -> (
    tokio::task::JoinHandle<Result<(), crate::server::ServerError>>,
    std::path::PathBuf,
) {
    let port = free_port();
    let cfg = crate::server::ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
        service_cidr: "10.96.0.0/16".into(),
        cluster_cidr: "10.244.0.0/16".into(),
        node_cidr_mask: 24,
        lb_pool: None,
        advertise: None,
        token_auth_file: None,
    };
    let server = tokio::spawn(crate::server::run(cfg));
    let kc = dir.join("admin.kubeconfig");
    for _ in 0..100 {
        if kc.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (server, kc);
        }
        if server.is_finished() {
            panic!("server stopped: {:?}", server.await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_kube_rs_client_round_trip() {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
    use kube::{
        Api,
        api::{Patch, PatchParams, PostParams},
        runtime::{WatchStreamExt as _, watcher},
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, kc) = start_server(dir.path()).await;
    let client = crate::server::admin_client(&kc).await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // A watcher (list then watch) and a streaming-list watcher both see the Pod appear.
    let mut plain = watcher(pods.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut streaming = watcher(pods.clone(), watcher::Config::default().streaming_lists())
        .applied_objects()
        .boxed();
    let p: Pod = serde_json::from_value(pod("kr", json!({"app": "kr"}), None)).expect("pod");
    let created = pods
        .create(&PostParams::default(), &p)
        .await
        .expect("create");
    assert_eq!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref()),
        Some("Always")
    );
    for w in [&mut plain, &mut streaming] {
        let seen = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        assert_eq!(seen.metadata.name.as_deref(), Some("kr"));
    }

    // Binding, then a status update as an agent would write it.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "kr"}, "target": {"kind": "Node", "name": "n1"}});
    let _: serde_json::Value = pods
        .create_subresource("binding", "kr", &PostParams::default(), &binding)
        .await
        .expect("bind");
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.9"}});
    let updated = pods
        .patch_status("kr", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    assert_eq!(
        updated.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );
    assert_eq!(
        updated.spec.and_then(|s| s.node_name).as_deref(),
        Some("n1")
    );

    let deps: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(deployment("kd", "kd", "kd")).expect("deployment");
    deps.create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
    let patched = deps
        .patch("kd", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .expect("smp");
    let c = &patched
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers[0];
    assert_eq!(
        (c.image.as_deref(), c.ports.as_ref().map(Vec::len)),
        (Some("nginx:2"), Some(1))
    );
    let err = deps.get("missing").await.expect_err("404");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_reuses_credentials_and_allocations() {
    use k8s_openapi::api::core::v1::Service;
    use kube::{Api, api::PostParams};
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = |name: &str| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}),
        )
        .expect("service")
    };
    let (server, kc) = start_server(dir.path()).await;
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca");
    let client = crate::server::admin_client(&kc).await.expect("client");
    let api: Api<Service> = Api::namespaced(client, "default");
    let first = api
        .create(&PostParams::default(), &svc("first"))
        .await
        .expect("create");
    let first_ip = first.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
    // Stopping: the server and its tasks go; connections close as their clients go away.
    drop(api);
    server.abort();
    let _ = server.await;
    let mut reopened = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if SqliteStore::open(&dir.path().join("state.db")).is_ok() {
            reopened = Some(());
            break;
        }
    }
    assert!(reopened.is_some(), "the stopped server released its store");
    let (server, kc) = start_server(dir.path()).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca"),
        ca,
        "CA reused"
    );
    let client = crate::server::admin_client(&kc).await.expect("client");
    let api: Api<Service> = Api::namespaced(client, "default");
    let kept = api.get("first").await.expect("survived restart");
    assert_eq!(
        kept.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some(first_ip.as_str())
    );
    let second = api
        .create(&PostParams::default(), &svc("second"))
        .await
        .expect("create");
    assert_ne!(
        second.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some(first_ip.as_str())
    );
    server.abort();
}

/// Names of the items of a list response.
fn item_names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Creates a namespace of the test's own and ConfigMaps `names` in it; returns its collection path.
async fn configmaps_in(h: &Harness, ns: &str, names: &[&str]) -> String {
    let r = h
        .post(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let base = format!("/api/v1/namespaces/{ns}/configmaps");
    for name in names {
        let r = h.post(&base, configmap(name)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    base
}

/// Replaces the data of ConfigMap `name` under `base`.
async fn set_data(h: &Harness, base: &str, name: &str, value: &str) -> Value {
    let mut cm = h.get(&format!("{base}/{name}")).await.body;
    cm["data"]["k"] = json!(value);
    let r = h
        .call(
            "PUT",
            &format!("{base}/{name}"),
            "application/json",
            cm.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn delete_object(h: &Harness, path: &str) {
    let r = h
        .call("DELETE", path, "application/json", Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

fn continue_token(list: &Value) -> String {
    list["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string()
}

#[tokio::test]
async fn api_list_pages_are_read_at_the_first_page_revision() {
    let h = harness().await;
    let base = configmaps_in(&h, "paging", &["c1", "c2", "c3", "c4", "c5"]).await;
    let page1 = h.get(&format!("{base}?limit=2")).await;
    assert_eq!(page1.status, StatusCode::OK);
    assert_eq!(item_names(&page1.body), ["c1", "c2"]);
    let rv = page1.body["metadata"]["resourceVersion"].clone();
    let token = continue_token(&page1.body);
    // The token is the apiserver's: {"v":"meta.k8s.io/v1","rv":<rev>,"start":"<key>\u0000"}.
    let decoded: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &token)
            .expect("base64"),
    )
    .expect("json");
    assert_eq!(decoded["v"], "meta.k8s.io/v1");
    assert_eq!(decoded["rv"].to_string(), rv.as_str().expect("rv"));
    assert_eq!(decoded["start"], "c2\u{0}");

    // Between the pages: a key inside the remaining range is created, one is changed, one deleted.
    h.post(&base, configmap("c3a")).await;
    set_data(&h, &base, "c3", "changed").await;
    delete_object(&h, &format!("{base}/c4")).await;

    let page2 = h.get(&format!("{base}?limit=2&continue={token}")).await;
    assert_eq!(page2.status, StatusCode::OK, "{}", page2.body);
    assert_eq!(item_names(&page2.body), ["c3", "c4"]);
    assert_eq!(page2.body["items"][0]["data"]["k"], "v");
    assert_eq!(page2.body["metadata"]["resourceVersion"], rv);
    let page3 = h
        .get(&format!(
            "{base}?limit=2&continue={}",
            continue_token(&page2.body)
        ))
        .await;
    assert_eq!(item_names(&page3.body), ["c5"]);
    assert_eq!(page3.body["metadata"]["resourceVersion"], rv);
    assert!(page3.body["metadata"].get("continue").is_none());

    // A new list sees the changes.
    let fresh = h.get(&base).await;
    assert_eq!(item_names(&fresh.body), ["c1", "c2", "c3", "c3a", "c5"]);
    assert_ne!(fresh.body["metadata"]["resourceVersion"], rv);
}

#[tokio::test]
async fn api_list_exact_revision_shows_the_old_state() {
    let h = harness().await;
    let base = configmaps_in(&h, "exact", &["a"]).await;
    let mut labelled = configmap("b");
    labelled["metadata"]["labels"] = json!({"tier": "fe"});
    let old_rv = h.post(&base, labelled).await.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    set_data(&h, &base, "a", "new").await;
    delete_object(&h, &format!("{base}/b")).await;
    h.post(&base, configmap("c")).await;

    let exact = h
        .get(&format!(
            "{base}?resourceVersion={old_rv}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(exact.status, StatusCode::OK, "{}", exact.body);
    assert_eq!(item_names(&exact.body), ["a", "b"]);
    assert_eq!(exact.body["items"][0]["data"]["k"], "v");
    assert_eq!(exact.body["metadata"]["resourceVersion"], old_rv.as_str());
    // Selectors apply after the read at the old revision.
    let selected = h
        .get(&format!(
            "{base}?resourceVersion={old_rv}&resourceVersionMatch=Exact&labelSelector=tier%3Dfe"
        ))
        .await;
    assert_eq!(item_names(&selected.body), ["b"]);
    // Without a match, a resourceVersion with a limit is exact too (the legacy paging rule)...
    let legacy = h
        .get(&format!("{base}?resourceVersion={old_rv}&limit=1"))
        .await;
    assert_eq!(item_names(&legacy.body), ["a"]);
    assert_eq!(legacy.body["items"][0]["data"]["k"], "v");
    let rest = h
        .get(&format!(
            "{base}?limit=1&continue={}",
            continue_token(&legacy.body)
        ))
        .await;
    assert_eq!(item_names(&rest.body), ["b"]);
    // ...and without a limit, or with NotOlderThan, any newer state is fine: the current one.
    for query in [
        format!("resourceVersion={old_rv}"),
        format!("resourceVersion={old_rv}&resourceVersionMatch=NotOlderThan"),
        "resourceVersion=0".to_string(),
        String::new(),
    ] {
        let now = h.get(&format!("{base}?{query}")).await;
        assert_eq!(now.status, StatusCode::OK, "{query}: {}", now.body);
        assert_eq!(item_names(&now.body), ["a", "c"], "{query}");
        assert_eq!(now.body["items"][0]["data"]["k"], "new", "{query}");
    }
}

#[tokio::test]
async fn api_list_compacted_continue_and_exact_are_expired() {
    let h = harness().await;
    let base = configmaps_in(&h, "compacted", &["a", "b", "c"]).await;
    let page1 = h.get(&format!("{base}?limit=1")).await;
    let first_rv = page1.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let token = continue_token(&page1.body);
    h.post(&base, configmap("bb")).await;
    let current = h.store.current_revision().await.expect("revision");
    h.store.compact(current).await.expect("compacts");

    let stale = h.get(&format!("{base}?limit=1&continue={token}")).await;
    assert_eq!(stale.status, StatusCode::GONE);
    assert_eq!(stale.body["kind"], "Status");
    assert_eq!(stale.body["reason"], "Expired");
    assert_eq!(stale.body["code"], 410);
    assert_eq!(
        stale.body["message"],
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter, or use the continue token in \
         this response to retrieve the remainder of the results. Continuing with the provided \
         token results in an inconsistent list - objects that were created, modified, or \
         deleted between the time the first chunk was returned and now may show up in the list."
    );
    // The token in the 410 resumes after the same key at the latest revision (rv -1).
    let resume = continue_token(&stale.body);
    let mut rest = Vec::new();
    let mut next = Some(resume);
    while let Some(token) = next {
        let page = h.get(&format!("{base}?limit=1&continue={token}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(
            page.body["metadata"]["resourceVersion"],
            current.to_string().as_str()
        );
        rest.extend(item_names(&page.body));
        next = page.body["metadata"]["continue"]
            .as_str()
            .map(str::to_string);
    }
    assert_eq!(rest, ["b", "bb", "c"]);

    let exact = h
        .get(&format!(
            "{base}?resourceVersion={first_rv}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(exact.status, StatusCode::GONE);
    assert_eq!(exact.body["reason"], "Expired");
    assert_eq!(
        exact.body["message"],
        "The resourceVersion for the provided list is too old."
    );
    // The compacted revision itself is still readable.
    let at_compacted = h
        .get(&format!(
            "{base}?resourceVersion={current}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(at_compacted.status, StatusCode::OK);
    assert_eq!(item_names(&at_compacted.body), ["a", "b", "bb", "c"]);
}

#[tokio::test]
async fn api_list_future_resource_version_waits_then_times_out() {
    let h = harness().await;
    let base = configmaps_in(&h, "future", &["a"]).await;
    let current = h.store.current_revision().await.expect("revision");

    // One revision ahead, reached shortly after the request: the list waits for it.
    let writer = {
        let state = h.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            state
                .store
                .create("/registry/core/configmaps/future/b", b"{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"b\",\"namespace\":\"future\"}}".to_vec())
                .await
                .expect("created")
        })
    };
    let waited = h
        .get(&format!(
            "{base}?resourceVersion={}&resourceVersionMatch=NotOlderThan",
            current + 1
        ))
        .await;
    assert_eq!(waited.status, StatusCode::OK, "{}", waited.body);
    assert_eq!(item_names(&waited.body), ["a", "b"]);
    let rev = writer.await.expect("writer");
    assert_eq!(
        waited.body["metadata"]["resourceVersion"],
        rev.to_string().as_str()
    );

    // Far ahead: 504 Timeout "Too large resource version", for NotOlderThan and Exact alike.
    let far = rev + 1000;
    for query in [
        format!("resourceVersion={far}&resourceVersionMatch=NotOlderThan"),
        format!("resourceVersion={far}&resourceVersionMatch=Exact"),
    ] {
        let started = std::time::Instant::now();
        let r = h.get(&format!("{base}?{query}")).await;
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{query}: waits first"
        );
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{query}: {}", r.body);
        assert_eq!(r.body["kind"], "Status");
        assert_eq!(r.body["reason"], "Timeout");
        assert_eq!(
            r.body["message"],
            format!("Timeout: Too large resource version: {far}, current: {rev}")
        );
        assert_eq!(
            r.body["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert_eq!(r.headers[header::RETRY_AFTER], "1");
    }
}

#[tokio::test]
async fn api_list_options_are_validated() {
    let h = harness().await;
    let base = configmaps_in(&h, "options", &["a", "b"]).await;
    let r = h.get(&format!("{base}?resourceVersionMatch=Exact")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: \
         resourceVersionMatch is forbidden unless resourceVersion is provided"
    );
    let r = h
        .get(&format!(
            "{base}?resourceVersion=0&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = h
        .get(&format!(
            "{base}?resourceVersion=1&resourceVersionMatch=Newest"
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["details"]["causes"][0]["reason"],
        "FieldValueNotSupported"
    );
    let r = h.get(&format!("{base}?resourceVersion=abc")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let token = continue_token(&h.get(&format!("{base}?limit=1")).await.body);
    let r = h
        .get(&format!(
            "{base}?limit=1&continue={token}&resourceVersion=5"
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "specifying resource version is not allowed when using continue"
    );
    let r = h
        .get(&format!(
            "{base}?limit=1&continue={token}&resourceVersion=1&resourceVersionMatch=NotOlderThan"
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // "0" is allowed with a continue token; the token's revision decides.
    let r = h
        .get(&format!(
            "{base}?limit=1&continue={token}&resourceVersion=0"
        ))
        .await;
    assert_eq!(item_names(&r.body), ["b"]);
    let r = h.get(&format!("{base}?limit=1&continue=bm90LWpzb24")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid continue token: continue key is not valid"))
    );
}

fn lb_service(name: &str, etp: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp, "selector": {"app": name},
                 "ports": [{"port": 80}]}})
}

fn first_cause(r: &Resp) -> (&str, &str) {
    (
        r.body["details"]["causes"][0]["field"]
            .as_str()
            .unwrap_or_default(),
        r.body["details"]["causes"][0]["message"]
            .as_str()
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn api_service_health_check_node_port_lifecycle() {
    let h = harness().await;
    let base = "/api/v1/namespaces/default/services";
    let a = h.post(base, lb_service("hc-a", "Local")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let hc = a.body["spec"]["healthCheckNodePort"]
        .as_i64()
        .expect("healthCheckNodePort allocated");
    let np = a.body["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("nodePort allocated");
    assert!((30000..=32767).contains(&hc) && hc != np, "{hc} {np}");
    assert_eq!(a.body["spec"]["internalTrafficPolicy"], "Cluster");

    // Taken by another Service, as its health check port or as its nodePort.
    for taken in [hc, np] {
        let mut b = lb_service("hc-b", "Local");
        b["spec"]["healthCheckNodePort"] = json!(taken);
        let r = h.post(base, b).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert_eq!(
            first_cause(&r),
            (
                "spec.healthCheckNodePort",
                format!(
                    "Invalid value: {taken}: failed to allocate requested HealthCheck NodePort {taken}: provided port is already allocated"
                )
                .as_str()
            )
        );
    }
    // A nodePort may not take the health check port.
    let mut c = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hc-c"},
        "spec": {"type": "NodePort", "selector": {"app": "c"}, "ports": [{"port": 80}]}});
    c["spec"]["ports"][0]["nodePort"] = json!(hc);
    let r = h.post(base, c).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(first_cause(&r).0, "spec.ports[0].nodePort");
    // Out of range.
    let mut b = lb_service("hc-b", "Local");
    b["spec"]["healthCheckNodePort"] = json!(8080);
    let r = h.post(base, b).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(first_cause(&r).0, "spec.healthCheckNodePort");
    assert!(
        first_cause(&r).1.ends_with(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{}",
        r.body
    );
    // Not LoadBalancer + Local.
    let mut b = lb_service("hc-b", "Cluster");
    b["spec"]["healthCheckNodePort"] = json!(31999);
    let r = h.post(base, b).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        first_cause(&r),
        (
            "spec.healthCheckNodePort",
            "Invalid value: 31999: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        )
    );
    // A requested free one is kept.
    let mut b = lb_service("hc-b", "Local");
    b["spec"]["healthCheckNodePort"] = json!(31999);
    let r = h.post(base, b).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["healthCheckNodePort"], 31999);

    // A PUT without the field keeps it.
    let mut upd = a.body.clone();
    upd["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("healthCheckNodePort");
    upd["spec"]["selector"] = json!({"app": "changed"});
    let r = h
        .call(
            "PUT",
            &format!("{base}/hc-a"),
            "application/json",
            upd.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"]["healthCheckNodePort"], hc);

    // Switching to Cluster drops it (the patched object still holds the old value), and the
    // number is free again.
    let r = h
        .call(
            "PATCH",
            &format!("{base}/hc-a"),
            "application/merge-patch+json",
            r#"{"spec":{"externalTrafficPolicy":"Cluster"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body["spec"].get("healthCheckNodePort").is_none(),
        "{}",
        r.body
    );
    assert_eq!(r.body["spec"]["ports"][0]["nodePort"], np);
    let mut d = lb_service("hc-d", "Local");
    d["spec"]["healthCheckNodePort"] = json!(hc);
    let r = h.post(base, d).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["healthCheckNodePort"], hc);

    // Turning the Service ClusterIP drops the carried externalTrafficPolicy too.
    let r = h
        .call(
            "PATCH",
            &format!("{base}/hc-d"),
            "application/merge-patch+json",
            r#"{"spec":{"type":"ClusterIP"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body["spec"].get("externalTrafficPolicy").is_none(),
        "{}",
        r.body
    );
    assert!(
        r.body["spec"].get("healthCheckNodePort").is_none(),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn api_service_traffic_policy_validation_and_defaults() {
    let h = harness().await;
    let base = "/api/v1/namespaces/default/services";
    let svc = |name: &str, spec: Value| {
        let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
        for (k, v) in spec.as_object().into_iter().flatten() {
            s["spec"][k] = v.clone();
        }
        s
    };
    let r = h.post(base, svc("np", json!({"type": "NodePort"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(r.body["spec"]["internalTrafficPolicy"], "Cluster");
    assert!(r.body["spec"].get("healthCheckNodePort").is_none());
    let r = h
        .post(base, svc("eip", json!({"externalIPs": ["192.0.2.7"]})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["externalTrafficPolicy"], "Cluster");
    let r = h.post(base, svc("cip", json!({}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["spec"].get("externalTrafficPolicy").is_none());
    assert_eq!(r.body["spec"]["internalTrafficPolicy"], "Cluster");

    for (spec, field, message) in [
        (
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Global"}),
            "spec.externalTrafficPolicy",
            "Unsupported value: \"Global\": supported values: \"Cluster\", \"Local\"",
        ),
        (
            json!({"externalTrafficPolicy": "Local"}),
            "spec.externalTrafficPolicy",
            "Invalid value: \"Local\": may only be set for externally-accessible services",
        ),
        (
            json!({"internalTrafficPolicy": "Node"}),
            "spec.internalTrafficPolicy",
            "Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\"",
        ),
        (
            json!({"externalIPs": ["192.0.2.7", "not-an-ip"]}),
            "spec.externalIPs[1]",
            "Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ),
    ] {
        let r = h.post(base, svc("bad", spec.clone())).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spec}: {}",
            r.body
        );
        assert_eq!(first_cause(&r), (field, message), "{spec}");
        assert_eq!(
            r.body["message"],
            format!("Service \"bad\" is invalid: {field}: {message}")
        );
    }
}

#[test]
fn api_bearer_scheme_is_case_insensitive() {
    assert_eq!(super::bearer_token("Bearer abc"), Some("abc"));
    assert_eq!(super::bearer_token("bearer abc "), Some("abc"));
    assert_eq!(super::bearer_token("BEARER  abc"), Some("abc"));
    assert_eq!(super::bearer_token("Basic abc"), None);
    assert_eq!(super::bearer_token("Bearer "), None);
    assert_eq!(super::bearer_token("Bearerabc"), None);
}
