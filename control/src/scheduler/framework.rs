//! What the filter and score plugins see: a Node with the totals of the Pods on it
//! ([`NodeInfo`], kube-scheduler's `framework.NodeInfo`) and a Pod with what the plugins need
//! of it computed once per scheduling cycle ([`PodInfo`], its `PreFilter`/`PreScore` state).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Toleration};

use super::resources::{Resources, allocatable, pod_requests};
use crate::controllers::objects::controller_ref;

/// The label PodTopologySpread's default hostname constraint spreads over.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The label its default zone constraint spreads over.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Node's allocatable resources (see [`allocatable`]): unknown CPU or memory is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    /// Millicores, None when the Node reports none.
    pub cpu_milli: Option<i64>,
    /// Bytes, None when the Node reports none.
    pub memory: Option<i64>,
    /// Pods the Node takes.
    pub pods: i64,
}

/// The totals of the Pods on a Node (bound, or assumed while their binding is in flight).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of their requests (the Pod count in `pods`).
    pub requested: Resources,
    /// Sum of their requests with the scoring defaults for unset ones.
    pub requested_non_zero: Resources,
    /// Pods per spread group (the uid of their controller): what the default topology spread
    /// constraints count.
    pub groups: HashMap<String, u32>,
}

impl Usage {
    /// Counts one more Pod.
    pub fn add(&mut self, p: &PodUsage) {
        self.requested = self.requested.plus(p.requested);
        self.requested_non_zero = self.requested_non_zero.plus(p.requested_non_zero);
        if let Some(g) = &p.group {
            *self.groups.entry(g.clone()).or_default() += 1;
        }
    }

    /// Counts one Pod less (one that [`Usage::add`] counted).
    pub fn remove(&mut self, p: &PodUsage) {
        self.requested = self.requested.minus(p.requested);
        self.requested_non_zero = self.requested_non_zero.minus(p.requested_non_zero);
        if let Some(g) = &p.group
            && let Some(c) = self.groups.get_mut(g)
        {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.groups.remove(g);
            }
        }
    }

    /// True when no Pod is counted.
    pub fn is_empty(&self) -> bool {
        self.requested.pods == 0
    }
}

/// What one Pod adds to its Node's [`Usage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// Its requests.
    pub requested: Resources,
    /// Its requests with the scoring defaults.
    pub requested_non_zero: Resources,
    /// Its spread group, see [`spread_group`].
    pub group: Option<String>,
}

impl PodUsage {
    /// What `pod` counts for.
    pub fn of(pod: &Pod) -> Self {
        Self {
            requested: pod_requests(pod, false),
            requested_non_zero: pod_requests(pod, true),
            group: spread_group(pod),
        }
    }
}

/// The group the default topology spread constraints count a Pod in: kube-scheduler builds
/// their selector from the Services, ReplicaSets, ReplicationControllers and StatefulSets that
/// select the Pod (`helper.DefaultSelector`); here it is the Pod's controller, which selects
/// exactly its own Pods. Namespaced, as the selector is. None: the Pod is spread by nothing.
pub fn spread_group(pod: &Pod) -> Option<String> {
    controller_ref(&pod.metadata).map(|r| r.uid.clone())
}

/// A Node as the plugins see it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The Node.
    pub node: Arc<Node>,
    /// Its name.
    pub name: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// What it can take.
    pub allocatable: Allocatable,
    /// What its Pods take.
    pub usage: Usage,
}

impl NodeInfo {
    /// `node` running `pods` (terminal Pods are the caller's to leave out).
    pub fn new(node: &Node, pods: Vec<&Pod>) -> Self {
        let mut info = Self::empty(Arc::new(node.clone()));
        for p in pods {
            info.usage.add(&PodUsage::of(p));
        }
        info
    }

    /// `node` with no Pods.
    pub fn empty(node: Arc<Node>) -> Self {
        let (cpu_milli, memory, pods) = allocatable(&node);
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready,
            allocatable: Allocatable {
                cpu_milli,
                memory,
                pods,
            },
            usage: Usage::default(),
            node,
        }
    }

    /// The value of one of the Node's labels.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }
}

/// A Pod with what the plugins ask of it, computed once per scheduling cycle.
#[derive(Debug, Clone)]
pub struct PodInfo<'a> {
    /// The Pod.
    pub pod: &'a Pod,
    /// What it adds to a Node.
    pub usage: PodUsage,
}

impl<'a> PodInfo<'a> {
    /// Computes what the plugins need of `pod`.
    pub fn new(pod: &'a Pod) -> Self {
        Self {
            pod,
            usage: PodUsage::of(pod),
        }
    }

    /// Its tolerations.
    pub fn tolerations(&self) -> &'a [Toleration] {
        tolerations(self.pod)
    }
}

/// A Pod's tolerations.
pub fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}
