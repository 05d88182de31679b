//! Conversion between the two versions of one stored kind: `events.k8s.io/v1` Events are stored
//! as core/v1 Events (as in kube-apiserver, which keeps both in one etcd resource), renamed field
//! by field per k8s.io/kubernetes pkg/apis/events/v1 conversion.

use serde_json::{Map, Value, json};

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

/// Converts a response body (an Event or an EventList; Tables and Status pass) from core/v1.
pub fn events_response_from_core(mut body: Value) -> Value {
    match body["kind"].as_str() {
        Some("Event") => event_from_core(body),
        Some("EventList") => {
            if let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    *item = event_from_core(item.take());
                }
            }
            body["apiVersion"] = json!("events.k8s.io/v1");
            body
        }
        _ => body,
    }
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
