//! The scheduler's cache: every Node with the totals of its Pods, kept current by watch events
//! instead of rebuilt for each Pod, and the Pods the scheduler has *assumed* on a Node while
//! their binding is in flight (kube-scheduler's `pkg/scheduler/backend/cache`: `AssumePod`,
//! `ForgetPod`, and `AddPod` confirming an assumed Pod).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::framework::{NodeInfo, PodUsage, Usage};
use crate::controllers::objects::pod_is_terminal;

/// What the cache remembers of one Pod it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRecord {
    node: String,
    usage: PodUsage,
    /// Placed by this scheduler; the store does not show the binding yet.
    assumed: bool,
}

/// Nodes and the Pods counted on them.
#[derive(Debug, Default)]
pub struct Cache {
    /// The Nodes, in the order they came (the scheduler walks them round-robin from here).
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Totals of Pods bound to Nodes the cache does not know (yet): they count once the Node
    /// appears, as kube-scheduler keeps a NodeInfo without a Node for them.
    absent: HashMap<String, Usage>,
    /// Pods by uid.
    pods: HashMap<String, PodRecord>,
}

/// The Node a Pod is bound to, if any.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// Whether two versions of a Node differ in what scheduling looks at (kube-scheduler moves
/// unschedulable Pods back to the active queue only for such changes).
pub fn scheduling_changed(old: &NodeInfo, new: &NodeInfo) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.unschedulable, s.taints.clone()));
    old.ready != new.ready
        || old.allocatable != new.allocatable
        || old.node.metadata.labels != new.node.metadata.labels
        || spec(&old.node) != spec(&new.node)
}

impl Cache {
    /// A cache of `nodes` running `pods` (for tests and tools; the scheduler builds its cache
    /// from events).
    pub fn from_objects(nodes: &[&Node], pods: &[&Pod]) -> Self {
        let mut c = Self::default();
        for n in nodes {
            c.set_node(Arc::new((*n).clone()));
        }
        for p in pods {
            c.set_pod(p);
        }
        c
    }

    /// The Nodes with their totals.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// One Node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Number of Pods counted (bound and assumed).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Adds or replaces a Node, keeping what its Pods take. True when the Node is new or
    /// changed in what scheduling looks at.
    pub fn set_node(&mut self, node: Arc<Node>) -> bool {
        let mut info = NodeInfo::empty(node);
        match self.index.get(&info.name) {
            Some(&i) => {
                let old = &mut self.nodes[i];
                info.usage = std::mem::take(&mut old.usage);
                let changed = scheduling_changed(old, &info);
                *old = info;
                changed
            }
            None => {
                info.usage = self.absent.remove(&info.name).unwrap_or_default();
                self.index.insert(info.name.clone(), self.nodes.len());
                self.nodes.push(info);
                true
            }
        }
    }

    /// Removes a Node; Pods still bound to it keep counting for a Node of that name.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let gone = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        if !gone.usage.is_empty() {
            self.absent.insert(gone.name, gone.usage);
        }
    }

    /// Keeps only the Nodes named in `names` (after a re-list).
    pub fn retain_nodes(&mut self, names: &HashSet<String>) {
        let stale: Vec<String> = self
            .index
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in stale {
            self.remove_node(&n);
        }
    }

    fn usage_mut(&mut self, node: &str) -> &mut Usage {
        match self.index.get(node) {
            Some(&i) => &mut self.nodes[i].usage,
            None => self.absent.entry(node.to_string()).or_default(),
        }
    }

    fn insert(&mut self, uid: String, rec: PodRecord) {
        self.usage_mut(&rec.node).add(&rec.usage);
        self.pods.insert(uid, rec);
    }

    fn take(&mut self, uid: &str) -> Option<PodRecord> {
        let rec = self.pods.remove(uid)?;
        let usage = self.usage_mut(&rec.node);
        usage.remove(&rec.usage);
        if usage.is_empty() && !self.index.contains_key(&rec.node) {
            self.absent.remove(&rec.node);
        }
        Some(rec)
    }

    /// Applies a Pod as the store shows it: a bound, non-terminal Pod counts on its Node (an
    /// assumed one is confirmed, or moved when it was bound elsewhere); a terminal Pod stops
    /// counting; an unbound one counts only while assumed. True when Node capacity was freed.
    pub fn set_pod(&mut self, pod: &Pod) -> bool {
        let id = uid(pod);
        let want = match bound_node(pod) {
            Some(node) if !pod_is_terminal(pod) => Some(PodRecord {
                node: node.to_string(),
                usage: PodUsage::of(pod),
                assumed: false,
            }),
            Some(_) => None,
            None => {
                // Pending: an assumption stays until the binding shows or fails.
                return false;
            }
        };
        if self.pods.get(id) == want.as_ref() {
            return false;
        }
        let old = self.take(id);
        let freed = match (&old, &want) {
            (Some(_), None) => true,
            (Some(o), Some(w)) => o.node != w.node || o.usage != w.usage,
            (None, _) => false,
        };
        if let Some(rec) = want {
            self.insert(id.to_string(), rec);
        }
        freed
    }

    /// Stops counting a deleted Pod. True when it was counted.
    pub fn remove_pod(&mut self, pod: &Pod) -> bool {
        self.take(uid(pod)).is_some()
    }

    /// Keeps only Pods whose uid is in `uids` (after a re-list).
    pub fn retain_pods(&mut self, uids: &HashSet<String>) -> bool {
        let stale: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !uids.contains(*u))
            .cloned()
            .collect();
        let freed = !stale.is_empty();
        for u in stale {
            self.take(&u);
        }
        freed
    }

    /// Counts `pod` on `node` before its binding is written, so the next Pod already sees it.
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let id = uid(pod).to_string();
        self.take(&id);
        self.insert(
            id,
            PodRecord {
                node: node.to_string(),
                usage: PodUsage::of(pod),
                assumed: true,
            },
        );
    }

    /// Drops an assumption whose binding failed. True when there was one.
    pub fn forget(&mut self, uid: &str) -> bool {
        if self.pods.get(uid).is_some_and(|r| r.assumed) {
            self.take(uid);
            true
        } else {
            false
        }
    }

    /// Whether `uid` is assumed (its binding is in flight or not yet shown by the store).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|r| r.assumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::objects::testutil::pod;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(
                    [("pods".to_string(), Quantity("10".into()))]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn bound(name: &str, node: &str) -> Pod {
        let mut p = pod(name, 0);
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    fn pods_on(c: &Cache, node: &str) -> i64 {
        c.node(node).map_or(-1, |n| n.usage.requested.pods)
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut c = Cache::default();
        assert!(c.set_node(node("a")));
        assert!(c.set_node(node("b")));
        let p = pod("p", 0);
        c.assume(&p, "a");
        assert!(c.is_assumed("uid-p"));
        assert_eq!(pods_on(&c, "a"), 1);
        // A pending version of the Pod (its binding not shown yet) keeps the assumption.
        assert!(!c.set_pod(&p));
        assert_eq!(pods_on(&c, "a"), 1);
        // The watch shows the binding: confirmed, counted once.
        assert!(!c.set_pod(&bound("p", "a")));
        assert!(!c.is_assumed("uid-p"));
        assert_eq!((pods_on(&c, "a"), c.pod_count()), (1, 1));
        assert!(!c.forget("uid-p"), "a confirmed Pod is not forgotten");

        let q = pod("q", 0);
        c.assume(&q, "a");
        assert!(c.forget("uid-q"));
        assert_eq!(pods_on(&c, "a"), 1);
        // Assumed on a, bound elsewhere by someone else: it moves.
        c.assume(&q, "a");
        assert!(c.set_pod(&bound("q", "b")));
        assert_eq!((pods_on(&c, "a"), pods_on(&c, "b")), (1, 1));
    }

    #[test]
    fn terminal_and_deleted_pods_free_capacity() {
        let mut c = Cache::default();
        c.set_node(node("a"));
        let mut p = bound("p", "a");
        c.set_pod(&p);
        p.status.get_or_insert_with(Default::default).phase = Some("Succeeded".into());
        assert!(c.set_pod(&p), "a finished Pod frees its Node");
        assert_eq!(pods_on(&c, "a"), 0);
        c.set_pod(&bound("r", "a"));
        assert!(c.remove_pod(&bound("r", "a")));
        assert!(!c.remove_pod(&bound("r", "a")));
        assert_eq!(pods_on(&c, "a"), 0);
    }

    #[test]
    fn pods_of_unknown_nodes_count_once_the_node_appears() {
        let mut c = Cache::default();
        c.set_pod(&bound("p", "late"));
        assert!(c.node("late").is_none());
        c.set_node(node("late"));
        assert_eq!(pods_on(&c, "late"), 1);
        c.set_node(node("x"));
        c.remove_node("late");
        assert_eq!(c.nodes().len(), 1);
        assert_eq!(c.node("x").map(|n| n.name.as_str()), Some("x"));
        c.set_node(node("late"));
        assert_eq!(pods_on(&c, "late"), 1, "kept while the Node was gone");
        // An update keeps the totals; only scheduling-relevant changes say so.
        assert!(!c.set_node(node("late")));
        assert_eq!(pods_on(&c, "late"), 1);
    }

    #[test]
    fn relists_drop_what_is_gone() {
        let mut c = Cache::default();
        c.set_node(node("a"));
        c.set_node(node("b"));
        c.set_pod(&bound("p", "a"));
        c.assume(&pod("q", 0), "a");
        let keep: HashSet<String> = ["uid-p".to_string()].into();
        assert!(c.retain_pods(&keep));
        assert_eq!((pods_on(&c, "a"), c.pod_count()), (1, 1));
        c.retain_nodes(&["b".to_string()].into());
        assert!(c.node("a").is_none() && c.node("b").is_some());
    }
}
