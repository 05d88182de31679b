//! Small facts about Kubernetes objects shared by the controllers and the scheduler: owner
//! references, Pod readiness and availability, label selectors, numeric annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::core::{Selector, SelectorExt};

/// The ownerReference with `controller: true`, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// True when `meta`'s controller is the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_ref(meta).is_some_and(|r| r.uid == uid)
}

/// A controller ownerReference pointing at `owner` (blockOwnerDeletion set, as Kubernetes'
/// controllers do, so foreground deletion waits for the dependent).
pub fn controller_ref_to<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether an owner with `owner` metadata and `selector` may adopt the object with `meta`: the
/// object has no controller, neither is being deleted, the selector is not empty (an empty
/// selector would claim everything) and it selects the object's labels.
pub fn can_adopt(owner: &ObjectMeta, selector: Option<&LabelSelector>, meta: &ObjectMeta) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    !empty
        && controller_ref(meta).is_none()
        && !is_terminating(owner)
        && !is_terminating(meta)
        && meta.namespace == owner.namespace
        && selector_matches(selector, meta.labels.as_ref())
}

/// The ownerReferences of an adopted object: its own plus a controller reference to `owner`.
pub fn adopted_refs<K: Resource<DynamicType = ()>>(
    meta: &ObjectMeta,
    owner: &K,
) -> Vec<OwnerReference> {
    let mut refs = meta.owner_references.clone().unwrap_or_default();
    refs.push(controller_ref_to(owner));
    refs
}

/// True when the object is being deleted.
pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// The Pod's phase, "Pending" when unset.
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Succeeded or Failed: the Pod will never run again.
pub fn pod_is_terminal(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// Counted by its owner: neither terminal nor being deleted (Kubernetes' `IsPodActive`).
pub fn pod_is_active(pod: &Pod) -> bool {
    !pod_is_terminal(pod) && !is_terminating(&pod.metadata)
}

/// When the Pod's Ready condition became True, if it is True.
pub fn pod_ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

/// The Pod's Ready condition is True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' `IsPodAvailable`).
pub fn pod_is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => now.as_second() - since.as_second() >= i64::from(min_ready_seconds),
    }
}

/// Whether a LabelSelector selects `labels`; an invalid selector selects nothing, and an empty
/// one everything (Kubernetes' `LabelSelectorAsSelector`).
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    match Selector::try_from(selector.clone()) {
        Ok(sel) => sel.matches(labels.unwrap_or(&empty)),
        Err(_) => false,
    }
}

/// Whether every key=value of `selector` is among `labels` (a Service's or nodeSelector's map).
pub fn map_selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The whole-number value of annotation `key` (a revision, a deletion cost), 0 when it is
/// absent or not a number.
pub fn annotation_number(meta: &ObjectMeta, key: &str) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for the plan tests.
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    /// Metadata of a workload object (Deployment, ReplicaSet, DaemonSet).
    pub fn workload_meta(name: &str, namespace: &str, uid: &str, generation: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            generation: Some(generation),
            ..Default::default()
        }
    }

    /// A selector matching these labels.
    pub fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            ..Default::default()
        }
    }

    /// A Pod template with these labels and one container "c" running `image`.
    pub fn template(pairs: &[(&str, &str)], image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(pairs)),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// A Pod named `name` in "default" with uid "uid-<name>", created at `ts(created)`.
    pub fn pod(name: &str, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    pub fn with_owner(mut p: Pod, kind: &str, name: &str, uid: &str) -> Pod {
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p
    }

    /// Running on `node`, Ready since `ts(ready_at)` when given.
    pub fn running(mut p: Pod, node: &str, ip: &str, ready_at: Option<i64>) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = Some("Running".into());
        st.pod_ip = Some(ip.into());
        st.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready_at.is_some() { "True" } else { "False" }.into(),
            last_transition_time: ready_at.map(|s| Time(ts(s))),
            ..Default::default()
        }]);
        p
    }

    pub fn terminating(mut p: Pod, at: i64) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(ts(at)));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn availability_honours_min_ready_seconds() {
        let p = running(pod("a", 0), "n1", "10.0.0.1", Some(10));
        assert!(pod_is_ready(&p));
        assert!(pod_is_available(&p, 0, ts(10)));
        assert!(!pod_is_available(&p, 5, ts(12)));
        assert!(pod_is_available(&p, 5, ts(15)));
        let np = running(pod("b", 0), "n1", "10.0.0.2", None);
        assert!(!pod_is_available(&np, 0, ts(100)));
    }

    #[test]
    fn numeric_annotations_default_to_zero() {
        let mut meta = ObjectMeta::default();
        assert_eq!(annotation_number(&meta, "n"), 0);
        meta.annotations = Some(labels(&[("n", "-7"), ("bad", "x")]));
        assert_eq!(annotation_number(&meta, "n"), -7);
        assert_eq!(annotation_number(&meta, "bad"), 0);
    }

    #[test]
    fn selectors_match_labels() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        };
        assert!(selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("x", "y")]))
        ));
        assert!(!selector_matches(&sel, Some(&labels(&[("app", "db")]))));
        assert!(!selector_matches(&sel, None));
        assert!(map_selects(
            &labels(&[("a", "1")]),
            Some(&labels(&[("a", "1")]))
        ));
        assert!(!map_selects(&labels(&[("a", "1")]), None));
    }
}
