//! Score plugins: each rates a feasible Node for a Pod from 0 to 100; the Node with the highest
//! weighted sum wins.

use k8s_openapi::api::core::v1::Pod;

use super::NodeInfo;
use super::filter::{term_matches, tolerates};
use super::resources::{allocatable, pod_requests};
use crate::controllers::objects::controller_ref;

/// A score plugin: the Pod, the Node, and every feasible Node (for relative scores).
pub type Score = fn(&Pod, &NodeInfo<'_>, &[&NodeInfo<'_>]) -> i64;

/// Every score plugin with its weight.
pub const SCORES: [(&str, Score, i64); 4] = [
    ("NodeResourcesLeastAllocated", least_allocated, 1),
    ("OwnerSpread", owner_spread, 1),
    ("TaintToleration", prefer_no_schedule, 1),
    ("NodeAffinity", preferred_affinity, 1),
];

/// Fewer untolerated PreferNoSchedule taints, higher score (Kubernetes' TaintToleration score,
/// normalised against the worst feasible Node).
pub fn prefer_no_schedule(pod: &Pod, n: &NodeInfo<'_>, all: &[&NodeInfo<'_>]) -> i64 {
    let count = |n: &NodeInfo<'_>| {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        n.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
            .count() as i64
    };
    let max = all.iter().map(|o| count(o)).max().unwrap_or(0);
    if max == 0 {
        100
    } else {
        (max - count(n)) * 100 / max
    }
}

/// The weights of the preferred node affinity terms the Node matches, normalised against the
/// best feasible Node (Kubernetes' NodeAffinity score).
pub fn preferred_affinity(pod: &Pod, n: &NodeInfo<'_>, all: &[&NodeInfo<'_>]) -> i64 {
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    if terms.is_empty() {
        return 0;
    }
    let sum = |n: &NodeInfo<'_>| {
        let labels = n.node.metadata.labels.clone().unwrap_or_default();
        let name = n.node.metadata.name.as_deref().unwrap_or_default();
        terms
            .iter()
            .filter(|t| term_matches(&t.preference, &labels, name))
            .map(|t| i64::from(t.weight))
            .sum::<i64>()
    };
    let max = all.iter().map(|o| sum(o)).max().unwrap_or(0);
    if max <= 0 { 0 } else { sum(n) * 100 / max }
}

/// Favours Nodes with the most CPU and memory left after placing the Pod (Kubernetes'
/// `LeastAllocated` strategy, with its non-zero defaults for Pods that request nothing so empty
/// Pods still spread). A resource the Node does not report scores 50.
pub fn least_allocated(pod: &Pod, n: &NodeInfo<'_>, _all: &[&NodeInfo<'_>]) -> i64 {
    let want = pod_requests(pod, true);
    let (cpu, mem, _) = allocatable(n.node);
    let free = |cap: Option<i64>, used: i64| match cap {
        Some(c) if c > 0 => ((c - used).max(0) * 100) / c,
        Some(_) => 0,
        None => 50,
    };
    (free(cpu, n.requested_non_zero.cpu_milli + want.cpu_milli)
        + free(mem, n.requested_non_zero.memory + want.memory))
        / 2
}

/// The number of Pods on `n` with the same controller as `pod`.
pub fn siblings_on(pod: &Pod, n: &NodeInfo<'_>) -> i64 {
    let Some(owner) = controller_ref(&pod.metadata) else {
        return 0;
    };
    n.pods
        .iter()
        .filter(|p| p.metadata.uid != pod.metadata.uid)
        .filter(|p| controller_ref(&p.metadata).is_some_and(|r| r.uid == owner.uid))
        .count() as i64
}

/// Spreads the Pods of one owner (ReplicaSet, ...) across Nodes: fewer siblings, higher score
/// (Kubernetes' former `SelectorSpread`).
pub fn owner_spread(pod: &Pod, n: &NodeInfo<'_>, all: &[&NodeInfo<'_>]) -> i64 {
    let max = all.iter().map(|o| siblings_on(pod, o)).max().unwrap_or(0);
    if max == 0 {
        return 100;
    }
    (max - siblings_on(pod, n)) * 100 / max
}

/// The weighted sum of every score plugin.
pub fn total(pod: &Pod, n: &NodeInfo<'_>, all: &[&NodeInfo<'_>]) -> i64 {
    SCORES.iter().map(|(_, f, w)| f(pod, n, all) * w).sum()
}
