//! Node (core/v1): pkg/registry/core/node/strategy.go. Cluster-scoped, named after the host (any
//! path segment); its agent writes its status, which a create keeps (the agent registers a Node
//! with its status in one request, as the kubelet does).

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, age, arr, name, or_none, s},
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    subresources: &["status"],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &Nodes,
};

struct Nodes;

impl Strategy for Nodes {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::Node>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ]
    }

    /// printNode: Ready/NotReady/Unknown from the Ready condition, `,SchedulingDisabled` when
    /// cordoned, roles from `node-role.kubernetes.io/<role>` labels.
    fn cells(&self, o: &Value) -> Vec<Value> {
        let (spec, status) = (&o["spec"], &o["status"]);
        let ready = arr(&status["conditions"])
            .iter()
            .find(|c| c["type"] == "Ready");
        let mut st = match ready.map(|c| s(&c["status"])) {
            Some(x) if x == "True" => "Ready".to_string(),
            Some(x) if x == "False" => "NotReady".to_string(),
            _ => "Unknown".to_string(),
        };
        if spec["unschedulable"].as_bool() == Some(true) {
            st.push_str(",SchedulingDisabled");
        }
        let roles: Vec<String> = o["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .map(str::to_string)
            })
            .collect();
        let addr = |ty: &str| {
            or_none(
                arr(&status["addresses"])
                    .iter()
                    .filter(|a| a["type"] == ty)
                    .map(|a| s(&a["address"]))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        };
        let ni = &status["nodeInfo"];
        vec![
            name(o),
            json!(st),
            json!(or_none(roles.join(","))),
            json!(age(o)),
            json!(s(&ni["kubeletVersion"])),
            json!(addr("InternalIP")),
            json!(addr("ExternalIP")),
            json!(or_none(s(&ni["osImage"]))),
            json!(or_none(s(&ni["kernelVersion"]))),
            json!(or_none(s(&ni["containerRuntimeVersion"]))),
        ]
    }
}
