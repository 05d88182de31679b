//! Validation: the checks kube-apiserver makes (pkg/apis/*/validation), worded as it words them so
//! kubectl users see familiar messages. Each function returns the causes it found; none means valid.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{ResourceInfo, strategy::NameRule};

pub use super::kinds::service::{externally_accessible, needs_health_check_node_port};
use crate::api::error::Cause;

pub(super) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(super) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub(super) const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// RFC 1123 label: at most 63 of [a-z0-9-], alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// RFC 1035 label: an RFC 1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// Validates `obj` as an object of `info`'s kind: the metadata every object has, then the
/// kind's own checks (its strategy's `validate`). `old` is the stored object on update.
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = metadata(info, obj);
    info.strategy.validate(obj, old, &mut causes);
    causes
}

/// The message of a config key that is not one (IsConfigMapKey).
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// The most a ConfigMap's or a Secret's data may hold, in bytes (core.MaxSecretSize).
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

/// The keys of a ConfigMap's or a Secret's maps (`fields`): each a valid config key
/// (ValidateConfigMap, ValidateSecret).
pub fn config_keys(obj: &Value, fields: &[&str], causes: &mut Vec<Cause>) {
    for field in fields {
        if let Some(map) = obj[*field].as_object() {
            for key in map.keys() {
                let ok = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !ok {
                    causes.push(Cause::invalid(
                        format!("{field}[{key}]"),
                        &json!(key),
                        CONFIG_KEY_MSG,
                    ));
                }
            }
        }
    }
}

/// `field: Too long: must have at most <max> bytes` (field.TooLong).
pub fn too_long(field: &str, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooLong",
        field: field.to_string(),
        message: format!("Too long: must have at most {max} bytes"),
    }
}

fn metadata(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &obj["metadata"];
    match meta["name"].as_str() {
        None | Some("") => causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let (ok, msg) = match info.strategy.name_rule() {
                NameRule::Label => (is_dns1123_label(name), DNS1123_LABEL_MSG),
                NameRule::Dns1035 => (is_dns1035_label(name), DNS1035_LABEL_MSG),
                NameRule::PathSegment => (
                    !name.contains('/') && !name.contains('%') && name != "." && name != "..",
                    "may not contain '/' or '%'",
                ),
                NameRule::Subdomain => (is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG),
            };
            if !ok {
                causes.push(Cause::invalid("metadata.name", &json!(name), msg));
            }
        }
    }
    if info.namespaced && meta["namespace"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("metadata.namespace", ""));
    }
    for field in ["labels", "annotations"] {
        if let Some(map) = meta[field].as_object() {
            for (k, v) in map {
                if !v.is_string() {
                    causes.push(Cause::invalid(
                        format!("metadata.{field}"),
                        v,
                        "must be a string",
                    ));
                } else if field == "labels" && !label_value_ok(v.as_str().unwrap_or_default()) {
                    causes.push(Cause::invalid(
                        "metadata.labels",
                        v,
                        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                    ));
                }
                let _ = k;
            }
        }
    }
    causes
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && v.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric))
}

/// Pod spec checks: containers present and named uniquely, images set, container ports valid.
pub(crate) fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{path}.containers"), ""));
    }
    let volumes = pod_volumes(spec, path, causes);
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let cpath = format!("{path}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => causes.push(Cause::required(format!("{cpath}.name"), "")),
                Some(name) if !is_dns1123_label(name) => {
                    causes.push(Cause::invalid(
                        format!("{cpath}.name"),
                        &c["name"],
                        DNS1123_LABEL_MSG,
                    ));
                }
                Some(name) => {
                    if !names.insert(name.to_string()) {
                        causes.push(Cause::duplicate(format!("{cpath}.name"), &c["name"]));
                    }
                }
            }
            if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                causes.push(Cause::required(format!("{cpath}.image"), ""));
            }
            volume_mounts(c, &cpath, &volumes, causes);
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                port_number(
                    &p["containerPort"],
                    &format!("{cpath}.ports[{j}].containerPort"),
                    true,
                    causes,
                );
                protocol(
                    &p["protocol"],
                    &format!("{cpath}.ports[{j}].protocol"),
                    causes,
                );
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            &spec["restartPolicy"],
            &["Always", "Never", "OnFailure"],
        ));
    }
}

/// A path that must stay below a directory (`validateLocalDescendingPath`): relative, no `..`
/// element.
fn local_descending_path(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    let Some(p) = v.as_str() else { return };
    if p.starts_with('/') {
        causes.push(Cause::invalid(field, v, "must be a relative path"));
    }
    if p.split('/').any(|e| e == "..") {
        causes.push(Cause::invalid(field, v, "must not contain '..'"));
    }
}

/// The Pod's volumes (`ValidateVolumes`): named, unique, their item paths inside the volume.
/// Returns the names.
fn pod_volumes(spec: &Value, path: &str, causes: &mut Vec<Cause>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, vol) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        match vol["name"].as_str() {
            None | Some("") => causes.push(Cause::required(format!("{vpath}.name"), "")),
            Some(name) if !is_dns1123_label(name) => causes.push(Cause::invalid(
                format!("{vpath}.name"),
                &vol["name"],
                DNS1123_LABEL_MSG,
            )),
            Some(name) => {
                if !names.insert(name.to_owned()) {
                    causes.push(Cause::duplicate(format!("{vpath}.name"), &vol["name"]));
                }
            }
        }
        for source in ["configMap", "secret", "downwardAPI"] {
            for (j, item) in vol[source]["items"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                local_descending_path(
                    &item["path"],
                    &format!("{vpath}.{source}.items[{j}].path"),
                    causes,
                );
            }
        }
        if let Some(h) = vol["hostPath"]["path"].as_str()
            && h.split('/').any(|e| e == "..")
        {
            causes.push(Cause::invalid(
                format!("{vpath}.hostPath.path"),
                &vol["hostPath"]["path"],
                "must not contain '..'",
            ));
        }
    }
    names
}

/// A container's volumeMounts (`ValidateVolumeMounts`): a volume of the Pod, an absolute-or-
/// not-empty mountPath, a subPath inside the volume, no mountPath twice.
fn volume_mounts(c: &Value, cpath: &str, volumes: &BTreeSet<String>, causes: &mut Vec<Cause>) {
    let mut paths = BTreeSet::new();
    for (j, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mpath = format!("{cpath}.volumeMounts[{j}]");
        match m["name"].as_str() {
            None | Some("") => causes.push(Cause::required(format!("{mpath}.name"), "")),
            Some(name) if !volumes.contains(name) => {
                causes.push(Cause::not_found(format!("{mpath}.name"), &m["name"]));
            }
            Some(_) => {}
        }
        match m["mountPath"].as_str() {
            None | Some("") => causes.push(Cause::required(format!("{mpath}.mountPath"), "")),
            Some(p) => {
                if !paths.insert(p.to_owned()) {
                    causes.push(Cause::invalid(
                        format!("{mpath}.mountPath"),
                        &m["mountPath"],
                        "must be unique",
                    ));
                }
            }
        }
        local_descending_path(&m["subPath"], &format!("{mpath}.subPath"), causes);
    }
}

pub(crate) fn port_number(v: &Value, path: &str, required: bool, causes: &mut Vec<Cause>) {
    match v.as_i64() {
        None if v.is_null() && required => causes.push(Cause::required(path, "")),
        None if v.is_null() => {}
        Some(n) if (1..=65535).contains(&n) => {}
        _ => causes.push(Cause::invalid(
            path,
            v,
            "must be between 1 and 65535, inclusive",
        )),
    }
}

pub(crate) fn protocol(v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(p) = v.as_str()
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        causes.push(Cause::not_supported(path, v, &["SCTP", "TCP", "UDP"]));
    } else if !v.is_null() && !v.is_string() {
        causes.push(Cause::not_supported(path, v, &["SCTP", "TCP", "UDP"]));
    }
}

/// Deployment/ReplicaSet/DaemonSet: selector required, non-empty and matching template labels;
/// template a valid Pod spec; replicas non-negative; with `restart_always`, the template's
/// restartPolicy Always.
pub(crate) fn workload(obj: &Value, restart_always: bool, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if let Some(r) = spec["replicas"].as_i64()
        && r < 0
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
    let selector = &spec["selector"];
    let labels = &spec["template"]["metadata"]["labels"];
    let empty_selector = selector.is_null()
        || (selector["matchLabels"]
            .as_object()
            .is_none_or(|m| m.is_empty())
            && selector["matchExpressions"]
                .as_array()
                .is_none_or(Vec::is_empty));
    if empty_selector {
        if selector.is_null() {
            causes.push(Cause::required("spec.selector", ""));
        } else {
            causes.push(Cause::invalid(
                "spec.selector",
                selector,
                "empty selector is invalid for deployment",
            ));
        }
    } else if !crate::api::selectors::label_selector_matches(selector, labels) {
        let shown = if labels.is_null() {
            json!({})
        } else {
            labels.clone()
        };
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &shown,
            "`selector` does not match template `labels`",
        ));
    }
    pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
    if restart_always
        && let Some(rp) = spec["template"]["spec"]["restartPolicy"].as_str()
        && rp != "Always"
    {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            &json!(rp),
            &["Always"],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn registry_validation_endpoint_slice() {
        let info = lookup("discovery.k8s.io", "v1", "endpointslices").expect("endpointslices");
        let ok = json!({"metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.2"], "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
        assert!(validate(info, &ok, None).is_empty());
        let bad = json!({"metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["999.1.1.1"]}, {"addresses": []}],
            "ports": [{"name": "a", "port": 0}, {"name": "a", "port": 80, "protocol": "FOO"}]});
        let fields: Vec<String> = validate(info, &bad, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "endpoints[0].addresses[0]",
                "endpoints[1].addresses",
                "ports[0].port",
                "ports[1].protocol",
                "ports[1].name"
            ]
        );
        let no_type =
            json!({"metadata": {"name": "s", "namespace": "default"}, "addressType": "IPX"});
        assert_eq!(validate(info, &no_type, None)[0].field, "addressType");
    }

    #[test]
    fn registry_validation_pod_volumes_and_mounts() {
        let info = lookup("", "v1", "pods").expect("pods");
        let pod = |mounts: Value, volumes: Value| {
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
                "containers": [{"name": "c", "image": "x", "volumeMounts": mounts}],
                "volumes": volumes}})
        };
        let ok = pod(
            json!([{"name": "cfg", "mountPath": "/etc/app", "subPath": "a/b"}]),
            json!([{"name": "cfg", "configMap": {"name": "c", "items": [{"key": "k", "path": "p"}]}}]),
        );
        assert!(validate(info, &ok, None).is_empty());
        let bad = pod(
            json!([
                {"name": "cfg", "mountPath": "/x", "subPath": "../etc"},
                {"name": "nope", "mountPath": "/y"},
                {"name": "cfg", "mountPath": "/x"},
            ]),
            json!([
                {"name": "cfg", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}},
                {"name": "cfg", "emptyDir": {}},
            ]),
        );
        let got: Vec<String> = validate(info, &bad, None)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            got,
            [
                "spec.volumes[0].configMap.items[0].path: Invalid value: \"/abs\": must be a relative path",
                "spec.volumes[1].name: Duplicate value: \"cfg\"",
                "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../etc\": must not contain '..'",
                "spec.containers[0].volumeMounts[1].name: Not found: \"nope\"",
                "spec.containers[0].volumeMounts[2].mountPath: Invalid value: \"/x\": must be unique",
            ]
        );
    }

    #[test]
    fn registry_validation_service_port_range() {
        let info = lookup("", "v1", "services").expect("services");
        let svc = json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 70000, "protocol": "TCP"}]}});
        let causes = validate(info, &svc, None);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.ports[0].port");
        assert_eq!(
            causes[0].message,
            "Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn registry_validation_service_duplicates_and_protocol() {
        let info = lookup("", "v1", "services").expect("services");
        let svc = json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"ports": [{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "b", "port": 80, "protocol": "TCP"},
                               {"name": "c", "port": 81, "protocol": "ICMP"}]}});
        let fields: Vec<String> = validate(info, &svc, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, vec!["spec.ports[1]", "spec.ports[2].protocol"]);
    }

    #[test]
    fn registry_validation_selector_mismatch() {
        let info = lookup("apps", "v1", "deployments").expect("deployments");
        let d = json!({"metadata": {"name": "d", "namespace": "default"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate(info, &d, None);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert_eq!(
            causes[0].message,
            "Invalid value: map[app:b]: `selector` does not match template `labels`"
        );
    }

    #[test]
    fn registry_validation_names_and_containers() {
        let info = lookup("", "v1", "pods").expect("pods");
        let p = json!({"metadata": {"name": "Bad_Name", "namespace": "default"}, "spec": {"containers": [{"name": "c"}]}});
        let fields: Vec<String> = validate(info, &p, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, vec!["metadata.name", "spec.containers[0].image"]);
        let p =
            json!({"metadata": {"name": "ok", "namespace": "default"}, "spec": {"containers": []}});
        let fields: Vec<String> = validate(info, &p, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, vec!["spec.containers"]);
    }

    fn service_causes(spec: Value, old: Option<Value>) -> Vec<(String, String)> {
        let info = lookup("", "v1", "services").expect("services");
        let svc = json!({"metadata": {"name": "x", "namespace": "default"}, "spec": spec});
        let old = old
            .map(|spec| json!({"metadata": {"name": "x", "namespace": "default"}, "spec": spec}));
        validate(info, &svc, old.as_ref())
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect()
    }

    #[test]
    fn registry_validation_service_traffic_policies() {
        let ports = json!([{"port": 80, "protocol": "TCP"}]);
        let causes = service_causes(
            json!({"type": "NodePort", "externalTrafficPolicy": "Global", "internalTrafficPolicy": "Node", "ports": ports}),
            None,
        );
        assert_eq!(
            causes,
            [
                (
                    "spec.externalTrafficPolicy".to_string(),
                    "Unsupported value: \"Global\": supported values: \"Cluster\", \"Local\""
                        .to_string()
                ),
                (
                    "spec.internalTrafficPolicy".to_string(),
                    "Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\""
                        .to_string()
                ),
            ]
        );
        let causes = service_causes(
            json!({"type": "ClusterIP", "externalTrafficPolicy": "Local", "ports": ports}),
            None,
        );
        assert_eq!(
            causes,
            [(
                "spec.externalTrafficPolicy".to_string(),
                "Invalid value: \"Local\": may only be set for externally-accessible services"
                    .to_string()
            )]
        );
        // externalIPs make a ClusterIP Service externally accessible.
        assert!(
            service_causes(
                json!({"type": "ClusterIP", "externalIPs": ["192.0.2.1"], "externalTrafficPolicy": "Local", "ports": ports}),
                None
            )
            .is_empty()
        );
        // Carried over from a NodePort Service turned ClusterIP: dropped on admission, not refused.
        let np = json!({"type": "NodePort", "externalTrafficPolicy": "Cluster", "ports": ports});
        assert!(
            service_causes(
                json!({"type": "ClusterIP", "externalTrafficPolicy": "Cluster", "ports": ports}),
                Some(np.clone())
            )
            .is_empty()
        );
        // Changed in the same update: refused.
        assert_eq!(
            service_causes(
                json!({"type": "ClusterIP", "externalTrafficPolicy": "Local", "ports": ports}),
                Some(np)
            )[0]
            .0,
            "spec.externalTrafficPolicy"
        );
    }

    #[test]
    fn registry_validation_service_health_check_node_port() {
        let ports = json!([{"port": 80, "protocol": "TCP"}]);
        let only_lb_local = "Invalid value: 30100: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'";
        for spec in [
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "healthCheckNodePort": 30100, "ports": ports}),
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100, "ports": ports}),
            json!({"type": "ClusterIP", "healthCheckNodePort": 30100, "ports": ports}),
        ] {
            assert_eq!(
                service_causes(spec.clone(), None),
                [(
                    "spec.healthCheckNodePort".to_string(),
                    only_lb_local.to_string()
                )],
                "{spec}"
            );
        }
        let lb_local = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100, "ports": ports});
        assert!(service_causes(lb_local.clone(), None).is_empty());
        let mut bad = lb_local.clone();
        bad["healthCheckNodePort"] = json!(70000);
        assert_eq!(
            service_causes(bad, None),
            [(
                "spec.healthCheckNodePort".to_string(),
                "Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()
            )]
        );
        // Switching to Cluster while the request still holds the stored port: allowed (dropped
        // on admission); holding another port: refused.
        let mut cluster = lb_local.clone();
        cluster["externalTrafficPolicy"] = json!("Cluster");
        assert!(service_causes(cluster.clone(), Some(lb_local.clone())).is_empty());
        cluster["healthCheckNodePort"] = json!(30101);
        assert_eq!(
            service_causes(cluster, Some(lb_local))[0].0,
            "spec.healthCheckNodePort"
        );
    }

    #[test]
    fn registry_validation_service_external_ips() {
        let causes = service_causes(
            json!({"externalIPs": ["192.0.2.1", "2001:db8::1", "10.0.0.300", "127.0.0.1", "169.254.1.1", "0.0.0.0", "fe80::1", "224.0.0.5"],
                   "ports": [{"port": 80}]}),
            None,
        );
        assert_eq!(
            causes,
            [
                ("spec.externalIPs[2]", "Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
                ("spec.externalIPs[3]", "Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"),
                ("spec.externalIPs[4]", "Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
                ("spec.externalIPs[5]", "Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)"),
                ("spec.externalIPs[6]", "Invalid value: \"fe80::1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
                ("spec.externalIPs[7]", "Invalid value: \"224.0.0.5\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
            ]
            .map(|(f, m)| (f.to_string(), m.to_string()))
        );
    }

    #[test]
    fn registry_validation_service_node_ports_carried_into_cluster_ip() {
        let np = json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]});
        let mut cip = np.clone();
        cip["type"] = json!("ClusterIP");
        assert!(service_causes(cip.clone(), Some(np.clone())).is_empty());
        cip["ports"][0]["nodePort"] = json!(30081);
        assert_eq!(
            service_causes(cip.clone(), Some(np)),
            [(
                "spec.ports[0].nodePort".to_string(),
                "Forbidden: may not be used when `type` is 'ClusterIP'".to_string()
            )]
        );
        assert_eq!(service_causes(cip, None)[0].0, "spec.ports[0].nodePort");
    }
}
