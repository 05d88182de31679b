//! The ReplicaSet controller: keeps `spec.replicas` active Pods from the RS's template (creating
//! missing ones, deleting surplus ones in Kubernetes' `ActivePods` order) and reports status.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::objects::{
    adopted_refs, annotation_number, can_adopt, is_controlled_by, is_terminating, map_selects,
    pod_is_active, pod_is_available, pod_is_ready, pod_phase, pod_ready_since,
};
use super::podtemplate;
use super::runtime::{Controller, Informers, Touch, WorkQueue, controller_key, key_of};
use super::runtime::{Expectations, Reconciler, Requeue, Seen, delete_background, split_key};

/// Most Pods created or deleted by one reconcile (Kubernetes' `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// Annotation whose lower value makes a Pod deleted first on scale-down (KEP-2255).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// What the ReplicaSet plan sees besides the ReplicaSet.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// Pods of the ReplicaSet's namespace (the plan picks those it controls).
    pub pods: Vec<&'a Pod>,
    /// The current time, for minReadySeconds.
    pub now: Timestamp,
}

/// One step towards the ReplicaSet's desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Make this orphan Pod ours: set its ownerReferences to these.
    Adopt {
        name: String,
        owner_references: Vec<OwnerReference>,
    },
    /// Create this Pod (metadata.generateName set).
    CreatePod(Box<Pod>),
    /// Delete the Pod with this name.
    DeletePod(String),
    /// Write this status.
    UpdateStatus(ReplicaSetStatus),
    /// Reconcile again after this long (a Pod becomes available after minReadySeconds).
    CheckAfter(Duration),
}

/// Plans the Pods and status of `rs`.
pub fn plan(rs: &ReplicaSet, snap: &Snapshot<'_>) -> Vec<Change> {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let spec = rs.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    // Orphans the selector matches are adopted (Kubernetes' `ClaimPods`) and counted at once,
    // so a ReplicaSet re-created after an orphaning delete does not double its Pods.
    let adoptable: Vec<&Pod> = snap
        .pods
        .iter()
        .copied()
        .filter(|p| can_adopt(&rs.metadata, spec.map(|s| &s.selector), &p.metadata))
        .collect();
    let owned: Vec<&Pod> = snap
        .pods
        .iter()
        .copied()
        .filter(|p| is_controlled_by(&p.metadata, uid))
        .chain(adoptable.iter().copied())
        .collect();
    let mut active: Vec<&Pod> = owned.iter().copied().filter(|p| pod_is_active(p)).collect();
    let mut changes: Vec<Change> = adoptable
        .iter()
        .map(|p| Change::Adopt {
            name: p.metadata.name.clone().unwrap_or_default(),
            owner_references: adopted_refs(&p.metadata, rs),
        })
        .collect();

    // A ReplicaSet being deleted only reports status: its Pods go with it.
    if !is_terminating(&rs.metadata) {
        match active.len().cmp(&desired) {
            Ordering::Less => {
                let n = (desired - active.len()).min(BURST_REPLICAS);
                changes.extend((0..n).map(|_| Change::CreatePod(Box::new(pod_from_template(rs)))));
            }
            Ordering::Greater => {
                let n = (active.len() - desired).min(BURST_REPLICAS);
                active.sort_by(|a, b| deletion_order(a, b));
                changes.extend(
                    active[..n]
                        .iter()
                        .map(|p| Change::DeletePod(p.metadata.name.clone().unwrap_or_default())),
                );
            }
            Ordering::Equal => {}
        }
    }

    let status = status_of(rs, &owned, snap.now);
    if rs.status.as_ref() != Some(&status) {
        changes.push(Change::UpdateStatus(status));
    }
    if min_ready > 0 {
        // The earliest moment a Ready Pod crosses minReadySeconds.
        let wait = owned
            .iter()
            .filter(|p| pod_is_active(p) && !pod_is_available(p, min_ready, snap.now))
            .filter_map(|p| pod_ready_since(p).flatten())
            .map(|since| i64::from(min_ready) - (snap.now.as_second() - since.as_second()))
            .filter(|s| *s > 0)
            .min();
        if let Some(s) = wait {
            changes.push(Change::CheckAfter(Duration::from_secs(s as u64)));
        }
    }
    changes
}

/// The status Kubernetes reports for these Pods: counts over active Pods only.
pub fn status_of(rs: &ReplicaSet, owned: &[&Pod], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = template_labels(rs);
    let active: Vec<&&Pod> = owned.iter().filter(|p| pod_is_active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let terminating = owned.iter().filter(|p| is_terminating(&p.metadata)).count() as i32;
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            map_selects(&template_labels, p.metadata.labels.as_ref())
        })),
        ready_replicas: Some(count(&|p| pod_is_ready(p))),
        available_replicas: Some(count(&|p| pod_is_available(p, min_ready, now))),
        terminating_replicas: Some(terminating),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

/// A new Pod of `rs`: the template's metadata and spec, named `<rs>-<random>` by the API server,
/// controlled by `rs`.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    podtemplate::pod_from_template(rs, template)
}

fn phase_rank(p: &Pod) -> u8 {
    match pod_phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    }
}

fn deletion_cost(p: &Pod) -> i64 {
    annotation_number(&p.metadata, POD_DELETION_COST)
}

fn restarts(p: &Pod) -> i64 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0)
}

/// Kubernetes' `ActivePods` ordering: `Less` means `a` is deleted before `b`. Unscheduled before
/// scheduled, Pending before Unknown before Running, not-ready before ready, lower deletion cost
/// first, more recently ready first, more restarts first, newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| !n.is_empty())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| pod_is_ready(a).cmp(&pod_is_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| {
            if pod_is_ready(a) && pod_is_ready(b) {
                // Later Ready transition first.
                pod_ready_since(b)
                    .flatten()
                    .cmp(&pod_ready_since(a).flatten())
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The ReplicaSet loop: reconciles a ReplicaSet key against the Pod store.
pub(crate) struct ReplicaSetLoop {
    pub(crate) client: Client,
    pub(crate) replicasets: Store<ReplicaSet>,
    pub(crate) pods: Store<Pod>,
    pub(crate) expectations: Expectations,
}

/// What `store` shows of Pod `ns/name`, for expectations.
pub fn seen_pod(store: &Store<Pod>, ns: &str, name: &str) -> Seen {
    match store.get(&ObjectRef::new(name).within(ns)) {
        None => Seen::Absent,
        Some(p) if is_terminating(&p.metadata) => Seen::Terminating,
        Some(_) => Seen::Live,
    }
}

impl Reconciler for ReplicaSetLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let (ns, name) = split_key(key);
        let ns = ns.unwrap_or_default().to_string();
        let Some(rs) = self.replicasets.get(&ObjectRef::new(name).within(&ns)) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let pods_store = self.pods.clone();
        if !self
            .expectations
            .satisfied(key, |n| seen_pod(&pods_store, &ns, n))
        {
            // The Pod events that satisfy the expectations enqueue this key again.
            return Ok(Some(Duration::from_secs(1)));
        }
        let pods: Vec<Arc<Pod>> =
            pods_store.state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
        let snap = Snapshot {
            pods: pods.iter().map(|p| &**p).collect(),
            now: Timestamp::now(),
        };
        let changes = plan(&rs, &snap);
        apply(&self.client, &mut self.expectations, key, &rs, changes).await
    }
}

async fn apply(
    client: &Client,
    expectations: &mut Expectations,
    key: &str,
    rs: &Arc<ReplicaSet>,
    changes: Vec<Change>,
) -> Result<Requeue, kube::Error> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    let mut requeue = None;
    let mut result = Ok(());
    for change in changes {
        let step = match change {
            Change::Adopt {
                name,
                owner_references,
            } => {
                let patch =
                    serde_json::json!({ "metadata": { "ownerReferences": owner_references } });
                pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| {
                        tracing::info!(replicaset = key, pod = name, "adopted pod");
                    })
            }
            Change::CreatePod(pod) => pods.create(&PostParams::default(), &pod).await.map(|p| {
                let n = p.metadata.name.unwrap_or_default();
                tracing::info!(replicaset = key, pod = n, "created pod");
                created.push(n);
            }),
            Change::DeletePod(name) => delete_background(&pods, &name).await.map(|gone| {
                if gone {
                    tracing::info!(replicaset = key, pod = name, "deleted pod");
                    deleted.push(name);
                }
            }),
            Change::UpdateStatus(status) => {
                let mut obj = (**rs).clone();
                obj.status = Some(status);
                rss.replace_status(&rs_name, &PostParams::default(), &obj)
                    .await
                    .map(|_| ())
            }
            Change::CheckAfter(d) => {
                requeue = Some(d);
                Ok(())
            }
        };
        if let Err(e) = step {
            result = Err(e);
            break;
        }
    }
    if !created.is_empty() || !deleted.is_empty() {
        expectations.expect(key, created, deleted);
    }
    result.map(|()| requeue)
}

/// Labels of a Pod template, for tests and the Deployment controller.
pub fn template_labels(rs: &ReplicaSet) -> BTreeMap<String, String> {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// The ReplicaSet controller: a ReplicaSet's key for every change of it, and its owner's for
/// every change of a Pod it controls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaSetController;

impl Controller for ReplicaSetController {
    const NAME: &'static str = "replicaset";
    type Loop = ReplicaSetLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> ReplicaSetLoop {
        let replicasets = informers.all::<ReplicaSet>();
        let q = queue.clone();
        replicasets.on(move |t| match t {
            Touch::Changed(rs) | Touch::Deleted(rs) => q.add(key_of(rs)),
            Touch::Relisted(all) => all.iter().for_each(|rs| q.add(key_of(&**rs))),
        });
        let replicasets = replicasets.store();
        let pods = informers.all::<Pod>();
        let q = queue.clone();
        pods.on(move |t| {
            let owner = |p: &Pod| {
                if let Some(k) = controller_key(&p.metadata, "ReplicaSet") {
                    q.add(k);
                }
            };
            match t {
                Touch::Changed(p) | Touch::Deleted(p) => owner(p),
                Touch::Relisted(all) => all.iter().for_each(|p| owner(p)),
            }
        });
        let pods = pods.store();
        ReplicaSetLoop {
            client: informers.client().clone(),
            replicasets,
            pods,
            expectations: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::testutil::*;
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::ContainerStatus;

    const UID: &str = "rs-uid";

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: workload_meta("web-abc", "default", UID, 3),
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: selector(&[("app", "web")]),
                template: Some(template(
                    &[("app", "web"), ("pod-template-hash", "abc")],
                    "img",
                )),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn owned(name: &str, created: i64) -> Pod {
        let mut p = with_owner(pod(name, created), "ReplicaSet", "web-abc", UID);
        p.metadata.labels = Some(labels(&[("app", "web"), ("pod-template-hash", "abc")]));
        p
    }

    /// Plans `rs` against these Pods at `ts(now)`.
    fn plan_at(rs: &ReplicaSet, pods: &[&Pod], now: i64) -> Vec<Change> {
        plan(
            rs,
            &Snapshot {
                pods: pods.to_vec(),
                now: ts(now),
            },
        )
    }

    fn creates(changes: &[Change]) -> Vec<&Pod> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::CreatePod(p) => Some(&**p),
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

    fn status(changes: &[Change]) -> Option<&ReplicaSetStatus> {
        changes.iter().find_map(|c| match c {
            Change::UpdateStatus(s) => Some(s),
            _ => None,
        })
    }

    #[test]
    fn creates_missing_pods_from_template_with_owner() {
        let r = rs(3);
        let existing = owned("web-abc-1", 0);
        let changes = plan_at(&r, &[&existing], 100);
        let new = creates(&changes);
        assert_eq!(new.len(), 2);
        let p = new[0];
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ReplicaSet", UID, Some(true))
        );
        assert_eq!(owner.api_version, "apps/v1");
        assert_eq!(
            p.spec.as_ref().map(|s| s.containers[0].name.as_str()),
            Some("c")
        );
        assert!(deletes(&changes).is_empty());
    }

    #[test]
    fn pods_of_other_owners_are_not_counted() {
        let r = rs(1);
        let foreign = with_owner(pod("other", 0), "ReplicaSet", "x", "other-uid");
        let orphan = pod("orphan", 0);
        let changes = plan_at(&r, &[&foreign, &orphan], 100);
        assert_eq!(creates(&changes).len(), 1);
        assert!(deletes(&changes).is_empty());
    }

    #[test]
    fn terminating_and_terminal_pods_are_replaced_not_counted() {
        let r = rs(2);
        let live = running(owned("a", 0), "n1", "10.0.0.1", Some(1));
        let going = terminating(running(owned("b", 0), "n1", "10.0.0.2", Some(1)), 50);
        let mut done = owned("c", 0);
        done.status.as_mut().expect("status").phase = Some("Failed".into());
        let changes = plan_at(&r, &[&live, &going, &done], 100);
        assert_eq!(creates(&changes).len(), 1);
        assert!(
            deletes(&changes).is_empty(),
            "terminating pods are never deleted again"
        );
        let st = status(&changes).expect("status");
        assert_eq!(st.replicas, 1);
        assert_eq!(st.terminating_replicas, Some(1));
    }

    #[test]
    fn scale_down_deletes_unscheduled_then_not_ready_then_newest() {
        let r = rs(2);
        let old_ready = running(owned("old-ready", 0), "n1", "10.0.0.1", Some(5));
        let new_ready = running(owned("new-ready", 10), "n1", "10.0.0.2", Some(20));
        let not_ready = running(owned("not-ready", 0), "n1", "10.0.0.3", None);
        let unscheduled = owned("unscheduled", 0);
        let pods = vec![&old_ready, &new_ready, &not_ready, &unscheduled];
        let changes = plan_at(&r, &pods, 100);
        assert_eq!(deletes(&changes), vec!["unscheduled", "not-ready"]);

        let r1 = rs(1);
        let changes = plan_at(&r1, &pods, 100);
        assert_eq!(
            deletes(&changes),
            vec!["unscheduled", "not-ready", "new-ready"]
        );
    }

    #[test]
    fn scale_down_prefers_low_deletion_cost_and_many_restarts() {
        let r = rs(1);
        let mut cheap = running(owned("cheap", 0), "n1", "10.0.0.1", Some(5));
        cheap.metadata.annotations = Some(labels(&[(POD_DELETION_COST, "-10")]));
        let plain = running(owned("plain", 50), "n1", "10.0.0.2", Some(5));
        let changes = plan_at(&r, &[&plain, &cheap], 100);
        assert_eq!(deletes(&changes), vec!["cheap"]);

        let mut crashy = running(owned("crashy", 0), "n1", "10.0.0.3", Some(5));
        crashy.status.as_mut().expect("status").container_statuses = Some(vec![ContainerStatus {
            name: "c".into(),
            restart_count: 4,
            ..Default::default()
        }]);
        let steady = running(owned("steady", 50), "n1", "10.0.0.4", Some(5));
        let changes = plan_at(&r, &[&steady, &crashy], 100);
        assert_eq!(deletes(&changes), vec!["crashy"]);
    }

    #[test]
    fn status_counts_ready_available_and_labels() {
        let mut r = rs(3);
        r.spec.as_mut().expect("spec").min_ready_seconds = Some(30);
        let available = running(owned("a", 0), "n1", "10.0.0.1", Some(0));
        let just_ready = running(owned("b", 0), "n1", "10.0.0.2", Some(90));
        let mut relabeled = running(owned("c", 0), "n1", "10.0.0.3", None);
        relabeled.metadata.labels = Some(labels(&[("app", "web")]));
        let changes = plan_at(&r, &[&available, &just_ready, &relabeled], 100);
        let st = status(&changes).expect("status");
        assert_eq!(st.replicas, 3);
        assert_eq!(st.ready_replicas, Some(2));
        assert_eq!(st.available_replicas, Some(1));
        assert_eq!(st.fully_labeled_replicas, Some(2));
        assert_eq!(st.observed_generation, Some(3));
        assert!(
            changes.contains(&Change::CheckAfter(Duration::from_secs(20))),
            "{changes:?}"
        );
        assert!(creates(&changes).is_empty() && deletes(&changes).is_empty());
    }

    #[test]
    fn unchanged_status_is_not_rewritten() {
        let mut r = rs(1);
        let p = running(owned("a", 0), "n1", "10.0.0.1", Some(0));
        let changes = plan_at(&r, &[&p], 100);
        r.status = status(&changes).cloned();
        assert!(plan_at(&r, &[&p], 100).is_empty());
    }

    #[test]
    fn matching_orphans_are_adopted_and_counted() {
        let r = rs(2);
        let mut orphan = pod("orphan", 0);
        orphan.metadata.labels = Some(labels(&[("app", "web")]));
        let mut stranger = pod("stranger", 0);
        stranger.metadata.labels = Some(labels(&[("app", "db")]));
        let changes = plan_at(&r, &[&orphan, &stranger], 100);
        let adopted: Vec<&Change> = changes
            .iter()
            .filter(|c| matches!(c, Change::Adopt { .. }))
            .collect();
        match adopted[..] {
            [
                Change::Adopt {
                    name,
                    owner_references,
                },
            ] => {
                assert_eq!(name, "orphan");
                assert_eq!(owner_references[0].uid, UID);
                assert_eq!(owner_references[0].controller, Some(true));
            }
            _ => panic!("expected one adoption: {changes:?}"),
        }
        assert_eq!(creates(&changes).len(), 1, "the adopted pod counts");
        let mut going = r.clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0)));
        assert!(
            !plan_at(&going, &[&orphan], 100)
                .iter()
                .any(|c| matches!(c, Change::Adopt { .. }))
        );
    }

    #[test]
    fn terminating_replicaset_creates_nothing() {
        let mut r = rs(2);
        r.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0)));
        let changes = plan_at(&r, &[], 100);
        assert!(creates(&changes).is_empty());
    }

    #[test]
    fn zero_replicas_deletes_all() {
        let r = rs(0);
        let a = owned("a", 0);
        let b = owned("b", 1);
        let changes = plan_at(&r, &[&a, &b], 100);
        assert_eq!(deletes(&changes).len(), 2);
        assert_eq!(
            template_labels(&r)
                .get("pod-template-hash")
                .map(String::as_str),
            Some("abc")
        );
    }
}
