//! The scheduling queue: Pods waiting for a Node, as kube-scheduler's `PriorityQueue` keeps
//! them (`pkg/scheduler/backend/queue`) without priorities: an active FIFO, Pods that fit
//! nowhere (tried again when the cluster changes, or after [`UNSCHEDULABLE_FLUSH`]), and Pods
//! backing off after a failed binding.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// First back-off after a failed binding (kube-scheduler's `podInitialBackoffSeconds`).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off (its `podMaxBackoffSeconds`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a Pod stays unschedulable before it is tried again anyway (its
/// `podMaxInUnschedulablePodsDuration`).
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// Until the flush time.
    Unschedulable(Instant),
    /// Until the end of the back-off.
    Backoff(Instant),
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    state: State,
    failures: u32,
}

/// Pods to schedule, by uid.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: VecDeque<String>,
    backoff: BinaryHeap<Reverse<(Instant, String)>>,
    /// Uids that were marked unschedulable (some may have moved on since).
    unschedulable: HashSet<String>,
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The back-off after `failures` failed bindings: 1 s doubling up to 10 s.
pub fn backoff_for(failures: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// Adds a pending Pod, or refreshes the copy of one already queued. An unschedulable Pod
    /// whose spec or labels changed is tried again (the change may make it fit).
    pub fn add(&mut self, pod: Arc<Pod>) {
        let id = uid(&pod);
        match self.entries.get_mut(&id) {
            Some(e) => {
                let may_fit_now =
                    e.pod.spec != pod.spec || e.pod.metadata.labels != pod.metadata.labels;
                e.pod = pod;
                if matches!(e.state, State::Unschedulable(_)) && may_fit_now {
                    e.state = State::Active;
                    self.active.push_back(id);
                }
            }
            None => {
                self.entries.insert(
                    id.clone(),
                    Entry {
                        pod,
                        state: State::Active,
                        failures: 0,
                    },
                );
                self.active.push_back(id);
            }
        }
    }

    /// Drops a Pod (bound, deleted or no longer ours).
    pub fn remove(&mut self, uid: &str) {
        self.entries.remove(uid);
        self.unschedulable.remove(uid);
    }

    /// Keeps only the Pods whose uid is in `uids` (after a re-list).
    pub fn retain(&mut self, uids: &HashSet<String>) {
        self.entries.retain(|id, _| uids.contains(id));
        self.unschedulable.retain(|id| uids.contains(id));
    }

    /// Whether the Pod is queued in any state.
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// The next Pod to schedule: the oldest active one (Pods whose back-off or unschedulable
    /// time is over join the active ones first). The Pod stays queued until it is removed or
    /// marked, as kube-scheduler keeps a Pod "in flight".
    pub fn pop(&mut self, now: Instant) -> Option<Arc<Pod>> {
        self.promote(now);
        while let Some(id) = self.active.pop_front() {
            match self.entries.get(&id) {
                Some(e) if e.state == State::Active => return Some(e.pod.clone()),
                _ => continue,
            }
        }
        None
    }

    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.backoff.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.backoff.pop() else {
                break;
            };
            if let Some(e) = self.entries.get_mut(&id)
                && (e.state == State::Backoff(at) || e.state == State::Unschedulable(at))
            {
                e.state = State::Active;
                self.active.push_back(id);
            }
        }
    }

    /// The Pod fits no Node; it waits for a change of the cluster.
    pub fn mark_unschedulable(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            // The flush shares the back-off heap: a heap record promotes the Pod only while the
            // Pod is still in the state that record was made for.
            let at = now + UNSCHEDULABLE_FLUSH;
            e.state = State::Unschedulable(at);
            self.backoff.push(Reverse((at, uid.to_string())));
            self.unschedulable.insert(uid.to_string());
        }
    }

    /// Binding failed: the Pod is tried again after its back-off.
    pub fn back_off(&mut self, pod: Arc<Pod>, now: Instant) {
        let id = uid(&pod);
        let e = self.entries.entry(id.clone()).or_insert(Entry {
            pod: pod.clone(),
            state: State::Active,
            failures: 0,
        });
        e.pod = pod;
        e.failures += 1;
        let at = now + backoff_for(e.failures);
        e.state = State::Backoff(at);
        self.backoff.push(Reverse((at, id)));
    }

    /// The cluster changed (a Node came or changed, a Pod freed capacity): every unschedulable
    /// Pod is tried again (kube-scheduler's `MoveAllToActiveOrBackoffQueue`).
    pub fn move_all_to_active(&mut self) {
        for id in self.unschedulable.drain() {
            if let Some(e) = self.entries.get_mut(&id)
                && matches!(e.state, State::Unschedulable(_))
            {
                e.state = State::Active;
                self.active.push_back(id);
            }
        }
    }

    /// When the next backed-off or unschedulable Pod becomes active, if any.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((at, _))| *at)
    }

    /// Pods queued in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no Pod is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::objects::testutil::pod;

    fn p(name: &str) -> Arc<Pod> {
        Arc::new(pod(name, 0))
    }

    #[test]
    fn active_pods_come_in_order_once() {
        let mut q = SchedulingQueue::default();
        let now = Instant::now();
        q.add(p("a"));
        q.add(p("b"));
        q.add(p("a"));
        assert_eq!(q.len(), 2);
        let first = q.pop(now).expect("a");
        assert_eq!(first.metadata.name.as_deref(), Some("a"));
        q.remove("uid-a");
        assert_eq!(
            q.pop(now).and_then(|x| x.metadata.name.clone()).as_deref(),
            Some("b")
        );
        q.remove("uid-b");
        assert!(q.pop(now).is_none() && q.is_empty());
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_or_the_flush() {
        let mut q = SchedulingQueue::default();
        let now = Instant::now();
        q.add(p("a"));
        q.pop(now);
        q.mark_unschedulable("uid-a", now);
        assert!(q.pop(now).is_none());
        // A status-only update does not make it fit.
        q.add(p("a"));
        assert!(q.pop(now).is_none());
        assert_eq!(q.next_wakeup(), Some(now + UNSCHEDULABLE_FLUSH));
        q.move_all_to_active();
        assert!(q.pop(now).is_some());
        q.mark_unschedulable("uid-a", now);
        // A spec change may make it fit.
        let mut changed = pod("a", 0);
        changed
            .spec
            .get_or_insert_with(Default::default)
            .node_selector = Some(Default::default());
        q.add(Arc::new(changed));
        assert!(q.pop(now).is_some());
        q.mark_unschedulable("uid-a", now);
        assert!(q.pop(now + UNSCHEDULABLE_FLUSH).is_some(), "flushed");
    }

    #[test]
    fn failed_bindings_back_off() {
        let mut q = SchedulingQueue::default();
        let now = Instant::now();
        q.back_off(p("a"), now);
        assert!(q.pop(now).is_none());
        assert!(q.pop(now + INITIAL_BACKOFF).is_some());
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(9), MAX_BACKOFF);
        q.remove("uid-a");
        q.back_off(p("b"), now);
        q.retain(&HashSet::new());
        assert!(
            q.pop(now + MAX_BACKOFF).is_none(),
            "deleted while backing off"
        );
    }
}
