//! Service admission: ClusterIP allocation from the Service CIDR, NodePort and
//! healthCheckNodePort allocation from 30000-32767. Allocations are derived from the stored
//! Services, so they survive restarts without a separate bitmap (kube-apiserver keeps one; we
//! keep it implicit): either from a list of them ([`Allocated::from_services`]) or from an
//! [`AllocationIndex`] that lists them once and then follows the store's changes, so admitting
//! a Service costs the writes since the last admission rather than a read of every Service.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::Ipv4Addr,
    time::Duration,
};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use super::{ApiConfig, error::Cause};
use crate::registry::validation::{externally_accessible, needs_health_check_node_port};
use crate::store::{Store, StoreError, WatchEvent, WatchStream};

/// The protocol a healthCheckNodePort is served over: kube-proxy (and keelson's agent) answer
/// the load balancer's HTTP probe on it, so it occupies the TCP nodePort of that number.
const HEALTH_CHECK_PROTOCOL: &str = "TCP";

/// What admission asks of the allocations of the stored Services (other than the one being
/// admitted).
pub trait InUse {
    /// A stored Service holds `ip` as a ClusterIP.
    fn ip_in_use(&self, ip: &Ipv4Addr) -> bool;
    /// A stored Service holds `port` as a nodePort of `proto`, or (TCP) as its
    /// healthCheckNodePort.
    fn node_port_in_use(&self, port: u16, proto: &str) -> bool;
}

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
            if service_name(svc) == skip {
                continue;
            }
            out.add(svc);
        }
        out
    }

    /// Adds the allocations `svc` holds.
    fn add(&mut self, svc: &Value) {
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
            self.ips.insert(ip);
        }
        for p in spec["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                self.node_ports
                    .insert((np, p["protocol"].as_str().unwrap_or("TCP").to_string()));
            }
        }
        if let Some(hc) = spec["healthCheckNodePort"]
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

/// How long an admission waits for the store's change stream to reach the current revision
/// before it rebuilds the index from a list instead.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// The allocations of every stored Service, in memory: built from one list of the Services,
/// then kept current from a watch of the whole store (every write is an event there, so the
/// index knows when it has seen every write up to a revision). Before each admission it takes
/// the writes up to the store's current revision, so it answers exactly as
/// [`Allocated::from_services`] over a fresh list would. Callers serialise admissions (the
/// API's `alloc_lock`); the index's own lock only guards its state.
#[derive(Default)]
pub struct AllocationIndex {
    inner: Mutex<Option<Index>>,
}

impl fmt::Debug for AllocationIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllocationIndex").finish_non_exhaustive()
    }
}

struct Index {
    /// The Services' key prefix.
    prefix: String,
    /// Every write at or below this revision is reflected.
    revision: i64,
    /// Every write after `revision`.
    changes: WatchStream,
    /// Each stored Service's own allocations, by (namespace, name).
    services: HashMap<(String, String), Allocated>,
    /// The (namespace, name) of each stored key, for deletions.
    names: HashMap<String, (String, String)>,
    /// How many stored Services hold each ClusterIP / (nodePort, protocol).
    ips: HashMap<Ipv4Addr, u32>,
    node_ports: HashMap<(u16, String), u32>,
}

impl Index {
    async fn build<S: Store>(store: &S, prefix: &str) -> Result<Self, StoreError> {
        let listed = store.list(prefix, None, 0).await?;
        let changes = store.watch("", listed.revision).await?;
        let mut index = Self {
            prefix: prefix.to_string(),
            revision: listed.revision,
            changes,
            services: HashMap::new(),
            names: HashMap::new(),
            ips: HashMap::new(),
            node_ports: HashMap::new(),
        };
        for kv in &listed.items {
            index.put(&kv.key, &kv.value);
        }
        Ok(index)
    }

    /// Takes the store's writes up to `target`.
    async fn catch_up(&mut self, target: i64) -> Result<(), StoreError> {
        while self.revision < target {
            let event = match self.changes.next().await {
                Some(event) => event?,
                None => return Err(StoreError::Backend("the store's watch ended".into())),
            };
            self.revision = event.revision();
            match event {
                WatchEvent::Put { kv, .. } if kv.key.starts_with(&self.prefix) => {
                    self.put(&kv.key, &kv.value);
                }
                WatchEvent::Delete { prev, .. } if prev.key.starts_with(&self.prefix) => {
                    self.remove(&prev.key);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        self.remove(key);
        // An unreadable stored object holds nothing, as the handlers' list skips it.
        let Ok(svc) = serde_json::from_slice::<Value>(value) else {
            return;
        };
        let (ns, name) = service_name(&svc);
        let name = (ns.to_string(), name.to_string());
        let mut own = Allocated::default();
        own.add(&svc);
        for ip in &own.ips {
            *self.ips.entry(*ip).or_default() += 1;
        }
        for port in &own.node_ports {
            *self.node_ports.entry(port.clone()).or_default() += 1;
        }
        self.names.insert(key.to_string(), name.clone());
        if let Some(before) = self.services.insert(name, own) {
            // Two keys naming one Service: keep the counts of the one replaced.
            self.forget(&before);
        }
    }

    fn remove(&mut self, key: &str) {
        let Some(name) = self.names.remove(key) else {
            return;
        };
        if let Some(own) = self.services.remove(&name) {
            self.forget(&own);
        }
    }

    fn forget(&mut self, own: &Allocated) {
        for ip in &own.ips {
            if let Some(n) = self.ips.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.ips.remove(ip);
                }
            }
        }
        for port in &own.node_ports {
            if let Some(n) = self.node_ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    self.node_ports.remove(port);
                }
            }
        }
    }
}

impl AllocationIndex {
    /// The allocations of every Service stored under `prefix` except `skip` (namespace,
    /// name), as of the store's current revision.
    pub async fn used<S: Store>(
        &self,
        store: &S,
        prefix: &str,
        skip: (&str, &str),
    ) -> Result<IndexedAllocations<'_>, StoreError> {
        let mut guard = self.inner.lock().await;
        let target = store.current_revision().await?;
        let current = match guard.as_mut() {
            Some(index) if index.prefix == prefix => {
                // A watch that ended (compacted past), failed or stalls is replaced by a
                // fresh list.
                matches!(
                    tokio::time::timeout(CATCH_UP_TIMEOUT, index.catch_up(target)).await,
                    Ok(Ok(()))
                )
            }
            _ => false,
        };
        if !current {
            *guard = Some(Index::build(store, prefix).await?);
        }
        Ok(IndexedAllocations {
            guard,
            skip: (skip.0.to_string(), skip.1.to_string()),
        })
    }
}

/// The view [`AllocationIndex::used`] returns: every stored Service's allocations but one's.
pub struct IndexedAllocations<'a> {
    guard: MutexGuard<'a, Option<Index>>,
    skip: (String, String),
}

impl fmt::Debug for IndexedAllocations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedAllocations")
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl IndexedAllocations<'_> {
    fn skipped(&self) -> Option<&Allocated> {
        self.guard.as_ref()?.services.get(&self.skip)
    }
}

impl InUse for IndexedAllocations<'_> {
    fn ip_in_use(&self, ip: &Ipv4Addr) -> bool {
        let held = self
            .guard
            .as_ref()
            .and_then(|i| i.ips.get(ip).copied())
            .unwrap_or(0);
        held > u32::from(self.skipped().is_some_and(|a| a.ips.contains(ip)))
    }

    fn node_port_in_use(&self, port: u16, proto: &str) -> bool {
        let key = (port, proto.to_string());
        let held = self
            .guard
            .as_ref()
            .and_then(|i| i.node_ports.get(&key).copied())
            .unwrap_or(0);
        held > u32::from(self.skipped().is_some_and(|a| a.node_ports.contains(&key)))
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
    causes
}

fn allocate_ip(cfg: &ApiConfig, used: &impl InUse) -> Option<Ipv4Addr> {
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
        .find(|ip| !used.ip_in_use(ip))
}

fn allocate_port(
    cfg: &ApiConfig,
    used: &impl InUse,
    here: &BTreeSet<(u16, String)>,
    proto: &str,
) -> Option<u16> {
    let (lo, hi) = cfg.node_port_range;
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    (0..span)
        .filter_map(|i| u16::try_from(u32::from(lo) + (start + i) % span).ok())
        .find(|p| !used.node_port_in_use(*p, proto) && !here.contains(&(*p, proto.to_string())))
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
        use crate::store::SqliteStore;

        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("store");
        let prefix = "/registry/services/specs/";
        let mut cfg =
            ApiConfig::with_admin_token("10.96.0.0/28".parse().expect("cidr"), "t".into());
        cfg.node_port_range = (30000, 30011);
        let index = AllocationIndex::default();
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

/// Creation rate of Services against ConfigMaps through the router, at high concurrency on
/// one store: the cost Service admission adds to a create. Run with
/// `cargo test -p keelson-control --release -- --ignored api_alloc_create_rate --nocapture`
/// (`KEELSON_RATE_N` objects of each kind, `KEELSON_RATE_CONCURRENCY` in flight).
#[cfg(test)]
mod rate {
    use std::{sync::Arc, time::Instant};

    use axum::{
        body::Body,
        http::{Request, StatusCode, header},
    };
    use serde_json::json;
    use tower::ServiceExt as _;

    use crate::api::{ApiConfig, ApiState, router};
    use crate::store::SqliteStore;

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Creates `n` objects made by `body(i)` at `uri` with `conc` in flight; creates/s.
    async fn rate(
        app: &axum::Router,
        uri: &'static str,
        n: usize,
        conc: usize,
        body: fn(usize) -> serde_json::Value,
    ) -> f64 {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conc {
            let (app, next) = (app.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let req = Request::builder()
                        .method("POST")
                        .uri(uri)
                        .header(header::AUTHORIZATION, "Bearer t")
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(body(i).to_string()))
                        .expect("request");
                    let resp = app.clone().oneshot(req).await.expect("router answers");
                    assert_eq!(resp.status(), StatusCode::CREATED, "create {i} at {uri}");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("client task");
        }
        n as f64 / start.elapsed().as_secs_f64()
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement: run by hand with --release --nocapture"]
    async fn api_alloc_create_rate() {
        let (n, conc) = (
            env("KEELSON_RATE_N", 5000),
            env("KEELSON_RATE_CONCURRENCY", 64),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        let cfg = ApiConfig::with_admin_token("10.96.0.0/16".parse().expect("cidr"), "t".into());
        let state = ApiState::new(store, cfg);
        crate::server::ensure_system_namespaces(&state)
            .await
            .expect("namespaces");
        let app = router(state);
        let cm = rate(&app, "/api/v1/namespaces/default/configmaps", n, conc, |i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}})
        })
        .await;
        let svc = rate(&app, "/api/v1/namespaces/default/services", n, conc, |i| {
            let ty = if i % 2 == 0 { "ClusterIP" } else { "NodePort" };
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("svc-{i}")},
                   "spec": {"type": ty, "selector": {"app": "a"},
                            "ports": [{"port": 80, "protocol": "TCP"}]}})
        })
        .await;
        println!(
            "RATE n={n} concurrency={conc} configmaps/s={cm:.0} services/s={svc:.0} ratio={:.2}",
            svc / cm
        );
    }
}
