//! Service admission: ClusterIP allocation from the Service CIDR, NodePort and
//! healthCheckNodePort allocation from 30000-32767, on [`crate::ipam`]'s bitmaps.
//!
//! As kube-apiserver's `pkg/registry/core/service/ipallocator` and `portallocator`, the
//! allocations live in memory bitmaps and admission costs no store read. Unlike it, nothing is
//! persisted beside the Services: the [`AllocationIndex`] is built from one list of the stored
//! Services, then follows the store's changes, so it survives restarts and never drifts from
//! what is stored (kube-apiserver needs its repair controller for that). An admitted Service's
//! numbers are reserved in the index until its write is visible there (or has failed), so
//! admissions never wait for each other's fsync: Service creates commit in the store's group
//! commits like any other write. [`Allocated::from_services`] answers the same questions from a
//! plain list, for tests and callers without an index.

use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{ApiConfig, error::Cause};
use crate::ipam::{Range, Reserve};
use crate::registry::validation::{externally_accessible, needs_health_check_node_port};

mod index;
#[cfg(test)]
mod rate;

pub use index::{AllocationIndex, IndexedAllocations, WriteGate, WriteTicket};

/// The protocol a healthCheckNodePort is served over: kube-proxy (and keelson's agent) answer
/// the load balancer's HTTP probe on it, so it occupies the TCP nodePort of that number.
const HEALTH_CHECK_PROTOCOL: &str = "TCP";

/// The ClusterIPs of `cfg`'s Service CIDR: all but the network address, the first address
/// (the `kubernetes` Service's, [`ApiConfig::reserved_ip`]) and the broadcast address.
pub fn service_range(cfg: &ApiConfig) -> Option<Range> {
    Range::addresses(&[cfg.service_cidr], Reserve::NetworkBroadcastAndFirst).ok()
}

/// What admission asks of the allocations of the stored Services (other than the one being
/// admitted).
pub trait InUse {
    /// A stored Service holds `ip` as a ClusterIP.
    fn ip_in_use(&self, ip: &Ipv4Addr) -> bool;
    /// A stored Service holds `port` as a nodePort of `proto`, or (TCP) as its
    /// healthCheckNodePort.
    fn node_port_in_use(&self, port: u16, proto: &str) -> bool;

    /// A free ClusterIP of `cfg`'s Service CIDR, scanning from a random address as
    /// kube-apiserver's allocator does.
    fn free_ip(&self, cfg: &ApiConfig) -> Option<Ipv4Addr> {
        scan_free_ip(cfg, &|ip| self.ip_in_use(ip))
    }

    /// A free nodePort of `proto` in `cfg`'s range that `also_free` accepts, scanning from a
    /// random port.
    fn free_node_port(
        &self,
        cfg: &ApiConfig,
        proto: &str,
        also_free: &dyn Fn(u16) -> bool,
    ) -> Option<u16> {
        let (lo, hi) = cfg.node_port_range;
        let span = u32::from(hi.checked_sub(lo)?) + 1;
        let start = rand::random::<u32>() % span;
        (0..span)
            .filter_map(|i| u16::try_from(u32::from(lo) + (start + i) % span).ok())
            .find(|p| !self.node_port_in_use(*p, proto) && also_free(*p))
    }

    /// Admission gave `svc` its allocations: an index holds them for it until its write is
    /// visible (nothing to do for a plain list).
    fn hold(&self, _svc: &Value) {}
}

/// A ClusterIP of `cfg`'s Service CIDR that `in_use` refuses, scanning from a random address.
fn scan_free_ip(cfg: &ApiConfig, in_use: &dyn Fn(&Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let range = service_range(cfg)?;
    let len = range.len();
    let start = rand::random::<u64>() % len;
    (0..len)
        .filter_map(|i| range.address((start + i) % len))
        .find(|ip| !in_use(ip))
}

/// What the stored Services (other than the one being admitted) already use.
#[derive(Debug, Default, Clone)]
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
            if service_name(svc) == skip {
                continue;
            }
            out.add(svc);
        }
        out
    }

    /// The allocations `svc` holds.
    fn of(svc: &Value) -> Self {
        let mut own = Self::default();
        own.add(svc);
        own
    }

    /// Adds the allocations `svc` holds.
    fn add(&mut self, svc: &Value) {
        let spec = &svc["spec"];
        let no_ports = Vec::new();
        let ports = spec["ports"].as_array().unwrap_or(&no_ports);
        self.add_spec(
            &spec["clusterIP"],
            &spec["clusterIPs"],
            ports,
            &spec["healthCheckNodePort"],
        );
    }

    /// Adds the allocations of a Service spec's fields.
    fn add_spec(
        &mut self,
        cluster_ip: &Value,
        cluster_ips: &Value,
        ports: &[Value],
        health_check_node_port: &Value,
    ) {
        let ips = match cluster_ips.as_array() {
            Some(ips) => ips.as_slice(),
            None => std::slice::from_ref(cluster_ip),
        };
        for ip in ips
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| s.parse().ok())
        {
            self.ips.insert(ip);
        }
        for p in ports {
            if let Some(np) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                self.node_ports
                    .insert((np, p["protocol"].as_str().unwrap_or("TCP").to_string()));
            }
        }
        if let Some(hc) = health_check_node_port
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
        {
            self.node_ports
                .insert((hc, HEALTH_CHECK_PROTOCOL.to_string()));
        }
    }
}

impl InUse for Allocated {
    fn ip_in_use(&self, ip: &Ipv4Addr) -> bool {
        self.ips.contains(ip)
    }

    fn node_port_in_use(&self, port: u16, proto: &str) -> bool {
        self.node_ports.contains(&(port, proto.to_string()))
    }
}

/// A stored Service's (namespace, name), as [`Allocated::from_services`] matches `skip`.
fn service_name(svc: &Value) -> (&str, &str) {
    (
        svc["metadata"]["namespace"].as_str().unwrap_or_default(),
        svc["metadata"]["name"].as_str().unwrap_or_default(),
    )
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
    used: &impl InUse,
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
                    Ok(ip) if used.ip_in_use(&ip) => {
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
            None => match used.free_ip(cfg) {
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
                    if used.node_port_in_use(n, &proto) || taken_here.contains(&(n, proto.clone()))
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
                if used.node_port_in_use(n, HEALTH_CHECK_PROTOCOL)
                    || taken_here.contains(&hc_key(n))
                {
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
    if causes.is_empty() {
        used.hold(svc);
    }
    causes
}

/// A free nodePort of `proto` that no port of the Service being admitted (`here`) takes.
fn allocate_port(
    cfg: &ApiConfig,
    used: &impl InUse,
    here: &BTreeSet<(u16, String)>,
    proto: &str,
) -> Option<u16> {
    used.free_node_port(cfg, proto, &|p| !here.contains(&(p, proto.to_string())))
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

    /// The index answers every probe as [`Allocated::from_services`] over a fresh list does,
    /// through creates, updates, deletes, writes of other kinds and a compaction.
    #[tokio::test]
    async fn api_alloc_index_answers_as_a_fresh_list() {
        use crate::store::{SqliteStore, Store as _};

        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("store");
        let prefix = "/registry/services/specs/";
        let mut cfg =
            ApiConfig::with_admin_token("10.96.0.0/28".parse().expect("cidr"), "t".into());
        cfg.node_port_range = (30000, 30011);
        let index = AllocationIndex::new(&cfg);
        let key = |ns: &str, name: &str| format!("{prefix}{ns}/{name}");

        /// Every Service stored under `prefix`, parsed.
        async fn stored(store: &SqliteStore, prefix: &str) -> Vec<Value> {
            let listed = store.list(prefix, None, 0).await.expect("list");
            listed
                .items
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect()
        }

        async fn agree(
            store: &SqliteStore,
            index: &AllocationIndex,
            prefix: &str,
            skip: (&str, &str),
        ) {
            let values = stored(store, prefix).await;
            let fresh = Allocated::from_services(values.iter(), skip);
            let used = index.used(store, prefix, skip).await.expect("index");
            for last in 0..16u8 {
                let ip = Ipv4Addr::new(10, 96, 0, last);
                assert_eq!(
                    used.ip_in_use(&ip),
                    fresh.ip_in_use(&ip),
                    "{ip} skipping {skip:?}"
                );
            }
            for port in 29999..30013 {
                for proto in ["TCP", "UDP"] {
                    assert_eq!(
                        used.node_port_in_use(port, proto),
                        fresh.node_port_in_use(port, proto),
                        "{port}/{proto} skipping {skip:?}"
                    );
                }
            }
        }

        // Creates admitted against the index, as the API server does.
        for (i, ty) in ["NodePort", "ClusterIP", "LoadBalancer", "NodePort"]
            .iter()
            .enumerate()
        {
            let name = format!("s{i}");
            let mut svc = json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"type": ty, "externalTrafficPolicy": "Local",
                         "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
            let causes = {
                let used = index
                    .used(&store, prefix, ("d", &name))
                    .await
                    .expect("index");
                admit_service(&cfg, &mut svc, None, &used)
            };
            assert!(causes.is_empty(), "{causes:?}");
            store
                .create(&key("d", &name), serde_json::to_vec(&svc).expect("json"))
                .await
                .expect("create");
            agree(&store, &index, prefix, ("d", "s0")).await;
            agree(&store, &index, prefix, ("d", &name)).await;
        }
        // No two Services got one address or port.
        let values = stored(&store, prefix).await;
        let ips: BTreeSet<&str> = values
            .iter()
            .filter_map(|v| v["spec"]["clusterIP"].as_str())
            .collect();
        assert_eq!(ips.len(), 4);

        // An update that drops the nodePorts, a write of another kind, a delete.
        let s0 = store.get(&key("d", "s0")).await.expect("get").expect("s0");
        let mut v: Value = serde_json::from_slice(&s0.value).expect("json");
        v["spec"]["type"] = json!("ClusterIP");
        for p in v["spec"]["ports"].as_array_mut().expect("ports") {
            p.as_object_mut().expect("port").remove("nodePort");
        }
        store
            .update(
                &key("d", "s0"),
                serde_json::to_vec(&v).expect("json"),
                s0.mod_revision,
            )
            .await
            .expect("update");
        store
            .create("/registry/pods/d/p", b"{}".to_vec())
            .await
            .expect("pod");
        agree(&store, &index, prefix, ("d", "none")).await;
        let (_, rev) = store.delete(&key("d", "s2"), None).await.expect("delete");
        agree(&store, &index, prefix, ("d", "s1")).await;
        // An unreadable stored object holds nothing.
        store
            .create(&key("d", "bad"), b"not json".to_vec())
            .await
            .expect("bad");
        agree(&store, &index, prefix, ("d", "none")).await;

        // A compaction of writes the index has not taken yet: it still answers as a list
        // does (from its watch, or from a list when the watch ended).
        store.create(&key("d", "late"), serde_json::to_vec(&json!({"metadata": {"name": "late", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.14", "ports": [{"port": 80, "nodePort": 30011, "protocol": "TCP"}]}})).expect("json")).await.expect("late");
        let now = store.current_revision().await.expect("rev");
        store.compact(now).await.expect("compact");
        assert!(now > rev);
        agree(&store, &index, prefix, ("d", "none")).await;
        agree(&store, &index, prefix, ("d", "late")).await;
    }
}
