//! `keelson policy whatif`: replays the flows the agents recorded against the policies as
//! they are and as they would be with a draft applied, and lists the flows whose verdict would
//! change — before anything is applied.
//!
//! Both verdicts come from the same compiler the agents run (`policy::compile::plan`, once per
//! node), evaluated the way the datapath evaluates a new flow (`ebpf/src/policy.rs`): the
//! source's egress if it is an isolated local Pod of its node, then the destination's ingress
//! likewise, the node itself always reaching its Pods.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use keelson_common::policy::direction;
use kube::{Api, api::ListParams};

use super::Flow;
use crate::policy::{
    compile,
    decide::{Decider, Side},
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

/// A conversation: source, destination, protocol, destination port.
type Conversation = (Ipv4Addr, Ipv4Addr, String, Option<u16>);

/// One node's compiled policy.
struct NodePlan {
    node_ip: Ipv4Addr,
    desired: Desired,
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
        Some(Self { node_ip, desired })
    }

    fn decider(&self) -> Decider<'_> {
        Decider::new(&self.desired, self.node_ip)
    }
}

/// The deciders of `plans`, one per node.
fn deciders(plans: &[NodePlan]) -> Vec<Decider<'_>> {
    plans.iter().map(NodePlan::decider).collect()
}

/// Policy's verdict on `flow` under `plans` (one per node): the source's egress on its own
/// node, then the destination's ingress on its own, each decided as that node's datapath
/// decides it.
fn evaluate(deciders: &[Decider<'_>], flow: &Flow) -> Verdict {
    let (src, dst) = (flow.source.ip, flow.destination.ip);
    let proto = match flow.protocol.as_str() {
        "TCP" => keelson_common::proto::TCP,
        "UDP" => keelson_common::proto::UDP,
        "SCTP" => keelson_common::proto::SCTP,
        other => other.parse().unwrap_or(0),
    };
    let port = flow.destination.port.unwrap_or(0);
    let name = |d: &Decider<'_>, index: u32| d.desired().policy_names.get(&index).cloned();
    let mut verdict = Verdict {
        allowed: true,
        direction: "egress",
        policy: None,
    };
    if let Some(d) = deciders.iter().find(|d| d.is_local(src)) {
        match d.side(src, dst, direction::EGRESS, proto, port) {
            Side::Open => {}
            Side::AllowedBy(index) => verdict.policy = name(d, index),
            Side::Refused => {
                verdict.allowed = false;
                return verdict;
            }
        }
    }
    if let Some(d) = deciders.iter().find(|d| d.is_local(dst)) {
        match d.side(dst, src, direction::INGRESS, proto, port) {
            Side::Open => {}
            Side::AllowedBy(index) => {
                verdict.direction = "ingress";
                verdict.policy = name(d, index);
            }
            Side::Refused => {
                verdict.direction = "ingress";
                verdict.allowed = false;
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
    let (before, after) = (deciders(&before), deciders(&after));
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

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use keelson_common::{FlowEvent, policy::verdict, proto};

    use super::*;
    use crate::{
        flows::decode,
        policy::testutil::{pod, policy, snapshot},
    };

    fn flow(src: [u8; 4], dst: [u8; 4], dport: u16, secs: i64) -> Flow {
        let e = FlowEvent {
            time_ns: 0,
            saddr: u32::from_ne_bytes(src),
            daddr: u32::from_ne_bytes(dst),
            sport: (40000 + secs as u16).to_be(),
            dport: dport.to_be(),
            proto: proto::TCP,
            verdict: verdict::ALLOWED,
            dir: 0,
            tcp_flags: 0x02,
            reason: 0,
            policy: 0,
            src_identity: 0,
            dst_identity: 0,
            rev_nat_index: 0,
            pad: [0; 2],
            ifindex: 0,
        };
        decode(&e, Timestamp::from_second(secs).expect("time"), "n1")
    }

    #[test]
    fn a_draft_deny_all_lists_the_conversations_it_stops_and_only_those() {
        let now = snapshot(
            vec![
                pod("a", "client", "10.244.0.2", &[("app", "client")]),
                pod("b", "web", "10.244.0.3", &[("app", "web")]),
            ],
            vec![],
        );
        // Two connections client -> web:80, one web -> client:9000.
        let flows = vec![
            flow([10, 244, 0, 2], [10, 244, 0, 3], 80, 1),
            flow([10, 244, 0, 2], [10, 244, 0, 3], 80, 2),
            flow([10, 244, 0, 3], [10, 244, 0, 2], 9000, 3),
        ];
        let draft = parse_draft(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
            "b",
        )
        .expect("draft");
        assert_eq!(draft[0].metadata.namespace.as_deref(), Some("b"));
        let changes = changes(&now, &draft, &flows);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let c = &changes[0];
        assert_eq!(
            (c.flows, c.now.allowed, c.with_draft.allowed),
            (2, true, false)
        );
        assert_eq!(c.with_draft.direction, "ingress");
        assert!(c.line().starts_with("ALLOWED -> DROPPED"), "{}", c.line());

        // The same draft with a rule for the client: nothing changes.
        let allow = policy(
            "b",
            "deny",
            serde_json::json!({
                "podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}],
            }),
        );
        assert!(super::changes(&now, std::slice::from_ref(&allow), &flows).is_empty());
        // The deny-all applied, and a draft that replaces it with one selecting no Pod: the
        // conversation would be allowed again.
        let mut with = now.clone();
        with.add_policy(draft[0].clone());
        let undo = policy(
            "b",
            "deny",
            serde_json::json!({"podSelector": {"matchLabels": {"none": "x"}}}),
        );
        let back = super::changes(&with, &[undo], &flows);
        assert_eq!(back.len(), 1, "{back:?}");
        assert!(
            back[0].line().starts_with("DROPPED -> ALLOWED"),
            "{}",
            back[0].line()
        );
    }
}
