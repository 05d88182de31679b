//! DaemonSet (apps/v1): pkg/registry/apps/daemonset/strategy.go, SetDefaults_DaemonSet and
//! ValidateDaemonSet.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::error::Cause;
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, set_default, template_defaults},
    printers::{Column, age, key_values, n, name},
    strategy::{Strategy, reset_status, schema_of},
    validation::workload,
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    plural: "daemonsets",
    singular: "daemonset",
    namespaced: true,
    short_names: &["ds"],
    subresources: &["status"],
    verbs: ALL_VERBS,
    categories: &["all"],
    strategy: &DaemonSets,
};

struct DaemonSets;

impl Strategy for DaemonSets {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::apps::v1::DaemonSet>(generator)
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj, json!({}));
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        if let Some(spec) = child(root, "spec") {
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            template_defaults(spec);
        }
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        workload(obj, false, causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let status = &o["status"];
        vec![
            name(o),
            json!(n(&status["desiredNumberScheduled"])),
            json!(n(&status["currentNumberScheduled"])),
            json!(n(&status["numberReady"])),
            json!(n(&status["updatedNumberScheduled"])),
            json!(n(&status["numberAvailable"])),
            json!(key_values(&o["spec"]["template"]["spec"]["nodeSelector"])),
            json!(age(o)),
        ]
    }
}
