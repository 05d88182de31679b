//! Deployment (apps/v1): pkg/registry/apps/deployment/strategy.go, SetDefaults_Deployment and
//! ValidateDeployment; its `scale` subresource is served generically from `spec.replicas`.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::{
    error::Cause,
    protobuf::{
        Bool, Field, Ignore, Int, IntOrString, LABEL_SELECTOR, Msg, OBJECT_META, POD_TEMPLATE,
        Str, f, z,
    },
};
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
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    subresources: &["status", "scale"],
    verbs: ALL_VERBS,
    categories: &["all"],
    strategy: &Deployments,
};

struct Deployments;

const ROLLING_UPDATE: &[Field] = &[
    f(1, "maxUnavailable", IntOrString),
    f(2, "maxSurge", IntOrString),
];
const STRATEGY: &[Field] = &[
    f(1, "type", Str),
    f(2, "rollingUpdate", Msg(ROLLING_UPDATE)),
];
const DEPLOYMENT_SPEC: &[Field] = &[
    z(1, "replicas", Int),
    f(2, "selector", Msg(LABEL_SELECTOR)),
    f(3, "template", Msg(POD_TEMPLATE)),
    f(4, "strategy", Msg(STRATEGY)),
    f(5, "minReadySeconds", Int),
    z(6, "revisionHistoryLimit", Int),
    f(7, "paused", Bool),
    z(9, "progressDeadlineSeconds", Int),
];
const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(DEPLOYMENT_SPEC)),
    f(3, "status", Ignore),
];

impl Strategy for Deployments {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::apps::v1::Deployment>(generator)
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj, json!({}));
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        let Some(spec) = child(root, "spec") else {
            return;
        };
        set_default(spec, "replicas", json!(1));
        set_default(
            spec,
            "strategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
        );
        if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate"))
                && let Some(ru) = child(strategy, "rollingUpdate")
            {
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
        }
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(spec, "progressDeadlineSeconds", json!(600));
        template_defaults(spec);
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        workload(obj, true, causes);
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        [
            &[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
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
                json!(format!(
                    "{}/{}",
                    n(&status["readyReplicas"]),
                    n(&spec["replicas"])
                )),
                json!(n(&status["updatedReplicas"])),
                json!(n(&status["availableReplicas"])),
            ],
        )
    }
}
