//! The scheduler: binds pending Pods to Ready Nodes through `pods/binding`, the way
//! kube-scheduler does at scale. A pure [`schedule`] runs the filter plugins ([`filter`]) over
//! Nodes of the incremental [`cache`] until it has found a share of feasible ones
//! ([`num_feasible_nodes_to_find`]), scores those with the default profile's plugins
//! ([`score`], [`spread`]) and picks the best, rotating among equal scores; the loop
//! ([`worker`]) assumes the Pod on that Node and binds it asynchronously. Pods that fit nowhere
//! get `PodScheduled=False` (reason Unschedulable) and are tried again when a Node changes or
//! a Pod frees capacity.

pub mod cache;
pub mod filter;
pub mod framework;
pub mod queue;
pub mod resources;
pub mod score;
pub mod spread;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::controllers::objects::{is_terminating, pod_is_terminal};
pub use framework::{NodeInfo, PodInfo};
pub use worker::{BIND_CONCURRENCY, run};

/// The scheduler name this scheduler answers to.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Errors of the scheduler loop.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A watch, the binder or the scheduling thread stopped.
    #[error("scheduler task {0} stopped")]
    Stopped(&'static str),
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

/// Below this many Nodes every Node is examined (kube-scheduler's `minFeasibleNodesToFind`).
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive share never goes below this percentage (its
/// `minFeasibleNodesPercentageToFind`).
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// How many feasible Nodes to find before scoring (kube-scheduler's `numFeasibleNodesToFind`
/// with `percentageOfNodesToScore` unset): all of them below 100 Nodes, otherwise
/// `50 - nodes/125` percent of them, at least 5 % and at least 100 Nodes.
pub fn num_feasible_nodes_to_find(all: usize, percentage: Option<usize>) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let pct = match percentage {
        Some(p) if p > 0 => p,
        _ => (50usize.saturating_sub(all / 125)).max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND),
    };
    if pct >= 100 {
        return all;
    }
    (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// What carries over from one scheduling cycle to the next: where the search for feasible
/// Nodes starts (kube-scheduler's `nextStartNodeIndex`, so every Node gets its turn when only a
/// share is examined) and the count that rotates among equal top scores.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Index of the Node the next search starts at.
    pub next_start: usize,
    /// Cycles that picked among ties so far.
    pub ties: u64,
}

/// The index of the highest score; among equal ones, the next in turn. kube-scheduler picks
/// uniformly at random among ties (`selectHost`); a rotation spreads identical Pods as evenly
/// and is reproducible.
pub fn select_host(scores: &[i64], ties: &mut u64) -> Option<usize> {
    let best = *scores.iter().max()?;
    let top: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] == best).collect();
    if top.len() == 1 {
        return Some(top[0]);
    }
    let pick = top[(*ties % top.len() as u64) as usize];
    *ties = ties.wrapping_add(1);
    Some(pick)
}

/// Places `pod` on one of `nodes`: from `cursor.next_start` on, runs the filters until
/// [`num_feasible_nodes_to_find`] Nodes pass (or every Node was tried), scores those and picks
/// the best.
pub fn schedule(pod: &Pod, nodes: &[NodeInfo], cursor: &mut Cursor) -> Decision {
    let info = PodInfo::new(pod);
    let total = nodes.len();
    let want = num_feasible_nodes_to_find(total, None);
    let start = if total == 0 {
        0
    } else {
        cursor.next_start % total
    };
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want);
    let mut processed = 0;
    while processed < total && feasible.len() < want {
        let n = &nodes[(start + processed) % total];
        processed += 1;
        match filter::run_filters(&info, n) {
            Ok(()) => feasible.push(n),
            Err(why) => {
                for r in why.split(", ") {
                    *reasons.entry(r.to_string()).or_default() += 1;
                }
            }
        }
    }
    if total > 0 {
        cursor.next_start = (start + processed) % total;
    }
    match feasible.len() {
        0 => {
            let detail: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            Decision::Unschedulable(if detail.is_empty() {
                format!("0/{total} nodes are available.")
            } else {
                format!("0/{total} nodes are available: {}.", detail.join(", "))
            })
        }
        // One feasible Node needs no scoring (as in kube-scheduler's `schedulePod`).
        1 => Decision::Bind(feasible[0].name.clone()),
        _ => {
            let spread = spread::pre_score(&info, &feasible, nodes);
            let ctx = score::ScoreContext { pod: info, spread };
            let scores = score::score_all(&ctx, &feasible);
            let i = select_host(&scores, &mut cursor.ties).unwrap_or(0);
            Decision::Bind(feasible[i].name.clone())
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
