//! The `api` benchmark's load: N concurrent clients, each with its own connection, sharing
//! one sequence of writes (creates of ConfigMaps, Services or `generateName` objects,
//! deletes) against `keelson server` as kubectl sends them (JSON over TLS), and the same
//! creates straight to etcd as kube-apiserver's storage layer issues them (a transaction that
//! puts the key only if its create revision is 0). Also the read side: repeated full lists
//! and a watch fan-out.

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::{AsyncBufReadExt as _, StreamExt as _};
use kube::{
    api::{DeleteParams, ListParams, PostParams, WatchParams},
    core::Request,
};
use serde_json::json;

use crate::api_bench_report::{Batch, Fanout, Lists};

/// A data value of the size of a small real ConfigMap entry.
const DATA: &str = "value-of-a-small-configmap-entry-as-an-application-would-keep-it-0123456789";

/// What one batch of writes left.
#[derive(Debug, Default)]
pub struct Outcome {
    pub batch: Batch,
    /// The sequence numbers of the writes that were acknowledged.
    pub acknowledged: Vec<usize>,
}

#[derive(Debug, Default)]
struct Tally {
    acknowledged: Vec<usize>,
    errors: usize,
    first_error: Option<String>,
}

/// Runs writes `0..total` over one worker per element of `conns`; each worker takes the next
/// sequence number and calls `op` with its own connection. With `stop_on_error` a worker stops
/// at its first failure (the server is gone: there is nothing more to learn from it).
pub async fn drive<C, F, Fut>(conns: Vec<C>, total: usize, stop_on_error: bool, op: F) -> Outcome
where
    C: Send + 'static,
    F: Fn(&C, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let clients = conns.len();
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let op = Arc::new(op);
    let start = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let (next, stop, op) = (Arc::clone(&next), Arc::clone(&stop), Arc::clone(&op));
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    match op(&conn, i).await {
                        Ok(()) => tally.acknowledged.push(i),
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert(e);
                            if stop_on_error {
                                break;
                            }
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut out = Outcome {
        batch: Batch {
            clients,
            ..Batch::default()
        },
        acknowledged: Vec::new(),
    };
    for w in workers {
        match w.await {
            Ok(t) => {
                out.acknowledged.extend(t.acknowledged);
                out.batch.errors += t.errors;
                if out.batch.first_error.is_none() {
                    out.batch.first_error = t.first_error;
                }
            }
            Err(e) => {
                out.batch.errors += 1;
                out.batch.first_error.get_or_insert(format!("worker: {e}"));
            }
        }
    }
    out.batch.elapsed = start.elapsed();
    out.batch.attempted = out.acknowledged.len() + out.batch.errors;
    out.acknowledged.sort_unstable();
    out
}

/// `n` API clients, each with its own connections.
pub async fn clients(
    server: &crate::api_bench_procs::Server,
    n: usize,
) -> Result<Vec<kube::Client>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(server.client().await?);
    }
    Ok(v)
}

fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        e => e.to_string(),
    }
}

/// The object of ConfigMap number `i` named `<prefix>-<i>`.
pub fn configmap(prefix: &str, i: usize) -> Vec<u8> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": format!("{prefix}-{i}"), "labels": {"app": "bench"}},
        "data": {"config": DATA},
    });
    body.to_string().into_bytes()
}

/// A ConfigMap named by the server from `generateName`.
pub fn generated_configmap(prefix: &str) -> Vec<u8> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"generateName": format!("{prefix}-"), "labels": {"app": "bench"}},
        "data": {"config": DATA},
    });
    body.to_string().into_bytes()
}

/// A selector-less ClusterIP Service: the create allocates its ClusterIP and nothing else
/// follows from it (no EndpointSlice is managed for it).
pub fn service(prefix: &str, i: usize) -> Vec<u8> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("{prefix}-{i}"), "labels": {"app": "bench"}},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    });
    body.to_string().into_bytes()
}

fn collection(ns: &str, plural: &str) -> String {
    format!("/api/v1/namespaces/{ns}/{plural}")
}

/// POSTs `body` to the namespace's collection.
pub async fn create(client: &kube::Client, path: &str, body: Vec<u8>) -> Result<(), String> {
    let req = Request::new(path)
        .create(&PostParams::default(), body)
        .map_err(|e| e.to_string())?;
    client
        .request_text(req)
        .await
        .map(drop)
        .map_err(|e| describe(&e))
}

/// Creates namespace `ns` (one that exists is fine).
pub async fn namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    match create(client, "/api/v1/namespaces", body.to_string().into_bytes()).await {
        Ok(()) => Ok(()),
        Err(e) if e.starts_with("409") => Ok(()),
        Err(e) => anyhow::bail!("creating namespace {ns}: {e}"),
    }
}

/// Creates ConfigMaps `<prefix>-0..total` in `ns` over `conns`.
pub async fn create_configmaps(
    conns: Vec<kube::Client>,
    ns: &str,
    prefix: &str,
    total: usize,
    stop_on_error: bool,
) -> Outcome {
    let path = collection(ns, "configmaps");
    let prefix = prefix.to_owned();
    drive(conns, total, stop_on_error, move |c, i| {
        let (c, path, body) = (c.clone(), path.clone(), configmap(&prefix, i));
        async move { create(&c, &path, body).await }
    })
    .await
}

/// `total` ConfigMaps named by `generateName` in `ns`.
pub async fn create_generated(conns: Vec<kube::Client>, ns: &str, total: usize) -> Outcome {
    let path = collection(ns, "configmaps");
    let body = generated_configmap("gen");
    drive(conns, total, false, move |c, _| {
        let (c, path, body) = (c.clone(), path.clone(), body.clone());
        async move { create(&c, &path, body).await }
    })
    .await
}

/// Services `<prefix>-0..total` in `ns`.
pub async fn create_services(conns: Vec<kube::Client>, ns: &str, total: usize) -> Outcome {
    let path = collection(ns, "services");
    drive(conns, total, false, move |c, i| {
        let (c, path, body) = (c.clone(), path.clone(), service("svc", i));
        async move { create(&c, &path, body).await }
    })
    .await
}

/// Deletes ConfigMaps `<prefix>-0..total` from `ns`.
pub async fn delete_configmaps(
    conns: Vec<kube::Client>,
    ns: &str,
    prefix: &str,
    total: usize,
) -> Outcome {
    let path = collection(ns, "configmaps");
    let prefix = prefix.to_owned();
    drive(conns, total, false, move |c, i| {
        let (c, path, name) = (c.clone(), path.clone(), format!("{prefix}-{i}"));
        async move {
            let req = Request::new(&path)
                .delete(&name, &DeleteParams::default())
                .map_err(|e| e.to_string())?;
            c.request_text(req)
                .await
                .map(drop)
                .map_err(|e| describe(&e))
        }
    })
    .await
}

/// The names of every ConfigMap in `ns`, and the list's resourceVersion.
pub async fn configmap_names(client: &kube::Client, ns: &str) -> Result<(HashSet<String>, String)> {
    let req = Request::new(collection(ns, "configmaps")).list(&ListParams::default())?;
    let text = client
        .request_text(req)
        .await
        .context("listing ConfigMaps")?;
    let list: serde_json::Value = serde_json::from_str(&text)?;
    let names = list["items"]
        .as_array()
        .context("a list without items")?
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("a list without resourceVersion")?
        .to_owned();
    Ok((names, rv))
}

/// `rounds` full lists of `ns`'s ConfigMaps (the answer read to its end, not decoded: the
/// server's time, not the client's JSON parser), after one list that warms up.
pub async fn lists(
    client: &kube::Client,
    ns: &str,
    objects: usize,
    rounds: usize,
) -> Result<Lists> {
    let (names, _) = configmap_names(client, ns).await?;
    ensure!(
        names.len() == objects,
        "{ns} holds {} ConfigMaps, {objects} expected",
        names.len()
    );
    let mut out = Lists {
        objects,
        ..Lists::default()
    };
    for _ in 0..rounds {
        let req = Request::new(collection(ns, "configmaps")).list(&ListParams::default())?;
        let t0 = Instant::now();
        let text = client.request_text(req).await.context("listing")?;
        out.samples.push(t0.elapsed());
        out.bytes = text.len();
    }
    Ok(out)
}

/// `watchers` watches of `ns`'s ConfigMaps from its current revision, then `events` creates at
/// `writers` clients; done when every watcher has seen every ADDED event.
pub async fn fanout(
    server: &crate::api_bench_procs::Server,
    ns: &str,
    watchers: usize,
    events: usize,
    writers: usize,
) -> Result<Fanout> {
    let admin = server.client().await?;
    namespace(&admin, ns).await?;
    let (_, rv) = configmap_names(&admin, ns).await?;
    let mut streams = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let c = server.client().await?;
        let req = Request::new(collection(ns, "configmaps"))
            .watch(&WatchParams::default().timeout(290), &rv)?;
        streams.push(c.request_stream(req).await.context("starting a watch")?);
    }
    let seen = Arc::new(Mutex::new(Vec::<Duration>::with_capacity(watchers)));
    let start = Instant::now();
    let waits: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut lines = s.lines();
                let mut added = 0;
                while added < events {
                    match lines.next().await {
                        Some(Ok(l)) if l.contains(r#""type":"ADDED""#) => added += 1,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("watch stream: {e}")),
                        None => return Err(format!("watch ended after {added} events")),
                    }
                }
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(start.elapsed());
                Ok(())
            })
        })
        .collect();
    let writes = create_configmaps(clients(server, writers).await?, ns, "w", events, false).await;
    ensure!(
        writes.batch.errors == 0,
        "{} of the fan-out's creates failed: {}",
        writes.batch.errors,
        writes.batch.first_error.unwrap_or_default()
    );
    let deadline = Duration::from_secs(300);
    for w in waits {
        match tokio::time::timeout(deadline.saturating_sub(start.elapsed()), w).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => anyhow::bail!("{e}"),
            Ok(Err(e)) => anyhow::bail!("watcher: {e}"),
            Err(_) => anyhow::bail!("the watchers did not see every event within 5 minutes"),
        }
    }
    let elapsed = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .max()
        .copied()
        .unwrap_or_default();
    Ok(Fanout {
        watchers,
        events,
        elapsed,
        writes: writes.batch.elapsed,
    })
}

/// What kube-apiserver stores for ConfigMap `i`: the object as the API server would write it
/// (the request plus the fields it sets), under its registry key.
pub fn etcd_object(prefix: &str, i: usize) -> (String, Vec<u8>) {
    let name = format!("{prefix}-{i}");
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "bench"},
            "managedFields": [{"manager": "bench", "operation": "Update", "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:config": {}}}}],
        },
        "data": {"config": DATA},
    });
    (
        format!("/registry/configmaps/bench/{name}"),
        body.to_string().into_bytes(),
    )
}

/// Creates `total` keys in etcd as kube-apiserver's `Create` does: one transaction, put only
/// if the key's create revision is 0; one that finds the key there is an error.
pub async fn etcd_creates(conns: Vec<etcd_client::Client>, prefix: &str, total: usize) -> Outcome {
    let prefix = prefix.to_owned();
    drive(conns, total, false, move |c, i| {
        let mut kv = c.kv_client();
        let (key, value) = etcd_object(&prefix, i);
        async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            match kv.txn(txn).await {
                Ok(r) if r.succeeded() => Ok(()),
                Ok(_) => Err("key exists".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drive_shares_one_sequence_and_counts_failures() {
        let out = drive(vec![(); 4], 100, false, |(), i| async move {
            if i % 10 == 3 {
                Err(format!("no {i}"))
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(out.batch.clients, 4);
        assert_eq!(out.batch.attempted, 100);
        assert_eq!(out.batch.errors, 10);
        assert_eq!(out.acknowledged.len(), 90);
        assert!(out.acknowledged.windows(2).all(|w| w[0] < w[1]));
        assert!(out.batch.first_error.is_some_and(|e| e.ends_with('3')));
    }

    #[tokio::test]
    async fn stop_on_error_ends_each_worker_at_its_first_failure() {
        let out = drive(vec![(); 3], 1_000_000, true, |(), i| async move {
            if i >= 50 { Err("gone".into()) } else { Ok(()) }
        })
        .await;
        assert_eq!(out.acknowledged, (0..50).collect::<Vec<_>>());
        assert_eq!(out.batch.errors, 3);
    }

    #[test]
    fn bodies_are_the_objects_kubectl_would_send() {
        let cm: serde_json::Value = serde_json::from_slice(&configmap("cm", 7)).expect("json");
        assert_eq!(cm["metadata"]["name"], "cm-7");
        assert_eq!(cm["kind"], "ConfigMap");
        let g: serde_json::Value =
            serde_json::from_slice(&generated_configmap("gen")).expect("json");
        assert_eq!(g["metadata"]["generateName"], "gen-");
        assert!(g["metadata"]["name"].is_null());
        let s: serde_json::Value = serde_json::from_slice(&service("svc", 1)).expect("json");
        assert!(s["spec"]["selector"].is_null());
        let (key, value) = etcd_object("cm", 42);
        assert_eq!(key, "/registry/configmaps/bench/cm-42");
        let v: serde_json::Value = serde_json::from_slice(&value).expect("json");
        assert_eq!(v["metadata"]["uid"], "00000000-0000-4000-8000-000000000042");
    }
}
