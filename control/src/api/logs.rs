//! `pods/log`: proxies to the agent of the Pod's node (Node annotation `keelson.io/agent-api`),
//! `GET /containerLogs/<ns>/<pod>/<container>?follow=..&tailLines=..` over the connection of
//! [`super::agent`], streaming the body through as text/plain, like kube-apiserver does to the
//! kubelet.

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::{
    ApiState,
    agent::{self, AGENT_CERT_ANNOTATION, AgentAddr},
    error::ApiError,
    handlers::{Params, Target, load},
};
use crate::{registry, store::Store};

/// The Node annotation where an agent publishes its HTTP API address.
pub const AGENT_API_ANNOTATION: &str = "keelson.io/agent-api";

/// Query parameters passed through to the agent.
const PASSED: &[&str] = &[
    "follow",
    "tailLines",
    "previous",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// A Pod, the container a request names (or its only one) and the agent API of its node.
#[derive(Debug)]
pub struct PodOnNode {
    pub pod: serde_json::Value,
    pub name: String,
    pub node: String,
    pub agent: AgentAddr,
}

/// Loads the Pod of `t` and finds the agent API address of its node, with kube-apiserver's
/// errors: 404 for a missing Pod, 400 for one not yet bound to a node.
pub async fn pod_on_node<S: Store>(state: &ApiState<S>, t: &Target) -> Result<PodOnNode, ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let kv = state
        .store
        .get(&t.key())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            resource: "pods".into(),
            name: name.clone(),
        })?;
    let pod = load(&kv)?;
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?
        .to_owned();
    let node_info = registry::lookup("", "v1", "nodes").ok_or(ApiError::NoSuchResource)?;
    let node_obj = match state.store.get(&node_info.key(None, &node)).await? {
        Some(kv) => load(&kv)?,
        None => {
            return Err(ApiError::NotFound {
                resource: "nodes".into(),
                name: node,
            });
        }
    };
    let annotations = &node_obj["metadata"]["annotations"];
    let addr = annotations[AGENT_API_ANNOTATION]
        .as_str()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "node {node} does not publish its agent API ({AGENT_API_ANNOTATION})"
            ))
        })?
        .to_owned();
    let agent = AgentAddr {
        node: node.clone(),
        addr,
        cert_sha256: annotations[AGENT_CERT_ANNOTATION]
            .as_str()
            .map(str::to_owned),
    };
    Ok(PodOnNode {
        pod,
        name,
        node,
        agent,
    })
}

/// The container a request means: the named one (a container or init container of the Pod),
/// or the Pod's only container, as kube-apiserver's `validateContainer`/log and exec locations
/// choose it.
pub fn pick_container(
    pod: &serde_json::Value,
    name: &str,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match requested.filter(|c| !c.is_empty()) {
        Some(c) => {
            let known = names.contains(&c)
                || ["initContainers", "ephemeralContainers"].iter().any(|k| {
                    pod["spec"][*k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|ic| ic["name"] == c)
                });
            if !known {
                return Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            Ok(c.to_owned())
        }
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

pub async fn proxy<S: Store>(
    state: &ApiState<S>,
    t: &Target,
    params: &Params,
) -> Result<Response, ApiError> {
    let PodOnNode {
        pod,
        name,
        node,
        agent,
    } = pod_on_node(state, t).await?;
    let container = pick_container(&pod, &name, params.get("container").map(String::as_str))?;
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let query: Vec<String> = PASSED
        .iter()
        .filter_map(|k| params.get(*k).map(|v| format!("{k}={}", urlencode(v))))
        .collect();
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let unreachable = |e: String| {
        ApiError::ServiceUnavailable(format!("error talking to the agent of node {node}: {e}"))
    };
    let io = agent::dial(&agent, state.config.agent_client.as_deref())
        .await
        .map_err(|e| unreachable(e.chain()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // The connection lives as long as the (possibly followed) body is read.
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(header::HOST, agent.addr.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("building the agent request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(if status == StatusCode::BAD_REQUEST {
            // The node's own refusal (no previous run, say), in its words.
            ApiError::BadRequest(
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|s| s["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| body.trim().to_owned()),
            )
        } else if status == StatusCode::NOT_FOUND {
            ApiError::BadRequest(format!(
                "container \"{container}\" in pod \"{name}\" has no logs: {}",
                body.trim()
            ))
        } else {
            ApiError::ServiceUnavailable(format!(
                "agent of node {node} answered {status}: {}",
                body.trim()
            ))
        });
    }
    let mut out = (StatusCode::OK, Body::new(resp.into_body())).into_response();
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
