//! NetworkPolicy (networking.k8s.io/v1): pkg/registry/networking/networkpolicy/strategy.go, the
//! defaults of pkg/apis/networking/v1/defaults.go and the checks of
//! pkg/apis/networking/validation/validation.go ValidateNetworkPolicy, with kube-apiserver's
//! messages, and its kubectl columns. The agent programs these policies into the datapath, so
//! nothing kube-apiserver would refuse may be stored.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::{error::Cause, selectors::format_label_selector};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, set_default},
    labels::{selector_has_errors, validate_label_selector},
    printers::{Column, age, name},
    strategy::{Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    singular: "networkpolicy",
    namespaced: true,
    short_names: &["netpol"],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &NetworkPolicies,
};

struct NetworkPolicies;

impl Strategy for NetworkPolicies {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::networking::v1::NetworkPolicy>(generator)
    }

    /// PrepareForCreate sets generation 1; PrepareForUpdate bumps it on a spec change.
    fn tracks_generation(&self) -> bool {
        true
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        apply_defaults(root);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate(obj, old, causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Pod-Selector", "string", 0),
            ("Age", "string", 0),
        ]
    }

    /// printNetworkPolicy: metav1.FormatLabelSelector of spec.podSelector.
    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![
            name(o),
            json!(format_label_selector(&o["spec"]["podSelector"])),
            json!(age(o)),
        ]
    }
}

/// The (rule list, peer list) field names of the two directions.
const DIRECTIONS: [(&str, &str); 2] = [("ingress", "from"), ("egress", "to")];

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// SetDefaults_NetworkPolicy and SetDefaults_NetworkPolicyPort: `policyTypes` defaults to
/// `Ingress`, plus `Egress` when there are egress rules; every port's protocol to TCP. The spec
/// and its podSelector are plain structs in k8s.io/api, so kube-apiserver always writes them out
/// (`spec: {podSelector: {}}` for a policy created without either).
fn apply_defaults(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set_default(spec, "podSelector", json!({}));
    let unset = spec
        .get("policyTypes")
        .is_none_or(|t| t.is_null() || t.as_array().is_some_and(Vec::is_empty));
    if unset {
        let egress = !arr(spec.get("egress").unwrap_or(&Value::Null)).is_empty();
        let types = if egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
    for (rules, _) in DIRECTIONS {
        for rule in spec
            .get_mut(rules)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for port in rule
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object_mut)
            {
                set_default(port, "protocol", json!("TCP"));
            }
        }
    }
}

/// ValidateNetworkPolicySpec (the metadata is checked with every kind's). On update, CIDRs and
/// selector values the stored policy already had are let through as kube-apiserver lets them
/// (ValidateNetworkPolicyUpdate, ValidationOptionsForNetworking), so an object stored under
/// older rules can still be edited.
fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let allow_invalid_values = old.is_some_and(|o| selector_has_errors(&o["spec"]["podSelector"]));
    let old_cidrs = old.map(|o| stored_cidrs(&o["spec"])).unwrap_or_default();
    validate_label_selector(
        &spec["podSelector"],
        "spec.podSelector",
        allow_invalid_values,
        causes,
    );
    for (rules, peers) in DIRECTIONS {
        for (i, rule) in arr(&spec[rules]).iter().enumerate() {
            let rule_path = format!("spec.{rules}[{i}]");
            for (j, port) in arr(&rule["ports"]).iter().enumerate() {
                validate_port(port, &format!("{rule_path}.ports[{j}]"), causes);
            }
            for (j, peer) in arr(&rule[peers]).iter().enumerate() {
                let peer_path = format!("{rule_path}.{peers}[{j}]");
                validate_peer(peer, &peer_path, allow_invalid_values, &old_cidrs, causes);
            }
        }
    }
    policy_types(&spec["policyTypes"], causes);
}

/// Every `cidr` and `except` entry of a stored spec's ipBlocks.
fn stored_cidrs(spec: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (rules, peers) in DIRECTIONS {
        for rule in arr(&spec[rules]) {
            for peer in arr(&rule[peers]) {
                let block = &peer["ipBlock"];
                out.extend(block["cidr"].as_str().map(str::to_string));
                out.extend(
                    arr(&block["except"])
                        .iter()
                        .filter_map(|e| e.as_str().map(str::to_string)),
                );
            }
        }
    }
    out
}

/// `spec.policyTypes`: at most two, each `Ingress` or `Egress`. The "more than two" message
/// shows the list as Go's `%#v` prints kube-apiserver's internal type.
fn policy_types(types: &Value, causes: &mut Vec<Cause>) {
    if !types.is_null() && !types.is_array() {
        causes.push(Cause::invalid("spec.policyTypes", types, "must be a list"));
        return;
    }
    let types = arr(types);
    if types.len() > 2 {
        let shown: Vec<String> = types.iter().map(Value::to_string).collect();
        causes.push(Cause {
            reason: "FieldValueInvalid",
            field: "spec.policyTypes".into(),
            message: format!(
                "Invalid value: []networking.PolicyType{{{}}}: may not specify more than two policyTypes",
                shown.join(", ")
            ),
        });
        return;
    }
    for (i, t) in types.iter().enumerate() {
        if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
            causes.push(Cause::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
}

const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

/// ValidateNetworkPolicyPort: a supported protocol, a port number in range or a valid IANA
/// service name, and an `endPort` only after a numeric `port` and not below it.
fn validate_port(port: &Value, path: &str, causes: &mut Vec<Cause>) {
    let protocol = &port["protocol"];
    if !protocol.is_null() && !matches!(protocol.as_str(), Some("TCP" | "UDP" | "SCTP")) {
        // ValidateNetworkPolicyPort lists them in this order, unlike the Pod and Service checks.
        causes.push(Cause::not_supported(
            format!("{path}.protocol"),
            protocol,
            &["TCP", "UDP", "SCTP"],
        ));
    }
    let end_port = &port["endPort"];
    let end_path = format!("{path}.endPort");
    match &port["port"] {
        Value::Null => {
            if !end_port.is_null() {
                causes.push(Cause::invalid(
                    end_path,
                    end_port,
                    "may not be specified when `port` is not specified",
                ));
            }
        }
        Value::String(name) => {
            if !end_port.is_null() {
                causes.push(Cause::invalid(
                    end_path,
                    end_port,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for msg in port_name_errors(name) {
                causes.push(Cause::invalid(format!("{path}.port"), &port["port"], msg));
            }
        }
        number => {
            let n = number.as_i64();
            if !n.is_some_and(valid_port_number) {
                causes.push(Cause::invalid(
                    format!("{path}.port"),
                    number,
                    PORT_RANGE_MSG,
                ));
            }
            if !end_port.is_null() {
                let end = end_port.as_i64();
                if let (Some(n), Some(end)) = (n, end)
                    && end < n
                {
                    causes.push(Cause::invalid(
                        &end_path,
                        end_port,
                        "must be greater than or equal to `port`",
                    ));
                }
                if !end.is_some_and(valid_port_number) {
                    causes.push(Cause::invalid(&end_path, end_port, PORT_RANGE_MSG));
                }
            }
        }
    }
}

fn valid_port_number(n: i64) -> bool {
    (1..=65535).contains(&n)
}

/// IsValidPortName (apimachinery util/validation): an IANA_SVC_NAME, at most 15 of [-a-z0-9]
/// with a letter, no `--`, no hyphen at either end. Every problem is its own message.
pub fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters");
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen");
    }
    errs
}

/// ValidateNetworkPolicyPeer: exactly one kind of peer, a selector pair or an ipBlock, each
/// valid.
fn validate_peer(
    peer: &Value,
    path: &str,
    allow_invalid_values: bool,
    old_cidrs: &BTreeSet<String>,
    causes: &mut Vec<Cause>,
) {
    let mut peers = 0;
    for selector in ["podSelector", "namespaceSelector"] {
        if !peer[selector].is_null() {
            peers += 1;
            validate_label_selector(
                &peer[selector],
                &format!("{path}.{selector}"),
                allow_invalid_values,
                causes,
            );
        }
    }
    let block = &peer["ipBlock"];
    if !block.is_null() {
        peers += 1;
        validate_ip_block(block, &format!("{path}.ipBlock"), old_cidrs, causes);
    }
    if peers == 0 {
        causes.push(Cause::required(path, "must specify a peer"));
    } else if peers > 1 && !block.is_null() {
        causes.push(Cause::forbidden(
            path,
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// ValidateIPBlock: `cidr` required and valid; every `except` entry valid and strictly inside
/// `cidr` (same family, longer prefix).
fn validate_ip_block(
    block: &Value,
    path: &str,
    old_cidrs: &BTreeSet<String>,
    causes: &mut Vec<Cause>,
) {
    let cidr = block["cidr"].as_str().unwrap_or_default();
    if cidr.is_empty() {
        causes.push(Cause::required(format!("{path}.cidr"), ""));
        return;
    }
    cidr_causes(&format!("{path}.cidr"), cidr, old_cidrs, causes);
    let Some(outer) = parse_cidr_sloppy(cidr) else {
        return;
    };
    for (i, except) in arr(&block["except"]).iter().enumerate() {
        let epath = format!("{path}.except[{i}]");
        let text = except.as_str().unwrap_or_default();
        cidr_causes(&epath, text, old_cidrs, causes);
        let Some(inner) = parse_cidr_sloppy(text) else {
            continue;
        };
        if !outer.contains(&inner) || outer.prefix >= inner.prefix {
            causes.push(Cause::invalid(
                epath,
                except,
                "must be a strict subset of `cidr`",
            ));
        }
    }
}

/// A CIDR as Go's net.ParseCIDR reads it: the network (host bits cleared) and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// net.IPNet.Contains of the other network's address: same family, same leading bits.
    fn contains(&self, other: &Cidr) -> bool {
        match (self.network, other.network) {
            (IpAddr::V4(a), IpAddr::V4(b)) => mask_v4(b, self.prefix) == a,
            (IpAddr::V6(a), IpAddr::V6(b)) => mask_v6(b, self.prefix) == a,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

/// Decimal digits only (Go's dtoi); leading zeros allowed.
fn sloppy_decimal(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|n| *n <= max)
}

/// k8s.io/utils/net ParseIPSloppy for IPv4: four decimal octets, leading zeros allowed.
fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let octets: Vec<u8> = s
        .split('.')
        .map(|o| sloppy_decimal(o, 255).and_then(|n| u8::try_from(n).ok()))
        .collect::<Option<_>>()?;
    let [a, b, c, d] = octets.as_slice() else {
        return None;
    };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

/// k8s.io/utils/net ParseCIDRSloppy: what kube-apiserver accepts as a CIDR at all.
fn parse_cidr_sloppy(s: &str) -> Option<Cidr> {
    let (addr, bits) = s.split_once('/')?;
    if let Some(v4) = parse_ipv4_sloppy(addr) {
        let prefix = u8::try_from(sloppy_decimal(bits, 32)?).ok()?;
        return Some(Cidr {
            network: IpAddr::V4(mask_v4(v4, prefix)),
            prefix,
        });
    }
    let v6: Ipv6Addr = addr.parse().ok()?;
    let prefix = u8::try_from(sloppy_decimal(bits, 128)?).ok()?;
    Some(Cidr {
        network: IpAddr::V6(mask_v6(v6, prefix)),
        prefix,
    })
}

/// IsValidCIDRForLegacyField with StrictIPCIDRValidation (beta, on by default since 1.36):
/// parseable, then no leading zeros, no IPv4-mapped IPv6 address and no host bits. A value the
/// stored object already had is not checked again.
fn cidr_causes(path: &str, value: &str, old_cidrs: &BTreeSet<String>, causes: &mut Vec<Cause>) {
    if old_cidrs.contains(value) {
        return;
    }
    let shown = json!(value);
    let Some(sloppy) = parse_cidr_sloppy(value) else {
        causes.push(Cause::invalid(
            path,
            &shown,
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
        return;
    };
    // netip.ParsePrefix refuses what ParseCIDRSloppy only tolerates: leading zeros in an IPv4
    // octet or in the prefix length.
    let (addr, bits) = value.split_once('/').unwrap_or((value, ""));
    let leading_zero = |s: &str| s.len() > 1 && s.starts_with('0');
    let strict_ip: Option<IpAddr> = match sloppy.network {
        IpAddr::V4(_) if addr.split('.').any(leading_zero) => None,
        _ => addr.parse().ok(),
    };
    let Some(ip) = strict_ip.filter(|_| !leading_zero(bits)) else {
        causes.push(Cause::invalid(
            path,
            &shown,
            "must not have leading 0s in IP or prefix length",
        ));
        return;
    };
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        causes.push(Cause::invalid(
            path,
            &shown,
            "must not have an IPv4-mapped IPv6 address",
        ));
    } else if ip != sloppy.network {
        causes.push(Cause::invalid(
            path,
            &shown,
            "must not have bits set beyond the prefix length",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr_messages(value: &str) -> Vec<String> {
        let mut causes = Vec::new();
        cidr_causes("c", value, &BTreeSet::new(), &mut causes);
        causes.into_iter().map(|c| c.message).collect()
    }

    #[test]
    fn registry_netpol_cidr_parsing() {
        for ok in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.168.1.0/24",
            "2001:db8::/64",
            "::/0",
            "10.1.2.3/32",
        ] {
            assert!(cidr_messages(ok).is_empty(), "{ok}");
        }
        let invalid = "Invalid value: \"{}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0",
            "10.0.0/8",
            "300.0.0.0/8",
            "2001:db8::/129",
            "10.0.0.0/x",
            "fe80::1%eth0/64",
            "10.0.0.0/-1",
        ] {
            assert_eq!(cidr_messages(bad), [invalid.replace("{}", bad)], "{bad}");
        }
        assert_eq!(
            cidr_messages("010.0.0.0/8"),
            ["Invalid value: \"010.0.0.0/8\": must not have leading 0s in IP or prefix length"]
        );
        assert_eq!(cidr_messages("10.0.0.0/08").len(), 1);
        assert_eq!(
            cidr_messages("::ffff:10.0.0.0/104"),
            ["Invalid value: \"::ffff:10.0.0.0/104\": must not have an IPv4-mapped IPv6 address"]
        );
        assert_eq!(
            cidr_messages("10.0.0.1/8"),
            ["Invalid value: \"10.0.0.1/8\": must not have bits set beyond the prefix length"]
        );
        let mut causes = Vec::new();
        cidr_causes(
            "c",
            "10.0.0.1/8",
            &BTreeSet::from(["10.0.0.1/8".to_string()]),
            &mut causes,
        );
        assert!(causes.is_empty(), "stored values are not checked again");

        let outer = parse_cidr_sloppy("10.0.0.0/8").expect("parses");
        let inner = parse_cidr_sloppy("10.1.0.0/16").expect("parses");
        assert!(outer.contains(&inner) && outer.prefix < inner.prefix);
        assert!(!inner.contains(&outer));
        assert!(!outer.contains(&parse_cidr_sloppy("2001:db8::/64").expect("parses")));
        assert_eq!(
            parse_cidr_sloppy("010.001.0.0/016").map(|c| (c.network, c.prefix)),
            Some((IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)), 16))
        );
    }

    #[test]
    fn registry_netpol_port_names() {
        assert!(port_name_errors("http").is_empty());
        assert!(port_name_errors("h2-c").is_empty());
        assert_eq!(
            port_name_errors("80"),
            ["must contain at least one letter (a-z)"]
        );
        assert_eq!(
            port_name_errors("Web_Port"),
            ["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]
        );
        assert_eq!(
            port_name_errors("-a--b-"),
            [
                "must not contain consecutive hyphens",
                "must not begin or end with a hyphen"
            ]
        );
        assert_eq!(
            port_name_errors("abcdefghijklmnop"),
            ["must be no more than 15 characters"]
        );
    }

    #[test]
    fn registry_netpol_defaults() {
        let mut np = json!({"spec": {"egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 443}]}],
            "ingress": [{"ports": [{"port": "http"}]}]}});
        apply_defaults(np.as_object_mut().expect("object"));
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["podSelector"], json!({}));
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "UDP");
        assert_eq!(np["spec"]["egress"][0]["ports"][1]["protocol"], "TCP");
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        let mut bare = json!({});
        apply_defaults(bare.as_object_mut().expect("object"));
        assert_eq!(
            bare["spec"],
            json!({"podSelector": {}, "policyTypes": ["Ingress"]})
        );
        let mut explicit = json!({"spec": {"policyTypes": ["Egress"]}});
        apply_defaults(explicit.as_object_mut().expect("object"));
        assert_eq!(explicit["spec"]["policyTypes"], json!(["Egress"]));
    }
}
