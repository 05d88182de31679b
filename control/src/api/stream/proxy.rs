//! The leg to the node's agent: a WebSocket (channel protocol `v5.channel.k8s.io` for
//! exec/attach, `v4.channel.k8s.io` for port-forward) to its streaming endpoints, opened
//! before the client's connection is upgraded so that an agent's refusal is still an HTTP
//! answer; then messages are relayed unchanged between the client's WebSocket and the agent's.

use axum::extract::ws::{Message as ClientMessage, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _, http::HeaderValue},
};

use super::super::{
    agent::{self, AgentAddr, AgentClient, AgentIo},
    error::ApiError,
};

pub type AgentSocket = WebSocketStream<Box<dyn AgentIo>>;

/// Opens a WebSocket to `<path>?<query>` on `agent` with `protocol`, over TLS with the
/// server's client certificate when there is one ([`agent::dial`]). An agent's `Status`
/// answer becomes the same API error (404, 400, ...).
pub async fn connect_agent(
    agent: &AgentAddr,
    client: Option<&AgentClient>,
    path_and_query: &str,
    protocol: &str,
) -> Result<AgentSocket, ApiError> {
    let url = format!("ws://{}{path_and_query}", agent.addr);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ApiError::Internal(format!("bad agent URL {url}: {e}")))?;
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let io = agent::dial(agent, client).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!("error dialing backend: {}", e.chain()))
    })?;
    match tokio_tungstenite::client_async(req, io).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.trim().to_owned());
            Err(match status.as_u16() {
                400 | 404 => ApiError::BadRequest(message),
                _ => ApiError::ServiceUnavailable(format!(
                    "error dialing backend: the agent answered {status}: {message}"
                )),
            })
        }
        Err(e) => Err(ApiError::ServiceUnavailable(format!(
            "error dialing backend: {e}"
        ))),
    }
}

/// A Close with status 1000 (normal closure): kubectl's gorilla/websocket reads a Close without
/// a status (1005) as a failed stream.
pub fn client_close() -> ClientMessage {
    ClientMessage::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

/// [`client_close`] towards the agent.
pub fn agent_close() -> Message {
    Message::Close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

fn to_agent(m: ClientMessage) -> Option<Message> {
    match m {
        ClientMessage::Binary(b) => Some(Message::Binary(b)),
        // The Python client writes text frames whose first character is the channel.
        ClientMessage::Text(t) => Some(Message::Binary(t.as_str().as_bytes().to_vec().into())),
        _ => None,
    }
}

fn to_client(m: Message) -> Option<ClientMessage> {
    match m {
        Message::Binary(b) => Some(ClientMessage::Binary(b)),
        Message::Text(t) => Some(ClientMessage::Binary(t.as_str().as_bytes().to_vec().into())),
        _ => None,
    }
}

/// Relays messages both ways until either side closes, then closes the other.
pub async fn relay(client: WebSocket, agent: AgentSocket) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = client_rx.next().await {
            if matches!(m, ClientMessage::Close(_)) {
                break;
            }
            if let Some(m) = to_agent(m)
                && agent_tx.send(m).await.is_err()
            {
                break;
            }
        }
        let _ = agent_tx.send(agent_close()).await;
    };
    let down = async {
        while let Some(Ok(m)) = agent_rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
            if let Some(m) = to_client(m)
                && client_tx.send(m).await.is_err()
            {
                break;
            }
        }
        let _ = client_tx.send(client_close()).await;
    };
    // The agent ending the stream (the command exited, the Pod's connection closed) ends the
    // session; so does the client going away.
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}
