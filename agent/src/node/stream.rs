//! The agent's streaming endpoints, the kubelet's streaming server for a keelson node:
//! `/exec/{ns}/{pod}/{container}`, `/attach/{ns}/{pod}/{container}` and
//! `/portForward/{ns}/{pod}`, WebSockets in the Kubernetes channel protocol (the kubelet's
//! `v5.channel.k8s.io` and `v4.channel.k8s.io`, k8s.io/apimachinery pkg/util/httpstream/wsstream):
//! every message starts with a channel byte. exec/attach: 0 stdin, 1 stdout, 2 stderr,
//! 3 error (a `Status` JSON, the last message), 4 resize (`{"Width":..,"Height":..}`), and
//! in v5 the client's close signal `255, <channel>` (no more stdin). Port-forward: per requested
//! port `i`, channel `2i` carries data and `2i+1` errors, and the first message of each channel
//! starts with the port (two bytes, little endian); a `255, 2i` close signal half-closes the
//! connection to the Pod.
//!
//! The API server is the only client: the node API's TLS ([`super::tls`]) admits only its
//! client certificate.

use std::{path::PathBuf, time::Duration};

use axum::{
    Json,
    extract::{
        Path as UrlPath, RawQuery, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    api::find_pod_dir,
    exec::{self, ExecIo, ExecSpec},
    logfile, portforward,
    process::{self, PodRecord},
};

/// Channels of the exec/attach protocol.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's close signal: `255, <channel>`.
pub const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// The port-forward subprotocol names the kubelet accepts.
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// How long a TTY exec waits for the client's first resize before it starts the command
/// (kubectl sends it right after the upgrade).
const FIRST_RESIZE_WAIT: Duration = Duration::from_secs(1);

/// How often an attached container's log is checked for new output.
const ATTACH_POLL: Duration = Duration::from_millis(100);

/// What the streaming endpoints need.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub data_dir: PathBuf,
}

/// Errors answered before the upgrade, as `Status` objects.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("pod {namespace}/{name} is not running on this node")]
    PodNotFound { namespace: String, name: String },
    #[error("container not found ({container:?})")]
    ContainerNotFound { container: String },
    #[error("container {container} is not running")]
    NotRunning { container: String },
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            Self::PodNotFound { .. } | Self::ContainerNotFound { .. } => {
                (StatusCode::NOT_FOUND, "NotFound")
            }
            Self::NotRunning { .. } | Self::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, "BadRequest")
            }
        };
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        (code, Json(status)).into_response()
    }
}

/// The query of exec and attach (PodExecOptions / PodAttachOptions); `command` repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub ports: Vec<u16>,
}

impl StreamOptions {
    /// Parses a query string; booleans are `true`/`1` as Kubernetes' query conversion reads them.
    pub fn parse(query: &str) -> Result<Self, StreamError> {
        let mut o = Self::default();
        let yes = |v: &str| matches!(v, "true" | "1" | "True");
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "command" => o.command.push(v.into_owned()),
                "input" | "stdin" => o.stdin = yes(&v),
                "output" | "stdout" => o.stdout = yes(&v),
                "error" | "stderr" => o.stderr = yes(&v),
                "tty" => o.tty = yes(&v),
                "port" | "ports" => {
                    for p in v.split(',').filter(|p| !p.is_empty()) {
                        let port =
                            p.trim()
                                .parse::<u16>()
                                .ok()
                                .filter(|p| *p > 0)
                                .ok_or_else(|| {
                                    StreamError::BadRequest(format!("invalid port {p:?}"))
                                })?;
                        o.ports.push(port);
                    }
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// The Pod's record and the running process of `container`.
fn running_container(
    st: &StreamState,
    namespace: &str,
    name: &str,
    container: &str,
) -> Result<(i32, u64), StreamError> {
    let rec = pod_record(st, namespace, name)?;
    let c = rec
        .containers
        .get(container)
        .ok_or_else(|| StreamError::ContainerNotFound {
            container: container.to_owned(),
        })?;
    if c.exit_code.is_some() || !process::is_alive(c.pid, c.start_ticks) {
        return Err(StreamError::NotRunning {
            container: container.to_owned(),
        });
    }
    Ok((c.pid, c.start_ticks))
}

fn pod_record(st: &StreamState, namespace: &str, name: &str) -> Result<PodRecord, StreamError> {
    find_pod_dir(&st.data_dir, namespace, name)
        .and_then(|dir| PodRecord::load(&dir).ok().flatten())
        .ok_or_else(|| StreamError::PodNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

/// `Status` of a finished command, as the kubelet reports it on the error channel: Success, or
/// `NonZeroExitCode` with the code as an `ExitCode` cause (what kubectl turns into "command
/// terminated with exit code N" and its own exit code).
pub fn exit_status(code: i32, argv: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            argv.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// `Status` of a command that could not be run at all.
fn failure_status(message: String) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}

/// A Close with status 1000: clients (gorilla/websocket in kubectl) treat a Close without a
/// status (1005) as an error of the stream.
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// The payload of a client message: binary, or text (the Python client writes text frames
/// whose first character is the channel).
fn payload(m: Message) -> Option<Bytes> {
    match m {
        Message::Binary(b) => Some(b),
        Message::Text(t) => Some(Bytes::copy_from_slice(t.as_str().as_bytes())),
        _ => None,
    }
}

/// `GET /exec/{namespace}/{pod}/{container}?command=..&stdin=..&tty=..`
pub async fn exec(
    State(st): State<StreamState>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, StreamError> {
    let opts = StreamOptions::parse(query.as_deref().unwrap_or_default())?;
    if opts.command.is_empty() {
        return Err(StreamError::BadRequest(
            "you must specify at least one command for the container".into(),
        ));
    }
    let (pid, _) = running_container(&st, &namespace, &name, &container)?;
    Ok(ws
        .protocols([V5, V4])
        .on_upgrade(move |socket| exec_session(socket, pid, opts)))
}

async fn exec_session(socket: WebSocket, pid: i32, opts: StreamOptions) {
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    // With a TTY, the first resize sizes the pty before the command starts; whatever else
    // came first is replayed after.
    let mut early = Vec::new();
    let mut size = None;
    if opts.tty {
        let deadline = tokio::time::sleep(FIRST_RESIZE_WAIT);
        tokio::pin!(deadline);
        while size.is_none() {
            tokio::select! {
                m = incoming.next() => match m {
                    Some(Ok(m)) => {
                        match payload(m.clone()).as_deref().and_then(|d| d.split_first()) {
                            Some((&RESIZE, rest)) => size = Some(terminal_size(rest)),
                            _ => early.push(Ok(m)),
                        }
                    }
                    _ => break,
                },
                () = &mut deadline => break,
            }
        }
    }
    let mut incoming = futures::stream::iter(early).chain(incoming);
    let spec = ExecSpec {
        argv: opts.command.clone(),
        stdin: opts.stdin,
        tty: opts.tty,
        size,
    };
    let mut started = match exec::spawn_in_container(pid, spec).await {
        Ok(e) => e,
        Err(e) => {
            let msg = crate::cni::server::error_chain(&e);
            let _ = out_tx
                .send(frame(ERROR, failure_status(msg).to_string().as_bytes()))
                .await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    let mut outputs = Vec::new();
    // Where client input goes: stdin bytes, and resizes for a pty.
    let mut stdin_w: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
    let mut pty_master = None;
    match std::mem::replace(
        &mut started.io,
        ExecIo::Pipes {
            stdin: None,
            stdout: None,
            stderr: None,
        },
    ) {
        ExecIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            stdin_w = stdin.map(|s| Box::new(s) as _);
            if let Some(o) = stdout {
                outputs.push(tokio::spawn(pump(o, STDOUT, out_tx.clone())));
            }
            if let Some(e) = stderr {
                outputs.push(tokio::spawn(pump(e, STDERR, out_tx.clone())));
            }
        }
        ExecIo::Pty { master } => match (master.try_clone(), master.try_clone()) {
            (Ok(r), Ok(w)) => {
                let reader = tokio::fs::File::from_std(std::fs::File::from(r));
                outputs.push(tokio::spawn(pump(reader, STDOUT, out_tx.clone())));
                if opts.stdin {
                    stdin_w = Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(w))));
                }
                pty_master = Some(master);
            }
            _ => {
                let _ = started.child.start_kill();
            }
        },
    }
    let input = async {
        while let Some(Ok(m)) = incoming.next().await {
            let Some(data) = payload(m) else { continue };
            let Some((&ch, rest)) = data.split_first() else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(w) = stdin_w.as_mut()
                        && (w.write_all(rest).await.is_err() || w.flush().await.is_err())
                    {
                        stdin_w = None;
                    }
                }
                RESIZE => {
                    if let Some(m) = &pty_master {
                        let (width, height) = terminal_size(rest);
                        let _ = exec::resize(m, width, height);
                    }
                }
                CLOSE if rest.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin_w.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    };
    let done = async {
        let status = started.child.wait().await;
        for o in outputs {
            let _ = o.await;
        }
        status
    };
    tokio::select! {
        status = done => {
            let code = status.map(exec::exit_code).unwrap_or(255);
            let _ = out_tx
                .send(frame(ERROR, exit_status(code, &opts.command).to_string().as_bytes()))
                .await;
        }
        // The client went away: the process goes with it (kill_on_drop).
        () = input => {}
    }
    drop(out_tx);
    let _ = writer.await;
}

/// The (width, height) of a resize message (`{"Width":..,"Height":..}`); 0 for what is missing.
fn terminal_size(message: &[u8]) -> (u16, u16) {
    let size = serde_json::from_slice::<Value>(message).unwrap_or_default();
    let dim = |k: &str| {
        size[k]
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .unwrap_or(0)
    };
    (dim("Width"), dim("Height"))
}

/// Copies a process output to `channel` until EOF (a pty's master reads EIO at the end).
async fn pump(mut r: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send(frame(channel, &buf[..n])).await.is_err() {
            break;
        }
    }
}

/// `GET /attach/{namespace}/{pod}/{container}`: the container's output from now on, until it
/// exits. The `process` runtime runs containers with stdin closed, so there is no input to
/// attach to.
pub async fn attach(
    State(st): State<StreamState>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, StreamError> {
    let _opts = StreamOptions::parse(query.as_deref().unwrap_or_default())?;
    let (pid, ticks) = running_container(&st, &namespace, &name, &container)?;
    let dir =
        find_pod_dir(&st.data_dir, &namespace, &name).ok_or_else(|| StreamError::PodNotFound {
            namespace: namespace.clone(),
            name: name.clone(),
        })?;
    let log = dir.join(format!("{container}.log"));
    Ok(ws
        .protocols([V5, V4])
        .on_upgrade(move |socket| attach_session(socket, log, pid, ticks)))
}

async fn attach_session(socket: WebSocket, log: PathBuf, pid: i32, ticks: u64) {
    let (mut sink, mut incoming) = socket.split();
    let Ok(mut file) = tokio::fs::File::open(&log).await else {
        let _ = sink
            .send(frame(
                ERROR,
                failure_status(format!("no output of the container at {}", log.display()))
                    .to_string()
                    .as_bytes(),
            ))
            .await;
        return;
    };
    let _ = file.seek(std::io::SeekFrom::End(0)).await;
    let follow = async {
        let mut buf = vec![0u8; 32 * 1024];
        // Bytes of an entry whose end was not written yet.
        let mut pending = Vec::new();
        let only = |stream| logfile::Render {
            stream: Some(stream),
            ..logfile::Render::default()
        };
        let (mut stdout, mut stderr) =
            (only(logfile::Stream::Stdout), only(logfile::Stream::Stderr));
        loop {
            match file.read(&mut buf).await {
                Ok(0) if !process::is_alive(pid, ticks) => break,
                Ok(0) => tokio::time::sleep(ATTACH_POLL).await,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    // Each stream to its own channel, as the container wrote it.
                    for (render, channel) in [(&mut stdout, STDOUT), (&mut stderr, STDERR)] {
                        let mut out = Vec::new();
                        render.lines(&pending, &mut out);
                        if !out.is_empty() && sink.send(frame(channel, &out)).await.is_err() {
                            return None;
                        }
                    }
                    let used = pending
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |i| i + 1);
                    pending.drain(..used);
                }
                Err(_) => break,
            }
        }
        Some(sink)
    };
    // Input is read (and dropped) so a client's close is noticed.
    let input = async { while let Some(Ok(_)) = incoming.next().await {} };
    tokio::select! {
        sink = follow => {
            if let Some(mut sink) = sink {
                let ok = json!({"metadata": {}, "status": "Success"}).to_string();
                let _ = sink.send(frame(ERROR, ok.as_bytes())).await;
                let _ = sink.send(normal_close()).await;
            }
        }
        () = input => {}
    }
}

use tokio::io::AsyncSeekExt as _;

/// `GET /portForward/{namespace}/{pod}?port=..`
pub async fn port_forward(
    State(st): State<StreamState>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, StreamError> {
    let opts = StreamOptions::parse(query.as_deref().unwrap_or_default())?;
    if opts.ports.is_empty() {
        return Err(StreamError::BadRequest(
            "at least one port must be specified".into(),
        ));
    }
    let rec = pod_record(&st, &namespace, &name)?;
    // The Pod's network namespace, through any of its running containers.
    let pid = rec
        .containers
        .values()
        .find(|c| process::is_alive(c.pid, c.start_ticks))
        .map(|c| c.pid)
        .ok_or_else(|| StreamError::NotRunning {
            container: rec.containers.keys().next().cloned().unwrap_or_default(),
        })?;
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    Ok(ws
        .protocols([V4, PORT_FORWARD])
        .on_upgrade(move |socket| forward_session(socket, netns, opts.ports)))
}

async fn forward_session(socket: WebSocket, netns: PathBuf, ports: Vec<u16>) {
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    // Each channel's first message names its port.
    for (i, port) in ports.iter().enumerate() {
        for ch in [2 * i, 2 * i + 1] {
            let Ok(ch) = u8::try_from(ch) else { return };
            if sink.send(frame(ch, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = (2 * i as u8, 2 * i as u8 + 1);
        match portforward::connect(&netns, *port).await {
            Ok(conn) => {
                let (r, w) = conn.into_split();
                readers.push(tokio::spawn(pump(r, data_ch, out_tx.clone())));
                writers.push(Some(w));
            }
            Err(e) => {
                let msg = crate::cni::server::error_chain(&e);
                let _ = out_tx.send(frame(err_ch, msg.as_bytes())).await;
                writers.push(None);
            }
        }
    }
    let input = async {
        while let Some(Ok(m)) = incoming.next().await {
            let Some(data) = payload(m) else { continue };
            let Some((&ch, rest)) = data.split_first() else {
                continue;
            };
            if ch == CLOSE {
                if let Some(w) = rest
                    .first()
                    .and_then(|c| writers.get_mut(usize::from(*c) / 2))
                    .and_then(Option::take)
                {
                    let mut w = w;
                    let _ = w.shutdown().await;
                }
                continue;
            }
            if ch % 2 == 0
                && let Some(slot) = writers.get_mut(usize::from(ch) / 2)
                && let Some(w) = slot.as_mut()
                && w.write_all(rest).await.is_err()
            {
                *slot = None;
            }
        }
    };
    let done = async {
        for r in readers {
            let _ = r.await;
        }
    };
    tokio::select! {
        () = done => {}
        () = input => {}
    }
    drop(out_tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_a_kubectl_query() {
        let o = StreamOptions::parse(
            "command=sh&command=-c&command=echo+%22a+b%22&container=c&stdin=true&stdout=true&tty=1",
        )
        .expect("parse");
        assert_eq!(o.command, ["sh", "-c", "echo \"a b\""]);
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        let o = StreamOptions::parse("ports=8080&ports=53,9000").expect("parse");
        assert_eq!(o.ports, [8080, 53, 9000]);
        assert!(StreamOptions::parse("ports=0").is_err());
        assert!(StreamOptions::parse("ports=http").is_err());
    }

    #[test]
    fn exit_codes_become_statuses_kubectl_reads() {
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let s = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }

    /// A raw WebSocket upgrade request and the status line of the answer.
    async fn upgrade_status(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn exec_upgrades_and_bad_targets_are_statuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod_dir = dir.path().join("pods").join("uid-1");
        let mut rec = PodRecord {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            ..Default::default()
        };
        let me = std::process::id() as i32;
        rec.containers.insert(
            "c".into(),
            process::ContainerRecord {
                pid: me,
                start_ticks: process::start_ticks(me).expect("ticks"),
                started_at: jiff::Timestamp::UNIX_EPOCH,
                restart_count: 0,
                exit_code: None,
                finished_at: None,
            },
        );
        rec.save(&pod_dir).expect("record");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = super::super::api::node_router(dir.path().to_owned());
        tokio::spawn(axum::serve(listener, router).into_future());

        let exec = "/exec/default/web/c?command=true&stdout=true";
        let ok = upgrade_status(addr, exec).await;
        assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
        assert!(ok.contains("v5.channel.k8s.io"), "{ok}");
        let missing = upgrade_status(addr, "/exec/default/web/nope?command=true").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.contains("container not found"), "{missing}");
        let pod = upgrade_status(addr, "/exec/default/gone/c?command=true").await;
        assert!(
            pod.starts_with("HTTP/1.1 404") && pod.contains("\"kind\":\"Status\""),
            "{pod}"
        );
        let pf = upgrade_status(addr, "/portForward/default/web").await;
        assert!(pf.starts_with("HTTP/1.1 400"), "{pf}");
    }
}
