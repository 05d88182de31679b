//! EndpointSlice (discovery.k8s.io/v1): pkg/registry/discovery/endpointslice/strategy.go and
//! ValidateEndpointSlice. The agent programs these addresses into the datapath directly, so
//! nothing kube-apiserver would refuse may be stored.

use std::collections::BTreeSet;

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::api::error::Cause;
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, age, arr, n, name, s},
    strategy::{Strategy, schema_of},
    validation::{
        DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG, is_dns1123_label, is_dns1123_subdomain,
        port_number, protocol,
    },
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &EndpointSlices,
};

struct EndpointSlices;

impl Strategy for EndpointSlices {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::discovery::v1::EndpointSlice>(generator)
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        endpoint_slice(obj, causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
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
            name(o),
            json!(s(&o["addressType"])),
            json!(ports),
            json!(shown),
            json!(age(o)),
        ]
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

