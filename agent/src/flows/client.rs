//! `keelson flows`: asks every node's agent (or one) for its flows over the agent API
//! (`GET /flows`), merges them by time, filters them and prints them, once or following.
//! The nodes and their agents' addresses come from the Node objects (annotation
//! `keelson.io/agent-metrics`), so it works against any cluster the agents registered in.

use std::{net::SocketAddr, time::Duration};

use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, api::ListParams};

use super::Flow;
use crate::node::registration::AGENT_METRICS_ANNOTATION;

/// Errors of `keelson flows`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("listing the nodes")]
    Nodes(#[source] kube::Error),
    #[error("node {0} has no agent metrics address (annotation {AGENT_METRICS_ANNOTATION})")]
    NoAgent(String),
    #[error("node {0} not found")]
    NoNode(String),
    #[error("asking the agent of node {node} at {addr}")]
    Request {
        node: String,
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the agent of node {node} answered {status}")]
    Status { node: String, status: u16 },
}

/// Which flows to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `namespace/name` of a Pod at either end.
    pub pod: Option<String>,
    /// `allowed` or `dropped`.
    pub verdict: Option<String>,
}

impl Filter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.pod.as_deref().is_none_or(|p| f.involves(p))
            && self.verdict.as_deref().is_none_or(|v| f.verdict == v)
    }
}

/// The agents to ask: `(node name, API address)`, of one node or all.
pub async fn agents(
    client: &kube::Client,
    node: Option<&str>,
) -> Result<Vec<(String, SocketAddr)>, ClientError> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ClientError::Nodes)?;
    let mut out = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if node.is_some_and(|want| want != name) {
            continue;
        }
        let addr = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(AGENT_METRICS_ANNOTATION))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| ClientError::NoAgent(name.clone()))?;
        out.push((name, addr));
    }
    if let Some(want) = node
        && out.is_empty()
    {
        return Err(ClientError::NoNode(want.to_owned()));
    }
    Ok(out)
}

/// Streams the flows of one agent: the kept ones of the last `since`, then with `follow` the
/// new ones. Each item is a flow, or the error that ended the stream.
pub fn stream(
    node: String,
    addr: SocketAddr,
    since: Option<Duration>,
    follow: bool,
) -> impl futures::Stream<Item = Result<Flow, ClientError>> {
    let mut uri = format!("http://{addr}/flows?follow={follow}");
    if let Some(s) = since {
        uri.push_str(&format!("&since={}", s.as_secs().max(1)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        if let Err(e) = pump(&node, addr, &uri, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Reads one agent's JSON lines into `tx` until the body ends or nobody listens.
async fn pump(
    node: &str,
    addr: SocketAddr,
    uri: &str,
    tx: &tokio::sync::mpsc::Sender<Result<Flow, ClientError>>,
) -> Result<(), ClientError> {
    let request_err = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Request {
        node: node.to_owned(),
        addr: addr.to_string(),
        source,
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = uri.parse().map_err(|e| request_err(Box::new(e)))?;
    let resp = client
        .get(uri)
        .await
        .map_err(|e| request_err(Box::new(e)))?;
    if !resp.status().is_success() {
        return Err(ClientError::Status {
            node: node.to_owned(),
            status: resp.status().as_u16(),
        });
    }
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| request_err(Box::new(e)))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(flow) = serde_json::from_slice::<Flow>(&line)
                && tx.send(Ok(flow)).await.is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Every matching flow of the agents' buffers within `since`, oldest first (not following).
pub async fn collect(
    agents: &[(String, SocketAddr)],
    since: Option<Duration>,
    filter: &Filter,
) -> Result<Vec<Flow>, ClientError> {
    let mut all = Vec::new();
    for (node, addr) in agents {
        let mut s = std::pin::pin!(stream(node.clone(), *addr, since, false));
        while let Some(item) = s.next().await {
            let flow = item?;
            if filter.matches(&flow) {
                all.push(flow);
            }
        }
    }
    all.sort_by_key(|f| f.time);
    Ok(all)
}

/// Follows the agents' flows, calling `print` for each matching one as it comes, until a
/// stream fails (its error is returned) or all end.
pub async fn follow(
    agents: &[(String, SocketAddr)],
    since: Option<Duration>,
    filter: &Filter,
    mut print: impl FnMut(&Flow),
) -> Result<(), ClientError> {
    let streams = agents
        .iter()
        .map(|(node, addr)| Box::pin(stream(node.clone(), *addr, since, true)));
    let mut merged = futures::stream::select_all(streams);
    while let Some(item) = merged.next().await {
        let flow = item?;
        if filter.matches(&flow) {
            print(&flow);
        }
    }
    Ok(())
}
