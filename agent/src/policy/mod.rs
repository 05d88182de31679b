//! NetworkPolicy enforcement: watches Pods, Namespaces, NetworkPolicies and Nodes, compiles
//! them into identities, ipcache entries and per-endpoint policy entries, and writes the
//! difference into the datapath's maps.
//!
//! [`compile::plan`] and [`diff::diff`] are pure; [`Programmer`] is the state between passes
//! and this module's loop the thin part around it: four watches feeding a [`Snapshot`], and on
//! every change a pass that plans, diffs against what the maps hold and applies. What they
//! hold is read from the kernel on the first pass (so a restarted agent converges from what
//! its predecessor wrote, without flushing anything) and after a failed write, and carried
//! forward in memory otherwise; the endpoints, which the CNI server adds, are read on every
//! pass, and a pass runs every [`REFRESH`] even without a change so that an endpoint recorded
//! after the last one gets its identity and isolation.

pub mod compile;
pub mod decide;
pub mod diff;
pub mod identity;
pub mod input;
pub mod model;
pub mod ports;
pub mod rules;
pub mod selector;

use std::{sync::Arc, time::Duration};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};

pub use compile::plan;
pub use diff::{diff, diff_endpoints};
pub use model::{
    Cidr, ContainerPort, Desired, EndpointPolicy, NamespaceInfo, NodeContext, NodeInfo, PodInfo,
    PolicyEntryKey, PolicyOp, Snapshot,
};

use crate::loader::{Datapath, MapsError};
use input::Watched;

/// How often a pass runs without a change: the longest an endpoint the CNI server recorded
/// after a pass goes without its identity and isolation.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Most watch events taken into one pass: a long burst is programmed in steps rather than
/// only when it ends.
const MAX_EVENTS_PER_PASS: usize = 4096;

/// Errors of the policy programming loop.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("a watch of {0} ended")]
    WatchEnded(&'static str),
    #[error("policy maps")]
    Maps(#[source] MapsError),
}

impl From<crate::watch::WatchEnded> for PolicyError {
    fn from(e: crate::watch::WatchEnded) -> Self {
        Self::WatchEnded(e.0)
    }
}

/// Everything the policy programming keeps between passes.
#[derive(Debug)]
pub struct Programmer {
    node: NodeContext,
    snapshot: Snapshot,
    pods: Watched<PodInfo>,
    namespaces: Watched<NamespaceInfo>,
    policies: Watched<NetworkPolicy>,
    nodes: Watched<NodeInfo>,
    /// The plan of `snapshot`; `None`: plan again on the next pass.
    desired: Option<Desired>,
    /// What the maps hold after the last pass; `None`: read them back on the next pass.
    programmed: Option<Desired>,
}

impl Programmer {
    pub fn new(node: NodeContext) -> Self {
        Self {
            node,
            snapshot: Snapshot::default(),
            pods: Watched::default(),
            namespaces: Watched::default(),
            policies: Watched::default(),
            nodes: Watched::default(),
            desired: None,
            programmed: None,
        }
    }

    /// Takes one event of the Pod watch; returns whether the next pass plans again.
    pub fn pod_event(&mut self, event: watcher::Event<Pod>) -> bool {
        let changed = self
            .pods
            .apply(&mut self.snapshot.pods, event, PodInfo::from_pod);
        self.changed(changed)
    }

    pub fn namespace_event(&mut self, event: watcher::Event<Namespace>) -> bool {
        let changed = self.namespaces.apply(
            &mut self.snapshot.namespaces,
            event,
            NamespaceInfo::from_namespace,
        );
        self.changed(changed)
    }

    pub fn policy_event(&mut self, event: watcher::Event<NetworkPolicy>) -> bool {
        let changed = self
            .policies
            .apply(&mut self.snapshot.policies, event, input::reduce_policy);
        self.changed(changed)
    }

    pub fn node_event(&mut self, event: watcher::Event<Node>) -> bool {
        let changed = self
            .nodes
            .apply(&mut self.snapshot.nodes, event, NodeInfo::from_node);
        self.changed(changed)
    }

    fn changed(&mut self, changed: bool) -> bool {
        if changed {
            self.desired = None;
        }
        changed
    }

    /// Every watch has delivered a complete list: a pass before that would drop the
    /// allowances of Pods not listed yet, or leave Pods unisolated.
    pub fn is_ready(&self) -> bool {
        self.pods.is_ready()
            && self.namespaces.is_ready()
            && self.policies.is_ready()
            && self.nodes.is_ready()
    }

    /// What the passes compile.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// One pass: plan if anything changed, diff against the maps, apply, bump the policy
    /// revision. Returns the number of operations written.
    ///
    /// A failed write leaves the maps to be read back on the next pass rather than trusted
    /// from a half-applied diff; a full map is counted (`Datapath::count_full`).
    pub async fn pass(&mut self, dp: &Datapath) -> Result<usize, PolicyError> {
        let replanned = self.desired.is_none();
        let desired = match &mut self.desired {
            Some(d) => d,
            slot @ None => {
                let started = std::time::Instant::now();
                let d = plan(&self.snapshot, &self.node);
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    identities = d.identities.len(),
                    entries = d.policy.len(),
                    "policy planned"
                );
                slot.insert(d)
            }
        };
        let (mut current, ops) = match self.programmed.take() {
            None => {
                let read = dp.maps().run(|m| m.read_policy_state()).await;
                let current = read.map_err(PolicyError::Maps)?;
                let ops = diff(&current, desired);
                (current, ops)
            }
            Some(mut current) => {
                let read = dp.maps().run(|m| m.read_policy_endpoints()).await;
                current.endpoints = read.map_err(PolicyError::Maps)?;
                // Unless the plan changed, the maps hold it already but for the endpoints.
                let ops = if replanned {
                    diff(&current, desired)
                } else {
                    diff_endpoints(&current.endpoints, &desired.endpoints)
                };
                (current, ops)
            }
        };
        if ops.is_empty() {
            self.programmed = Some(current);
            return Ok(0);
        }
        let written = ops.len();
        tracing::debug!(ops = written, "programming policy");
        let (ops, result) = dp
            .maps()
            .run(move |m| {
                let applied = m.apply_policy(&ops);
                // Even a partly applied diff may have taken an allowance away: established
                // flows must be checked again either way.
                let bumped = m.bump_policy_revision();
                (ops, applied.and(bumped.map(|_| ())))
            })
            .await;
        if let Err(e) = result {
            if let MapsError::Full { map, .. } = &e {
                dp.count_full(map);
            }
            return Err(PolicyError::Maps(e));
        }
        current.apply(&ops);
        self.programmed = Some(current);
        Ok(written)
    }
}

/// Keeps the datapath's policy maps equal to what the API's NetworkPolicies ask for this
/// node's Pods.
///
/// A change is programmed as soon as it arrives when the loop is idle; changes that arrive
/// while a pass runs are all taken into the next one. A failed pass is logged and retried at
/// the next change or [`REFRESH`], whichever comes first.
pub async fn run(
    client: kube::Client,
    dp: Arc<Datapath>,
    node: NodeContext,
) -> Result<(), PolicyError> {
    let pods =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff();
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let policies = watcher(
        Api::<NetworkPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let nodes = watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff();
    let mut pods = std::pin::pin!(pods);
    let mut namespaces = std::pin::pin!(namespaces);
    let mut policies = std::pin::pin!(policies);
    let mut nodes = std::pin::pin!(nodes);
    let mut programmer = Programmer::new(node);
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = false;
    loop {
        tokio::select! {
            e = pods.next() => due |= crate::watch::take(e, "pods", |e| programmer.pod_event(e))?,
            e = namespaces.next() => {
                due |= crate::watch::take(e, "namespaces", |e| programmer.namespace_event(e))?;
            }
            e = policies.next() => {
                due |= crate::watch::take(e, "networkpolicies", |e| programmer.policy_event(e))?;
            }
            e = nodes.next() => due |= crate::watch::take(e, "nodes", |e| programmer.node_event(e))?,
            _ = refresh.tick() => due = true,
        }
        // Whatever else has already arrived goes into the same pass.
        let mut taken = 1;
        while taken < MAX_EVENTS_PER_PASS {
            let before = taken;
            if let Some(e) = pods.next().now_or_never() {
                due |= crate::watch::take(e, "pods", |e| programmer.pod_event(e))?;
                taken += 1;
            }
            if let Some(e) = namespaces.next().now_or_never() {
                due |= crate::watch::take(e, "namespaces", |e| programmer.namespace_event(e))?;
                taken += 1;
            }
            if let Some(e) = policies.next().now_or_never() {
                due |= crate::watch::take(e, "networkpolicies", |e| programmer.policy_event(e))?;
                taken += 1;
            }
            if let Some(e) = nodes.next().now_or_never() {
                due |= crate::watch::take(e, "nodes", |e| programmer.node_event(e))?;
                taken += 1;
            }
            if taken == before {
                break;
            }
        }
        if !due || !programmer.is_ready() {
            continue;
        }
        due = false;
        match programmer.pass(&dp).await {
            Ok(0) => {}
            Ok(ops) => tracing::debug!(ops, "policy programmed"),
            Err(PolicyError::Maps(MapsError::Full { map, op })) => {
                // Bad input changes nothing silently: a full map is an error and a metric.
                tracing::error!(
                    map,
                    op,
                    "policy map full: policy not fully enforced; retrying"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                source = ?std::error::Error::source(&e),
                "programming policy failed; retrying"
            ),
        }
    }
}

/// One full pass from nothing but a snapshot: read the maps, plan, apply. Blocks the calling
/// thread (tools and tests; the agent runs [`run`]).
pub fn reconcile(
    dp: &Datapath,
    snapshot: Snapshot,
    node: &NodeContext,
) -> Result<usize, PolicyError> {
    let mut programmer = Programmer::new(node.clone());
    programmer.snapshot = snapshot;
    futures::executor::block_on(programmer.pass(dp))
}

#[cfg(test)]
mod compile_tests;
#[cfg(test)]
mod diff_tests;
#[cfg(test)]
mod maps_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
pub(crate) mod testutil;
