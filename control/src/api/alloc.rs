//! Service admission: ClusterIP allocation from the Service CIDR and NodePort allocation from
//! 30000-32767. Allocations are derived from the stored Services on every request, so they
//! survive restarts without a separate bitmap (kube-apiserver keeps one; we keep it implicit).

use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{ApiConfig, error::Cause};

/// What the stored Services (other than the one being admitted) already use.
#[derive(Debug, Default)]
pub struct Allocated {
    pub ips: BTreeSet<Ipv4Addr>,
    /// (nodePort, protocol)
    pub node_ports: BTreeSet<(u16, String)>,
}

impl Allocated {
    /// Collects allocations from stored Services, skipping the one at `skip` (namespace, name).
    pub fn from_services<'a>(
        services: impl Iterator<Item = &'a Value>,
        skip: (&str, &str),
    ) -> Self {
        let mut out = Self::default();
        for svc in services {
            let (ns, name) = (
                svc["metadata"]["namespace"].as_str(),
                svc["metadata"]["name"].as_str(),
            );
            if (ns.unwrap_or_default(), name.unwrap_or_default()) == skip {
                continue;
            }
            let spec = &svc["spec"];
            let ips = spec["clusterIPs"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![spec["clusterIP"].clone()]);
            for ip in ips
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|s| s.parse().ok())
            {
                out.ips.insert(ip);
            }
            for p in spec["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                    out.node_ports
                        .insert((np, p["protocol"].as_str().unwrap_or("TCP").to_string()));
                }
            }
        }
        out
    }
}

/// Fills in `spec.clusterIP(s)` and NodePorts of a (defaulted) Service, honouring requested
/// values when they are free and in range. `old` is the stored Service on update: its
/// allocations are kept when the request leaves them out.
pub fn admit_service(
    cfg: &ApiConfig,
    svc: &mut Value,
    old: Option<&Value>,
    used: &Allocated,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return causes;
    };

    if ty == "ExternalName" {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    } else {
        let requested = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| {
                spec.get("clusterIPs")
                    .and_then(|v| v[0].as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .or_else(|| {
                old.and_then(|o| o["spec"]["clusterIP"].as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            });
        let ip = match requested.as_deref() {
            Some("None") => Some("None".to_string()),
            Some(req) => {
                match req.parse::<Ipv4Addr>() {
                    Err(_) => {
                        causes.push(Cause::invalid(
                            "spec.clusterIPs[0]",
                            &json!(req),
                            "must be a valid IP address",
                        ));
                        None
                    }
                    Ok(ip)
                        if !cfg.service_cidr.contains(ip)
                            || ip == cfg.service_cidr.network()
                            || ip == cfg.service_cidr.broadcast() =>
                    {
                        causes.push(Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(req),
                        &format!("provided IP is not in the valid range. The range of valid IPs is {}", cfg.service_cidr),
                    ));
                        None
                    }
                    Ok(ip) if used.ips.contains(&ip) => {
                        causes.push(Cause::invalid(
                            "spec.clusterIPs[0]",
                            &json!(req),
                            "provided IP is already allocated",
                        ));
                        None
                    }
                    Ok(ip) => Some(ip.to_string()),
                }
            }
            None => match allocate_ip(cfg, used) {
                Some(ip) => Some(ip.to_string()),
                None => {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: "Internal error: failed to allocate a serviceIP: range is full"
                            .into(),
                    });
                    None
                }
            },
        };
        if let Some(ip) = ip {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    }

    let wants_node_ports = ty == "NodePort"
        || (ty == "LoadBalancer"
            && spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false));
    let old_ports: Vec<Value> = old
        .and_then(|o| o["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    let mut taken_here: BTreeSet<(u16, String)> = BTreeSet::new();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(pm) = p.as_object_mut() else {
                continue;
            };
            let proto = pm
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            if !wants_node_ports {
                pm.remove("nodePort");
                continue;
            }
            let requested = pm
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0)
                .or_else(|| {
                    old_ports
                        .iter()
                        .find(|o| {
                            o["port"] == pm["port"]
                                && o["protocol"].as_str().unwrap_or("TCP") == proto
                        })
                        .and_then(|o| o["nodePort"].as_i64())
                });
            let (lo, hi) = cfg.node_port_range;
            let field = format!("spec.ports[{i}].nodePort");
            let chosen = match requested {
                Some(n) if n < i64::from(lo) || n > i64::from(hi) => {
                    causes.push(Cause::invalid(
                        field,
                        &json!(n),
                        &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                    ));
                    continue;
                }
                Some(n) => {
                    let n = u16::try_from(n).unwrap_or(lo);
                    if used.node_ports.contains(&(n, proto.clone()))
                        || taken_here.contains(&(n, proto.clone()))
                    {
                        causes.push(Cause::invalid(
                            field,
                            &json!(n),
                            "provided port is already allocated",
                        ));
                        continue;
                    }
                    n
                }
                None => match allocate_port(cfg, used, &taken_here, &proto) {
                    Some(n) => n,
                    None => {
                        causes.push(Cause::invalid(field, &json!(0), "range is full"));
                        continue;
                    }
                },
            };
            taken_here.insert((chosen, proto));
            pm.insert("nodePort".into(), json!(chosen));
        }
    }
    causes
}

fn allocate_ip(cfg: &ApiConfig, used: &Allocated) -> Option<Ipv4Addr> {
    let net = cfg.service_cidr;
    let base = u32::from(net.network());
    let size = 1u64 << (32 - u32::from(net.prefix()));
    if size < 4 {
        return None;
    }
    // Offsets 2..size-1: skip the network address, the reserved .1 and the broadcast address.
    let span = size - 3;
    let start = rand::random::<u64>() % span;
    (0..span)
        .map(|i| Ipv4Addr::from(base + u32::try_from(2 + (start + i) % span).unwrap_or(2)))
        .find(|ip| !used.ips.contains(ip))
}

fn allocate_port(
    cfg: &ApiConfig,
    used: &Allocated,
    here: &BTreeSet<(u16, String)>,
    proto: &str,
) -> Option<u16> {
    let (lo, hi) = cfg.node_port_range;
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    (0..span)
        .filter_map(|i| u16::try_from(u32::from(lo) + (start + i) % span).ok())
        .find(|p| {
            !used.node_ports.contains(&(*p, proto.to_string()))
                && !here.contains(&(*p, proto.to_string()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ApiConfig {
        ApiConfig::with_admin_token("10.96.0.0/29".parse().expect("cidr"), "t".into())
    }

    #[test]
    fn api_alloc_cluster_ips_are_unique_and_skip_reserved() {
        let cfg = cfg();
        let mut stored: Vec<Value> = Vec::new();
        for i in 0..5 {
            let mut svc = json!({"metadata": {"name": format!("s{i}"), "namespace": "d"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
            let used = Allocated::from_services(stored.iter(), ("d", ""));
            assert!(admit_service(&cfg, &mut svc, None, &used).is_empty());
            stored.push(svc);
        }
        let ips: BTreeSet<&str> = stored
            .iter()
            .filter_map(|s| s["spec"]["clusterIP"].as_str())
            .collect();
        assert_eq!(ips.len(), 5);
        assert!(
            !ips.contains("10.96.0.1") && !ips.contains("10.96.0.0") && !ips.contains("10.96.0.7")
        );
        let mut svc = json!({"metadata": {"name": "full", "namespace": "d"}, "spec": {"ports": [{"port": 80}]}});
        let used = Allocated::from_services(stored.iter(), ("d", "full"));
        let causes = admit_service(&cfg, &mut svc, None, &used);
        assert_eq!(causes[0].field, "spec.clusterIPs");
    }

    #[test]
    fn api_alloc_requested_ip_and_node_ports() {
        let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), "t".into());
        let existing = json!({"metadata": {"name": "a", "namespace": "d"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let used = Allocated::from_services(std::iter::once(&existing), ("d", "b"));
        let mut taken = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let causes = admit_service(&cfg, &mut taken, None, &used);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.clusterIPs[0]", "spec.ports[0].nodePort"]);
        let mut out_of_range = json!({"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}});
        let causes = admit_service(&cfg, &mut out_of_range, None, &used);
        assert!(
            causes[0].message.contains("not in the valid range"),
            "{causes:?}"
        );
        let mut headless = json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assert!(admit_service(&cfg, &mut headless, None, &used).is_empty());
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let mut np = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.11", "ports": [{"port": 80, "protocol": "TCP"}]}});
        assert!(admit_service(&cfg, &mut np, None, &used).is_empty());
        let port = np["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("nodePort allocated");
        assert!((30000..=32767).contains(&port) && port != 30080);
    }
}
