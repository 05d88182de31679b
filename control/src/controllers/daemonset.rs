//! The DaemonSet controller: one Pod of the template on every Node the template fits (its
//! nodeSelector, required node affinity and taints, with the tolerations Kubernetes adds to
//! DaemonSet Pods), none elsewhere; RollingUpdate replaces Pods of an older template at most
//! maxUnavailable at a time, OnDelete waits for them to be deleted.
//!
//! Pods are created with spec.nodeName set (the controller places them itself, as Kubernetes
//! did before DaemonSet Pods went through the scheduler). The template is identified by the
//! `controller-revision-hash` label, whose value here is the template hash of
//! [`super::podtemplate::template_hash`] (Kubernetes names a ControllerRevision instead).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::deployment::scaled_value;
use super::objects::{
    is_controlled_by, is_terminating, pod_is_active, pod_is_available, pod_is_ready,
};
use super::podtemplate::{has_hash, pod_from_template, put_hash, template_hash};
use super::replicaset::{deletion_order, seen_pod};
use super::runtime::{Controller, Informers, Touch, WorkQueue, controller_key, key_of};
use super::runtime::{Expectations, Reconciler, Requeue, delete_background, split_key};
use crate::scheduler::NodeInfo;
use crate::scheduler::filter::{node_affinity, taint_toleration};

/// The label carrying the template hash of a DaemonSet Pod.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// What the DaemonSet plan sees besides the DaemonSet.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// Every Node.
    pub nodes: Vec<&'a Node>,
    /// Pods of the DaemonSet's namespace (the plan picks those it controls).
    pub pods: Vec<&'a Pod>,
    /// The current time, for minReadySeconds.
    pub now: Timestamp,
}

/// One step towards the DaemonSet's desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create this Pod (bound to its Node, metadata.generateName set).
    CreatePod(Box<Pod>),
    /// Delete the Pod with this name.
    DeletePod(String),
    /// Write this status.
    UpdateStatus(Box<DaemonSetStatus>),
}

/// The tolerations Kubernetes adds to every DaemonSet Pod, so it runs on Nodes that are not
/// ready, unreachable, under pressure or cordoned (pkg/controller/daemon/util).
pub fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The Pod `ds` runs on `node`: the template's Pod with the hash label, bound to `node`, with
/// the DaemonSet tolerations.
pub fn pod_for(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = pod_from_template(ds, template);
    // DaemonSet Pods do not carry the template's finalizers (Kubernetes' GetPodFromTemplate
    // copies them for DaemonSets too).
    pod.metadata.finalizers = None;
    put_hash(&mut pod.metadata.labels, HASH_LABEL, hash);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    pod
}

/// Whether the DaemonSet's Pod belongs on `node`: the template's node selection and the Node's
/// NoSchedule/NoExecute taints (with the DaemonSet tolerations).
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    let candidate = pod_for(ds, "", node.metadata.name.as_deref().unwrap_or_default());
    let info = NodeInfo::new(node, Vec::new());
    node.metadata.deletion_timestamp.is_none()
        && node_affinity(&candidate, &info).is_ok()
        && taint_toleration(&candidate, &info).is_ok()
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

/// Plans the Pods and status of `ds`.
pub fn plan(ds: &DaemonSet, snap: &Snapshot<'_>) -> Vec<Change> {
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let hash = template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let owned: Vec<&Pod> = snap
        .pods
        .iter()
        .copied()
        .filter(|p| is_controlled_by(&p.metadata, uid))
        .collect();
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in owned
        .iter()
        .copied()
        .filter(|p| !is_terminating(&p.metadata))
    {
        by_node
            .entry(node_of(p).unwrap_or_default())
            .or_default()
            .push(p);
    }
    let mut changes = Vec::new();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut available, mut updated) = (0, 0);
    // Nodes with a Pod of an older template, for the rolling update.
    let mut outdated: Vec<&Pod> = Vec::new();
    let mut unavailable = 0;
    let creating = !is_terminating(&ds.metadata);
    let delete = |p: &Pod| Change::DeletePod(p.metadata.name.clone().unwrap_or_default());
    for node in &snap.nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let mut pods = by_node.remove(name).unwrap_or_default();
        // Failed Pods are replaced (Kubernetes deletes them and creates new ones).
        let (failed, live): (Vec<&Pod>, Vec<&Pod>) =
            pods.drain(..).partition(|p| !pod_is_active(p));
        changes.extend(failed.iter().map(|p| delete(p)));
        let mut live = live;
        if !should_run(ds, node) {
            if !live.is_empty() {
                status.number_misscheduled += 1;
                changes.extend(live.iter().map(|p| delete(p)));
            }
            continue;
        }
        status.desired_number_scheduled += 1;
        if live.is_empty() {
            unavailable += 1;
            if creating {
                changes.push(Change::CreatePod(Box::new(pod_for(ds, &hash, name))));
            }
            continue;
        }
        status.current_number_scheduled += 1;
        // One Pod per Node: keep the one Kubernetes would keep (the last to delete).
        live.sort_by(|a, b| deletion_order(a, b));
        let Some(keep) = live.pop() else { continue };
        changes.extend(live.iter().map(|p| delete(p)));
        if pod_is_ready(keep) {
            status.number_ready += 1;
        }
        if pod_is_available(keep, min_ready, snap.now) {
            available += 1;
        } else {
            unavailable += 1;
        }
        if has_hash(&keep.metadata, HASH_LABEL, &hash) {
            updated += 1;
        } else {
            outdated.push(keep);
        }
    }
    // Pods on Nodes that no longer exist.
    for pods in by_node.into_values() {
        status.number_misscheduled += pods.len() as i32;
        changes.extend(pods.iter().map(|p| delete(p)));
    }
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && creating && !outdated.is_empty() {
        let ru = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let desired = status.desired_number_scheduled;
        let max_unavailable = scaled_value(
            ru.and_then(|r| r.max_unavailable.as_ref()),
            0,
            desired,
            true,
        )
        .max(1);
        // Unavailable old Pods go first: replacing them costs no availability.
        outdated.sort_by_key(|p| pod_is_available(p, min_ready, snap.now));
        let mut budget = max_unavailable - unavailable;
        for p in outdated {
            if !pod_is_available(p, min_ready, snap.now) {
                changes.push(delete(p));
            } else if budget > 0 {
                changes.push(delete(p));
                budget -= 1;
            }
        }
    }
    status.number_available = Some(available);
    status.number_unavailable = Some(status.desired_number_scheduled - available);
    status.updated_number_scheduled = Some(updated);
    if ds.status.as_ref() != Some(&status) {
        changes.push(Change::UpdateStatus(Box::new(status)));
    }
    changes
}

/// The DaemonSet loop.
pub(crate) struct DaemonSetLoop {
    pub(crate) client: Client,
    pub(crate) daemonsets: Store<DaemonSet>,
    pub(crate) pods: Store<Pod>,
    pub(crate) nodes: Store<Node>,
    pub(crate) expectations: Expectations,
}

impl Reconciler for DaemonSetLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let (ns, name) = split_key(key);
        let ns = ns.unwrap_or_default().to_string();
        let Some(ds) = self.daemonsets.get(&ObjectRef::new(name).within(&ns)) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let pod_store = self.pods.clone();
        if !self
            .expectations
            .satisfied(key, |n| seen_pod(&pod_store, &ns, n))
        {
            return Ok(Some(Duration::from_secs(1)));
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
        let nodes = self.nodes.state();
        let snap = Snapshot {
            nodes: nodes.iter().map(|n| &**n).collect(),
            pods: pods.iter().map(|p| &**p).collect(),
            now: Timestamp::now(),
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let (mut created, mut deleted) = (Vec::new(), Vec::new());
        let mut result = Ok(None);
        let mut seen_deletes: HashMap<String, ()> = HashMap::new();
        for change in plan(&ds, &snap) {
            let step = match change {
                Change::CreatePod(p) => api.create(&PostParams::default(), &p).await.map(|p| {
                    tracing::info!(daemonset = key, pod = p.metadata.name, node = ?p.spec.and_then(|s| s.node_name), "created pod");
                    created.extend(p.metadata.name);
                }),
                Change::DeletePod(n) => {
                    if seen_deletes.insert(n.clone(), ()).is_some() {
                        continue;
                    }
                    delete_background(&api, &n).await.map(|gone| {
                        if gone {
                            tracing::info!(daemonset = key, pod = n, "deleted pod");
                            deleted.push(n);
                        }
                    })
                }
                Change::UpdateStatus(status) => {
                    let mut obj = (*ds).clone();
                    obj.status = Some(*status);
                    Api::<DaemonSet>::namespaced(self.client.clone(), &ns)
                        .replace_status(name, &PostParams::default(), &obj)
                        .await
                        .map(|_| ())
                }
            };
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        if !created.is_empty() || !deleted.is_empty() {
            self.expectations.expect(key, created, deleted);
        }
        result
    }
}

/// The DaemonSet controller: a DaemonSet's key for every change of it, its owner's for every
/// change of a Pod it controls, and every DaemonSet's for any change of a Node (each may want
/// a Pod on a new or changed Node, or none on a gone one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DaemonSetController;

impl Controller for DaemonSetController {
    const NAME: &'static str = "daemonset";
    type Loop = DaemonSetLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> DaemonSetLoop {
        let daemonsets = informers.all::<DaemonSet>();
        let q = queue.clone();
        daemonsets.on(move |t| match t {
            Touch::Changed(d) | Touch::Deleted(d) => q.add(key_of(d)),
            Touch::Relisted(all) => all.iter().for_each(|d| q.add(key_of(&**d))),
        });
        let daemonsets = daemonsets.store();
        let pods = informers.all::<Pod>();
        let q = queue.clone();
        pods.on(move |t| {
            let owner = |p: &Pod| {
                if let Some(k) = controller_key(&p.metadata, "DaemonSet") {
                    q.add(k);
                }
            };
            match t {
                Touch::Changed(p) | Touch::Deleted(p) => owner(p),
                Touch::Relisted(all) => all.iter().for_each(|p| owner(p)),
            }
        });
        let pods = pods.store();
        let nodes = informers.all::<Node>();
        let (q, all) = (queue.clone(), daemonsets.clone());
        nodes.on(move |_| all.state().iter().for_each(|d| q.add(key_of(&**d))));
        let nodes = nodes.store();
        DaemonSetLoop {
            client: informers.client().clone(),
            daemonsets,
            pods,
            nodes,
            expectations: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::testutil::*;
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    const UID: &str = "ds-uid";

    fn ds(image: &str) -> DaemonSet {
        DaemonSet {
            metadata: workload_meta("agent", "kube-system", UID, 1),
            spec: Some(DaemonSetSpec {
                selector: selector(&[("app", "agent")]),
                template: template(&[("app", "agent")], image),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(&[("role", "worker")])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        }
    }

    fn ds_pod(d: &DaemonSet, name: &str, node: &str, ready: bool) -> Pod {
        let hash = template_hash(&d.spec.as_ref().expect("spec").template, None);
        let mut p = pod_for(d, &hash, node);
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0)));
        let r = running(pod(name, 0), node, "10.0.0.1", ready.then_some(0));
        p.status = r.status;
        p
    }

    /// Plans `ds` against these Nodes and Pods at `ts(now)`.
    fn plan_at(ds: &DaemonSet, nodes: &[&Node], pods: &[&Pod], now: i64) -> Vec<Change> {
        plan(
            ds,
            &Snapshot {
                nodes: nodes.to_vec(),
                pods: pods.to_vec(),
                now: ts(now),
            },
        )
    }

    fn creates(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::CreatePod(p) => p.spec.as_ref().and_then(|s| s.node_name.clone()),
                _ => None,
            })
            .collect()
    }

    fn deletes(changes: &[Change]) -> Vec<&str> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::DeletePod(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    fn status(changes: &[Change]) -> Option<&DaemonSetStatus> {
        changes.iter().find_map(|c| match c {
            Change::UpdateStatus(s) => Some(&**s),
            _ => None,
        })
    }

    #[test]
    fn one_pod_per_fitting_node_bound_with_tolerations() {
        let d = ds("a");
        let (n1, n2) = (node("n1"), node("n2"));
        let existing = ds_pod(&d, "agent-x", "n1", true);
        let changes = plan_at(&d, &[&n1, &n2], &[&existing], 10);
        assert_eq!(creates(&changes), vec!["n2".to_string()]);
        let Some(Change::CreatePod(p)) = changes.iter().find(|c| matches!(c, Change::CreatePod(_)))
        else {
            panic!()
        };
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(
            p.metadata.owner_references.as_ref().expect("owner")[0].kind,
            "DaemonSet"
        );
        assert!(
            p.metadata
                .labels
                .as_ref()
                .expect("labels")
                .contains_key(HASH_LABEL)
        );
        let tol = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_ref())
            .expect("tolerations");
        assert!(
            tol.iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable"))
        );
        let st = status(&changes).expect("status");
        assert_eq!(
            (
                st.desired_number_scheduled,
                st.current_number_scheduled,
                st.number_ready
            ),
            (2, 1, 1)
        );
        assert_eq!(st.number_unavailable, Some(1));
    }

    #[test]
    fn node_selection_and_taints_decide_where_pods_run() {
        let mut d = ds("a");
        d.spec
            .as_mut()
            .expect("spec")
            .template
            .spec
            .as_mut()
            .expect("spec")
            .node_selector = Some(labels(&[("role", "worker")]));
        let worker = node("w");
        let mut other = node("o");
        other.metadata.labels = Some(labels(&[("role", "edge")]));
        let mut tainted = node("t");
        tainted.spec.as_mut().expect("spec").taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
        let mut cordoned = node("c");
        cordoned.spec.as_mut().expect("spec").unschedulable = Some(true);
        cordoned.spec.as_mut().expect("spec").taints = Some(vec![Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
        let stray = ds_pod(&d, "agent-stray", "o", true);
        let changes = plan_at(&d, &[&worker, &other, &tainted, &cordoned], &[&stray], 10);
        let mut c = creates(&changes);
        c.sort();
        assert_eq!(
            c,
            vec!["c".to_string(), "w".to_string()],
            "cordoned nodes still get daemon pods"
        );
        assert_eq!(deletes(&changes), vec!["agent-stray"]);
        assert_eq!(status(&changes).expect("status").number_misscheduled, 1);
    }

    #[test]
    fn duplicates_failed_pods_and_pods_of_gone_nodes_are_deleted() {
        let d = ds("a");
        let n1 = node("n1");
        let old = ds_pod(&d, "agent-old", "n1", true);
        let mut dup = ds_pod(&d, "agent-dup", "n1", false);
        dup.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(5)));
        let ghost = ds_pod(&d, "agent-ghost", "gone", true);
        let changes = plan_at(&d, &[&n1], &[&old, &dup, &ghost], 10);
        let mut del = deletes(&changes);
        del.sort();
        assert_eq!(del, vec!["agent-dup", "agent-ghost"]);
        assert!(creates(&changes).is_empty());

        let mut failed = ds_pod(&d, "agent-failed", "n1", false);
        failed.status.as_mut().expect("status").phase = Some("Failed".into());
        let changes = plan_at(&d, &[&n1], &[&failed], 10);
        assert_eq!(deletes(&changes), vec!["agent-failed"]);
        assert_eq!(creates(&changes), vec!["n1".to_string()]);
    }

    #[test]
    fn rolling_update_replaces_old_pods_within_max_unavailable() {
        let old_ds = ds("a");
        let mut d = ds("b");
        d.spec.as_mut().expect("spec").update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(1)),
                max_surge: None,
            }),
        });
        let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| node(n)).collect();
        let pods: Vec<Pod> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                ds_pod(
                    &old_ds,
                    &format!("agent-{i}"),
                    n.metadata.name.as_deref().expect("n"),
                    true,
                )
            })
            .collect();
        let snap = Snapshot {
            nodes: nodes.iter().collect(),
            pods: pods.iter().collect(),
            now: ts(10),
        };
        let changes = plan(&d, &snap);
        assert_eq!(deletes(&changes).len(), 1, "one at a time: {changes:?}");
        assert_eq!(
            status(&changes).expect("status").updated_number_scheduled,
            Some(0)
        );

        // While a replacement is not available, no further old Pod goes.
        let fresh = ds_pod(&d, "agent-new", "n1", false);
        let snap = Snapshot {
            nodes: nodes.iter().collect(),
            pods: vec![&fresh, &pods[1], &pods[2]],
            now: ts(10),
        };
        assert!(deletes(&plan(&d, &snap)).is_empty());

        // OnDelete never deletes.
        d.spec.as_mut().expect("spec").update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        let snap = Snapshot {
            nodes: nodes.iter().collect(),
            pods: pods.iter().collect(),
            now: ts(10),
        };
        assert!(deletes(&plan(&d, &snap)).is_empty());
    }
}
