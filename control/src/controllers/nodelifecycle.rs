//! Node lifecycle: a Node whose Lease (kube-node-lease/<node>) and status heartbeat have not
//! been renewed for 40 s (Kubernetes' default `--node-monitor-grace-period`) gets its Ready
//! condition, and the pressure conditions, set to Unknown. The agent sets Ready=True again when
//! it comes back; eviction and taints are not done here.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::runtime::{Controller, Informers, Touch, WorkQueue, key_of};
use super::runtime::{Reconciler, Requeue};

/// How long a Node may go without a heartbeat before it is Unknown.
pub const GRACE_PERIOD: Duration = Duration::from_secs(40);
/// Namespace of the Node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The conditions that become Unknown with Ready (Kubernetes' `nodeConditionTypes`).
pub const CONDITION_TYPES: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// What the lifecycle plan sees besides the Node.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The Node's Lease, if any.
    pub lease: Option<&'a Lease>,
    /// The current time.
    pub now: Timestamp,
}

/// One lifecycle step.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Write these conditions to the Node's status.
    SetConditions(Vec<NodeCondition>),
    /// Look again after this long (when the grace period would end).
    CheckAfter(Duration),
}

/// The last sign of life of a Node: its Lease renewal or its Ready heartbeat, whichever is
/// later; a Node that never sent one counts from its creation.
pub fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let ready_hb = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renew
        .max(ready_hb)
        .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Plans the Node's conditions.
pub fn plan(node: &Node, snap: &Snapshot<'_>) -> Vec<Change> {
    if ready_condition(node).is_some_and(|c| c.status == "Unknown") {
        return Vec::new();
    }
    let Some(last) = last_heartbeat(node, snap.lease) else {
        return Vec::new();
    };
    let grace = GRACE_PERIOD.as_millis() as i64;
    let elapsed = snap.now.as_millisecond() - last.as_millisecond();
    if elapsed < grace {
        return vec![Change::CheckAfter(Duration::from_millis(
            (grace - elapsed) as u64 + 100,
        ))];
    }
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for t in CONDITION_TYPES {
        let unknown = |c: &mut NodeCondition| {
            if c.status != "Unknown" {
                c.last_transition_time = Some(Time(snap.now));
            }
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
        };
        match conditions.iter_mut().find(|c| c.type_ == t) {
            Some(c) => unknown(c),
            None if t == "Ready" => {
                let mut c = NodeCondition {
                    type_: t.into(),
                    ..Default::default()
                };
                unknown(&mut c);
                c.last_heartbeat_time = Some(Time(last));
                conditions.push(c);
            }
            None => {}
        }
    }
    vec![Change::SetConditions(conditions)]
}

/// The lifecycle loop: a Node key, reconciled on Node and Lease events and when its grace
/// period ends.
pub(crate) struct NodeLifecycleLoop {
    pub(crate) client: Client,
    pub(crate) nodes: Store<Node>,
    pub(crate) leases: Store<Lease>,
}

impl Reconciler for NodeLifecycleLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let Some(node) = self.nodes.get(&ObjectRef::new(key)) else {
            return Ok(None);
        };
        let lease: Option<Arc<Lease>> = self
            .leases
            .get(&ObjectRef::new(key).within(LEASE_NAMESPACE));
        let snap = Snapshot {
            lease: lease.as_deref(),
            now: Timestamp::now(),
        };
        let mut requeue = None;
        for change in plan(&node, &snap) {
            match change {
                Change::SetConditions(conditions) => {
                    let mut obj = (*node).clone();
                    obj.status.get_or_insert_with(Default::default).conditions = Some(conditions);
                    Api::<Node>::all(self.client.clone())
                        .replace_status(key, &PostParams::default(), &obj)
                        .await?;
                    tracing::warn!(node = key, "node stopped renewing its lease; Ready=Unknown");
                }
                Change::CheckAfter(d) => requeue = Some(d),
            }
        }
        Ok(requeue)
    }
}

/// The Node lifecycle controller: a Node's key for every change of it and for every change of
/// its Lease (in [`LEASE_NAMESPACE`], named after the Node).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeLifecycleController;

impl Controller for NodeLifecycleController {
    const NAME: &'static str = "nodelifecycle";
    type Loop = NodeLifecycleLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> NodeLifecycleLoop {
        let nodes = informers.all::<Node>();
        let q = queue.clone();
        nodes.on(move |t| match t {
            Touch::Changed(n) => q.add(key_of(n)),
            Touch::Deleted(_) => {}
            Touch::Relisted(all) => all.iter().for_each(|n| q.add(key_of(&**n))),
        });
        let nodes = nodes.store();
        let leases = informers.namespaced::<Lease>(LEASE_NAMESPACE);
        let q = queue.clone();
        leases.on(move |t| match t {
            Touch::Changed(l) | Touch::Deleted(l) => {
                q.add(l.metadata.name.clone().unwrap_or_default())
            }
            Touch::Relisted(all) => all
                .iter()
                .for_each(|l| q.add(l.metadata.name.clone().unwrap_or_default())),
        });
        let leases = leases.store();
        NodeLifecycleLoop {
            client: informers.client().clone(),
            nodes,
            leases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::testutil::ts;
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn node(ready: &str, heartbeat: i64) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(ts(0))),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions: Some(vec![
                    NodeCondition {
                        type_: "Ready".into(),
                        status: ready.into(),
                        last_heartbeat_time: Some(Time(ts(heartbeat))),
                        last_transition_time: Some(Time(ts(0))),
                        reason: Some("KubeletReady".into()),
                        ..Default::default()
                    },
                    NodeCondition {
                        type_: "MemoryPressure".into(),
                        status: "False".into(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    fn lease(renew: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                namespace: Some(LEASE_NAMESPACE.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(ts(renew))),
                ..Default::default()
            }),
        }
    }

    /// Plans `node` with this Lease at `ts(now)`.
    fn plan_at(node: &Node, lease: Option<&Lease>, now: i64) -> Vec<Change> {
        plan(
            node,
            &Snapshot {
                lease,
                now: ts(now),
            },
        )
    }

    #[test]
    fn fresh_lease_keeps_node_and_schedules_a_check() {
        let n = node("True", 0);
        let l = lease(100);
        let changes = plan_at(&n, Some(&l), 110);
        assert_eq!(
            changes,
            vec![Change::CheckAfter(Duration::from_millis(30_100))]
        );
    }

    #[test]
    fn stale_lease_marks_ready_and_pressure_unknown() {
        let n = node("True", 0);
        let l = lease(100);
        let changes = plan_at(&n, Some(&l), 141);
        let [Change::SetConditions(conds)] = &changes[..] else {
            panic!("expected conditions, got {changes:?}")
        };
        let ready = conds.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(ready.last_transition_time, Some(Time(ts(141))));
        assert_eq!(
            ready.last_heartbeat_time,
            Some(Time(ts(0))),
            "heartbeat is the agent's to write"
        );
        assert_eq!(
            conds
                .iter()
                .find(|c| c.type_ == "MemoryPressure")
                .map(|c| c.status.as_str()),
            Some("Unknown")
        );
    }

    #[test]
    fn status_heartbeat_counts_as_renewal_and_unknown_stays() {
        let n = node("True", 130);
        let l = lease(10);
        assert!(matches!(
            plan_at(&n, Some(&l), 160)[..],
            [Change::CheckAfter(_)]
        ));
        let gone = node("Unknown", 0);
        assert!(plan_at(&gone, None, 1000).is_empty());
    }

    #[test]
    fn node_without_lease_or_conditions_counts_from_creation() {
        let mut n = node("True", 0);
        n.status = None;
        assert!(matches!(plan_at(&n, None, 10)[..], [Change::CheckAfter(_)]));
        let changes = plan_at(&n, None, 50);
        let [Change::SetConditions(conds)] = &changes[..] else {
            panic!("{changes:?}")
        };
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, "Unknown");
    }
}
