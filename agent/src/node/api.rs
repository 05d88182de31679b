//! The agent's own HTTP API on `api_listen`, which the server proxies `pods/log` to:
//! `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=` streams a container's
//! log file, `GET /healthz` answers `ok`, `GET /metrics` is Prometheus' scrape endpoint, and
//! the streaming endpoints of [`super::stream`] (exec, attach, port-forward) are routed here.
//! Errors are Kubernetes `Status` objects.

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

/// The router, serving logs under `data_dir/pods` and exec/attach/port-forward into its Pods
/// (those only to callers presenting `stream_token`, when one is set) and, with a datapath, its metrics and
/// flows.
pub fn router(
    data_dir: PathBuf,
    dp: Option<DatapathApi>,
    stream_token: Option<Arc<str>>,
) -> Router {
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
            token: stream_token.clone(),
        });
    let guard = axum::middleware::from_fn_with_state(
        StreamState {
            data_dir: data_dir.clone(),
            token: stream_token,
        },
        stream::require_token,
    );
    let logs = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs).route_layer(guard),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(data_dir)
        .merge(streams);
    match dp {
        Some(dp) => logs.merge(
            Router::new()
                .route("/metrics", get(metrics))
                .route("/flows", get(flows))
                .with_state(dp),
        ),
        None => logs,
    }
}

/// Serves the API until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    data_dir: PathBuf,
    dp: Option<DatapathApi>,
    stream_token: Option<Arc<str>>,
) -> Result<(), ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    axum::serve(listener, router(data_dir, dp, stream_token))
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
    let start = q.tail_lines.map_or(0, |n| tail_offset(&data, n));
    let head = Bytes::copy_from_slice(&data[start..]);
    let offset = data.len() as u64;
    let resp = Response::builder().header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if !q.follow || q.previous {
        return Ok(resp
            .body(Body::from(head))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    }
    // Follow: the initial part, then whatever is appended, until the Pod's directory is gone
    // or the container restarted (its log moved aside: the stream of a run ends with it, as the
    // kubelet's does).
    use std::os::unix::fs::MetadataExt as _;
    let ino = file.metadata().await.map(|m| m.ino()).ok();
    let stream = futures::stream::unfold(
        (Some(head), file, pod_dir, offset),
        move |(first, mut file, pod_dir, mut offset)| {
            let path = path.clone();
            async move {
                if let Some(first) = first {
                    return Some((
                        Ok::<_, std::io::Error>(first),
                        (None, file, pod_dir, offset),
                    ));
                }
                loop {
                    let mut buf = vec![0u8; 64 * 1024];
                    if file.seek(SeekFrom::Start(offset)).await.is_err() {
                        return None;
                    }
                    match file.read(&mut buf).await {
                        Ok(0) => {
                            let same = std::fs::metadata(&path).map(|m| m.ino()).ok() == ino;
                            if !pod_dir.exists() || !same {
                                return None;
                            }
                            tokio::time::sleep(FOLLOW_POLL).await;
                        }
                        Ok(n) => {
                            offset += n as u64;
                            buf.truncate(n);
                            return Some((Ok(Bytes::from(buf)), (None, file, pod_dir, offset)));
                        }
                        Err(e) => return Some((Err(e), (None, file, pod_dir, offset))),
                    }
                }
            }
        },
    );
    Ok(resp
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
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
        tokio::spawn(
            axum::serve(listener, router(dir.path().to_owned(), None, None)).into_future(),
        );

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
