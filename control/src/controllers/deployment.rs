//! The Deployment controller: one ReplicaSet per Pod template (named `<deployment>-<hash>`),
//! rolled out with the RollingUpdate or Recreate strategy, old ReplicaSets pruned to
//! revisionHistoryLimit, and the Deployment's status and conditions reported.
//!
//! The hash is Kubernetes' `ComputeHash` as [`super::podtemplate::template_hash`] computes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::objects::{
    adopted_refs, annotation_number, can_adopt, controller_ref_to, is_controlled_by, is_terminating,
};
use super::podtemplate::{has_hash, put_hash, template_hash};
use super::runtime::{Controller, Informers, Touch, WorkQueue, controller_key, key_of};
use super::runtime::{Reconciler, Requeue, delete_background, is_already_exists, split_key};

/// The label that ties a ReplicaSet and its Pods to one template of a Deployment.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation kubectl rollout history reads.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// progressDeadlineSeconds when unset.
pub const DEFAULT_PROGRESS_DEADLINE: i32 = 600;
/// The Progressing reason of a rollout that made no progress within its deadline.
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// revisionHistoryLimit when unset.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// What the Deployment plan sees besides the Deployment.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// ReplicaSets of the Deployment's namespace (the plan picks those it controls).
    pub replicasets: Vec<&'a ReplicaSet>,
    /// The current time, for condition timestamps.
    pub now: Timestamp,
}

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Make this orphan ReplicaSet ours: set its ownerReferences to these.
    Adopt {
        name: String,
        owner_references: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    },
    /// Reconcile again after this long (when a stalled rollout would pass its deadline).
    CheckAfter(std::time::Duration),
    /// Set a ReplicaSet's revision annotation.
    SetRevision { name: String, revision: i64 },
    /// Set the Deployment's revision annotation.
    AnnotateRevision(i64),
    /// Create this ReplicaSet.
    CreateReplicaSet(Box<ReplicaSet>),
    /// Set a ReplicaSet's spec.replicas.
    ScaleReplicaSet { name: String, replicas: i32 },
    /// Delete an old ReplicaSet beyond revisionHistoryLimit.
    DeleteReplicaSet(String),
    /// Write this status.
    UpdateStatus(Box<DeploymentStatus>),
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn actual(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation_number(&rs.metadata, REVISION_ANNOTATION)
}

/// Resolves an IntOrString against `total`: percentages round up for surge, down for
/// unavailability (Kubernetes' `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(
    v: Option<&IntOrString>,
    default_percent: i32,
    total: i32,
    round_up: bool,
) -> i32 {
    let percent = |p: i32| {
        let x = i64::from(p) * i64::from(total);
        (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
    };
    match v {
        None => percent(default_percent),
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse().ok()) {
            Some(p) => percent(p),
            None => s.parse().unwrap_or(0),
        },
    }
}

/// maxSurge and maxUnavailable of a RollingUpdate Deployment, made consistent: both zero would
/// deadlock, so maxUnavailable becomes 1 (Kubernetes' `ResolveFenceposts`).
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), 25, desired, true).max(0);
    let unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        25,
        desired,
        false,
    )
    .clamp(0, desired.max(0));
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// The ReplicaSet that runs `d`'s current template, named `<deployment>-<hash>`.
pub fn new_replicaset(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template;
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    put_hash(&mut tmeta.labels, TEMPLATE_HASH_LABEL, hash);
    let mut selector = spec.selector;
    put_hash(&mut selector.match_labels, TEMPLATE_HASH_LABEL, hash);
    let name = d.metadata.name.clone().unwrap_or_default();
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: tmeta.labels.clone(),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![controller_ref_to(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Plans the next step of `d`'s rollout and its status.
pub fn plan(d: &Deployment, snap: &Snapshot<'_>) -> Vec<Change> {
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1).max(0);
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision);
    // Orphan ReplicaSets the selector matches are adopted (Kubernetes' `ClaimReplicaSets`), so
    // a Deployment re-created after an orphaning delete takes its ReplicaSets back.
    let adoptable: Vec<&ReplicaSet> = snap
        .replicasets
        .iter()
        .copied()
        .filter(|rs| can_adopt(&d.metadata, Some(&spec.selector), &rs.metadata))
        .collect();
    let mut owned: Vec<&ReplicaSet> = snap
        .replicasets
        .iter()
        .copied()
        .filter(|rs| is_controlled_by(&rs.metadata, uid) && !is_terminating(&rs.metadata))
        .chain(adoptable.iter().copied())
        .collect();
    // Oldest first: scale-downs and history pruning start with the oldest revision.
    owned.sort_by_key(|rs| {
        (
            revision(rs),
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.metadata.name.clone(),
        )
    });
    let is_new = |rs: &ReplicaSet| has_hash(&rs.metadata, TEMPLATE_HASH_LABEL, &hash);
    let new_rs = owned.iter().copied().find(|rs| is_new(rs));
    let old: Vec<&ReplicaSet> = owned.iter().copied().filter(|rs| !is_new(rs)).collect();

    let mut changes: Vec<Change> = adoptable
        .iter()
        .map(|rs| Change::Adopt {
            name: rs.metadata.name.clone().unwrap_or_default(),
            owner_references: adopted_refs(&rs.metadata, d),
        })
        .collect();
    let adopting = changes.len();
    if !is_terminating(&d.metadata) {
        if spec.paused == Some(true) {
            // A paused Deployment only follows scaling of its current ReplicaSet.
            if let Some(rs) = new_rs
                && old.iter().all(|o| spec_replicas(o) == 0)
                && spec_replicas(rs) != desired
            {
                changes.push(scale(rs, desired));
            }
        } else if is_recreate(d) {
            plan_recreate(d, &hash, desired, new_rs, &old, &mut changes);
        } else {
            plan_rolling(d, &hash, desired, new_rs, &old, &mut changes);
        }
        if changes.len() == adopting {
            prune_history(&spec, &old, &mut changes);
        }
    }
    // The current ReplicaSet carries the highest revision (a rollback to an old template makes
    // its ReplicaSet current again), and the Deployment shows it, as `kubectl rollout history`
    // and `undo` expect.
    if let Some(rs) = new_rs {
        let max_old = old.iter().map(|o| revision(o)).max().unwrap_or(0);
        let rev = if revision(rs) <= max_old {
            max_old + 1
        } else {
            revision(rs)
        };
        if rev != revision(rs) {
            changes.push(Change::SetRevision {
                name: rs.metadata.name.clone().unwrap_or_default(),
                revision: rev,
            });
        }
        let shown = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION_ANNOTATION));
        if shown != Some(&rev.to_string()) {
            changes.push(Change::AnnotateRevision(rev));
        }
    }
    let progressed = changes.iter().any(|c| {
        matches!(
            c,
            Change::CreateReplicaSet(_)
                | Change::ScaleReplicaSet { .. }
                | Change::DeleteReplicaSet(_)
        )
    });
    let status = status_of(d, progressed, new_rs, &owned, snap.now);
    if d.status.as_ref() != Some(&status) {
        changes.push(Change::UpdateStatus(Box::new(status.clone())));
    }
    // A rollout in progress is looked at again when its deadline would pass.
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    if let Some(c) = progressing
        .filter(|c| c.status == "True" && c.reason.as_deref() != Some("NewReplicaSetAvailable"))
    {
        let deadline = spec
            .progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE);
        let since = c.last_update_time.as_ref().map(|t| t.0).unwrap_or(snap.now);
        let left = i64::from(deadline) - (snap.now.as_second() - since.as_second()) + 1;
        changes.push(Change::CheckAfter(std::time::Duration::from_secs(
            left.max(1) as u64,
        )));
    }
    changes
}

fn scale(rs: &ReplicaSet, replicas: i32) -> Change {
    Change::ScaleReplicaSet {
        name: rs.metadata.name.clone().unwrap_or_default(),
        replicas,
    }
}

fn next_revision(old: &[&ReplicaSet]) -> i64 {
    old.iter().map(|rs| revision(rs)).max().unwrap_or(0) + 1
}

/// Recreate: every old Pod is gone before the new ReplicaSet scales up.
fn plan_recreate(
    d: &Deployment,
    hash: &str,
    desired: i32,
    new_rs: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
    changes: &mut Vec<Change>,
) {
    let scaling_down: Vec<Change> = old
        .iter()
        .filter(|rs| spec_replicas(rs) > 0)
        .map(|rs| scale(rs, 0))
        .collect();
    if !scaling_down.is_empty() {
        changes.extend(scaling_down);
        return;
    }
    if old.iter().any(|rs| actual(rs) > 0) {
        // Old Pods still run; the ReplicaSet status events bring us back.
        return;
    }
    match new_rs {
        None => changes.push(Change::CreateReplicaSet(Box::new(new_replicaset(
            d,
            hash,
            desired,
            next_revision(old),
        )))),
        Some(rs) if spec_replicas(rs) != desired => changes.push(scale(rs, desired)),
        Some(_) => {}
    }
}

/// RollingUpdate: scale the new ReplicaSet up within maxSurge, then old ones down within
/// maxUnavailable (Kubernetes' `rolloutRolling`: one direction per pass).
fn plan_rolling(
    d: &Deployment,
    hash: &str,
    desired: i32,
    new_rs: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
    changes: &mut Vec<Change>,
) {
    let (surge, max_unavailable) = surge_and_unavailable(d);
    let old_count: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    let max_total = desired + surge;

    // Scale up (or create) the new ReplicaSet.
    let new_replicas = new_rs.map(spec_replicas).unwrap_or(0);
    let target = if new_replicas > desired {
        desired
    } else {
        let room = (max_total - old_count - new_replicas).max(0);
        new_replicas + room.min(desired - new_replicas)
    };
    match new_rs {
        None => {
            changes.push(Change::CreateReplicaSet(Box::new(new_replicaset(
                d,
                hash,
                target,
                next_revision(old),
            ))));
            return;
        }
        Some(rs) if target != new_replicas => {
            changes.push(scale(rs, target));
            return;
        }
        Some(_) => {}
    }
    let Some(new_rs) = new_rs else { return };

    // Scale old ReplicaSets down without going below minAvailable.
    let all_count = old_count + new_replicas;
    let min_available = desired - max_unavailable;
    let new_unavailable = (new_replicas - available(new_rs)).max(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    let mut replicas: Vec<i32> = old.iter().map(|rs| spec_replicas(rs)).collect();
    // First the old Pods that are not available: removing them costs no availability.
    let mut cleaned = 0;
    for (i, rs) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (replicas[i] - available(rs)).max(0);
        let n = unhealthy.min(max_scaled_down - cleaned);
        replicas[i] -= n;
        cleaned += n;
    }
    // Then available ones, as far as minAvailable allows.
    let available_count: i32 = old.iter().map(|rs| available(rs)).sum::<i32>() + available(new_rs);
    let mut budget = (available_count - min_available).min(max_scaled_down - cleaned);
    for r in replicas.iter_mut() {
        if budget <= 0 {
            break;
        }
        let n = (*r).min(budget);
        *r -= n;
        budget -= n;
    }
    for (rs, r) in old.iter().zip(replicas) {
        if r != spec_replicas(rs) {
            changes.push(scale(rs, r));
        }
    }
}

/// Deletes the oldest fully scaled-down ReplicaSets beyond revisionHistoryLimit.
fn prune_history(
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
    old: &[&ReplicaSet],
    changes: &mut Vec<Change>,
) {
    let limit = spec
        .revision_history_limit
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0) as usize;
    let idle: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && actual(rs) == 0)
        .collect();
    if idle.len() > limit {
        changes.extend(
            idle[..idle.len() - limit]
                .iter()
                .map(|rs| Change::DeleteReplicaSet(rs.metadata.name.clone().unwrap_or_default())),
        );
    }
}

fn condition(
    existing: Option<&DeploymentStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let prev = existing
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    match prev {
        Some(p)
            if p.status == status
                && p.reason.as_deref() == Some(reason)
                && p.message.as_deref() == Some(&message) =>
        {
            p.clone()
        }
        Some(p) if p.status == status => DeploymentCondition {
            last_update_time: Some(Time(now)),
            reason: Some(reason.into()),
            message: Some(message),
            ..p.clone()
        },
        _ => DeploymentCondition {
            type_: type_.into(),
            status,
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        },
    }
}

/// The Deployment's status from its ReplicaSets (Kubernetes' `calculateStatus`).
pub fn status_of(
    d: &Deployment,
    progressed: bool,
    new_rs: Option<&ReplicaSet>,
    owned: &[&ReplicaSet],
    now: Timestamp,
) -> DeploymentStatus {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0);
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(|rs| f(rs)).sum::<i32>();
    let replicas = sum(&actual);
    let spec_total = sum(&spec_replicas);
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = sum(&available);
    let terminating = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.terminating_replicas)
            .unwrap_or(0)
    });
    let updated = new_rs.map(actual).unwrap_or(0);
    let max_unavailable = if is_recreate(d) || desired == 0 {
        0
    } else {
        surge_and_unavailable(d).1
    };
    let existing = d.status.as_ref();

    let available_cond = if avail >= desired - max_unavailable {
        condition(
            existing,
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        condition(
            existing,
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    let new_name = new_rs
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let complete = new_rs.is_some()
        && updated == desired
        && replicas == desired
        && avail == desired
        && new_rs.map(spec_replicas) == Some(desired);
    let progressing_cond = if complete {
        condition(
            existing,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            now,
        )
    } else {
        let deadline = d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE);
        let prev = existing
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Progressing"));
        let counters = |s: &DeploymentStatus| {
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
            )
        };
        let advanced = progressed
            || existing.is_none_or(|s| {
                counters(s) != (Some(replicas), Some(updated), Some(ready), Some(avail))
            });
        let (reason, message) = if new_rs.is_some() {
            (
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            )
        } else {
            (
                "NewReplicaSetCreated",
                "Creating a new ReplicaSet.".to_string(),
            )
        };
        let stalled_since = prev.and_then(|c| c.last_update_time.as_ref()).map(|t| t.0);
        let timed_out = prev.is_some_and(|c| c.reason.as_deref() == Some(DEADLINE_EXCEEDED));
        if advanced {
            // Progress refreshes the condition, so the deadline counts from the last step.
            let mut c = condition(existing, "Progressing", true, reason, message, now);
            c.last_update_time = Some(Time(now));
            c
        } else if timed_out
            || stalled_since.is_some_and(|t| now.as_second() - t.as_second() > i64::from(deadline))
        {
            condition(
                existing,
                "Progressing",
                false,
                DEADLINE_EXCEEDED,
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                now,
            )
        } else {
            condition(existing, "Progressing", true, reason, message, now)
        }
    };
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((spec_total - avail).max(0)),
        terminating_replicas: Some(terminating),
        collision_count: existing.and_then(|s| s.collision_count),
        conditions: Some(vec![available_cond, progressing_cond]),
    }
}

/// The Deployment loop: reconciles a Deployment key against the ReplicaSet store.
pub(crate) struct DeploymentLoop {
    pub(crate) client: Client,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) replicasets: Store<ReplicaSet>,
}

impl Reconciler for DeploymentLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let (ns, name) = split_key(key);
        let ns = ns.unwrap_or_default();
        let Some(d) = self.deployments.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let rss: Vec<Arc<ReplicaSet>> = self
            .replicasets
            .state_filter(|rs| rs.metadata.namespace.as_deref() == Some(ns));
        let snap = Snapshot {
            replicasets: rss.iter().map(|r| &**r).collect(),
            now: Timestamp::now(),
        };
        let changes = plan(&d, &snap);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let mut requeue = None;
        for change in changes {
            match change {
                Change::CheckAfter(d) => requeue = Some(d),
                Change::Adopt {
                    name,
                    owner_references,
                } => {
                    let patch =
                        serde_json::json!({ "metadata": { "ownerReferences": owner_references } });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    tracing::info!(deployment = key, replicaset = name, "adopted replicaset");
                }
                Change::SetRevision { name, revision } => {
                    let patch = serde_json::json!({ "metadata": { "annotations": { REVISION_ANNOTATION: revision.to_string() } } });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                Change::AnnotateRevision(revision) => {
                    let patch = serde_json::json!({ "metadata": { "annotations": { REVISION_ANNOTATION: revision.to_string() } } });
                    deployments
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                Change::CreateReplicaSet(rs) => match api.create(&PostParams::default(), &rs).await
                {
                    Ok(rs) => tracing::info!(
                        deployment = key,
                        replicaset = rs.metadata.name,
                        "created replicaset"
                    ),
                    // Our store has not seen it yet; the next event brings it.
                    Err(e) if is_already_exists(&e) => {}
                    Err(e) => return Err(e),
                },
                Change::ScaleReplicaSet { name, replicas } => {
                    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    tracing::info!(
                        deployment = key,
                        replicaset = name,
                        replicas,
                        "scaled replicaset"
                    );
                }
                Change::DeleteReplicaSet(name) => {
                    if delete_background(&api, &name).await? {
                        tracing::info!(deployment = key, replicaset = name, "pruned old replicaset")
                    }
                }
                Change::UpdateStatus(status) => {
                    let mut obj = (*d).clone();
                    obj.status = Some(*status);
                    deployments
                        .replace_status(name, &PostParams::default(), &obj)
                        .await?;
                }
            }
        }
        Ok(requeue)
    }
}

/// The Deployment controller: a Deployment's key for every change of it, and its owner's for
/// every change of a ReplicaSet it controls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeploymentController;

impl Controller for DeploymentController {
    const NAME: &'static str = "deployment";
    type Loop = DeploymentLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> DeploymentLoop {
        let deployments = informers.all::<Deployment>();
        let q = queue.clone();
        deployments.on(move |t| match t {
            Touch::Changed(d) | Touch::Deleted(d) => q.add(key_of(d)),
            Touch::Relisted(all) => all.iter().for_each(|d| q.add(key_of(&**d))),
        });
        let deployments = deployments.store();
        let replicasets = informers.all::<ReplicaSet>();
        let q = queue.clone();
        replicasets.on(move |t| {
            let owner = |rs: &ReplicaSet| {
                if let Some(k) = controller_key(&rs.metadata, "Deployment") {
                    q.add(k);
                }
            };
            match t {
                Touch::Changed(rs) | Touch::Deleted(rs) => owner(rs),
                Touch::Relisted(all) => all.iter().for_each(|rs| owner(rs)),
            }
        });
        DeploymentLoop {
            client: informers.client().clone(),
            deployments,
            replicasets: informers.all::<ReplicaSet>().store(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::testutil::{selector, template, ts, workload_meta};
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };

    const UID: &str = "d-uid";

    fn deployment(replicas: i32, image: &str) -> Deployment {
        Deployment {
            metadata: workload_meta("web", "default", UID, 2),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: selector(&[("app", "web")]),
                template: template(&[("app", "web")], image),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rolling(mut d: Deployment, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        d.spec.as_mut().expect("spec").strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(surge),
                max_unavailable: Some(unavailable),
            }),
        });
        d
    }

    /// The ReplicaSet `d` would create, with `replicas` of which `avail` are available.
    fn rs_for(d: &Deployment, rev: i64, replicas: i32, avail: i32) -> ReplicaSet {
        let hash = template_hash(&d.spec.as_ref().expect("spec").template, None);
        let mut rs = new_replicaset(d, &hash, replicas, rev);
        rs.metadata.uid = Some(format!("rs-{hash}"));
        rs.status = Some(ReplicaSetStatus {
            replicas,
            ready_replicas: Some(avail),
            available_replicas: Some(avail),
            ..Default::default()
        });
        rs
    }

    /// Plans `d` against these ReplicaSets at `ts(now)`.
    fn plan_at(d: &Deployment, replicasets: &[&ReplicaSet], now: i64) -> Vec<Change> {
        plan(
            d,
            &Snapshot {
                replicasets: replicasets.to_vec(),
                now: ts(now),
            },
        )
    }

    /// The condition of type `type_` in `st`.
    fn condition_of(st: &DeploymentStatus, type_: &str) -> DeploymentCondition {
        st.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {st:?}"))
            .clone()
    }

    fn scales(changes: &[Change]) -> Vec<(String, i32)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::ScaleReplicaSet { name, replicas } => Some((name.clone(), *replicas)),
                _ => None,
            })
            .collect()
    }

    fn created(changes: &[Change]) -> Option<&ReplicaSet> {
        changes.iter().find_map(|c| match c {
            Change::CreateReplicaSet(rs) => Some(&**rs),
            _ => None,
        })
    }

    fn status(changes: &[Change]) -> Option<&DeploymentStatus> {
        changes.iter().find_map(|c| match c {
            Change::UpdateStatus(s) => Some(&**s),
            _ => None,
        })
    }

    #[test]
    fn first_sync_creates_labelled_owned_replicaset() {
        let d = deployment(3, "a");
        let changes = plan_at(&d, &[], 0);
        let rs = created(&changes).expect("create");
        let hash = template_hash(&d.spec.as_ref().expect("spec").template, None);
        assert_eq!(
            rs.metadata.name.as_deref(),
            Some(format!("web-{hash}").as_str())
        );
        let spec = rs.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.selector
                .match_labels
                .as_ref()
                .and_then(|l| l.get(TEMPLATE_HASH_LABEL)),
            Some(&hash)
        );
        let tl = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert_eq!(tl.get(TEMPLATE_HASH_LABEL), Some(&hash));
        assert_eq!(tl.get("app").map(String::as_str), Some("web"));
        let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Deployment", UID, Some(true))
        );
        assert_eq!(
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .map(String::as_str),
            Some("1")
        );
        let st = status(&changes).expect("status");
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(st.updated_replicas, Some(0));
    }

    #[test]
    fn scaling_changes_replicaset_replicas() {
        let d = deployment(5, "a");
        let rs = rs_for(&d, 1, 3, 3);
        let changes = plan_at(&d, &[&rs], 0);
        assert_eq!(
            scales(&changes),
            vec![(rs.metadata.name.clone().expect("name"), 5)]
        );
        let d = deployment(1, "a");
        let changes = plan_at(&d, &[&rs], 0);
        assert_eq!(
            scales(&changes),
            vec![(rs.metadata.name.clone().expect("name"), 1)]
        );
    }

    #[test]
    fn rolling_update_steps_respect_surge_and_unavailability() {
        let old_d = deployment(4, "a");
        let d = rolling(deployment(4, "b"), IntOrString::Int(1), IntOrString::Int(1));
        let old = rs_for(&old_d, 1, 4, 4);
        let old_name = old.metadata.name.clone().expect("name");

        // Step 1: the new ReplicaSet is created with maxSurge replicas.
        let changes = plan_at(&d, &[&old], 0);
        let new = created(&changes).expect("new rs");
        assert_eq!(new.spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert_eq!(
            new.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .map(String::as_str),
            Some("2")
        );
        assert!(scales(&changes).is_empty(), "one direction per pass");

        // Step 2: new has 1 (not yet available): old may drop by maxUnavailable only.
        let new_rs = rs_for(&d, 2, 1, 0);
        let new_name = new_rs.metadata.name.clone().expect("name");
        let changes = plan_at(&d, &[&old, &new_rs], 0);
        assert_eq!(scales(&changes), vec![(old_name.clone(), 3)]);

        // Step 3: old at 3, new 1 available: the new one can surge to 2.
        let old3 = rs_for(&old_d, 1, 3, 3);
        let new1 = rs_for(&d, 2, 1, 1);
        let changes = plan_at(&d, &[&old3, &new1], 0);
        assert_eq!(scales(&changes), vec![(new_name.clone(), 2)]);

        // Step 4: total 5 = 4 + surge; 4 available: old drops to 2 keeping 3 available.
        let new2 = rs_for(&d, 2, 2, 1);
        let changes = plan_at(&d, &[&old3, &new2], 0);
        assert_eq!(scales(&changes), vec![(old_name.clone(), 2)]);

        // Final: all new available, old scaled to 0.
        let old0 = rs_for(&old_d, 1, 0, 0);
        let new4 = rs_for(&d, 2, 4, 4);
        let mut d_done = d.clone();
        let changes = plan_at(&d_done, &[&old0, &new4], 0);
        assert!(scales(&changes).is_empty());
        let st = status(&changes).expect("status").clone();
        assert_eq!(
            (st.replicas, st.updated_replicas, st.available_replicas),
            (Some(4), Some(4), Some(4))
        );
        let progressing = condition_of(&st, "Progressing");
        assert_eq!(
            progressing.reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        d_done.status = Some(st);
        assert!(changes.contains(&Change::AnnotateRevision(2)));
        d_done.metadata.annotations = Some(BTreeMap::from([(
            REVISION_ANNOTATION.to_string(),
            "2".to_string(),
        )]));
        assert!(
            plan_at(&d_done, &[&old0, &new4], 9).is_empty(),
            "steady state"
        );
    }

    #[test]
    fn rollout_never_drops_below_min_available() {
        let old_d = deployment(3, "a");
        let d = rolling(deployment(3, "b"), IntOrString::Int(1), IntOrString::Int(0));
        let old = rs_for(&old_d, 1, 3, 3);
        let new = rs_for(&d, 2, 1, 0);
        let changes = plan_at(&d, &[&old, &new], 0);
        assert!(
            scales(&changes).is_empty(),
            "new pod not available yet: {changes:?}"
        );
        let new = rs_for(&d, 2, 1, 1);
        let changes = plan_at(&d, &[&old, &new], 0);
        assert_eq!(
            scales(&changes),
            vec![(old.metadata.name.clone().expect("name"), 2)]
        );
    }

    #[test]
    fn unavailable_old_pods_are_removed_first() {
        let old_d = deployment(2, "a");
        let d = rolling(deployment(2, "b"), IntOrString::Int(0), IntOrString::Int(1));
        // Old has 2 replicas of which none are available (e.g. crash looping).
        let old = rs_for(&old_d, 1, 2, 0);
        let new = rs_for(&d, 2, 0, 0);
        let changes = plan_at(&d, &[&old, &new], 0);
        // maxScaledDown = 2 - 1 - 0 = 1: one unhealthy old Pod goes.
        assert_eq!(
            scales(&changes),
            vec![(old.metadata.name.clone().expect("name"), 1)]
        );
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(
            scaled_value(Some(&IntOrString::String("25%".into())), 0, 3, true),
            1
        );
        assert_eq!(
            scaled_value(Some(&IntOrString::String("25%".into())), 0, 3, false),
            0
        );
        assert_eq!(scaled_value(None, 25, 10, true), 3);
        assert_eq!(scaled_value(None, 25, 10, false), 2);
        let d = rolling(
            deployment(1, "a"),
            IntOrString::Int(0),
            IntOrString::String("0%".into()),
        );
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }

    #[test]
    fn recreate_scales_old_to_zero_and_waits_for_pods() {
        let old_d = deployment(2, "a");
        let mut d = deployment(2, "b");
        d.spec.as_mut().expect("spec").strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let old = rs_for(&old_d, 1, 2, 2);
        let changes = plan_at(&d, &[&old], 0);
        assert_eq!(
            scales(&changes),
            vec![(old.metadata.name.clone().expect("name"), 0)]
        );
        assert!(created(&changes).is_none());

        // Scaled to 0 but Pods still running: wait.
        let mut old_draining = rs_for(&old_d, 1, 0, 0);
        old_draining.status.as_mut().expect("status").replicas = 2;
        let changes = plan_at(&d, &[&old_draining], 0);
        assert!(created(&changes).is_none() && scales(&changes).is_empty());

        let old_gone = rs_for(&old_d, 1, 0, 0);
        let changes = plan_at(&d, &[&old_gone], 0);
        assert_eq!(
            created(&changes)
                .and_then(|rs| rs.spec.as_ref())
                .and_then(|s| s.replicas),
            Some(2)
        );
    }

    #[test]
    fn history_is_pruned_to_limit_oldest_first() {
        let mut d = deployment(1, "z");
        d.spec.as_mut().expect("spec").revision_history_limit = Some(1);
        let olds: Vec<ReplicaSet> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, img)| rs_for(&deployment(1, img), i as i64 + 1, 0, 0))
            .collect();
        let cur = rs_for(&d, 4, 1, 1);
        let mut all: Vec<&ReplicaSet> = olds.iter().collect();
        all.push(&cur);
        let changes = plan_at(&d, &all, 0);
        let deleted: Vec<&str> = changes
            .iter()
            .filter_map(|c| match c {
                Change::DeleteReplicaSet(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            vec![
                olds[0].metadata.name.as_deref().expect("n"),
                olds[1].metadata.name.as_deref().expect("n")
            ]
        );
    }

    #[test]
    fn rollback_makes_the_old_replicaset_current_with_a_new_revision() {
        let d = deployment(1, "a");
        let cur = rs_for(&d, 1, 1, 1);
        let newer = rs_for(&deployment(1, "b"), 2, 0, 0);
        let changes = plan_at(&d, &[&cur, &newer], 0);
        assert!(
            changes.contains(&Change::SetRevision {
                name: cur.metadata.name.clone().expect("name"),
                revision: 3
            }),
            "{changes:?}"
        );
        assert!(changes.contains(&Change::AnnotateRevision(3)));
        // Once annotated, nothing more.
        let mut cur3 = cur.clone();
        cur3.metadata.annotations = Some(BTreeMap::from([(
            REVISION_ANNOTATION.to_string(),
            "3".to_string(),
        )]));
        let mut d3 = d.clone();
        d3.metadata.annotations = Some(BTreeMap::from([(
            REVISION_ANNOTATION.to_string(),
            "3".to_string(),
        )]));
        let changes = plan_at(&d3, &[&cur3, &newer], 0);
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, Change::SetRevision { .. } | Change::AnnotateRevision(_))),
            "{changes:?}"
        );
    }

    #[test]
    fn stalled_rollout_exceeds_its_progress_deadline() {
        let mut d = deployment(2, "a");
        d.spec.as_mut().expect("spec").progress_deadline_seconds = Some(60);
        let rs = rs_for(&d, 1, 2, 0);
        let changes = plan_at(&d, &[&rs], 0);
        let st = status(&changes).expect("status").clone();
        let p = condition_of(&st, "Progressing");
        assert_eq!(
            (p.status.as_str(), p.reason.as_deref()),
            ("True", Some("ReplicaSetUpdated"))
        );
        assert!(
            changes.contains(&Change::CheckAfter(std::time::Duration::from_secs(61))),
            "{changes:?}"
        );
        d.status = Some(st);
        // No progress for 30 s: unchanged.
        let changes = plan_at(&d, &[&rs], 30);
        assert!(status(&changes).is_none(), "{changes:?}");
        // Past the deadline: Progressing=False.
        let changes = plan_at(&d, &[&rs], 61);
        let st = status(&changes).expect("status").clone();
        let p = condition_of(&st, "Progressing");
        assert_eq!(
            (p.status.as_str(), p.reason.as_deref()),
            ("False", Some(DEADLINE_EXCEEDED))
        );
        d.status = Some(st);
        // A Pod becoming available is progress again.
        let better = rs_for(&d, 1, 2, 1);
        let changes = plan_at(&d, &[&better], 70);
        let p = condition_of(status(&changes).expect("status"), "Progressing");
        assert_eq!(
            (p.status.as_str(), p.reason.as_deref()),
            ("True", Some("ReplicaSetUpdated"))
        );
    }

    #[test]
    fn orphaned_replicasets_are_adopted() {
        let d = deployment(2, "a");
        let mut orphan = rs_for(&d, 1, 2, 2);
        orphan.metadata.owner_references = None;
        let changes = plan_at(&d, &[&orphan], 0);
        assert!(
            matches!(&changes[0], Change::Adopt { name, owner_references }
            if Some(name) == orphan.metadata.name.as_ref() && owner_references[0].uid == UID)
        );
        assert!(
            created(&changes).is_none(),
            "the adopted ReplicaSet is the current one"
        );
        assert!(scales(&changes).is_empty());
    }

    #[test]
    fn replicasets_of_others_are_ignored_and_status_conditions_report_unavailability() {
        let d = deployment(2, "a");
        let mut foreign = rs_for(&d, 1, 2, 2);
        foreign.metadata.owner_references.as_mut().expect("owners")[0].uid = "other".into();
        let changes = plan_at(&d, &[&foreign], 0);
        assert!(created(&changes).is_some());

        let mine = rs_for(&d, 1, 2, 0);
        let changes = plan_at(&d, &[&mine], 0);
        let st = status(&changes).expect("status");
        let avail = condition_of(st, "Available");
        // maxUnavailable defaults to 25% of 2 = 0, so 0 available is below the minimum.
        assert_eq!(avail.status, "False");
        assert_eq!(st.unavailable_replicas, Some(2));
    }
}
