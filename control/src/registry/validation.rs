//! Validation: the checks kube-apiserver makes (pkg/apis/*/validation), worded as it words them so
//! kubectl users see familiar messages. Each function returns the causes it found; none means valid.

use std::{collections::BTreeSet, net::IpAddr};

use serde_json::{Value, json};

use super::{ResourceInfo, networkpolicy};
use crate::api::error::Cause;

pub(super) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

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

/// Validates `obj` as an object of `info`'s kind. `old` is the stored object on update.
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = metadata(info, obj);
    match (info.group, info.kind) {
        ("", "Pod") => {
            pod_spec(&obj["spec"], "spec", &mut causes);
            if let Some(old) = old {
                let (was, is) = (&old["spec"]["nodeName"], &obj["spec"]["nodeName"]);
                if was.as_str().is_some_and(|s| !s.is_empty()) && was != is {
                    causes.push(Cause::forbidden("spec.nodeName", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
                }
            }
        }
        ("", "Service") => service(obj, old, &mut causes),
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "DaemonSet") => {
            workload(info, obj, &mut causes);
        }
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(obj, &mut causes),
        ("networking.k8s.io", "NetworkPolicy") => networkpolicy::validate(obj, old, &mut causes),
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(map) = obj[field].as_object() {
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
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    causes
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
            let (ok, msg) = match info.kind {
                "Namespace" => (is_dns1123_label(name), DNS1123_LABEL_MSG),
                "Service" => (is_dns1035_label(name), DNS1035_LABEL_MSG),
                // Events and Leases are named after other objects (node names, `x.17a...`).
                "Event" | "Lease" | "Node" => (
                    !name.contains('/') && !name.contains('%') && name != "." && name != "..",
                    "may not contain '/' or '%'",
                ),
                _ => (is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG),
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
fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{path}.containers"), ""));
    }
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

fn port_number(v: &Value, path: &str, required: bool, causes: &mut Vec<Cause>) {
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

fn protocol(v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(p) = v.as_str()
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        causes.push(Cause::not_supported(path, v, &["SCTP", "TCP", "UDP"]));
    } else if !v.is_null() && !v.is_string() {
        causes.push(Cause::not_supported(path, v, &["SCTP", "TCP", "UDP"]));
    }
}

/// EndpointSlice (pkg/apis/discovery/validation): addressType from the supported set, every
/// endpoint with 1 to 100 addresses valid for that type, ports in range with a supported
/// protocol and unique names. The datapath programs these addresses directly, so nothing
/// malformed may be stored.
fn endpoint_slice(obj: &Value, causes: &mut Vec<Cause>) {
    const ADDRESS_TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
    let address_type = obj["addressType"].as_str();
    match address_type {
        None => causes.push(Cause::required("addressType", "")),
        Some(t) if !ADDRESS_TYPES.contains(&t) => {
            causes.push(Cause::not_supported(
                "addressType",
                &obj["addressType"],
                &ADDRESS_TYPES,
            ));
        }
        Some(_) => {}
    }
    let endpoints = obj["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if endpoints.len() > 1000 {
        causes.push(Cause::invalid(
            "endpoints",
            &json!(endpoints.len()),
            "must have at most 1000 items",
        ));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let addresses = ep["addresses"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if addresses.is_empty() {
            causes.push(Cause::required(
                format!("{path}.addresses"),
                "must contain at least 1 address",
            ));
        } else if addresses.len() > 100 {
            causes.push(Cause::invalid(
                format!("{path}.addresses"),
                &json!(addresses.len()),
                "must have at most 100 items",
            ));
        }
        for (j, a) in addresses.iter().enumerate() {
            let apath = format!("{path}.addresses[{j}]");
            let text = a.as_str().unwrap_or_default();
            let (ok, msg) = match address_type {
                Some("IPv4") => (
                    text.parse::<std::net::Ipv4Addr>().is_ok(),
                    "must be a valid IPv4 address",
                ),
                Some("IPv6") => (
                    text.parse::<std::net::Ipv6Addr>().is_ok(),
                    "must be a valid IPv6 address",
                ),
                Some("FQDN") => (is_dns1123_subdomain(text), DNS1123_SUBDOMAIN_MSG),
                _ => (true, ""),
            };
            if !ok {
                causes.push(Cause::invalid(apath, a, msg));
            }
        }
        if let Some(node) = ep["nodeName"].as_str()
            && !is_dns1123_subdomain(node)
        {
            causes.push(Cause::invalid(
                format!("{path}.nodeName"),
                &ep["nodeName"],
                DNS1123_SUBDOMAIN_MSG,
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (i, p) in obj["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = format!("ports[{i}]");
        port_number(&p["port"], &format!("{path}.port"), false, causes);
        protocol(&p["protocol"], &format!("{path}.protocol"), causes);
        let name = p["name"].as_str().unwrap_or_default();
        if !name.is_empty() && !is_dns1123_label(name) {
            causes.push(Cause::invalid(
                format!("{path}.name"),
                &p["name"],
                DNS1123_LABEL_MSG,
            ));
        }
        if !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
        }
    }
}

fn service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push(Cause::not_supported(
            "spec.type",
            &spec["type"],
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec["ports"].as_array();
    if ty != "ExternalName" && ports.is_none_or(Vec::is_empty) && spec["clusterIP"] != json!("None")
    {
        causes.push(Cause::required("spec.ports", ""));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    // NodePorts a NodePort/LoadBalancer Service turned ClusterIP still holds (none added) are
    // dropped on admission (dropTypeDependentFields), not refused.
    let carried_node_ports = old.is_some_and(|o| {
        let node_ports = |spec: &Value| -> BTreeSet<i64> {
            spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_i64())
                .filter(|n| *n != 0)
                .collect()
        };
        matches!(
            o["spec"]["type"].as_str(),
            Some("NodePort" | "LoadBalancer")
        ) && node_ports(&o["spec"]).is_superset(&node_ports(spec))
    });
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let path = format!("spec.ports[{i}]");
        port_number(&p["port"], &format!("{path}.port"), true, causes);
        protocol(&p["protocol"], &format!("{path}.protocol"), causes);
        let name = p["name"].as_str().unwrap_or_default();
        if many && name.is_empty() {
            causes.push(Cause::required(format!("{path}.name"), ""));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{path}.name"), &p["name"]));
        }
        match &p["targetPort"] {
            // A targetPort defaulted from an invalid port is reported once, at the port.
            Value::Number(_) if p["targetPort"] == p["port"] => {}
            Value::Number(_) => port_number(
                &p["targetPort"],
                &format!("{path}.targetPort"),
                false,
                causes,
            ),
            Value::String(s) if s.is_empty() || s.len() > 15 => causes.push(Cause::invalid(
                format!("{path}.targetPort"),
                &p["targetPort"],
                "must contain at least one letter (a-z) and be no more than 15 characters",
            )),
            _ => {}
        }
        if let Some(np) = p["nodePort"].as_i64()
            && np != 0
        {
            if ty == "ClusterIP" && !carried_node_ports {
                causes.push(Cause::forbidden(
                    format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(1..=65535).contains(&np) {
                causes.push(Cause::invalid(
                    format!("{path}.nodePort"),
                    &p["nodePort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        let key = (
            p["port"].as_i64(),
            p["protocol"].as_str().unwrap_or("TCP").to_string(),
        );
        if !seen.insert(key) {
            causes.push(Cause::duplicate(
                path.clone(),
                &json!({"port": p["port"], "protocol": p["protocol"].as_str().unwrap_or("TCP")}),
            ));
        }
    }
    external_ips(spec, causes);
    traffic_policies(spec, old.map(|o| &o["spec"]), causes);
    if let Some(old) = old {
        let (was, is) = (&old["spec"]["clusterIP"], &spec["clusterIP"]);
        if was.as_str().is_some_and(|s| !s.is_empty())
            && !is.is_null()
            && was != is
            && ty != "ExternalName"
        {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                is,
                "may not change once set",
            ));
        }
    }
}

/// Whether a Service spec is reachable from outside the cluster (kube-apiserver's
/// `ExternallyAccessible`): NodePort, LoadBalancer, or ClusterIP with externalIPs. Only these
/// may carry `externalTrafficPolicy`.
pub fn externally_accessible(spec: &Value) -> bool {
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "NodePort" | "LoadBalancer" => true,
        "ClusterIP" => spec["externalIPs"]
            .as_array()
            .is_some_and(|ips| !ips.is_empty()),
        _ => false,
    }
}

/// Whether a Service spec gets a `healthCheckNodePort` (kube-apiserver's `NeedsHealthCheck`):
/// type LoadBalancer with `externalTrafficPolicy: Local`, so that a load balancer can ask each
/// node whether it has local endpoints.
pub fn needs_health_check_node_port(spec: &Value) -> bool {
    spec["type"] == "LoadBalancer" && spec["externalTrafficPolicy"] == "Local"
}

/// `spec.externalIPs[i]`: each a valid IP address that is not unspecified, loopback or
/// link-local (ValidateService with ValidateNonSpecialIP).
fn external_ips(spec: &Value, causes: &mut Vec<Cause>) {
    for (i, v) in spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("spec.externalIPs[{i}]");
        let Some(ip) = v.as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
            causes.push(Cause::invalid(
                path,
                v,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
            continue;
        };
        for detail in special_ip(ip) {
            causes.push(Cause::invalid(path.clone(), v, &detail));
        }
    }
}

/// Why `ip` may not be an external or endpoint address, as Go's `net.IP` classifies it
/// (IPv4-mapped IPv6 addresses count as IPv4).
fn special_ip(ip: IpAddr) -> Vec<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    let (unspecified, loopback, link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => (
            v4.is_unspecified(),
            v4.is_loopback(),
            v4.is_link_local(),
            v4.octets()[..3] == [224, 0, 0],
        ),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (
                v6.is_unspecified(),
                v6.is_loopback(),
                first & 0xffc0 == 0xfe80,
                first & 0xff0f == 0xff02,
            )
        }
    };
    let mut out = Vec::new();
    if unspecified {
        out.push(format!("may not be unspecified ({ip})"));
    }
    if loopback {
        out.push("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    if link_local {
        out.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    if link_local_multicast {
        out.push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into());
    }
    out
}

/// `spec.externalTrafficPolicy`, `spec.internalTrafficPolicy` and `spec.healthCheckNodePort`
/// (validateServiceExternalTrafficPolicy, validateServiceInternalTrafficFieldsValue).
///
/// On update, a value the stored Service carried into a type that no longer uses it (a NodePort
/// Service turned ClusterIP still holding `externalTrafficPolicy: Cluster`, a LoadBalancer
/// switched to `Cluster` still holding its `healthCheckNodePort`) is not refused: admission
/// drops it, as kube-apiserver's dropTypeDependentFields does, so `kubectl apply` of the new
/// type works. A value the request changed is refused.
fn traffic_policies(spec: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let carried = |field: &str, used_by: fn(&Value) -> bool| {
        old.is_some_and(|o| used_by(o) && o[field] == spec[field])
    };
    let etp = &spec["externalTrafficPolicy"];
    if !etp.is_null() && etp != "" {
        if !externally_accessible(spec) {
            if !carried("externalTrafficPolicy", externally_accessible) {
                causes.push(Cause::invalid(
                    "spec.externalTrafficPolicy",
                    etp,
                    "may only be set for externally-accessible services",
                ));
            }
        } else if !matches!(etp.as_str(), Some("Cluster" | "Local")) {
            causes.push(Cause::not_supported(
                "spec.externalTrafficPolicy",
                etp,
                &["Cluster", "Local"],
            ));
        }
    }
    let itp = &spec["internalTrafficPolicy"];
    if !itp.is_null() && !matches!(itp.as_str(), Some("Cluster" | "Local")) {
        causes.push(Cause::not_supported(
            "spec.internalTrafficPolicy",
            itp,
            &["Cluster", "Local"],
        ));
    }
    let hc = &spec["healthCheckNodePort"];
    if !hc.is_null() && hc != 0 {
        if !needs_health_check_node_port(spec) {
            if !carried("healthCheckNodePort", needs_health_check_node_port) {
                causes.push(Cause::invalid(
                    "spec.healthCheckNodePort",
                    hc,
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                ));
            }
        } else if !hc.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
            causes.push(Cause::invalid(
                "spec.healthCheckNodePort",
                hc,
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
}

/// Deployment/ReplicaSet/DaemonSet: selector required, non-empty and matching template labels;
/// template a valid Pod spec; replicas non-negative.
fn workload(info: &ResourceInfo, obj: &Value, causes: &mut Vec<Cause>) {
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
    if info.kind != "DaemonSet"
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
