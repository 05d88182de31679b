//! Filter plugins: each decides whether one Pod may run on one Node, and says why not in the
//! words `kubectl describe` users know from Kubernetes' scheduler.

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use super::framework::{NodeInfo, PodInfo, tolerations};
use super::resources::{Resources, pod_requests};

/// A filter's verdict: Ok, or the reason the Node does not fit.
pub type Verdict = Result<(), String>;

/// A filter plugin, given the Pod with what was computed of it once per cycle.
pub type Filter = fn(&PodInfo<'_>, &NodeInfo) -> Verdict;

/// Every filter, in the order they run.
pub const FILTERS: [(&str, Filter); 5] = [
    ("NodeReady", |p, n| node_ready(p.pod, n)),
    ("NodeUnschedulable", |p, n| node_unschedulable(p.pod, n)),
    ("NodeResourcesFit", |p, n| fits(&p.usage.requested, n)),
    ("NodeAffinity", |p, n| node_affinity(p.pod, n)),
    ("TaintToleration", |p, n| taint_toleration(p.pod, n)),
];

/// The taint key for cordoned Nodes.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The Node's Ready condition is True.
pub fn node_ready(_pod: &Pod, n: &NodeInfo) -> Verdict {
    if n.ready {
        Ok(())
    } else {
        Err("node(s) were not ready".into())
    }
}

/// A cordoned Node takes only Pods tolerating `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(pod: &Pod, n: &NodeInfo) -> Verdict {
    let cordoned = n
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taint = Taint {
        key: UNSCHEDULABLE_TAINT.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if !cordoned || tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
        Ok(())
    } else {
        Err("node(s) were unschedulable".into())
    }
}

/// The Pod's requests fit what the Node has left: CPU, memory and the Pod count.
pub fn resources_fit(pod: &Pod, n: &NodeInfo) -> Verdict {
    fits(&pod_requests(pod, false), n)
}

/// Requests `want` fit what the Node has left.
pub fn fits(want: &Resources, n: &NodeInfo) -> Verdict {
    let used = &n.usage.requested;
    let a = &n.allocatable;
    let cpu_short = want.cpu_milli > 0
        && a.cpu_milli
            .is_some_and(|c| used.cpu_milli + want.cpu_milli > c);
    let mem_short = want.memory > 0 && a.memory.is_some_and(|m| used.memory + want.memory > m);
    let pods_short = used.pods + 1 > a.pods;
    if !(cpu_short || mem_short || pods_short) {
        return Ok(());
    }
    let mut lacking = Vec::new();
    if pods_short {
        lacking.push("Too many pods");
    }
    if cpu_short {
        lacking.push("Insufficient cpu");
    }
    if mem_short {
        lacking.push("Insufficient memory");
    }
    if lacking.is_empty() {
        Ok(())
    } else {
        Err(lacking.join(", "))
    }
}

/// spec.nodeSelector and the required node affinity terms match the Node.
pub fn node_affinity(pod: &Pod, n: &NodeInfo) -> Verdict {
    let spec = pod.spec.as_ref();
    let empty = std::collections::BTreeMap::new();
    let labels = n.node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let name = n.name.as_str();
    // Terms are ORed; an empty term list matches no Node.
    let affinity_ok = required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, name))
    });
    if selector_ok && affinity_ok {
        Ok(())
    } else {
        Err("node(s) didn't match Pod's node affinity/selector".into())
    }
}

/// A NodeSelectorTerm: its expressions and fields are ANDed; an empty term matches nothing.
pub fn term_matches(
    term: &NodeSelectorTerm,
    labels: &std::collections::BTreeMap<String, String>,
    node_name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|e| requirement_matches(e, labels.get(&e.key).map(String::as_str)))
        && fields
            .iter()
            .all(|f| f.key == "metadata.name" && requirement_matches(f, Some(node_name)))
}

/// One requirement against the value of its key (None when the Node lacks the label).
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let as_int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(as_int), values.first().and_then(|x| as_int(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(as_int), values.first().and_then(|x| as_int(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// Whether `t` tolerates `taint` (Kubernetes' `Toleration.ToleratesTaint`): an empty key with
/// Exists tolerates everything, an empty effect every effect, Exists any value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or_default();
    let key_ok = key.is_empty() || key == taint.key;
    let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    };
    effect_ok && key_ok && value_ok
}

/// Every NoSchedule and NoExecute taint of the Node is tolerated (PreferNoSchedule only
/// matters to scoring).
pub fn taint_toleration(pod: &Pod, n: &NodeInfo) -> Verdict {
    let taints = n
        .node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations(pod).iter().any(|t| tolerates(t, taint)));
    match untolerated {
        None => Ok(()),
        Some(t) => Err(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or_default()
        )),
    }
}

/// Runs every filter; the first failure is the Node's reason.
pub fn run_filters(pod: &PodInfo<'_>, n: &NodeInfo) -> Verdict {
    FILTERS.iter().try_for_each(|(_, f)| f(pod, n))
}
