//! The agent's own HTTP APIs. The node API on `api_listen`, which the server proxies
//! `pods/log`, exec, attach and port-forward to, as kube-apiserver does to the kubelet's port
//! 10250 (TLS admitting only the server's client certificate, [`super::tls`]):
//! `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=` streams a container's
//! log file and the streaming endpoints of [`super::stream`] are routed here. The metrics API
//! on `metrics_listen`, plain HTTP as Prometheus scrapes it: `GET /metrics`, `GET /flows` and
//! `GET /healthz` (`ok`, also on the node API). Errors are Kubernetes `Status` objects.

use std::{
    io::SeekFrom,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{
    logfile,
    process::PodRecord,
    stream::{self, StreamState},
};
use crate::{flows::FlowStore, loader::Datapath};

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Errors of the agent API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the agent API")]
    Serve(#[source] std::io::Error),
    #[error("pod {namespace}/{name} is not running on this node")]
    PodNotFound { namespace: String, name: String },
    #[error("container {container} of pod {namespace}/{name} has no log on this node")]
    ContainerNotFound {
        namespace: String,
        name: String,
        container: String,
    },
    /// The kubelet's words for `previous=true` when the container never restarted.
    #[error("previous terminated container {container:?} in pod {name:?} not found")]
    NoPrevious { name: String, container: String },
    #[error("reading the datapath metrics: {0}")]
    Metrics(String),
    #[error("reading log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            Self::PodNotFound { .. } | Self::ContainerNotFound { .. } => {
                (StatusCode::NOT_FOUND, "NotFound")
            }
            Self::NoPrevious { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": crate::cni::server::error_chain(&self),
            "reason": reason,
            "code": code.as_u16(),
        });
        (code, Json(status)).into_response()
    }
}

/// Query of `containerLogs` (the kubelet's parameter names).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    #[serde(default)]
    pub follow: bool,
    pub tail_lines: Option<usize>,
    /// The log of the container's previous run (kept when it restarts).
    #[serde(default)]
    pub previous: bool,
    /// Each line prefixed with the time it was written.
    #[serde(default)]
    pub timestamps: bool,
    /// Only lines of the last this many seconds.
    pub since_seconds: Option<u64>,
    /// Only lines written at or after this time (RFC 3339).
    pub since_time: Option<String>,
    /// At most this many bytes of output.
    pub limit_bytes: Option<u64>,
}

impl LogQuery {
    /// How the log's entries are shown.
    fn render(&self) -> logfile::Render {
        let since_seconds = self.since_seconds.and_then(|s| {
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(
                    i64::try_from(s).unwrap_or(i64::MAX),
                ))
                .ok()
        });
        let since_time = self.since_time.as_deref().and_then(|t| t.parse().ok());
        logfile::Render {
            timestamps: self.timestamps,
            // The kubelet takes sinceTime over sinceSeconds when both are given (the API
            // server refuses both at once).
            since: since_time.or(since_seconds),
            ..logfile::Render::default()
        }
    }
}

/// The log file of a container's current run.
pub fn log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.log"))
}

/// The log file of a container's previous run (`kubectl logs --previous`).
pub fn previous_log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.previous.log"))
}

/// What the datapath part of the API serves: metrics and flows.
#[derive(Clone, Debug)]
pub struct DatapathApi {
    pub dp: Arc<Datapath>,
    pub flows: Arc<FlowStore>,
}

/// The node API's router: logs under `data_dir/pods`, exec/attach/port-forward into its Pods,
/// and `/healthz`.
pub fn node_router(data_dir: PathBuf) -> Router {
    let streams = Router::new()
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(stream::exec).post(stream::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(stream::attach).post(stream::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(stream::port_forward).post(stream::port_forward),
        )
        .with_state(StreamState {
            data_dir: data_dir.clone(),
        });
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(data_dir)
        .merge(streams)
}

/// The metrics API's router: `/healthz`, and with a datapath its metrics and flows.
pub fn metrics_router(dp: Option<DatapathApi>) -> Router {
    let health = Router::new().route("/healthz", get(|| async { "ok" }));
    match dp {
        Some(dp) => health.merge(
            Router::new()
                .route("/metrics", get(metrics))
                .route("/flows", get(flows))
                .with_state(dp),
        ),
        None => health,
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ApiError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ApiError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ApiError::Bind { addr, source })?;
    Ok(listener)
}

/// Serves the node API until the task is dropped: over TLS with `tls`, else in plain HTTP to
/// any caller (a development setup without `--client-ca-file`).
pub async fn serve_node(
    addr: SocketAddr,
    data_dir: PathBuf,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), ApiError> {
    let listener = bind(addr)?;
    let app = node_router(data_dir).into_make_service();
    match tls {
        Some(cfg) => {
            let cfg = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
            axum_server::from_tcp_rustls(listener, cfg)
                .map_err(ApiError::Serve)?
                .serve(app)
                .await
                .map_err(ApiError::Serve)
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(ApiError::Serve)?;
            axum::serve(listener, app).await.map_err(ApiError::Serve)
        }
    }
}

/// Serves the metrics API until the task is dropped.
pub async fn serve_metrics(addr: SocketAddr, dp: Option<DatapathApi>) -> Result<(), ApiError> {
    let listener = tokio::net::TcpListener::from_std(bind(addr)?).map_err(ApiError::Serve)?;
    axum::serve(listener, metrics_router(dp))
        .await
        .map_err(ApiError::Serve)
}

/// Query of `GET /flows`.
#[derive(Debug, Default, Deserialize)]
pub struct FlowsQuery {
    /// Only flows of the last this many seconds (all kept flows without it).
    pub since: Option<u64>,
    /// Go on with new flows as they come.
    #[serde(default)]
    pub follow: bool,
}

/// The node's recent flows as JSON lines, then (with `follow`) new ones as they come.
async fn flows(State(api): State<DatapathApi>, Query(q): Query<FlowsQuery>) -> Response {
    use futures::StreamExt as _;
    let since = q.since.and_then(|s| {
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(
                i64::try_from(s).unwrap_or(i64::MAX),
            ))
            .ok()
    });
    // Subscribe first, so nothing falls between the kept flows and the live ones.
    let live = api.flows.subscribe();
    let kept = api.flows.since(since);
    let last = kept.last().map(|f| f.time);
    let line = |f: &crate::flows::Flow| {
        let mut text = serde_json::to_string(f).unwrap_or_default();
        text.push('\n');
        Ok::<_, std::io::Error>(Bytes::from(text))
    };
    let head = futures::stream::iter(kept.iter().map(|f| line(f)).collect::<Vec<_>>());
    if !q.follow {
        return Body::from_stream(head).into_response();
    }
    let tail = tokio_stream_from(live).filter_map(move |f| {
        let keep = last.is_none_or(|t| f.time > t);
        async move { keep.then(|| line(&f)) }
    });
    Body::from_stream(head.chain(tail)).into_response()
}

/// The flows a broadcast receiver gets; a follower that fell behind skips what it missed.
fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<Arc<crate::flows::Flow>>,
) -> impl futures::Stream<Item = Arc<crate::flows::Flow>> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(f) => return Some((f, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

async fn metrics(State(api): State<DatapathApi>) -> Result<Response, ApiError> {
    let dp = api.dp;
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&dp))
        .await
        .map_err(|e| ApiError::Metrics(e.to_string()))?
        .map_err(|e| ApiError::Metrics(crate::cni::server::error_chain(&e)))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The directory of the Pod `namespace/name` (the newest, if a Pod of that name was recreated).
pub(super) fn find_pod_dir(data_dir: &Path, namespace: &str, name: &str) -> Option<PathBuf> {
    let dirs = std::fs::read_dir(data_dir.join("pods")).ok()?;
    dirs.flatten()
        .filter_map(|d| {
            let rec = PodRecord::load(&d.path()).ok()??;
            (rec.namespace == namespace && rec.name == name).then(|| {
                let mtime = d.metadata().and_then(|m| m.modified()).ok();
                (mtime, d.path())
            })
        })
        .max()
        .map(|(_, p)| p)
}

/// The byte offset where the last `n` lines of `data` begin.
pub fn tail_offset(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    // A trailing newline ends the last line; it does not start another one.
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    let mut seen = 0;
    for (i, b) in data[..end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

async fn container_logs(
    State(data_dir): State<PathBuf>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let pod_dir =
        find_pod_dir(&data_dir, &namespace, &name).ok_or_else(|| ApiError::PodNotFound {
            namespace: namespace.clone(),
            name: name.clone(),
        })?;
    let path = if q.previous {
        previous_log_path(&pod_dir, &container)
    } else {
        log_path(&pod_dir, &container)
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && q.previous => {
            return Err(ApiError::NoPrevious { name, container });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::ContainerNotFound {
                namespace,
                name,
                container,
            });
        }
        Err(source) => return Err(ApiError::Read { path, source }),
    };
    let read_err = |source| ApiError::Read {
        path: path.clone(),
        source,
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data).await.map_err(read_err)?;
    let mut render = q.render();
    // Only whole lines are shown; a line being written waits for its end.
    let start = q.tail_lines.map_or(0, |n| tail_offset(&data, n));
    let mut head = Vec::new();
    let used = render.lines(&data[start..], &mut head);
    let mut budget = q.limit_bytes.unwrap_or(u64::MAX);
    let head = take(&mut head, &mut budget);
    let offset = (start + used) as u64;
    let resp = Response::builder().header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if !q.follow || q.previous || budget == 0 {
        return Ok(resp
            .body(Body::from(head))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    }
    // Follow: the initial part, then whatever is appended, until the Pod's directory is gone,
    // the container restarted (its log moved aside: the stream of a run ends with it, as the
    // kubelet's does) or `limitBytes` were sent.
    use std::os::unix::fs::MetadataExt as _;
    let ino = file.metadata().await.map(|m| m.ino()).ok();
    let follow = Follow {
        file,
        pod_dir,
        path,
        ino,
        offset,
        pending: Vec::new(),
        render,
        budget,
    };
    use futures::StreamExt as _;
    let stream =
        futures::stream::iter([Ok::<_, std::io::Error>(head)])
            .chain(futures::stream::unfold(follow, |mut f| async move {
                f.next().await.map(|chunk| (chunk, f))
            }));
    Ok(resp
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// The first `budget` bytes of `out` (all of it without a limit), counted off the budget.
fn take(out: &mut Vec<u8>, budget: &mut u64) -> Bytes {
    let n = usize::try_from(*budget)
        .unwrap_or(usize::MAX)
        .min(out.len());
    out.truncate(n);
    *budget -= n as u64;
    Bytes::from(std::mem::take(out))
}

/// A followed log: the entries appended after `offset`.
struct Follow {
    file: tokio::fs::File,
    pod_dir: PathBuf,
    path: PathBuf,
    ino: Option<u64>,
    offset: u64,
    /// Bytes of an entry whose end was not written yet.
    pending: Vec<u8>,
    render: logfile::Render,
    budget: u64,
}

impl Follow {
    /// The next piece of output, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        use std::os::unix::fs::MetadataExt as _;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.budget == 0 {
                return None;
            }
            if self.file.seek(SeekFrom::Start(self.offset)).await.is_err() {
                return None;
            }
            match self.file.read(&mut buf).await {
                Ok(0) => {
                    let same = std::fs::metadata(&self.path).map(|m| m.ino()).ok() == self.ino;
                    if !self.pod_dir.exists() || !same {
                        return None;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
                Ok(n) => {
                    self.offset += n as u64;
                    self.pending.extend_from_slice(&buf[..n]);
                    let mut out = Vec::new();
                    let used = self.render.lines(&self.pending, &mut out);
                    self.pending.drain(..used);
                    if !out.is_empty() {
                        return Some(Ok(take(&mut out, &mut self.budget)));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[test]
    fn tail_offsets() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[tail_offset(d, 1)..], b"c\n");
        assert_eq!(&d[tail_offset(d, 2)..], b"b\nc\n");
        assert_eq!(&d[tail_offset(d, 9)..], d);
        assert_eq!(&d[tail_offset(d, 0)..], b"");
        let d = b"a\nb";
        assert_eq!(&d[tail_offset(d, 1)..], b"b");
    }

    async fn get(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        s
    }

    async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&got).contains(needle) {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                .await
                .expect("in time")
                .expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn logs_are_served_tailed_and_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod_dir = dir.path().join("pods").join("uid-1");
        PodRecord {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            ..Default::default()
        }
        .save(&pod_dir)
        .expect("record");
        let log = pod_dir.join("c.log");
        std::fs::write(&log, "one\ntwo\nthree\n").expect("log");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(axum::serve(listener, node_router(dir.path().to_owned())).into_future());

        let mut s = get(addr, "/healthz").await;
        assert!(read_until(&mut s, "ok").await.contains("200 OK"));

        let mut s = get(addr, "/containerLogs/default/web/c?tailLines=2").await;
        let body = read_until(&mut s, "three").await;
        assert!(
            body.contains("two\nthree\n") && !body.contains("one"),
            "{body}"
        );

        let mut s = get(addr, "/containerLogs/default/nope/c").await;
        let body = read_until(&mut s, "}").await;
        assert!(
            body.contains("404") && body.contains("\"kind\":\"Status\""),
            "{body}"
        );

        let mut s = get(addr, "/containerLogs/default/web/c?follow=true&tailLines=1").await;
        assert!(read_until(&mut s, "three").await.contains("three"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open")
            .write_all(b"four\n")
            .expect("append");
        assert!(read_until(&mut s, "four").await.contains("four"));
    }
}
