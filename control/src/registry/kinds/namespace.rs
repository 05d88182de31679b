//! Namespace (core/v1): pkg/registry/core/namespace/strategy.go. Cluster-scoped; its name is an
//! RFC 1123 label; a new Namespace is Active with the `kubernetes` finalizer, which the
//! namespace finalizer (api::namespaces) removes once the Namespace is empty, through the
//! hidden `namespaces/finalize` subresource.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::protobuf::{Field, Ignore, Msg, OBJECT_META, Str, f, r};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, set_default},
    printers::{Column, age, name, s},
    strategy::{NameRule, Strategy, schema_of},
};

/// The label kube-apiserver gives every Namespace, its name (k8s.io/api core/v1
/// LabelMetadataName); NetworkPolicy namespaceSelectors match namespaces by it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    subresources: &["status"],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &Namespaces,
};

struct Namespaces;

const NAMESPACE_SPEC: &[Field] = &[r(1, "finalizers", Str)];
const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(NAMESPACE_SPEC)),
    f(3, "status", Ignore),
];

impl Strategy for Namespaces {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::Namespace>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    /// PrepareForCreate: a new Namespace is Active, whatever status the request carried.
    fn prepare_for_create(&self, obj: &mut Value) {
        crate::registry::strategy::reset_status(obj, json!({"phase": "Active"}));
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        name_label(root);
        if let Some(spec) = child(root, "spec") {
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        if let Some(status) = child(root, "status") {
            set_default(status, "phase", json!("Active"));
        }
    }

    fn pending_finalizers(&self, obj: &Value) -> bool {
        obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    }

    fn mark_deleting(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn hidden_subresource(&self, sub: &str) -> bool {
        sub == "finalize"
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![name(o), json!(s(&o["status"]["phase"])), json!(age(o))]
    }
}

/// Sets the Namespace's [`NAMESPACE_NAME_LABEL`] to its name, replacing whatever the request
/// had: SetDefaults_Namespace (pkg/apis/core/v1/defaults.go) on every decode, and the namespace
/// strategy's Canonicalize on every create and update, so the label cannot be removed or
/// changed. Defaulting here runs after generateName is resolved, which is why kube-apiserver
/// needs the second hook and keelson does not.
fn name_label(root: &mut Map<String, Value>) {
    let Some(name) = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        return;
    };
    if let Some(meta) = child(root, "metadata")
        && let Some(labels) = child(meta, "labels")
    {
        labels.insert(NAMESPACE_NAME_LABEL.into(), json!(name));
    }
}
