//! Event (core/v1): pkg/registry/core/event/strategy.go. Events are named after the object they
//! report on (`<name>.<hex>`), so any path segment is a valid name.

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, s, since},
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &Events,
};

struct Events;

impl Strategy for Events {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::Event>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ]
    }

    /// printEvent: LAST SEEN from lastTimestamp, eventTime or creation, OBJECT as
    /// `<kind>/<name>` of the involved object.
    fn cells(&self, o: &Value) -> Vec<Value> {
        let last = since(
            o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .or(o["metadata"]["creationTimestamp"].as_str()),
        );
        let inv = &o["involvedObject"];
        vec![
            json!(last),
            json!(s(&o["type"])),
            json!(s(&o["reason"])),
            json!(format!(
                "{}/{}",
                s(&inv["kind"]).to_lowercase(),
                s(&inv["name"])
            )),
            json!(s(&o["message"])),
        ]
    }
}
