//! `keelson policy whatif`: replays the flows the agents recorded against the policies as
//! they are and as they would be with a draft applied, and lists the flows whose verdict would
//! change — before anything is applied.
//!
//! Both verdicts come from the same compiler the agents run (`policy::compile::plan`, once per
//! node), evaluated the way the datapath evaluates a new flow (`ebpf/src/policy.rs`): the
//! source's egress if it is an isolated local Pod of its node, then the destination's ingress
//! likewise, the node itself always reaching its Pods.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use keelson_common::policy::{direction, endpoint_flags, identity, policy_prefix};
use kube::{Api, api::ListParams};

use super::Flow;
use crate::policy::{
    compile,
    model::{Desired, NamespaceInfo, NodeContext, NodeInfo, PodInfo, Snapshot},
};

/// Errors of `keelson policy whatif`.
#[derive(Debug, thiserror::Error)]
pub enum WhatifError {
    #[error("listing {what}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("reading the draft")]
    Draft(#[source] serde_saphyr::Error),
    #[error("reading a NetworkPolicy of the draft")]
    DraftPolicy(#[source] serde_json::Error),
    #[error("the draft holds a {kind}, not a NetworkPolicy")]
    NotAPolicy { kind: String },
}

/// The verdict policy gives a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// `ingress` or `egress`: the side that refused, or that allowed by a policy.
    pub direction: &'static str,
    /// The policy that allowed it, when an isolated end needed one.
    pub policy: Option<String>,
}

impl Verdict {
    pub fn describe(&self) -> String {
        match (self.allowed, &self.policy) {
            (true, Some(p)) => format!("allowed ({} by {p})", self.direction),
            (true, None) => "allowed (no policy applies)".to_owned(),
            (false, _) => format!("dropped ({}: no policy allows)", self.direction),
        }
    }
}

/// One conversation of the recorded flows whose verdict the draft changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The most recent flow of the conversation (source, destination, port, protocol).
    pub flow: Flow,
    /// How many recorded flows (connections) the conversation had.
    pub flows: usize,
    pub now: Verdict,
    pub with_draft: Verdict,
}

impl Change {
    pub fn line(&self) -> String {
        let who = |e: &super::Endpoint| e.pod.clone().unwrap_or_else(|| e.ip.to_string());
        let dst = &self.flow.destination;
        let to = match dst.port {
            Some(p) => format!("{}:{p}", who(dst)),
            None => who(dst),
        };
        let arrow = match (self.now.allowed, self.with_draft.allowed) {
            (true, false) => "ALLOWED -> DROPPED",
            (false, true) => "DROPPED -> ALLOWED",
            _ => "CHANGED",
        };
        format!(
            "{arrow}  {} -> {} {}  ({} flow{}, last {})  now: {}; with the draft: {}",
            who(&self.flow.source),
            to,
            self.flow.protocol,
            self.flows,
            if self.flows == 1 { "" } else { "s" },
            self.flow.time.strftime("%H:%M:%S"),
            self.now.describe(),
            self.with_draft.describe()
        )
    }
}

/// Reads the draft's NetworkPolicies (YAML or JSON, one or more documents, or a `List`).
pub fn parse_draft(text: &str, namespace: &str) -> Result<Vec<NetworkPolicy>, WhatifError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(WhatifError::Draft)?;
    let mut out = Vec::new();
    let mut pending: Vec<serde_json::Value> = docs;
    while let Some(doc) = pending.pop() {
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "List" || kind == "NetworkPolicyList" {
            pending.extend(doc["items"].as_array().cloned().unwrap_or_default());
            continue;
        }
        if kind != "NetworkPolicy" {
            return Err(WhatifError::NotAPolicy { kind });
        }
        let mut np: NetworkPolicy =
            serde_json::from_value(doc).map_err(WhatifError::DraftPolicy)?;
        if np.metadata.namespace.is_none() {
            np.metadata.namespace = Some(namespace.to_owned());
        }
        out.push(np);
    }
    out.reverse();
    Ok(out)
}

/// What the cluster holds now, as the compiler reads it.
pub async fn snapshot(client: &kube::Client) -> Result<Snapshot, WhatifError> {
    let lp = ListParams::default();
    let list_err = |what| move |source| WhatifError::List { what, source };
    let mut snap = Snapshot::default();
    for pod in Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .map_err(list_err("pods"))?
    {
        if let Some(p) = PodInfo::from_pod(&pod) {
            snap.add_pod(p);
        }
    }
    for ns in Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .map_err(list_err("namespaces"))?
    {
        if let Some(n) = NamespaceInfo::from_namespace(&ns) {
            snap.add_namespace(n);
        }
    }
    for node in Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .map_err(list_err("nodes"))?
    {
        if let Some(n) = NodeInfo::from_node(&node) {
            snap.add_node(n);
        }
    }
    for np in Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await
        .map_err(list_err("networkpolicies"))?
    {
        snap.add_policy(np);
    }
    Ok(snap)
}

/// One policy entry as the evaluator matches it: prefix length, protocol, port (host order),
/// policy index.
type Entry = (u32, u8, u16, u32);
/// Entries by (endpoint, direction, peer identity).
type EntryIndex = HashMap<(u32, u8, u32), Vec<Entry>>;
/// A conversation: source, destination, protocol, destination port.
type Conversation = (Ipv4Addr, Ipv4Addr, String, Option<u16>);

/// One node's compiled policy, indexed for evaluating flows.
struct NodePlan {
    node_ip: Ipv4Addr,
    desired: Desired,
    /// (endpoint, direction, peer identity) → its entries (prefix length, key data, policy).
    entries: EntryIndex,
}

impl NodePlan {
    fn new(snapshot: &Snapshot, node: &NodeInfo) -> Option<Self> {
        let node_ip = *node.addresses.first()?;
        let desired = compile::plan(
            snapshot,
            &NodeContext {
                node_name: node.name.clone(),
                node_ip,
            },
        );
        let mut entries = EntryIndex::new();
        for ((len, key), value) in &desired.policy {
            entries
                .entry((key.endpoint, key.dir, u32::from_be(key.identity)))
                .or_default()
                .push((*len, key.proto, u16::from_be(key.dport), value.policy));
        }
        Some(Self {
            node_ip,
            desired,
            entries,
        })
    }

    fn identity_of(&self, addr: Ipv4Addr) -> u32 {
        if addr == self.node_ip {
            return identity::HOST;
        }
        if let Some(ep) = self.desired.endpoints.get(&addr)
            && ep.identity != 0
        {
            return ep.identity;
        }
        self.desired
            .ipcache
            .iter()
            .filter(|(cidr, _)| cidr.contains(&crate::policy::model::Cidr::host(addr)))
            .max_by_key(|(cidr, _)| cidr.prefix_len())
            .map_or(identity::WORLD, |(_, v)| v.identity)
    }

    /// The policy index that lets `ep` talk with `peer`, as the datapath's trie lookups find it.
    fn allowed_by(&self, ep: Ipv4Addr, peer: u32, dir: u8, proto: u8, port: u16) -> Option<u32> {
        let ep = u32::from_ne_bytes(ep.octets());
        [peer, identity::ANY].into_iter().find_map(|id| {
            self.entries
                .get(&(ep, dir, id))?
                .iter()
                .find_map(|&(len, p, base, policy)| {
                    let matches = if len <= policy_prefix::ANY_PROTO {
                        true
                    } else if len <= policy_prefix::ANY_PORT {
                        p == proto
                    } else {
                        let bits = (len - policy_prefix::ANY_PORT).min(16);
                        let mask = if bits == 0 {
                            0
                        } else {
                            u16::MAX << (16 - bits)
                        };
                        p == proto && port & mask == base & mask
                    };
                    matches.then_some(policy)
                })
        })
    }
}

/// Policy's verdict on `flow` under `plans` (one per node).
fn evaluate(plans: &[NodePlan], flow: &Flow) -> Verdict {
    let (src, dst) = (flow.source.ip, flow.destination.ip);
    let proto = match flow.protocol.as_str() {
        "TCP" => keelson_common::proto::TCP,
        "UDP" => keelson_common::proto::UDP,
        "SCTP" => keelson_common::proto::SCTP,
        other => other.parse().unwrap_or(0),
    };
    let port = flow.destination.port.unwrap_or(0);
    let name = |plan: &NodePlan, index: u32| plan.desired.policy_names.get(&index).cloned();
    let mut verdict = Verdict {
        allowed: true,
        direction: "egress",
        policy: None,
    };
    if let Some(plan) = plans
        .iter()
        .find(|p| p.desired.endpoints.contains_key(&src))
        && plan.desired.endpoints[&src].flags & endpoint_flags::EGRESS_ISOLATED != 0
    {
        let peer = plan.identity_of(dst);
        match plan.allowed_by(src, peer, direction::EGRESS, proto, port) {
            Some(index) => verdict.policy = name(plan, index),
            None => {
                verdict.allowed = false;
                return verdict;
            }
        }
    }
    if let Some(plan) = plans
        .iter()
        .find(|p| p.desired.endpoints.contains_key(&dst))
        && plan.desired.endpoints[&dst].flags & endpoint_flags::INGRESS_ISOLATED != 0
    {
        let peer = plan.identity_of(src);
        if peer != identity::HOST {
            verdict.direction = "ingress";
            match plan.allowed_by(dst, peer, direction::INGRESS, proto, port) {
                Some(index) => verdict.policy = name(plan, index),
                None => verdict.allowed = false,
            }
        }
    }
    verdict
}

/// The conversations among `flows` whose verdict `draft` changes, given the cluster `now`.
pub fn changes(now: &Snapshot, draft: &[NetworkPolicy], flows: &[Flow]) -> Vec<Change> {
    let mut drafted = now.clone();
    for np in draft {
        drafted.add_policy(np.clone());
    }
    let plans = |snap: &Snapshot| -> Vec<NodePlan> {
        snap.nodes
            .values()
            .filter_map(|n| NodePlan::new(snap, n))
            .collect()
    };
    let (before, after) = (plans(now), plans(&drafted));
    // A conversation: source, destination, protocol and destination port (each connection
    // has its own source port). Flows recorded on both nodes of a cross-node flow count once.
    let mut seen: BTreeMap<Conversation, (Flow, usize)> = BTreeMap::new();
    let mut tuples = std::collections::HashSet::new();
    for f in flows {
        let tuple = (
            f.source.ip,
            f.source.port,
            f.destination.ip,
            f.destination.port,
            f.protocol.clone(),
        );
        let first = tuples.insert(tuple);
        let key = (
            f.source.ip,
            f.destination.ip,
            f.protocol.clone(),
            f.destination.port,
        );
        let entry = seen.entry(key).or_insert_with(|| (f.clone(), 0));
        if first {
            entry.1 += 1;
        }
        if f.time > entry.0.time {
            entry.0 = f.clone();
        }
    }
    seen.into_values()
        .filter_map(|(flow, count)| {
            let (a, b) = (evaluate(&before, &flow), evaluate(&after, &flow));
            (a.allowed != b.allowed).then_some(Change {
                flow,
                flows: count,
                now: a,
                with_draft: b,
            })
        })
        .collect()
}
