//! Server-side printing: `meta.k8s.io/v1` Table responses (Accept `as=Table;v=v1;g=meta.k8s.io`)
//! built from the columns and cells each kind's strategy declares (its kubectl columns, as
//! pkg/printers/internalversion/printers.go prints them).

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

pub use crate::registry::printers::human_duration;
use crate::registry::{ResourceInfo, printers::arr};

/// Whether the client asked for a Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table") && a.contains("g=meta.k8s.io"))
}

/// Converts an object or a `<Kind>List` into a Table. `include` is `includeObject`:
/// None, Metadata (the default) or Object.
pub fn to_table(info: &ResourceInfo, obj: &Value, include: &str, _headers: &HeaderMap) -> Value {
    let is_list =
        obj["kind"].as_str().is_some_and(|k| k.ends_with("List")) && obj["items"].is_array();
    let items: Vec<&Value> = if is_list {
        arr(&obj["items"]).iter().collect()
    } else {
        vec![obj]
    };
    let rows: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let mut row = json!({"cells": info.strategy.cells(o)});
            match include {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    });
                }
            }
            row
        })
        .collect();
    let defs: Vec<Value> = info
        .strategy
        .columns()
        .into_iter()
        .map(|(name, ty, priority)| {
            let mut d = json!({"name": name, "type": ty, "format": "", "description": name, "priority": priority});
            if name == "Name" {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let mut meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"].clone()});
    if let Some(c) = obj["metadata"]["continue"].as_str() {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn api_table_human_duration() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn api_table_service_and_pod_rows() {
        let svc = lookup("", "v1", "services").expect("services");
        let o = json!({"kind": "Service", "metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let t = to_table(svc, &o, "None", &HeaderMap::new());
        assert_eq!(
            t["rows"][0]["cells"].as_array().expect("cells")[..5],
            [
                json!("web"),
                json!("NodePort"),
                json!("10.96.0.5"),
                json!("<none>"),
                json!("80:30080/TCP")
            ]
        );
        let pod = lookup("", "v1", "pods").expect("pods");
        let list = json!({"kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": [{"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}]}}]});
        let t = to_table(pod, &list, "Metadata", &HeaderMap::new());
        assert_eq!(
            t["rows"][0]["cells"].as_array().expect("cells")[..4],
            [json!("p"), json!("1/1"), json!("Running"), json!("2")]
        );
        assert_eq!(t["rows"][0]["cells"][5], "10.244.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    /// The cells of `o` (a `resource` of `group`/`version`), checking there is one column
    /// definition per cell.
    fn cells(group: &str, version: &str, resource: &str, o: &Value) -> Vec<Value> {
        let info = lookup(group, version, resource).expect("resource");
        let t = to_table(info, o, "None", &HeaderMap::new());
        let cells = t["rows"][0]["cells"].as_array().expect("cells").clone();
        assert_eq!(
            t["columnDefinitions"].as_array().expect("columns").len(),
            cells.len(),
            "{resource}"
        );
        cells
    }

    #[test]
    fn api_table_workload_and_config_rows() {
        let template = json!({"spec": {
            "containers": [{"name": "a", "image": "img-a"}, {"name": "b", "image": "img-b"}],
            "nodeSelector": {"disk": "ssd", "zone": "z1"}
        }});
        let selector = json!({"matchLabels": {"app": "web"}});
        let d = json!({"kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": selector, "template": template},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 1}});
        assert_eq!(
            cells("apps", "v1", "deployments", &d),
            [
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(1),
                json!("<unknown>"),
                json!("a,b"),
                json!("img-a,img-b"),
                json!("app=web")
            ]
        );
        let rs = json!({"kind": "ReplicaSet", "metadata": {"name": "web-x"},
            "spec": {"replicas": 3, "selector": selector, "template": template},
            "status": {"replicas": 2, "readyReplicas": 1}});
        assert_eq!(
            cells("apps", "v1", "replicasets", &rs),
            [
                json!("web-x"),
                json!(3),
                json!(2),
                json!(1),
                json!("<unknown>"),
                json!("a,b"),
                json!("img-a,img-b"),
                json!("app=web")
            ]
        );
        let ds = json!({"kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": selector, "template": template},
            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1,
                "updatedNumberScheduled": 2, "numberAvailable": 1}});
        assert_eq!(
            cells("apps", "v1", "daemonsets", &ds)[1..7],
            [
                json!(2),
                json!(2),
                json!(1),
                json!(2),
                json!(1),
                json!("disk=ssd,zone=z1")
            ]
        );
        let svc = json!({"kind": "Service", "metadata": {"name": "s"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9", "selector": {"app": "web"}}});
        assert_eq!(cells("", "v1", "services", &svc)[6], "app=web");
        let bare =
            json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}});
        assert_eq!(cells("", "v1", "services", &bare)[6], "<none>");
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(cells("", "v1", "configmaps", &cm)[1], 3);
        let secret = json!({"kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque"});
        assert_eq!(
            cells("", "v1", "secrets", &secret)[1..3],
            [json!("Opaque"), json!(0)]
        );
        let ev = json!({"kind": "Event", "metadata": {"name": "e"}, "type": "Normal",
            "reason": "Created", "message": "m", "involvedObject": {"kind": "Pod", "name": "p"}});
        assert_eq!(
            cells("", "v1", "events", &ev),
            [
                json!("<unknown>"),
                json!("Normal"),
                json!("Created"),
                json!("pod/p"),
                json!("m")
            ]
        );
        let recent =
            (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3 * 86400)).to_string();
        let mut ev = ev;
        ev["metadata"]["creationTimestamp"] = json!(recent);
        assert_eq!(cells("", "v1", "events", &ev)[0], "3d");
        let cm =
            json!({"kind": "ConfigMap", "metadata": {"name": "c", "creationTimestamp": recent}});
        assert_eq!(cells("", "v1", "configmaps", &cm)[2], "3d");
    }
}
