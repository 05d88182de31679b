//! `pods/portforward` over SPDY/3.1 (client-go tools/portforward, kubelet's
//! pkg/kubelet/cri/streaming/portforward/httpstream.go): for each local connection the client
//! opens an `error` stream and then a `data` stream, both carrying the headers `streamtype`,
//! `port` and `requestid`. The server answers each SYN_STREAM with a SYN_REPLY, carries the
//! data stream's bytes to and from the Pod's port (through one agent WebSocket per
//! connection), writes any failure as text on the error stream, and ends both streams with FIN
//! when the Pod's side is done. The same session serves kubectl's SPDY-over-WebSocket tunnel,
//! whose binary messages are the SPDY byte stream ([`websocket_bytes`]).

use std::{collections::HashMap, sync::Arc};

use axum::extract::ws::{Message as ClientMessage, WebSocket};
use futures::{SinkExt as _, StreamExt as _, future::BoxFuture};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::Message;

use super::{
    channel::{self, PortPrefix},
    proxy::AgentSocket,
    spdy::{self, Frame},
};
use crate::api::error::ApiError;

/// Opens the agent's WebSocket for one connection to `port`.
pub type Dial = Arc<dyn Fn(u16) -> BoxFuture<'static, Result<AgentSocket, ApiError>> + Send + Sync>;

/// What a data stream's handler receives from the client: bytes, then `None` for FIN.
type Inbound = mpsc::Sender<Option<Vec<u8>>>;

/// The half of a port-forward stream pair that arrives first.
#[derive(Debug, Default)]
struct Pending {
    error_stream: Option<u32>,
}

/// Serves one SPDY session on `io` until the client goes away or sends GOAWAY.
pub async fn serve<IO>(io: IO, dial: Dial)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(async move {
        let mut deflater = spdy::Deflater::default();
        while let Some(f) = out_rx.recv().await {
            let mut buf = Vec::new();
            if spdy::encode(&f, &mut deflater, &mut buf).is_err()
                || wr.write_all(&buf).await.is_err()
            {
                break;
            }
            // Send what is queued together, then flush once.
            while let Ok(f) = out_rx.try_recv() {
                buf.clear();
                if spdy::encode(&f, &mut deflater, &mut buf).is_err()
                    || wr.write_all(&buf).await.is_err()
                {
                    return;
                }
            }
            if wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut inflater = spdy::Inflater::default();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut streams: HashMap<u32, Inbound> = HashMap::new();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut chunk = vec![0u8; 64 * 1024];
    'session: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (frame, used) = match spdy::decode(&buf, &mut inflater) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "bad SPDY frame from a port-forward client");
                    let _ = out_tx
                        .send(Frame::GoAway {
                            last_good_stream_id: 0,
                            status: spdy::RST_PROTOCOL_ERROR,
                        })
                        .await;
                    break 'session;
                }
            };
            buf.drain(..used);
            match frame {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let _ = out_tx
                        .send(Frame::SynReply {
                            stream_id,
                            flags: 0,
                            headers: Vec::new(),
                        })
                        .await;
                    let kind = spdy::header(&headers, "streamtype").unwrap_or_default();
                    let request = spdy::header(&headers, "requestid")
                        .unwrap_or_default()
                        .to_owned();
                    let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                    match (kind, port) {
                        ("error", Some(_)) => {
                            pending.entry(request).or_default().error_stream = Some(stream_id);
                        }
                        ("data", Some(port)) if port > 0 => {
                            let error_stream =
                                pending.remove(&request).and_then(|p| p.error_stream);
                            let (tx, rx) = mpsc::channel(64);
                            streams.insert(stream_id, tx);
                            tokio::spawn(forward(
                                Arc::clone(&dial),
                                port,
                                stream_id,
                                error_stream,
                                rx,
                                out_tx.clone(),
                            ));
                        }
                        _ => {
                            let _ = out_tx
                                .send(Frame::RstStream {
                                    stream_id,
                                    status: spdy::RST_PROTOCOL_ERROR,
                                })
                                .await;
                        }
                    }
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    let Some(tx) = streams.get(&stream_id) else {
                        continue;
                    };
                    let len = u32::try_from(data.len()).unwrap_or(0);
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        streams.remove(&stream_id);
                        continue;
                    }
                    if len > 0 {
                        // The bytes were taken: the client may send as much again.
                        let _ = out_tx
                            .send(Frame::WindowUpdate {
                                stream_id,
                                delta: len,
                            })
                            .await;
                    }
                    if flags & spdy::FLAG_FIN != 0
                        && let Some(tx) = streams.remove(&stream_id)
                    {
                        let _ = tx.send(None).await;
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    // Dropping the sender ends the handler: the agent connection closes.
                    streams.remove(&stream_id);
                }
                Frame::Ping { id } => {
                    let _ = out_tx.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => break 'session,
                _ => {}
            }
        }
    }
    drop(streams);
    drop(out_tx);
    let _ = writer.await;
}

/// One forwarded connection: the data stream's bytes to the agent and back; a failure as text
/// on the error stream; FIN on both at the end.
async fn forward(
    dial: Dial,
    port: u16,
    data_stream: u32,
    error_stream: Option<u32>,
    mut inbound: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Frame>,
) {
    let data = |stream_id, flags, data| Frame::Data {
        stream_id,
        flags,
        data,
    };
    match dial(port).await {
        Err(e) => report(&out, error_stream, e.to_string()).await,
        Ok(agent) => {
            let (mut agent_tx, mut agent_rx) = agent.split();
            let mut prefix = PortPrefix::default();
            loop {
                tokio::select! {
                    m = agent_rx.next() => {
                        let Some(Ok(Message::Binary(m))) = m else { break };
                        let Some((ch, rest)) = channel::split(&m) else { continue };
                        let rest = prefix.strip(ch, rest);
                        if rest.is_empty() {
                            continue;
                        }
                        match ch {
                            0 if out.send(data(data_stream, 0, rest.to_vec())).await.is_err() => {
                                break;
                            }
                            0 => {}
                            1 => {
                                let text = String::from_utf8_lossy(rest).into_owned();
                                report(&out, error_stream, text).await;
                            }
                            _ => {}
                        }
                    }
                    m = inbound.recv() => match m {
                        Some(Some(bytes)) => {
                            if agent_tx.send(Message::Binary(channel::frame(0, &bytes).into())).await.is_err() {
                                break;
                            }
                        }
                        // The client is done sending: half-close towards the Pod.
                        Some(None) => {
                            let _ = agent_tx
                                .send(Message::Binary(vec![channel::CLOSE, 0].into()))
                                .await;
                        }
                        // Reset by the client, or the session is gone.
                        None => break,
                    },
                }
            }
            let _ = agent_tx.send(super::proxy::agent_close()).await;
        }
    }
    let _ = out
        .send(data(data_stream, spdy::FLAG_FIN, Vec::new()))
        .await;
    if let Some(e) = error_stream {
        let _ = out.send(data(e, spdy::FLAG_FIN, Vec::new())).await;
    }
}

/// Writes `message` on the error stream, where the client reads it as the connection's error.
async fn report(out: &mpsc::Sender<Frame>, error_stream: Option<u32>, message: String) {
    if let Some(stream_id) = error_stream {
        let _ = out
            .send(Frame::Data {
                stream_id,
                flags: 0,
                data: message.into_bytes(),
            })
            .await;
    }
}

/// The byte stream inside kubectl's SPDY-over-WebSocket tunnel: binary messages in, and every
/// write out as one binary message (client-go tools/portforward/tunneling_connection.go).
pub fn websocket_bytes(ws: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut ws_tx, mut ws_rx) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(ours);
        let up = async {
            while let Some(Ok(m)) = ws_rx.next().await {
                match m {
                    ClientMessage::Binary(b) if wr.write_all(&b).await.is_err() => break,
                    ClientMessage::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0
                    || ws_tx
                        .send(ClientMessage::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = ws_tx.send(super::proxy::client_close()).await;
        };
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    });
    theirs
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    use super::*;

    /// An agent's port-forward endpoint for one port: the port prefixes, then whatever
    /// arrives on the data channel comes back upper-cased, until the client half-closes.
    async fn fake_agent() -> crate::api::agent::AgentAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = crate::api::agent::AgentAddr {
            node: "n1".into(),
            addr: l.local_addr().expect("addr").to_string(),
            cert_sha256: None,
        };
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    // tungstenite's handshake callback returns its own `ErrorResponse` type.
                    #[allow(clippy::result_large_err)]
                    let pick = |_: &Request, mut resp: Response| {
                        resp.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            channel::V4.parse().expect("header"),
                        );
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, pick).await else {
                        return;
                    };
                    for ch in [0u8, 1] {
                        let m = channel::frame(ch, &8080u16.to_le_bytes());
                        let _ = ws.send(Message::Binary(m.into())).await;
                    }
                    while let Some(Ok(Message::Binary(m))) = ws.next().await {
                        match channel::split(&m) {
                            Some((0, data)) => {
                                let up = channel::frame(0, &data.to_ascii_uppercase());
                                let _ = ws.send(Message::Binary(up.into())).await;
                            }
                            Some((channel::CLOSE, _)) => break,
                            _ => {}
                        }
                    }
                    let _ = ws.send(super::super::proxy::agent_close()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_spdy_session_forwards_a_connection_and_ends_both_streams() {
        let agent = fake_agent().await;
        let dial: Dial = Arc::new(move |port| {
            let agent = agent.clone();
            Box::pin(async move {
                let path = format!("/portForward/default/web?port={port}");
                super::super::proxy::connect_agent(&agent, None, &path, channel::V4).await
            })
        });
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, dial));
        let h = |kind: &str| -> spdy::Headers {
            [("streamtype", kind), ("port", "8080"), ("requestid", "0")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let mut deflater = spdy::Deflater::default();
        let mut wire = Vec::new();
        for f in [
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h("error"),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h("data"),
            },
            Frame::Ping { id: 7 },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: b"hello".to_vec(),
            },
        ] {
            spdy::encode(&f, &mut deflater, &mut wire).expect("encode");
        }
        client.write_all(&wire).await.expect("write");
        let mut inflater = spdy::Inflater::default();
        let (mut buf, mut frames) = (Vec::new(), Vec::new());
        let mut fins = 0;
        let mut sent_fin = false;
        while fins < 2 {
            let mut chunk = [0u8; 4096];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut chunk))
                    .await
                    .expect("in time")
                    .expect("read");
            assert!(n > 0, "session ended early: {frames:?}");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((f, used)) = spdy::decode(&buf, &mut inflater).expect("decode") {
                buf.drain(..used);
                if let Frame::Data { data, .. } = &f
                    && data == b"HELLO"
                    && !sent_fin
                {
                    // The client is done: FIN, which the agent sees as a half-close.
                    let mut fin = Vec::new();
                    let f = Frame::Data {
                        stream_id: 3,
                        flags: spdy::FLAG_FIN,
                        data: Vec::new(),
                    };
                    spdy::encode(&f, &mut deflater, &mut fin).expect("encode");
                    client.write_all(&fin).await.expect("fin");
                    sent_fin = true;
                }
                if matches!(&f, Frame::Data { flags, .. } if flags & spdy::FLAG_FIN != 0) {
                    fins += 1;
                }
                frames.push(f);
            }
        }
        let replies: Vec<u32> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::SynReply { stream_id, .. } => Some(*stream_id),
                _ => None,
            })
            .collect();
        assert_eq!(replies, [1, 3], "{frames:?}");
        assert!(frames.contains(&Frame::Ping { id: 7 }), "{frames:?}");
        assert!(
            frames.contains(&Frame::Data {
                stream_id: 3,
                flags: 0,
                data: b"HELLO".to_vec()
            }),
            "{frames:?}"
        );
        assert!(
            frames.contains(&Frame::WindowUpdate {
                stream_id: 3,
                delta: 5
            }),
            "{frames:?}"
        );
        for stream_id in [1, 3] {
            assert!(
                frames.contains(&Frame::Data {
                    stream_id,
                    flags: spdy::FLAG_FIN,
                    data: Vec::new()
                }),
                "no FIN on {stream_id}: {frames:?}"
            );
        }
        // Nothing but the port prefix came on the error channel: the error stream is empty.
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, Frame::Data { stream_id: 1, data, .. } if !data.is_empty())),
            "{frames:?}"
        );
    }
}
