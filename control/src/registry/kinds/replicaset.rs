//! ReplicaSet (apps/v1): pkg/registry/apps/replicaset/strategy.go, SetDefaults_ReplicaSet and
//! ValidateReplicaSet; its `scale` subresource is served generically from `spec.replicas`.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::error::Cause;
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, set_default, template_defaults},
    printers::{Column, TEMPLATE_COLUMNS, n, template_cells},
    strategy::{Strategy, reset_status, schema_of},
    validation::workload,
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    subresources: &["status", "scale"],
    verbs: ALL_VERBS,
    categories: &["all"],
    strategy: &ReplicaSets,
};

struct ReplicaSets;

impl Strategy for ReplicaSets {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::apps::v1::ReplicaSet>(generator)
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj, json!({}));
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        if let Some(spec) = child(root, "spec") {
            set_default(spec, "replicas", json!(1));
            template_defaults(spec);
        }
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        workload(obj, true, causes);
    }

    fn columns(&self) -> Vec<Column> {
        [
            &[
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
            ][..],
            &TEMPLATE_COLUMNS,
        ]
        .concat()
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let (spec, status) = (&o["spec"], &o["status"]);
        template_cells(
            o,
            [
                json!(n(&spec["replicas"])),
                json!(n(&status["replicas"])),
                json!(n(&status["readyReplicas"])),
            ],
        )
    }
}
