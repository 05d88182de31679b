//! PodTopologySpread scoring with kube-scheduler's system default constraints (a Pod without
//! its own `topologySpreadConstraints`): spread over `kubernetes.io/hostname` with maxSkew 3
//! and over `topology.kubernetes.io/zone` with maxSkew 5, both `ScheduleAnyway`, so they only
//! score and never filter (`pkg/scheduler/framework/plugins/podtopologyspread/scoring.go`).

use std::collections::HashMap;

use super::filter::node_affinity;
use super::framework::{HOSTNAME_LABEL, NodeInfo, PodInfo, ZONE_LABEL};

/// One default constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constraint {
    /// The Node label whose values are the domains.
    pub topology_key: &'static str,
    /// How uneven the domains may be.
    pub max_skew: i64,
}

/// kube-scheduler's `systemDefaultConstraints`.
pub const DEFAULT_CONSTRAINTS: [Constraint; 2] = [
    Constraint {
        topology_key: HOSTNAME_LABEL,
        max_skew: 3,
    },
    Constraint {
        topology_key: ZONE_LABEL,
        max_skew: 5,
    },
];

/// What scoring one Pod needs, computed once over the feasible Nodes (its `PreScore`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpreadState {
    /// The Pod's spread group (see [`super::framework::spread_group`]).
    pub group: String,
    /// Per constraint: `ln(domains + 2)`, so a constraint over many domains weighs more.
    pub weights: [f64; 2],
    /// Matching Pods per zone, over the zones of the feasible Nodes.
    pub zone_counts: HashMap<String, i64>,
}

/// kube-scheduler's `topologyNormalizingWeight`.
pub fn normalizing_weight(domains: usize) -> f64 {
    ((domains + 2) as f64).ln()
}

/// The PreScore state, or None when the Pod belongs to no group (nothing to spread it
/// against; kube-scheduler skips the plugin then). Zones are counted over every Node that
/// matches the Pod's node selector and required affinity (the default `nodeAffinityPolicy:
/// Honor`), not just the feasible ones.
pub fn pre_score(
    pod: &PodInfo<'_>,
    feasible: &[&NodeInfo],
    all: &[NodeInfo],
) -> Option<SpreadState> {
    let group = pod.usage.group.clone()?;
    let hosts = feasible
        .iter()
        .filter(|n| n.label(HOSTNAME_LABEL).is_some())
        .count();
    let mut zone_counts: HashMap<String, i64> = feasible
        .iter()
        .filter_map(|n| n.label(ZONE_LABEL))
        .map(|z| (z.to_string(), 0))
        .collect();
    if !zone_counts.is_empty() {
        for n in all {
            let Some(zone) = n.label(ZONE_LABEL) else {
                continue;
            };
            let Some(c) = zone_counts.get_mut(zone) else {
                continue;
            };
            let matching = n.usage.groups.get(&group).copied().unwrap_or(0);
            if matching > 0 && node_affinity(pod.pod, n).is_ok() {
                *c += i64::from(matching);
            }
        }
    }
    Some(SpreadState {
        group,
        weights: [
            normalizing_weight(hosts),
            normalizing_weight(zone_counts.len()),
        ],
        zone_counts,
    })
}

/// kube-scheduler's `scoreForCount`: matching Pods weighted, plus `maxSkew - 1` so a higher
/// skew tolerance flattens the differences.
fn score_for_count(count: i64, max_skew: i64, weight: f64) -> f64 {
    count as f64 * weight + (max_skew - 1) as f64
}

/// The raw score of `n` (lower is better until [`normalize`] reverses it).
pub fn raw_score(s: &SpreadState, n: &NodeInfo) -> i64 {
    let mut score = 0.0;
    for (i, c) in DEFAULT_CONSTRAINTS.iter().enumerate() {
        let Some(value) = n.label(c.topology_key) else {
            continue;
        };
        let count = if c.topology_key == HOSTNAME_LABEL {
            i64::from(n.usage.groups.get(&s.group).copied().unwrap_or(0))
        } else {
            s.zone_counts.get(value).copied().unwrap_or(0)
        };
        score += score_for_count(count, c.max_skew, s.weights[i]);
    }
    score.round() as i64
}

/// Maps raw scores onto 0..=100, fewest matching Pods highest (its `NormalizeScore`).
pub fn normalize(scores: &mut [i64]) {
    let min = scores.iter().copied().min().unwrap_or(0);
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max == 0 {
            super::score::MAX_NODE_SCORE
        } else {
            super::score::MAX_NODE_SCORE * (max + min - *s) / max
        };
    }
}
