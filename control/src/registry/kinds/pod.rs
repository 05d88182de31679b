//! Pod (core/v1): pkg/registry/core/pod/strategy.go and its BindingREST. A Pod's status is its
//! node agent's; a bound Pod is deleted gracefully (the agent stops it, then deletes it with
//! `gracePeriodSeconds=0`); `pods/binding` assigns it to a node once.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::{
    error::{ApiError, Cause},
    now_rfc3339,
    protobuf::{Field, Ignore, Msg, OBJECT_META, POD_SPEC, f},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, pod_spec_defaults, set_default},
    printers::{Column, age, arr, n, name, or_none, s},
    strategy::{Strategy, reset_status, schema_of},
    validation::pod_spec,
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    subresources: &["status", "binding", "log", "exec", "attach", "portforward"],
    verbs: ALL_VERBS,
    categories: &["all"],
    strategy: &Pods,
};

struct Pods;

const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
    f(3, "status", Ignore),
];

/// What ValidatePodUpdate says when a bound Pod's node changes.
const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

impl Strategy for Pods {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::Pod>(generator)
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj, json!({}));
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        if let Some(spec) = child(root, "spec") {
            pod_spec_defaults(spec);
        }
        if let Some(status) = child(root, "status") {
            set_default(status, "phase", json!("Pending"));
        }
    }

    fn validate(&self, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        pod_spec(&obj["spec"], "spec", causes);
        if let Some(old) = old {
            let (was, is) = (&old["spec"]["nodeName"], &obj["spec"]["nodeName"]);
            if was.as_str().is_some_and(|s| !s.is_empty()) && was != is {
                causes.push(Cause::forbidden("spec.nodeName", POD_UPDATE_FORBIDDEN));
            }
        }
    }

    /// CheckGracefulDelete: a Pod bound to a node and not yet terminal waits for its node's
    /// agent, for the requested grace period or its `terminationGracePeriodSeconds`.
    fn graceful_delete(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        let bound = obj["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        let grace = requested.unwrap_or_else(|| {
            obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
        });
        (bound && !terminal && grace > 0).then_some(grace)
    }

    /// BindingREST.assignPod: sets `spec.nodeName` once and the PodScheduled condition.
    fn bind(&self, pod: &mut Value, node: &str) -> Result<(), ApiError> {
        let name = s(&pod["metadata"]["name"]);
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::Conflict(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
            return Err(ApiError::Conflict(format!(
                "pod {name} is already assigned to node \"{bound}\""
            )));
        }
        pod["spec"]["nodeName"] = json!(node);
        let mut conditions: Vec<Value> = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c["type"] != "PodScheduled");
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        pod["status"]["conditions"] = Value::Array(conditions);
        Ok(())
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let (spec, status) = (&o["spec"], &o["status"]);
        let total = arr(&spec["containers"]).len();
        let ready = arr(&status["containerStatuses"])
            .iter()
            .filter(|c| c["ready"] == true)
            .count();
        let restarts: i64 = arr(&status["containerStatuses"])
            .iter()
            .map(|c| n(&c["restartCount"]))
            .sum();
        let gates = arr(&spec["readinessGates"]);
        let gates = if gates.is_empty() {
            "<none>".to_string()
        } else {
            format!("0/{}", gates.len())
        };
        vec![
            name(o),
            json!(format!("{ready}/{total}")),
            json!(pod_status(o)),
            json!(restarts.to_string()),
            json!(age(o)),
            json!(or_none(s(&status["podIP"]))),
            json!(or_none(s(&spec["nodeName"]))),
            json!(or_none(s(&status["nominatedNodeName"]))),
            json!(gates),
        ]
    }
}

/// printPod's STATUS: the Pod's reason or phase, a container's waiting or terminated reason,
/// Terminating once marked for deletion.
fn pod_status(pod: &Value) -> String {
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    for cs in arr(&pod["status"]["containerStatuses"]) {
        if let Some(r) = cs["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        } else if let Some(r) = cs["state"]["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        }
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        reason = "Terminating".into();
    }
    reason
}
