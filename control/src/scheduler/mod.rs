//! The scheduler: binds pending Pods to Ready Nodes through `pods/binding`. A pure
//! [`schedule`] runs the filter plugins ([`filter`]) over every Node and the score plugins
//! ([`score`]) over the feasible ones; a thin loop feeds it from reflector stores and applies the
//! decision. Pods that fit nowhere get `PodScheduled=False` (reason Unschedulable) and are
//! tried again whenever a Node changes or a Pod goes away.

pub mod filter;
pub mod resources;
pub mod score;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::controllers::ControllerError;
use crate::controllers::objects::{is_terminating, pod_is_terminal};
use crate::controllers::runtime::{
    Informer, Reconciler, Requeue, Touch, WorkQueue, is_conflict, is_not_found, key_of, run_worker,
    split_key,
};
use resources::{Resources, pod_requests};

/// The scheduler name this scheduler answers to.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Errors of the scheduler loop.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A watch or the worker stopped.
    #[error("scheduler loop: {0}")]
    Loop(#[source] ControllerError),
    /// A task of the scheduler panicked or ended.
    #[error("scheduler task {0} stopped")]
    Stopped(&'static str),
}

/// A Node with the Pods it runs (or is about to run) and what they request.
#[derive(Debug)]
pub struct NodeInfo<'a> {
    /// The Node.
    pub node: &'a Node,
    /// Pods bound or assumed bound to it, not terminal.
    pub pods: Vec<&'a Pod>,
    /// Sum of their requests.
    pub requested: Resources,
    /// Sum of their requests with the scoring defaults for unset ones.
    pub requested_non_zero: Resources,
}

impl<'a> NodeInfo<'a> {
    /// Totals the requests of `pods` on `node`.
    pub fn new(node: &'a Node, pods: Vec<&'a Pod>) -> Self {
        let requested = pods
            .iter()
            .fold(Resources::default(), |a, p| a.plus(pod_requests(p, false)));
        let requested_non_zero = pods
            .iter()
            .fold(Resources::default(), |a, p| a.plus(pod_requests(p, true)));
        Self {
            node,
            pods,
            requested,
            requested_non_zero,
        }
    }
}

/// What the scheduler knows of the cluster.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// Every Node with its Pods.
    pub nodes: Vec<NodeInfo<'a>>,
}

impl<'a> Snapshot<'a> {
    /// Groups non-terminal `pods` by their Node: spec.nodeName, or the Node the scheduler bound
    /// them to when the store does not show the binding yet (`assumed`, by Pod uid).
    pub fn build(nodes: &[&'a Node], pods: &[&'a Pod], assumed: &HashMap<String, String>) -> Self {
        let mut by_node: BTreeMap<&str, Vec<&'a Pod>> = BTreeMap::new();
        for p in pods.iter().copied().filter(|p| !pod_is_terminal(p)) {
            let bound = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty());
            let assumed_on = p
                .metadata
                .uid
                .as_ref()
                .and_then(|u| assumed.get(u))
                .map(String::as_str);
            if let Some(n) = bound.or(assumed_on) {
                by_node.entry(n).or_default().push(p);
            }
        }
        let nodes = nodes
            .iter()
            .map(|n| {
                NodeInfo::new(
                    n,
                    by_node
                        .remove(n.metadata.name.as_deref().unwrap_or_default())
                        .unwrap_or_default(),
                )
            })
            .collect();
        Self { nodes }
    }
}

/// The scheduler's answer for one Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this Node.
    Bind(String),
    /// No Node fits; the message says why, per reason.
    Unschedulable(String),
}

/// True for Pods this scheduler must place.
pub fn is_pending(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let unbound = spec
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty);
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n == SCHEDULER_NAME);
    unbound && ours && !is_terminating(&pod.metadata) && !pod_is_terminal(pod)
}

/// Places `pod`: filters, then the best score; ties go to the Node whose name sorts first.
pub fn schedule(pod: &Pod, snap: &Snapshot<'_>) -> Decision {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo<'_>> = Vec::new();
    for n in &snap.nodes {
        match filter::run_filters(pod, n) {
            Ok(()) => feasible.push(n),
            Err(why) => {
                for r in why.split(", ") {
                    *reasons.entry(r.to_string()).or_default() += 1;
                }
            }
        }
    }
    let best = feasible
        .iter()
        .map(|n| {
            (
                score::total(pod, n, &feasible),
                n.node.metadata.name.clone().unwrap_or_default(),
            )
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
    match best {
        Some((_, name)) => Decision::Bind(name),
        None => {
            let detail: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            let total = snap.nodes.len();
            Decision::Unschedulable(if detail.is_empty() {
                format!("0/{total} nodes are available.")
            } else {
                format!("0/{total} nodes are available: {}.", detail.join(", "))
            })
        }
    }
}

/// The PodScheduled=False condition for `message`, or None when the Pod already carries it.
pub fn unschedulable_condition(pod: &Pod, message: &str, now: Timestamp) -> Option<PodCondition> {
    let prev = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if prev.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    }) {
        return None;
    }
    let since = prev
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Some(PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.into()),
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    })
}

/// How long a binding the store has not shown yet keeps the Pod counted on its Node.
const ASSUME_TTL: Duration = Duration::from_secs(30);

struct SchedulerLoop {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Pod uid -> (Node, when) for bindings the store does not show yet.
    assumed: HashMap<String, (String, Instant)>,
}

impl Reconciler for SchedulerLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let pods = self.pods.state();
        let still_pending: HashSet<&str> = pods
            .iter()
            .filter(|p| is_pending(p))
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.assumed.retain(|uid, (_, at)| {
            still_pending.contains(uid.as_str()) && at.elapsed() < ASSUME_TTL
        });

        let (ns, name) = split_key(key);
        let ns = ns.unwrap_or_default();
        let Some(pod) = self.pods.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !is_pending(&pod) || self.assumed.contains_key(&uid) {
            return Ok(None);
        }
        let nodes = self.nodes.state();
        let node_refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
        let pod_refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
        let assumed: HashMap<String, String> = self
            .assumed
            .iter()
            .map(|(u, (n, _))| (u.clone(), n.clone()))
            .collect();
        let snap = Snapshot::build(&node_refs, &pod_refs, &assumed);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match schedule(&pod, &snap) {
            Decision::Bind(node) => {
                let binding = Binding {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(ns.into()),
                        uid: Some(uid.clone()),
                        ..Default::default()
                    },
                    target: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Node".into()),
                        name: Some(node.clone()),
                        ..Default::default()
                    },
                };
                match api
                    .create_subresource::<_, serde_json::Value>(
                        "binding",
                        name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(pod = key, node, "bound pod");
                        self.assumed.insert(uid, (node, Instant::now()));
                    }
                    // Bound by someone else meanwhile, or deleted: the next event tells.
                    Err(e) if is_conflict(&e) || is_not_found(&e) => {
                        tracing::debug!(pod = key, error = %e, "binding not applied");
                    }
                    Err(e) => return Err(e),
                }
            }
            Decision::Unschedulable(message) => {
                if let Some(cond) = unschedulable_condition(&pod, &message, Timestamp::now()) {
                    let mut obj = (*pod).clone();
                    let st = obj.status.get_or_insert_with(Default::default);
                    let conds = st.conditions.get_or_insert_with(Vec::new);
                    conds.retain(|c| c.type_ != "PodScheduled");
                    conds.push(cond);
                    api.replace_status(name, &PostParams::default(), &obj)
                        .await?;
                    tracing::info!(pod = key, message, "pod unschedulable");
                }
            }
        }
        Ok(None)
    }
}

/// Runs the scheduler until it fails.
pub async fn run(client: Client) -> Result<(), SchedulerError> {
    let mut pods = Informer::<Pod>::new(Api::all(client.clone()), watcher::Config::default());
    let mut nodes = Informer::<Node>::new(Api::all(client.clone()), watcher::Config::default());
    let queue = WorkQueue::default();
    let pod_store = pods.store();
    let node_store = nodes.store();
    let enqueue_pending = {
        let (q, s) = (queue.clone(), pod_store.clone());
        move || {
            s.state()
                .iter()
                .filter(|p| is_pending(p))
                .for_each(|p| q.add(key_of(&**p)))
        }
    };
    {
        let q = queue.clone();
        let all = enqueue_pending.clone();
        pods.on(move |t| match t {
            Touch::Changed(p) if is_pending(p) => q.add(key_of(p)),
            // A Pod that finished frees its Node's resources.
            Touch::Changed(p) if pod_is_terminal(p) => all(),
            Touch::Changed(_) => {}
            Touch::Deleted(_) | Touch::Relisted(_) => all(),
        });
    }
    {
        let all = enqueue_pending.clone();
        nodes.on(move |_| all());
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { ("pod informer", pods.run().await) });
    tasks.spawn(async move { ("node informer", nodes.run().await) });
    {
        let w = SchedulerLoop {
            client,
            pods: pod_store.clone(),
            nodes: node_store.clone(),
            assumed: HashMap::new(),
        };
        tasks.spawn(async move {
            let _ = pod_store.wait_until_ready().await;
            let _ = node_store.wait_until_ready().await;
            enqueue_pending();
            tracing::info!("scheduler started");
            ("scheduler", run_worker("scheduler", queue, w).await)
        });
    }
    match tasks.join_next().await {
        Some(Ok((_, Err(e)))) => Err(SchedulerError::Loop(e)),
        Some(Ok((name, Ok(())))) => Err(SchedulerError::Stopped(name)),
        Some(Err(_)) | None => Err(SchedulerError::Stopped("scheduler task")),
    }
}
