//! Service admission: ClusterIP allocation from the Service CIDR, NodePort and
//! healthCheckNodePort allocation from 30000-32767. Allocations are derived from the stored
//! Services on every request, so they survive restarts without a separate bitmap (kube-apiserver
//! keeps one; we keep it implicit).

use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{ApiConfig, error::Cause};
use crate::registry::validation::{externally_accessible, needs_health_check_node_port};

/// The protocol a healthCheckNodePort is served over: kube-proxy (and keelson's agent) answer
/// the load balancer's HTTP probe on it, so it occupies the TCP nodePort of that number.
const HEALTH_CHECK_PROTOCOL: &str = "TCP";

/// What the stored Services (other than the one being admitted) already use.
#[derive(Debug, Default)]
pub struct Allocated {
    pub ips: BTreeSet<Ipv4Addr>,
    /// (nodePort, protocol); a healthCheckNodePort counts as a TCP nodePort.
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
            if let Some(hc) = spec["healthCheckNodePort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
            {
                out.node_ports
                    .insert((hc, HEALTH_CHECK_PROTOCOL.to_string()));
            }
        }
        out
    }
}

/// Fills in `spec.clusterIP(s)`, NodePorts and the healthCheckNodePort of a (defaulted,
/// validated) Service, honouring requested values when they are free and in range. `old` is the
/// stored Service on update: its allocations are kept when the request leaves them out, and
/// fields its new type no longer uses are dropped (their numbers are free again, as
/// kube-apiserver releases them).
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
    let accessible = externally_accessible(&svc["spec"]);
    let needs_health_check = needs_health_check_node_port(&svc["spec"]);
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return causes;
    };
    // Validation let through only values carried over from the stored Service
    // (dropTypeDependentFields); a type that does not use them loses them here.
    if !accessible {
        spec.remove("externalTrafficPolicy");
    }
    if !needs_health_check {
        spec.remove("healthCheckNodePort");
    }
    // The healthCheckNodePort the request asks for, or the one the stored Service keeps.
    let health_check_request = needs_health_check
        .then(|| {
            spec.get("healthCheckNodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0)
                .or_else(|| {
                    old.filter(|o| needs_health_check_node_port(&o["spec"]))
                        .and_then(|o| o["spec"]["healthCheckNodePort"].as_i64())
                        .filter(|n| *n != 0)
                })
        })
        .flatten();
    // Ports picked for this Service must not take the healthCheckNodePort it asks for.
    let health_check_reserved: BTreeSet<(u16, String)> = health_check_request
        .and_then(|n| u16::try_from(n).ok())
        .map(|n| (n, HEALTH_CHECK_PROTOCOL.to_string()))
        .into_iter()
        .collect();

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
                None => match allocate_port(
                    cfg,
                    used,
                    &taken_here.union(&health_check_reserved).cloned().collect(),
                    &proto,
                ) {
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

    if needs_health_check {
        let (lo, hi) = cfg.node_port_range;
        let field = "spec.healthCheckNodePort";
        let hc_key = |n: u16| (n, HEALTH_CHECK_PROTOCOL.to_string());
        // kube-apiserver words these "failed to allocate requested HealthCheck NodePort <n>:
        // <allocator error>"; it returns them as an internal error, here they name the field.
        let chosen = match health_check_request {
            Some(n) if n < i64::from(lo) || n > i64::from(hi) => {
                causes.push(Cause::invalid(
                    field,
                    &json!(n),
                    &format!("failed to allocate requested HealthCheck NodePort {n}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                ));
                None
            }
            Some(n) => {
                let n = u16::try_from(n).unwrap_or(lo);
                if used.node_ports.contains(&hc_key(n)) || taken_here.contains(&hc_key(n)) {
                    causes.push(Cause::invalid(
                        field,
                        &json!(n),
                        &format!("failed to allocate requested HealthCheck NodePort {n}: provided port is already allocated"),
                    ));
                    None
                } else {
                    Some(n)
                }
            }
            None => {
                let n = allocate_port(cfg, used, &taken_here, HEALTH_CHECK_PROTOCOL);
                if n.is_none() {
                    causes.push(Cause::invalid(
                        field,
                        &json!(0),
                        "failed to allocate a HealthCheck NodePort: range is full",
                    ));
                }
                n
            }
        };
        if let Some(n) = chosen {
            spec.insert("healthCheckNodePort".into(), json!(n));
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

    fn lb_local(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "d"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "protocol": "TCP"}]}})
    }

    fn hc_port(svc: &Value) -> Option<u64> {
        svc["spec"]["healthCheckNodePort"].as_u64()
    }

    #[test]
    fn api_alloc_health_check_node_port_on_create() {
        let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), "t".into());
        // A single free port in a tiny range goes to the health check, never to a nodePort.
        let mut tight = cfg.clone();
        tight.node_port_range = (30000, 30001);
        let mut svc = lb_local("a");
        svc["spec"]["healthCheckNodePort"] = json!(30000);
        let used = Allocated::default();
        assert!(admit_service(&tight, &mut svc, None, &used).is_empty());
        assert_eq!(hc_port(&svc), Some(30000));
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30001);

        // Allocated when absent, distinct from the nodePort, and counted as used afterwards.
        let mut svc = lb_local("b");
        assert!(admit_service(&cfg, &mut svc, None, &used).is_empty());
        let hc = hc_port(&svc).expect("healthCheckNodePort allocated");
        assert!((30000..=32767).contains(&hc));
        assert_ne!(Some(hc), svc["spec"]["ports"][0]["nodePort"].as_u64());
        let used = Allocated::from_services(std::iter::once(&svc), ("d", "other"));
        let hc16 = u16::try_from(hc).expect("port");
        assert!(used.node_ports.contains(&(hc16, "TCP".to_string())));

        // Cluster policy and other types get none.
        for spec in [
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "ports": [{"port": 80}]}),
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ] {
            let mut svc = json!({"metadata": {"name": "c", "namespace": "d"}, "spec": spec});
            assert!(admit_service(&cfg, &mut svc, None, &used).is_empty());
            assert_eq!(hc_port(&svc), None, "{svc}");
        }
    }

    #[test]
    fn api_alloc_health_check_node_port_refused_when_taken_or_out_of_range() {
        let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), "t".into());
        let existing = json!({"metadata": {"name": "a", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.10",
                     "healthCheckNodePort": 31000,
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let used = Allocated::from_services(std::iter::once(&existing), ("d", "b"));
        for (taken, message) in [
            (
                30080,
                "Invalid value: 30080: failed to allocate requested HealthCheck NodePort 30080: provided port is already allocated",
            ),
            (
                31000,
                "Invalid value: 31000: failed to allocate requested HealthCheck NodePort 31000: provided port is already allocated",
            ),
            (
                40000,
                "Invalid value: 40000: failed to allocate requested HealthCheck NodePort 40000: provided port is not in the valid range. The range of valid ports is 30000-32767",
            ),
        ] {
            let mut svc = lb_local("b");
            svc["spec"]["healthCheckNodePort"] = json!(taken);
            let causes = admit_service(&cfg, &mut svc, None, &used);
            assert_eq!(causes.len(), 1, "{causes:?}");
            assert_eq!(causes[0].field, "spec.healthCheckNodePort");
            assert_eq!(causes[0].message, message);
        }
        // A nodePort may not take a stored Service's healthCheckNodePort either.
        let mut np = json!({"metadata": {"name": "b", "namespace": "d"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}});
        let causes = admit_service(&cfg, &mut np, None, &used);
        assert_eq!(causes[0].field, "spec.ports[0].nodePort");
        // Nor its own: a requested nodePort equal to the requested health check port.
        let mut own = lb_local("b");
        own["spec"]["ports"][0]["nodePort"] = json!(30500);
        own["spec"]["healthCheckNodePort"] = json!(30500);
        let causes = admit_service(&cfg, &mut own, None, &used);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.healthCheckNodePort");
        // The range full: no nodePort is left for the health check.
        let mut full = cfg.clone();
        full.node_port_range = (30080, 30080);
        let mut svc = lb_local("b");
        svc["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
        let causes = admit_service(&full, &mut svc, None, &used);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.healthCheckNodePort");
    }

    #[test]
    fn api_alloc_health_check_node_port_kept_and_dropped_on_update() {
        let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), "t".into());
        let used = Allocated::default();
        let mut stored = lb_local("a");
        assert!(admit_service(&cfg, &mut stored, None, &used).is_empty());
        let hc = hc_port(&stored).expect("allocated");

        // An update that leaves it out keeps it.
        let mut upd = lb_local("a");
        upd["spec"]["ports"][0]["port"] = json!(8080);
        assert!(admit_service(&cfg, &mut upd, Some(&stored), &used).is_empty());
        assert_eq!(hc_port(&upd), Some(hc));

        // Switching to Cluster drops it, even when the request carries the old value.
        let mut cluster = stored.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        assert!(admit_service(&cfg, &mut cluster, Some(&stored), &used).is_empty());
        assert_eq!(hc_port(&cluster), None);
        // ... and its number is free for others once that is stored.
        let used_after = Allocated::from_services(std::iter::once(&cluster), ("d", "b"));
        let hc16 = u16::try_from(hc).expect("port");
        assert!(!used_after.node_ports.contains(&(hc16, "TCP".to_string())));

        // Turning ClusterIP drops the carried externalTrafficPolicy and the health check port.
        let mut clusterip = stored.clone();
        clusterip["spec"]["type"] = json!("ClusterIP");
        assert!(admit_service(&cfg, &mut clusterip, Some(&stored), &used).is_empty());
        assert_eq!(hc_port(&clusterip), None);
        assert!(clusterip["spec"].get("externalTrafficPolicy").is_none());
        assert!(clusterip["spec"]["ports"][0].get("nodePort").is_none());

        // Back from Cluster to Local allocates one again.
        let mut local = cluster.clone();
        local["spec"]["externalTrafficPolicy"] = json!("Local");
        assert!(admit_service(&cfg, &mut local, Some(&cluster), &used).is_empty());
        assert!(hc_port(&local).is_some());
    }
}
