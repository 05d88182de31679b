//! Event (events.k8s.io/v1): served over the stored core/v1 Events (as in kube-apiserver, which
//! keeps both versions in one etcd resource), renamed field by field per k8s.io/kubernetes
//! pkg/apis/events/v1 conversion. Requests are converted to core/v1 on the way in and answers
//! back on the way out; everything else is the core Event's strategy.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::registry::{
    ALL_VERBS, ResourceInfo,
    strategy::{NameRule, StoredAs, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "events.k8s.io",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &EventsV1,
};

struct EventsV1;

/// Stored as core/v1 Events, renamed on the way in and out.
const STORED_AS: StoredAs = StoredAs {
    group: "",
    version: "v1",
    plural: "events",
    to_stored: event_to_core,
    from_stored: event_from_core,
};

impl Strategy for EventsV1 {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::events::v1::Event>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn stored_as(&self) -> Option<&'static StoredAs> {
        Some(&STORED_AS)
    }
}

/// (events.k8s.io/v1 name, core/v1 name) of the fields that differ.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: Value, to_core: bool, api_version: &str) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = EVENT_RENAMES
            .iter()
            .find(|(ev, core)| if to_core { ev == &k } else { core == &k })
            .map(|(ev, core)| if to_core { *core } else { *ev });
        out.insert(renamed.map_or(k, str::to_string), v);
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event as the core/v1 Event it is stored as.
pub fn event_to_core(obj: Value) -> Value {
    rename(obj, true, "v1")
}

/// A stored core/v1 Event as events.k8s.io/v1 shows it.
pub fn event_from_core(obj: Value) -> Value {
    rename(obj, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_event_versions_round_trip() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started",
            "reportingController": "keelson/agent", "reportingInstance": "n1", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = event_to_core(ev.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "keelson/agent");
        assert_eq!(event_from_core(core), ev);
    }
}
