//! Server-side printing: `meta.k8s.io/v1` Table responses (Accept `as=Table;v=v1;g=meta.k8s.io`)
//! with the columns kubectl shows for each kind (pkg/printers/internalversion/printers.go).

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::registry::ResourceInfo;

/// Whether the client asked for a Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table") && a.contains("g=meta.k8s.io"))
}

/// Kubernetes' HumanDuration (apimachinery/pkg/util/duration).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        if secs % 60 == 0 {
            format!("{mins}m")
        } else {
            format!("{mins}m{}s", secs % 60)
        }
    } else if mins < 180 {
        format!("{mins}m")
    } else if hours < 8 {
        if mins % 60 == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{}m", mins % 60)
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 192 {
        if hours % 24 == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{}h", hours % 24)
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        let years = days / 365;
        if days % 365 == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{}d", days % 365)
        }
    } else {
        format!("{}y", days / 365)
    }
}

/// How long ago RFC 3339 time `t` was, as kubectl shows it; `<unknown>` without a valid time.
fn since(t: Option<&str>) -> String {
    t.and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or_else(
            || "<unknown>".into(),
            |t| human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        )
}

fn age(obj: &Value) -> String {
    since(obj["metadata"]["creationTimestamp"].as_str())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// The entries of a map (`data`, `binaryData`), 0 when absent.
fn entries(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

/// A string map as `k1=v1,k2=v2` (a Service selector, a nodeSelector), `<none>` when empty.
fn key_values(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    or_none(pairs.join(","))
}

/// Column (name, type, priority): priority 1 columns show with `-o wide`.
type Col = (&'static str, &'static str, u8);

/// The columns of a Deployment or ReplicaSet after its counts, filled by [`template_cells`].
const TEMPLATE_COLUMNS: [Col; 4] = [
    ("Age", "string", 0),
    ("Containers", "string", 1),
    ("Images", "string", 1),
    ("Selector", "string", 1),
];

fn columns(info: &ResourceInfo) -> Vec<Col> {
    match (info.group, info.kind) {
        ("", "Node") => vec![
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
        ],
        ("", "Pod") => vec![
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "Service") => vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        ("apps", "Deployment") => [
            &[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
            ][..],
            &TEMPLATE_COLUMNS,
        ]
        .concat(),
        ("apps", "ReplicaSet") => [
            &[
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
            ][..],
            &TEMPLATE_COLUMNS,
        ]
        .concat(),
        ("apps", "DaemonSet") => vec![
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Namespace") => vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "ConfigMap") => vec![
            ("Name", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        ("", "Secret") => vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        ("", "Event") => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            ("Name", "string", 0),
            ("Pod-Selector", "string", 0),
            ("Age", "string", 0),
        ],
        _ => vec![("Name", "string", 0), ("Age", "string", 0)],
    }
}

fn selector_string(sel: &Value) -> String {
    or_none(super::selectors::label_selector_string(sel))
}

fn containers_images(tpl_spec: &Value) -> (String, String) {
    let cs = arr(&tpl_spec["containers"]);
    (
        cs.iter()
            .map(|c| s(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The cells of a Deployment or ReplicaSet: its name and three counts, then
/// [`TEMPLATE_COLUMNS`] (age, and the containers, images and selector of its template).
fn template_cells(o: &Value, name: Value, counts: [Value; 3]) -> Vec<Value> {
    let spec = &o["spec"];
    let (containers, images) = containers_images(&spec["template"]["spec"]);
    let mut cells = vec![name];
    cells.extend(counts);
    cells.extend([
        json!(age(o)),
        json!(containers),
        json!(images),
        json!(selector_string(&spec["selector"])),
    ]);
    cells
}

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

fn row_cells(info: &ResourceInfo, o: &Value) -> Vec<Value> {
    let name = json!(s(&o["metadata"]["name"]));
    let spec = &o["spec"];
    let status = &o["status"];
    match (info.group, info.kind) {
        ("", "Node") => {
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
                name,
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
        ("", "Pod") => {
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
                name,
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
        ("", "Service") => {
            let ty = s(&spec["type"]);
            let mut external: Vec<String> = arr(&spec["externalIPs"]).iter().map(s).collect();
            if ty == "LoadBalancer" {
                let ingress: Vec<String> = arr(&status["loadBalancer"]["ingress"])
                    .iter()
                    .map(|i| {
                        if i["ip"].is_string() {
                            s(&i["ip"])
                        } else {
                            s(&i["hostname"])
                        }
                    })
                    .collect();
                if ingress.is_empty() && external.is_empty() {
                    external.push("<pending>".into());
                }
                external.extend(ingress);
            } else if ty == "ExternalName" {
                external.push(s(&spec["externalName"]));
            }
            let ports: Vec<String> = arr(&spec["ports"])
                .iter()
                .map(|p| match p["nodePort"].as_i64() {
                    Some(np) => format!("{}:{np}/{}", n(&p["port"]), s(&p["protocol"])),
                    None => format!("{}/{}", n(&p["port"]), s(&p["protocol"])),
                })
                .collect();
            vec![
                name,
                json!(ty),
                json!(or_none(s(&spec["clusterIP"]))),
                json!(or_none(external.join(","))),
                json!(or_none(ports.join(","))),
                json!(age(o)),
                json!(key_values(&spec["selector"])),
            ]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = arr(&o["ports"])
                .iter()
                .map(|p| n(&p["port"]).to_string())
                .collect();
            let addrs: Vec<String> = arr(&o["endpoints"])
                .iter()
                .flat_map(|e| arr(&e["addresses"]).iter().map(s))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else if addrs.is_empty() {
                "<unset>".into()
            } else {
                addrs.join(",")
            };
            let ports = if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            };
            vec![
                name,
                json!(s(&o["addressType"])),
                json!(ports),
                json!(shown),
                json!(age(o)),
            ]
        }
        ("apps", "Deployment") => template_cells(
            o,
            name,
            [
                json!(format!(
                    "{}/{}",
                    n(&status["readyReplicas"]),
                    n(&spec["replicas"])
                )),
                json!(n(&status["updatedReplicas"])),
                json!(n(&status["availableReplicas"])),
            ],
        ),
        ("apps", "ReplicaSet") => template_cells(
            o,
            name,
            [
                json!(n(&spec["replicas"])),
                json!(n(&status["replicas"])),
                json!(n(&status["readyReplicas"])),
            ],
        ),
        ("apps", "DaemonSet") => vec![
            name,
            json!(n(&status["desiredNumberScheduled"])),
            json!(n(&status["currentNumberScheduled"])),
            json!(n(&status["numberReady"])),
            json!(n(&status["updatedNumberScheduled"])),
            json!(n(&status["numberAvailable"])),
            json!(key_values(&spec["template"]["spec"]["nodeSelector"])),
            json!(age(o)),
        ],
        ("", "Namespace") => vec![name, json!(s(&status["phase"])), json!(age(o))],
        ("", "ConfigMap") => {
            let count = entries(&o["data"]) + entries(&o["binaryData"]);
            vec![name, json!(count), json!(age(o))]
        }
        ("", "Secret") => vec![
            name,
            json!(s(&o["type"])),
            json!(entries(&o["data"])),
            json!(age(o)),
        ],
        ("", "Event") => {
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
        ("coordination.k8s.io", "Lease") => vec![
            name,
            json!(or_none(s(&spec["holderIdentity"]))),
            json!(age(o)),
        ],
        // printNetworkPolicy: metav1.FormatLabelSelector of spec.podSelector.
        ("networking.k8s.io", "NetworkPolicy") => vec![
            name,
            json!(super::selectors::format_label_selector(
                &spec["podSelector"]
            )),
            json!(age(o)),
        ],
        _ => vec![name, json!(age(o))],
    }
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
            let mut row = json!({"cells": row_cells(info, o)});
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
    let defs: Vec<Value> = columns(info)
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
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600 * 3 + 60), "3h1m");
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
