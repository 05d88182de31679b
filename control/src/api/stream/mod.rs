//! The streaming subresources of Pods: `pods/exec`, `pods/attach` and `pods/portforward`, as
//! kube-apiserver serves them (pkg/registry/core/pod/rest/subresources.go) and kubectl 1.37
//! speaks them: exec/attach over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`);
//! port-forward over kubectl's SPDY-over-WebSocket tunnel, a plain SPDY/3.1 upgrade (its
//! fallback), or the WebSocket channel protocol (kube-rs, the Python client). The request is
//! checked here (Pod, container, phase, options) and then proxied to the agent of the Pod's
//! node, which runs the command or connects to the port inside the Pod.
//!
//! [`channel`] is the channel protocol and the typed options, [`spdy`] the SPDY framing,
//! [`portforward`] the SPDY port-forward session, [`proxy`] the leg to the agent.

pub mod channel;
pub mod portforward;
pub mod proxy;
pub mod spdy;

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts as _, Path, Request, State, ws::WebSocketUpgrade},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;

use super::{
    ApiState,
    agent::{AgentAddr, AgentClient},
    error::ApiError,
    handlers::Target,
    logs::{PodOnNode, pick_container, pod_on_node},
};
use crate::{registry, store::Store};
use channel::StreamOptions;

/// Which streaming subresource a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    /// The agent's endpoint (the kubelet's names).
    fn agent_path(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portForward",
        }
    }
}

/// `/api/v1/namespaces/{ns}/pods/{name}/exec`
pub async fn exec<S: Store>(
    state: State<Arc<ApiState<S>>>,
    path: Path<(String, String)>,
    req: Request,
) -> Response {
    serve(state, path, req, Subresource::Exec).await
}

/// `/api/v1/namespaces/{ns}/pods/{name}/attach`
pub async fn attach<S: Store>(
    state: State<Arc<ApiState<S>>>,
    path: Path<(String, String)>,
    req: Request,
) -> Response {
    serve(state, path, req, Subresource::Attach).await
}

/// `/api/v1/namespaces/{ns}/pods/{name}/portforward`
pub async fn port_forward<S: Store>(
    state: State<Arc<ApiState<S>>>,
    path: Path<(String, String)>,
    req: Request,
) -> Response {
    serve(state, path, req, Subresource::PortForward).await
}

async fn serve<S: Store>(
    State(state): State<Arc<ApiState<S>>>,
    Path((namespace, name)): Path<(String, String)>,
    req: Request,
    sub: Subresource,
) -> Response {
    handle(&state, namespace, name, req, sub)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// How the client asked to upgrade.
#[derive(Debug, PartialEq, Eq)]
enum Upgrade {
    WebSocket,
    Spdy,
    None,
}

fn upgrade_of(req: &Request) -> Upgrade {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if upgrade.eq_ignore_ascii_case("websocket") {
        Upgrade::WebSocket
    } else if upgrade.eq_ignore_ascii_case(channel::SPDY_UPGRADE) {
        Upgrade::Spdy
    } else {
        Upgrade::None
    }
}

/// The WebSocket subprotocols requested, in the client's order.
fn requested_protocols(req: &Request) -> Vec<String> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The subprotocol served: the first of ours (in our preference) the client offers.
fn choose(ours: &[&'static str], theirs: &[String]) -> Option<&'static str> {
    ours.iter().copied().find(|p| theirs.iter().any(|t| t == p))
}

async fn handle<S: Store>(
    state: &Arc<ApiState<S>>,
    namespace: String,
    name: String,
    req: Request,
    sub: Subresource,
) -> Result<Response, ApiError> {
    let opts = StreamOptions::parse(req.uri().query().unwrap_or_default())?;
    let info = registry::lookup("", "v1", "pods").ok_or(ApiError::NoSuchResource)?;
    let target = Target {
        info,
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        sub: None,
    };
    let PodOnNode { pod, agent, .. } = pod_on_node(state, &target).await?;
    let client = state.config.agent_client.clone();
    let upgrade = upgrade_of(&req);
    let protocols = requested_protocols(&req);
    let agent_path = match sub {
        Subresource::Exec | Subresource::Attach => {
            let container = pick_container(&pod, &name, opts.container.as_deref())?;
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if matches!(phase, "Succeeded" | "Failed") {
                let verb = if sub == Subresource::Exec {
                    "exec into"
                } else {
                    "attach to"
                };
                return Err(ApiError::BadRequest(format!(
                    "cannot {verb} a container in a completed pod; current phase is {phase}"
                )));
            }
            if sub == Subresource::Exec && opts.command.is_empty() {
                return Err(ApiError::BadRequest(
                    "you must specify at least one command for the container".into(),
                ));
            }
            if !(opts.stdin || opts.stdout || opts.stderr) {
                return Err(ApiError::BadRequest(
                    "you must specify at least one of stdin, stdout, stderr".into(),
                ));
            }
            format!(
                "/{}/{namespace}/{name}/{container}?{}",
                sub.agent_path(),
                opts.agent_query()
            )
        }
        Subresource::PortForward => format!(
            "/{}/{namespace}/{name}?{}",
            sub.agent_path(),
            opts.agent_query()
        ),
    };
    match (sub, upgrade) {
        (_, Upgrade::None) => Err(ApiError::BadRequest("Upgrade request required".into())),
        (Subresource::Exec | Subresource::Attach, Upgrade::WebSocket) => {
            let Some(protocol) = choose(&[channel::V5, channel::V4], &protocols) else {
                return Err(ApiError::BadRequest(format!(
                    "unable to upgrade: no supported WebSocket subprotocol in {protocols:?}; \
                     this server speaks {} and {}",
                    channel::V5,
                    channel::V4
                )));
            };
            let agent_ws =
                proxy::connect_agent(&agent, client.as_deref(), &agent_path, channel::V5).await?;
            let ws = websocket_upgrade(req, protocol).await?;
            Ok(ws.on_upgrade(move |client| proxy::relay(client, agent_ws)))
        }
        (Subresource::Exec | Subresource::Attach, Upgrade::Spdy) => Err(ApiError::BadRequest(
            "exec and attach are served over WebSockets (v5.channel.k8s.io), not SPDY".into(),
        )),
        (Subresource::PortForward, up) => {
            if opts.ports.is_empty() && up != Upgrade::Spdy && !is_tunnel(&protocols) {
                return Err(ApiError::BadRequest(
                    "at least one port must be specified".into(),
                ));
            }
            let dial = dialer(
                agent.clone(),
                client.clone(),
                namespace.clone(),
                name.clone(),
            );
            if up == Upgrade::Spdy {
                return spdy_upgrade(req, dial);
            }
            let ours = [channel::SPDY_TUNNEL, channel::V4, channel::PORT_FORWARD];
            let protocol = choose(&ours, &protocols).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unable to upgrade: no supported WebSocket subprotocol in {protocols:?}"
                ))
            })?;
            if protocol == channel::SPDY_TUNNEL {
                let ws = websocket_upgrade(req, protocol).await?;
                return Ok(ws.on_upgrade(move |client| async move {
                    portforward::serve(portforward::websocket_bytes(client), dial).await;
                }));
            }
            let agent_ws =
                proxy::connect_agent(&agent, client.as_deref(), &agent_path, channel::V4).await?;
            let ws = websocket_upgrade(req, protocol).await?;
            Ok(ws.on_upgrade(move |client| proxy::relay(client, agent_ws)))
        }
    }
}

fn is_tunnel(protocols: &[String]) -> bool {
    protocols.iter().any(|p| p == channel::SPDY_TUNNEL)
}

async fn websocket_upgrade(req: Request, protocol: &str) -> Result<WebSocketUpgrade, ApiError> {
    let (mut parts, _) = req.into_parts();
    let mut ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("unable to upgrade connection: {e}")))?;
    ws.set_selected_protocol(
        HeaderValue::from_str(protocol).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(ws)
}

/// One agent WebSocket per forwarded connection, for the SPDY sessions.
fn dialer(
    agent: AgentAddr,
    client: Option<Arc<AgentClient>>,
    namespace: String,
    name: String,
) -> portforward::Dial {
    Arc::new(move |port| {
        let (agent, client) = (agent.clone(), client.clone());
        let path = format!("/portForward/{namespace}/{name}?port={port}");
        Box::pin(async move {
            proxy::connect_agent(&agent, client.as_deref(), &path, channel::V4).await
        })
    })
}

/// The plain SPDY/3.1 upgrade kubectl falls back to: `101 Switching Protocols` with the
/// negotiated `X-Stream-Protocol-Version`, then SPDY on the connection.
fn spdy_upgrade(mut req: Request, dial: portforward::Dial) -> Result<Response, ApiError> {
    let offered: Vec<String> = req
        .headers()
        .get_all("X-Stream-Protocol-Version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .collect();
    if !offered.is_empty() && !offered.iter().any(|p| p == channel::PORT_FORWARD) {
        return Err(ApiError::BadRequest(format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
             server supports [\"{}\"]",
            channel::PORT_FORWARD
        )));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            portforward::serve(TokioIo::new(upgraded), dial).await;
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_static(channel::SPDY_UPGRADE),
    );
    h.insert(
        "X-Stream-Protocol-Version",
        HeaderValue::from_static(channel::PORT_FORWARD),
    );
    Ok(resp)
}
