//! Service (core/v1): pkg/registry/core/service/strategy.go, its defaults
//! (pkg/apis/core/v1/defaults.go SetDefaults_Service), ValidateService, and the REST storage's
//! admission: ClusterIP, NodePort and healthCheckNodePort allocation (api::alloc), one Service
//! at a time so that no two take the same address or port.

use std::{collections::BTreeSet, net::IpAddr};

use futures::future::BoxFuture;
use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::{
    alloc,
    error::{ApiError, Cause},
    protobuf::{Bool, Field, Ignore, Int, IntOrString, Kind, Msg, OBJECT_META, STR, Str, f, r},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, set_default},
    printers::{Column, age, arr, key_values, n, name, or_none, s},
    strategy::{AdmissionContext, DynInUse, NameRule, Strategy, reset_status, schema_of},
    validation::{port_number, protocol},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    subresources: &["status"],
    verbs: ALL_VERBS,
    categories: &["all"],
    strategy: &Services,
};

struct Services;

const SERVICE_PORT: &[Field] = &[
    f(1, "name", Str),
    f(2, "protocol", Str),
    f(3, "port", Int),
    f(4, "targetPort", IntOrString),
    f(5, "nodePort", Int),
    f(6, "appProtocol", Str),
];
const SERVICE_SPEC: &[Field] = &[
    r(1, "ports", Msg(SERVICE_PORT)),
    f(2, "selector", Kind::Map(&STR)),
    f(3, "clusterIP", Str),
    f(4, "type", Str),
    r(5, "externalIPs", Str),
    f(7, "sessionAffinity", Str),
    f(8, "loadBalancerIP", Str),
    r(9, "loadBalancerSourceRanges", Str),
    f(10, "externalName", Str),
    f(11, "externalTrafficPolicy", Str),
    f(12, "healthCheckNodePort", Int),
    f(13, "publishNotReadyAddresses", Bool),
    f(17, "ipFamilyPolicy", Str),
    r(18, "clusterIPs", Str),
    r(19, "ipFamilies", Str),
    f(20, "allocateLoadBalancerNodePorts", Bool),
    f(21, "loadBalancerClass", Str),
    f(22, "internalTrafficPolicy", Str),
    f(23, "trafficDistribution", Str),
];
const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(SERVICE_SPEC)),
    f(3, "status", Ignore),
];

impl Strategy for Services {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::Service>(generator)
    }

    /// A Service's name is a DNS label under its namespace.
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj, json!({"loadBalancer": {}}));
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        if let Some(spec) = child(root, "spec") {
            service_spec(spec);
        }
    }

    fn validate(&self, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        service(obj, old, causes);
    }

    fn serial_admission(&self) -> bool {
        true
    }

    /// ClusterIP(s), NodePorts and the healthCheckNodePort, from what the other stored Services
    /// hold (the allocation index answers as a fresh list of every Service would, without
    /// listing them per admission, which made creating N Services cost O(N^2)).
    fn admit<'a>(
        &'a self,
        ctx: &'a dyn AdmissionContext,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<Vec<Cause>, ApiError>> {
        Box::pin(async move {
            let ns = s(&obj["metadata"]["namespace"]);
            let svc_name = s(&obj["metadata"]["name"]);
            let prefix = INFO.prefix();
            let used = ctx.allocations(&prefix, (&ns, &svc_name)).await?;
            Ok(alloc::admit_service(
                ctx.config(),
                obj,
                old,
                &DynInUse(&*used),
            ))
        })
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let (spec, status) = (&o["spec"], &o["status"]);
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
            name(o),
            json!(ty),
            json!(or_none(s(&spec["clusterIP"]))),
            json!(or_none(external.join(","))),
            json!(or_none(ports.join(","))),
            json!(age(o)),
            json!(key_values(&spec["selector"])),
        ]
    }
}

/// Service spec defaults (type ClusterIP, sessionAffinity None, TCP, targetPort = port, IPv4
/// single stack, internalTrafficPolicy Cluster, externalTrafficPolicy Cluster for externally
/// reachable Services). ClusterIP/NodePort allocation happens elsewhere.
fn service_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    // SetDefaults_Service defaults externalTrafficPolicy for every externally-accessible
    // Service, which includes a ClusterIP Service with externalIPs; an empty string is unset
    // there (the field is a plain string in the Go type).
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    if spec.get("externalTrafficPolicy") == Some(&json!("")) {
        spec.remove("externalTrafficPolicy");
    }
    if ty == "NodePort" || ty == "LoadBalancer" || (ty == "ClusterIP" && has_external_ips) {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
}

/// ValidateService / ValidateServiceUpdate.
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

