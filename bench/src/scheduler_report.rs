//! The `scheduler` benchmark's figures from its raw observations (when each Pod's create was
//! sent, when the watch showed it bound and to which Node), its table with the goals and its
//! `BENCH_JSON` line.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

/// Goal of issue 10: Pods bound per second from the first create to the last bind.
pub const GOAL_PODS_PER_S: f64 = 2000.0;
/// Goal of issue 10: no Node above this many times the mean when all Pods are alike.
pub const GOAL_MAX_OVER_MEAN: f64 = 1.5;

/// The scheduler before the incremental cache, as issue 10 measured it on this machine's kind
/// (1,000 Ready Nodes, 5,000 Pods created in 4 s, all bound after 109 s on 157 Nodes, 8 to 32
/// each).
pub const BEFORE: Before = Before {
    nodes: 1000,
    pods: 5000,
    bound_after_s: 109.0,
    nodes_used: 157,
    min_used: 8,
    max: 32,
};

/// The figures the issue gives for the scheduler before this change.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    pub nodes: usize,
    pub pods: usize,
    pub bound_after_s: f64,
    pub nodes_used: usize,
    /// Fewest Pods on a Node that got any.
    pub min_used: usize,
    pub max: usize,
}

impl Before {
    pub fn pods_per_s(&self) -> f64 {
        self.pods as f64 / self.bound_after_s
    }

    pub fn max_over_mean(&self) -> f64 {
        self.max as f64 / (self.pods as f64 / self.nodes as f64)
    }
}

/// What one run observed.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Which build ran (e.g. "this branch", "main").
    pub label: String,
    pub nodes: usize,
    /// Per Pod, from the first create sent: when its create was sent and when it was answered.
    pub create_sent: Vec<Duration>,
    pub create_done: Vec<Duration>,
    /// Per Pod, from the first create sent: when the watch showed it bound (None: never).
    pub bound_at: Vec<Option<Duration>>,
    /// Per Pod: the Node it was bound to.
    pub bound_to: Vec<Option<String>>,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub label: String,
    pub nodes: usize,
    pub pods: usize,
    pub bound: usize,
    /// First create sent to the last create answered.
    pub created_in: Duration,
    /// First create sent to the last bind seen.
    pub all_bound_after: Duration,
    pub pods_per_s: f64,
    /// Creates answered per second (the ceiling of `pods_per_s`).
    pub creates_per_s: f64,
    /// Create sent to bound seen, per Pod.
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    /// Pods per Node over every Node (those with none count 0).
    pub per_node_min: usize,
    pub per_node_max: usize,
    pub per_node_mean: f64,
    pub nodes_used: usize,
}

impl Figures {
    pub fn max_over_mean(&self) -> f64 {
        if self.per_node_mean > 0.0 {
            self.per_node_max as f64 / self.per_node_mean
        } else {
            0.0
        }
    }

    pub fn meets_rate(&self) -> bool {
        self.bound == self.pods && self.pods_per_s >= GOAL_PODS_PER_S
    }

    pub fn meets_spread(&self) -> bool {
        self.bound == self.pods && self.max_over_mean() <= GOAL_MAX_OVER_MEAN
    }
}

/// The `q`-quantile (0..=1) of sorted `v` by nearest rank.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Reduces one run's observations to its figures.
pub fn figures(o: &Observed) -> Figures {
    let pods = o.create_sent.len();
    let created_in = o.create_done.iter().max().copied().unwrap_or_default();
    let bound: Vec<Duration> = o.bound_at.iter().flatten().copied().collect();
    let all_bound_after = bound.iter().max().copied().unwrap_or_default();
    let mut latency: Vec<Duration> = o
        .bound_at
        .iter()
        .zip(&o.create_sent)
        .filter_map(|(b, s)| b.map(|b| b.saturating_sub(*s)))
        .collect();
    latency.sort();
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for n in o.bound_to.iter().flatten() {
        *per_node.entry(n.as_str()).or_default() += 1;
    }
    let nodes_used = per_node.len();
    let per_node_max = per_node.values().copied().max().unwrap_or(0);
    let per_node_min = if nodes_used < o.nodes {
        0
    } else {
        per_node.values().copied().min().unwrap_or(0)
    };
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    Figures {
        label: o.label.clone(),
        nodes: o.nodes,
        pods,
        bound: bound.len(),
        created_in,
        all_bound_after,
        pods_per_s: if bound.len() == pods {
            pods as f64 / secs(all_bound_after)
        } else {
            0.0
        },
        creates_per_s: pods as f64 / secs(created_in),
        latency_p50: quantile(&latency, 0.50),
        latency_p99: quantile(&latency, 0.99),
        latency_max: latency.last().copied().unwrap_or_default(),
        per_node_min,
        per_node_max,
        per_node_mean: bound.len() as f64 / o.nodes.max(1) as f64,
        nodes_used,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The table, as it goes into docs/benchmarks.md.
pub fn table(runs: &[Figures]) -> String {
    let b = BEFORE;
    let mut out = String::new();
    out.push_str(
        "| run | Nodes | Pods | created in | all bound after | Pods/s (goal ≥ 2,000) | ratio to before | p50 / p99 create → bound | Pods per Node min / mean / max | max ÷ mean (goal ≤ 1.5) | Nodes used |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    out.push_str(&format!(
        "| before (issue 10) | {} | {} | 4 s | {:.0} s | {:.0} | 1.0× | — | 0 / {:.1} / {} ({} to {} on the Nodes used) | {:.1} | {} |\n",
        b.nodes,
        b.pods,
        b.bound_after_s,
        b.pods_per_s(),
        b.pods as f64 / b.nodes as f64,
        b.max,
        b.min_used,
        b.max,
        b.max_over_mean(),
        b.nodes_used,
    ));
    for f in runs {
        let bound = if f.bound == f.pods {
            format!("{:.1} s", f.all_bound_after.as_secs_f64())
        } else {
            format!("{} of {} bound", f.bound, f.pods)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} s ({:.0}/s) | {} | {:.0} ({}) | {:.1}× | {} / {} | {} / {:.1} / {} | {:.2} ({}) | {} |\n",
            f.label,
            f.nodes,
            f.pods,
            f.created_in.as_secs_f64(),
            f.creates_per_s,
            bound,
            f.pods_per_s,
            mark(f.meets_rate()),
            f.pods_per_s / b.pods_per_s(),
            ms(f.latency_p50),
            ms(f.latency_p99),
            f.per_node_min,
            f.per_node_mean,
            f.per_node_max,
            f.max_over_mean(),
            mark(f.meets_spread()),
            f.nodes_used,
        ));
    }
    out
}

/// The machine-readable line.
pub fn bench_json(runs: &[Figures]) -> Value {
    let b = BEFORE;
    json!({
        "bench": "scheduler",
        "goals": {"pods_per_s": GOAL_PODS_PER_S, "max_over_mean": GOAL_MAX_OVER_MEAN},
        "before": {
            "source": "issue 10",
            "nodes": b.nodes, "pods": b.pods, "bound_after_s": b.bound_after_s,
            "pods_per_s": b.pods_per_s(), "nodes_used": b.nodes_used, "per_node_max": b.max,
            "max_over_mean": b.max_over_mean(),
        },
        "runs": runs.iter().map(|f| json!({
            "label": f.label,
            "nodes": f.nodes,
            "pods": f.pods,
            "bound": f.bound,
            "created_in_s": f.created_in.as_secs_f64(),
            "creates_per_s": f.creates_per_s,
            "all_bound_after_s": f.all_bound_after.as_secs_f64(),
            "pods_per_s": f.pods_per_s,
            "ratio_to_before": f.pods_per_s / b.pods_per_s(),
            "latency_p50_ms": f.latency_p50.as_secs_f64() * 1000.0,
            "latency_p99_ms": f.latency_p99.as_secs_f64() * 1000.0,
            "latency_max_ms": f.latency_max.as_secs_f64() * 1000.0,
            "per_node_min": f.per_node_min,
            "per_node_mean": f.per_node_mean,
            "per_node_max": f.per_node_max,
            "max_over_mean": f.max_over_mean(),
            "nodes_used": f.nodes_used,
            "meets_rate": f.meets_rate(),
            "meets_spread": f.meets_spread(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(s).collect();
        assert_eq!(quantile(&v, 0.5), s(50));
        assert_eq!(quantile(&v, 0.99), s(99));
        assert_eq!(quantile(&v, 1.0), s(100));
        assert_eq!(quantile(&[s(7)], 0.99), s(7));
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn figures_count_every_node_and_time_from_the_first_create() {
        let o = Observed {
            label: "t".into(),
            nodes: 3,
            create_sent: vec![s(0), s(10), s(20), s(30)],
            create_done: vec![s(5), s(15), s(25), s(35)],
            bound_at: vec![Some(s(100)), Some(s(110)), Some(s(120)), Some(s(2000))],
            bound_to: vec![
                Some("a".into()),
                Some("a".into()),
                Some("b".into()),
                Some("a".into()),
            ],
        };
        let f = figures(&o);
        assert_eq!(f.bound, 4);
        assert_eq!(f.created_in, s(35));
        assert_eq!(f.all_bound_after, s(2000));
        assert!((f.pods_per_s - 2.0).abs() < 1e-9);
        assert_eq!(f.latency_max, s(1970));
        assert_eq!((f.per_node_min, f.per_node_max, f.nodes_used), (0, 3, 2));
        assert!((f.max_over_mean() - 3.0 / (4.0 / 3.0)).abs() < 1e-9);
        assert!(!f.meets_spread() && !f.meets_rate());
    }

    #[test]
    fn a_run_with_unbound_pods_meets_no_goal() {
        let o = Observed {
            label: "t".into(),
            nodes: 2,
            create_sent: vec![s(0), s(0)],
            create_done: vec![s(1), s(1)],
            bound_at: vec![Some(s(1)), None],
            bound_to: vec![Some("a".into()), None],
        };
        let f = figures(&o);
        assert_eq!(f.bound, 1);
        assert_eq!(f.pods_per_s, 0.0);
        assert!(!f.meets_rate() && !f.meets_spread());
        assert!(table(&[f]).contains("1 of 2 bound"));
    }

    #[test]
    fn before_is_the_issue_figure() {
        assert_eq!(BEFORE.pods_per_s().round(), 46.0);
        assert!((BEFORE.max_over_mean() - 6.4).abs() < 1e-9);
    }
}
