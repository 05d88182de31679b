//! Score plugins of the default profile: each rates a feasible Node for a Pod, then its
//! normalisation maps the ratings of all feasible Nodes onto 0..=100; the Node with the highest
//! weighted sum wins. Weights are kube-scheduler's defaults
//! (`pkg/scheduler/apis/config/v1/default_plugins.go`).

use super::filter::term_matches;
use super::framework::{NodeInfo, PodInfo};
use super::resources::Resources;
use super::spread::{self, SpreadState};
use crate::scheduler::filter::tolerates;

/// The best score a plugin gives (kube-scheduler's `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// What the score plugins share for one Pod, computed once per cycle (their `PreScore`).
#[derive(Debug)]
pub struct ScoreContext<'a> {
    /// The Pod.
    pub pod: PodInfo<'a>,
    /// Topology spread state, None when the Pod spreads against no group.
    pub spread: Option<SpreadState>,
}

/// A plugin's raw score of one Node.
pub type ScoreFn = fn(&ScoreContext<'_>, &NodeInfo) -> i64;
/// A plugin's normalisation of the raw scores of every feasible Node.
pub type NormalizeFn = fn(&ScoreContext<'_>, &mut [i64]);

/// A score plugin with its weight.
#[derive(Debug, Clone, Copy)]
pub struct ScorePlugin {
    /// kube-scheduler's name of the plugin.
    pub name: &'static str,
    /// Raw score.
    pub score: ScoreFn,
    /// Normalisation, if the plugin has one.
    pub normalize: Option<NormalizeFn>,
    /// Its weight in the sum.
    pub weight: i64,
}

/// The default profile's score plugins.
pub const SCORES: [ScorePlugin; 5] = [
    ScorePlugin {
        name: "TaintToleration",
        score: intolerable_prefer_no_schedule,
        normalize: Some(|_, s| default_normalize(s, true)),
        weight: 3,
    },
    ScorePlugin {
        name: "NodeAffinity",
        score: preferred_affinity,
        normalize: Some(|_, s| default_normalize(s, false)),
        weight: 2,
    },
    ScorePlugin {
        name: "NodeResourcesFit",
        score: least_allocated,
        normalize: None,
        weight: 1,
    },
    ScorePlugin {
        name: "PodTopologySpread",
        score: topology_spread,
        normalize: Some(|c, s| {
            if c.spread.is_some() {
                spread::normalize(s)
            }
        }),
        weight: 2,
    },
    ScorePlugin {
        name: "NodeResourcesBalancedAllocation",
        score: balanced_allocation,
        normalize: None,
        weight: 1,
    },
];

/// kube-scheduler's `DefaultNormalizeScore`: scales onto 0..=100 against the highest score,
/// reversed (highest becomes 0) for plugins that count what is bad.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        if max == 0 {
            if reverse {
                *s = MAX_NODE_SCORE;
            }
            continue;
        }
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// The PreferNoSchedule taints of the Node the Pod does not tolerate (TaintToleration's raw
/// score; normalised in reverse, so fewer is better).
pub fn intolerable_prefer_no_schedule(c: &ScoreContext<'_>, n: &NodeInfo) -> i64 {
    let tolerations = c.pod.tolerations();
    n.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .count() as i64
}

/// The sum of the weights of the preferred node affinity terms the Node matches.
pub fn preferred_affinity(c: &ScoreContext<'_>, n: &NodeInfo) -> i64 {
    let terms = c
        .pod
        .pod
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
    let empty = Default::default();
    let labels = n.node.metadata.labels.as_ref().unwrap_or(&empty);
    terms
        .iter()
        .filter(|t| term_matches(&t.preference, labels, &n.name))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// What the Node would have requested with the Pod on it, with the scoring defaults.
fn with_pod(c: &ScoreContext<'_>, n: &NodeInfo, non_zero: bool) -> Resources {
    if non_zero {
        n.usage
            .requested_non_zero
            .plus(c.pod.usage.requested_non_zero)
    } else {
        n.usage.requested.plus(c.pod.usage.requested)
    }
}

/// NodeResourcesFit with its default `LeastAllocated` strategy: the share of CPU and memory
/// left after placing the Pod, averaged (unset requests count as 100m CPU and 200 MiB, so Pods
/// that request nothing still spread). A resource the Node does not report scores 50.
pub fn least_allocated(c: &ScoreContext<'_>, n: &NodeInfo) -> i64 {
    let used = with_pod(c, n, true);
    let free = |cap: Option<i64>, used: i64| match cap {
        Some(cap) if cap > 0 => ((cap - used).max(0) * MAX_NODE_SCORE) / cap,
        Some(_) => 0,
        None => MAX_NODE_SCORE / 2,
    };
    (free(n.allocatable.cpu_milli, used.cpu_milli) + free(n.allocatable.memory, used.memory)) / 2
}

/// NodeResourcesBalancedAllocation: favours Nodes whose CPU and memory would be used in the
/// same proportion after placing the Pod, `(1 - |cpu share - memory share| / 2) * 100`
/// (`balancedResourceScorer` with two resources; shares capped at 1, actual requests).
pub fn balanced_allocation(c: &ScoreContext<'_>, n: &NodeInfo) -> i64 {
    let used = with_pod(c, n, false);
    let share = |cap: Option<i64>, used: i64| {
        cap.filter(|&c| c > 0)
            .map(|c| (used as f64 / c as f64).min(1.0))
    };
    let shares: Vec<f64> = [
        share(n.allocatable.cpu_milli, used.cpu_milli),
        share(n.allocatable.memory, used.memory),
    ]
    .into_iter()
    .flatten()
    .collect();
    let std = match shares.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// PodTopologySpread's raw score (see [`spread::raw_score`]); 0 when the Pod has no group.
pub fn topology_spread(c: &ScoreContext<'_>, n: &NodeInfo) -> i64 {
    c.spread.as_ref().map_or(0, |s| spread::raw_score(s, n))
}

/// The weighted, normalised sum of every plugin for each of `feasible`, in its order.
pub fn score_all(c: &ScoreContext<'_>, feasible: &[&NodeInfo]) -> Vec<i64> {
    let mut total = vec![0i64; feasible.len()];
    let mut scores = vec![0i64; feasible.len()];
    for p in &SCORES {
        for (s, n) in scores.iter_mut().zip(feasible) {
            *s = (p.score)(c, n);
        }
        if let Some(norm) = p.normalize {
            norm(c, &mut scores);
        }
        for (t, s) in total.iter_mut().zip(&scores) {
            *t += s * p.weight;
        }
    }
    total
}
