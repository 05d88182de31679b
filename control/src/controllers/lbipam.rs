//! LoadBalancer IPAM: gives every Service of type LoadBalancer (of no loadBalancerClass, or of
//! [`LB_CLASS`]) one IPv4 address from a configured pool, published in
//! status.loadBalancer.ingress[].ip, and frees it when the Service stops being one.
//!
//! Like Cilium's LB-IPAM, the allocations are derived from the Services' own status at every
//! plan (plus writes the store does not show yet), so nothing is persisted elsewhere and a
//! restart loses nothing. The outcome of each request is recorded as the Service status
//! condition [`CONDITION_TYPE`] (KEP-1623 added `conditions` to ServiceStatus for this kind of
//! controller report), so a refused request is visible with `kubectl get svc -o yaml`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::ControllerError;
use super::runtime::{
    Controller, EXPECTATION_TTL, Informers, Reconciler, Requeue, Touch, WorkQueue, key_of,
    split_key,
};
use crate::ipam::{Allocator, Range, Reserve};

/// The spec.loadBalancerClass this allocator serves (besides Services of no class).
pub const LB_CLASS: &str = "keelson.io/lb-ipam";
/// Annotation requesting specific addresses (comma-separated; one IPv4 address is supported).
/// It takes precedence over the deprecated spec.loadBalancerIP.
pub const LB_IPS_ANNOTATION: &str = "keelson.io/lb-ips";
/// The Service status condition reporting whether the address request is satisfied.
pub const CONDITION_TYPE: &str = "keelson.io/IPAMRequestSatisfied";

/// The addresses LoadBalancer Services get, in allocation order: the CIDRs as configured, each
/// in ascending order without its network and broadcast addresses (for prefixes shorter than
/// /31, whose two addresses are both usable per RFC 3021).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbPool {
    /// The pool's CIDRs (normalised to their network address, never overlapping).
    pub cidrs: Vec<Ipv4Network>,
    /// Their usable addresses, numbered in allocation order.
    range: Range,
}

impl LbPool {
    /// Parses a comma-separated list of IPv4 CIDRs, e.g. "172.30.0.0/24,172.30.1.0/28". A bare
    /// address is a /32.
    pub fn parse(s: &str) -> Result<Self, ControllerError> {
        let mut cidrs: Vec<Ipv4Network> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net: Ipv4Network = part.parse().map_err(|e| {
                ControllerError::Config(format!("LoadBalancer pool CIDR {part:?}: {e}"))
            })?;
            let net = Ipv4Network::new(net.network(), net.prefix())
                .map_err(|e| ControllerError::Config(e.to_string()))?;
            cidrs.push(net);
        }
        if cidrs.is_empty() {
            return Err(ControllerError::Config(format!(
                "LoadBalancer pool {s:?} has no CIDR"
            )));
        }
        let range = Range::addresses(&cidrs, Reserve::NetworkAndBroadcast)
            .map_err(|e| ControllerError::Config(format!("LoadBalancer pool {s:?}: {e}")))?;
        Ok(Self { cidrs, range })
    }

    /// True when `ip` is a usable address of the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(ip)
    }

    /// Every usable address, in allocation order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.range.items().map(|n| n.network())
    }

    /// The number of usable addresses.
    pub fn len(&self) -> u64 {
        self.range.len()
    }

    /// True when the pool has no usable address (never, for a parsed pool).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pool with every address free.
    fn allocator(&self) -> Allocator {
        Allocator::new(self.range.clone())
    }
}

/// Why a request was refused (the condition's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The requested address is held by another Service (sharing is not supported).
    AlreadyAllocated,
    /// The requested address is not a usable address of the pool.
    OutOfPool,
    /// No address is free.
    PoolExhausted,
    /// The request cannot be parsed or asks for something unsupported.
    InvalidRequest,
}

impl Refusal {
    /// The condition reason (CamelCase, as metav1.Condition requires).
    pub fn reason(self) -> &'static str {
        match self {
            Self::AlreadyAllocated => "AlreadyAllocated",
            Self::OutOfPool => "OutOfPool",
            Self::PoolExhausted => "PoolExhausted",
            Self::InvalidRequest => "InvalidRequest",
        }
    }
}

/// The condition reason of a satisfied request.
pub const REASON_ALLOCATED: &str = "Allocated";

/// One IPAM step for a Service, written through its status subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Publish `ip` as the Service's only ingress address; condition True.
    Assign { ip: Ipv4Addr },
    /// Hold no pool address; condition False with this reason and message.
    Refuse { refusal: Refusal, message: String },
    /// The Service is no longer ours: drop its pool addresses and our condition.
    Release,
}

/// What the plan sees besides the Service.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The pool.
    pub pool: &'a LbPool,
    /// Every Service (the planned one included).
    pub services: Vec<&'a Service>,
    /// Addresses assigned by us that the store does not show yet, by Service key.
    pub pending: BTreeMap<String, Ipv4Addr>,
}

impl Snapshot<'_> {
    /// Which Service holds each pool address: pending assignments first, then every Service
    /// showing the address in its status, the oldest (then the first by key) winning when two
    /// show the same one (only possible through writes by others), so the winner is stable.
    pub fn claims(&self) -> HashMap<Ipv4Addr, String> {
        let mut claims: HashMap<Ipv4Addr, String> = self
            .pending
            .iter()
            .map(|(k, ip)| (*ip, k.clone()))
            .collect();
        let mut services: Vec<(Option<Timestamp>, String, &Service)> = self
            .services
            .iter()
            .map(|s| {
                let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
                (created, key_of(*s), *s)
            })
            .collect();
        services.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, key, svc) in services {
            for ip in ingress_ips(svc).filter(|ip| self.pool.contains(*ip)) {
                claims.entry(ip).or_insert_with(|| key.clone());
            }
        }
        claims
    }
}

/// The IPv4 addresses in the Service's status.loadBalancer.ingress.
pub fn ingress_ips(svc: &Service) -> impl Iterator<Item = Ipv4Addr> + '_ {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
}

/// Our condition on the Service, if any.
pub fn condition(svc: &Service) -> Option<&Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

/// True when the Service asks this allocator for an address.
pub fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.load_balancer_class
                .as_deref()
                .is_none_or(|c| c == LB_CLASS)
    })
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"))
}

/// The address the Service requests: the [`LB_IPS_ANNOTATION`] annotation, else
/// spec.loadBalancerIP. `Err` explains a request that cannot be served.
pub fn requested(svc: &Service) -> Result<Option<Ipv4Addr>, String> {
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_IPS_ANNOTATION))
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty());
    let (source, value) = match annotation {
        Some(v) => (LB_IPS_ANNOTATION, v),
        None => match svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|v| !v.trim().is_empty())
        {
            Some(v) => ("spec.loadBalancerIP", v),
            None => return Ok(None),
        },
    };
    let mut ips = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ips.push(ip),
            Ok(IpAddr::V6(_)) => {
                return Err(format!(
                    "{source}: {part} is IPv6; only IPv4 addresses are allocated"
                ));
            }
            Err(_) => return Err(format!("{source}: {part:?} is not an IP address")),
        }
    }
    match ips.as_slice() {
        [ip] => Ok(Some(*ip)),
        [] => Ok(None),
        _ => Err(format!(
            "{source}: {value:?} requests {} addresses; a Service gets one IPv4 address",
            ips.len()
        )),
    }
}

/// Plans the Service's address: keeps the one it holds, honours a request when the address is
/// free and in the pool, else takes the first free one no other Service requests; refuses with
/// a reason otherwise.
/// Returns nothing when the Service's status already says what the plan wants.
pub fn plan(svc: &Service, snap: &Snapshot<'_>) -> Vec<Change> {
    let key = key_of(svc);
    if !is_ours(svc) {
        // A Service that stopped being a LoadBalancer, or of a class we do not serve that we
        // served before, gives its addresses back. Another class's addresses are left alone.
        let stale_ingress =
            !is_load_balancer(svc) && ingress_ips(svc).any(|ip| snap.pool.contains(ip));
        return if stale_ingress || condition(svc).is_some() {
            vec![Change::Release]
        } else {
            Vec::new()
        };
    }
    if svc.metadata.deletion_timestamp.is_some() {
        // Its address stays held until the Service is gone.
        return Vec::new();
    }
    let claims = snap.claims();
    let owner = |ip: Ipv4Addr| claims.get(&ip).map(String::as_str);
    let held = snap.pending.get(&key).copied().or_else(|| {
        ingress_ips(svc).find(|ip| snap.pool.contains(*ip) && owner(*ip) == Some(key.as_str()))
    });
    let desired = match requested(svc) {
        Err(message) => Change::Refuse {
            refusal: Refusal::InvalidRequest,
            message,
        },
        Ok(Some(ip)) if !snap.pool.contains(ip) => Change::Refuse {
            refusal: Refusal::OutOfPool,
            message: format!("{ip} is not an address of the LoadBalancer pool"),
        },
        Ok(Some(ip)) if owner(ip).is_some_and(|o| o != key) => Change::Refuse {
            refusal: Refusal::AlreadyAllocated,
            message: format!(
                "{ip} is allocated to another Service; sharing an address is not supported"
            ),
        },
        Ok(Some(ip)) => Change::Assign { ip },
        Ok(None) => held
            .or_else(|| {
                // Addresses other Services ask for by name are left to them, so whether a
                // request is granted does not depend on which Service the loop sees first.
                let requested_by_others: HashSet<Ipv4Addr> = snap
                    .services
                    .iter()
                    .filter(|s| is_ours(s) && key_of(**s) != key)
                    .filter_map(|s| requested(s).ok().flatten())
                    .collect();
                let mut free = snap.pool.allocator();
                for ip in claims.keys().chain(&requested_by_others) {
                    // An address outside the pool takes nothing from it.
                    let _ = free.allocate(*ip);
                }
                free.next_free(0, |_| true).map(|n| n.network())
            })
            .map_or_else(
                || Change::Refuse {
                    refusal: Refusal::PoolExhausted,
                    message: format!(
                        "no free address left in the LoadBalancer pool ({} addresses)",
                        snap.pool.len()
                    ),
                },
                |ip| Change::Assign { ip },
            ),
    };
    if satisfied(svc, &desired, snap.pool) {
        Vec::new()
    } else {
        vec![desired]
    }
}

/// The condition (status, reason, message) a change asks for; None for a release.
fn desired_condition(change: &Change) -> Option<(&'static str, &'static str, String)> {
    match change {
        Change::Assign { ip } => Some((
            "True",
            REASON_ALLOCATED,
            format!("{ip} allocated from the LoadBalancer pool"),
        )),
        Change::Refuse { refusal, message } => Some(("False", refusal.reason(), message.clone())),
        Change::Release => None,
    }
}

/// True when the Service's status already is what `change` would write.
fn satisfied(svc: &Service, change: &Change, pool: &LbPool) -> bool {
    let ips: Vec<Ipv4Addr> = ingress_ips(svc).collect();
    let address_ok = match change {
        Change::Assign { ip } => {
            ips == [*ip]
                && svc
                    .status
                    .iter()
                    .flat_map(|s| s.load_balancer.iter())
                    .flat_map(|lb| lb.ingress.iter().flatten())
                    .count()
                    == 1
        }
        Change::Refuse { .. } | Change::Release => !ips.iter().any(|ip| pool.contains(*ip)),
    };
    let current = condition(svc);
    let condition_ok = match desired_condition(change) {
        None => current.is_none(),
        Some((status, reason, message)) => current.is_some_and(|c| {
            c.status == status
                && c.reason == reason
                && c.message == message
                && c.observed_generation == svc.metadata.generation
        }),
    };
    address_ok && condition_ok
}

/// The Service status after `change` (at `now`): our ingress address and condition set or
/// removed, everything else kept; lastTransitionTime moves only when the condition's status does.
pub fn status_after(
    svc: &Service,
    change: &Change,
    pool: &LbPool,
    now: Timestamp,
) -> ServiceStatus {
    let mut status = svc.status.clone().unwrap_or_default();
    let mut ingress = status
        .load_balancer
        .take()
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    match change {
        Change::Assign { ip } => {
            ingress = vec![LoadBalancerIngress {
                ip: Some(ip.to_string()),
                // What kube-apiserver defaults for an ingress IP (KEP-1860).
                ip_mode: Some("VIP".into()),
                ..Default::default()
            }];
        }
        Change::Refuse { .. } | Change::Release => ingress.retain(|i| {
            !i.ip
                .as_deref()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .is_some_and(|ip| pool.contains(ip))
        }),
    }
    status.load_balancer = Some(LoadBalancerStatus {
        ingress: (!ingress.is_empty()).then_some(ingress),
    });
    let mut conditions = status.conditions.take().unwrap_or_default();
    let previous = conditions
        .iter()
        .position(|c| c.type_ == CONDITION_TYPE)
        .map(|i| conditions.remove(i));
    if let Some((cond_status, reason, message)) = desired_condition(change) {
        let last_transition_time = match previous {
            Some(p) if p.status == cond_status => p.last_transition_time,
            _ => Time(now),
        };
        conditions.push(Condition {
            type_: CONDITION_TYPE.into(),
            status: cond_status.into(),
            reason: reason.into(),
            message,
            observed_generation: svc.metadata.generation,
            last_transition_time,
        });
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    status
}

/// The LB-IPAM loop: one Service key at a time, so two Services never get the same address.
pub(crate) struct LbIpamLoop {
    pub(crate) client: Client,
    pub(crate) services: Store<Service>,
    pub(crate) pool: LbPool,
    /// Addresses assigned but not yet visible in the store, by Service key, with the time of
    /// the write (an entry expires after [`EXPECTATION_TTL`] so a lost event cannot pin it).
    pub(crate) pending: BTreeMap<String, (Ipv4Addr, Instant)>,
}

impl Reconciler for LbIpamLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let services = self.services.state();
        // Forget pending addresses the store now shows, whose Service is gone, or that expired.
        self.pending.retain(|k, (ip, at)| {
            at.elapsed() < EXPECTATION_TTL
                && services
                    .iter()
                    .any(|s| key_of(&**s) == *k && !ingress_ips(s).any(|i| i == *ip))
        });
        let (ns, name) = split_key(key);
        let Some(ns) = ns else {
            return Ok(None);
        };
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        if let Some((ip, at)) = self.pending.get(key) {
            tracing::debug!(service = key, %ip, "LoadBalancer address assigned, waiting for the store");
            return Ok(Some(EXPECTATION_TTL.saturating_sub(at.elapsed())));
        }
        let snap = Snapshot {
            pool: &self.pool,
            services: services.iter().map(|s| &**s).collect(),
            pending: self
                .pending
                .iter()
                .map(|(k, (ip, _))| (k.clone(), *ip))
                .collect(),
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        for change in plan(&svc, &snap) {
            let mut obj = (*svc).clone();
            obj.status = Some(status_after(&svc, &change, &self.pool, Timestamp::now()));
            // A replace carries the resourceVersion the plan saw: a concurrent write fails with
            // 409 and the worker retries on a fresh store.
            api.replace_status(name, &PostParams::default(), &obj)
                .await?;
            match change {
                Change::Assign { ip } => {
                    tracing::info!(service = key, %ip, "allocated LoadBalancer address");
                    self.pending.insert(key.to_string(), (ip, Instant::now()));
                }
                Change::Refuse { refusal, message } => {
                    tracing::warn!(
                        service = key,
                        reason = refusal.reason(),
                        message,
                        "LoadBalancer address request refused"
                    );
                }
                Change::Release => {
                    tracing::info!(service = key, "released LoadBalancer address");
                }
            }
        }
        Ok(None)
    }
}

/// Keys of the Services waiting for an address (refused), which a freed address may serve.
fn waiting(store: &Store<Service>) -> Vec<String> {
    store
        .state()
        .iter()
        .filter(|s| is_ours(s) && condition(s).is_some_and(|c| c.status == "False"))
        .map(|s| key_of(&**s))
        .collect()
}

/// LoadBalancer IPAM: a Service's key for every change of it, and with any change or deletion
/// (which may free an address) the keys of the Services refused before, which get another
/// chance.
#[derive(Debug, Clone)]
pub(crate) struct LbIpamController {
    /// The addresses given out.
    pub pool: LbPool,
}

impl Controller for LbIpamController {
    const NAME: &'static str = "lbipam";
    type Loop = LbIpamLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> LbIpamLoop {
        let services = informers.all::<Service>();
        let store = services.store();
        let (q, all) = (queue.clone(), store.clone());
        services.on(move |t| match t {
            Touch::Changed(s) | Touch::Deleted(s) => {
                q.add(key_of(s));
                waiting(&all).into_iter().for_each(|k| q.add(k));
            }
            Touch::Relisted(services) => services.iter().for_each(|s| q.add(key_of(&**s))),
        });
        LbIpamLoop {
            client: informers.client().clone(),
            services: store,
            pool: self.pool,
            pending: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::super::objects::testutil::ts;

    fn pool(s: &str) -> LbPool {
        LbPool::parse(s).expect("pool")
    }

    fn svc(name: &str, created: i64) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(ts(created))),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus::default()),
                conditions: None,
            }),
        }
    }

    fn with_annotation(mut s: Service, v: &str) -> Service {
        s.metadata.annotations = Some([(LB_IPS_ANNOTATION.to_string(), v.to_string())].into());
        s
    }

    fn with_ingress(mut s: Service, ip: &str) -> Service {
        s.status.get_or_insert_with(Default::default).load_balancer = Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.into()),
                ..Default::default()
            }]),
        });
        s
    }

    fn snap<'a>(p: &'a LbPool, services: &'a [Service]) -> Snapshot<'a> {
        Snapshot {
            pool: p,
            services: services.iter().collect(),
            pending: BTreeMap::new(),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    /// Plans and applies every Service in order, as the loop does one key at a time, until
    /// nothing changes; returns the number of writes.
    fn settle(p: &LbPool, services: &mut [Service]) -> usize {
        settle_at(p, services, 100)
    }

    fn settle_at(p: &LbPool, services: &mut [Service], now: i64) -> usize {
        let mut writes = 0;
        for _round in 0..4 {
            let mut changed = false;
            for i in 0..services.len() {
                let changes = plan(&services[i], &snap(p, services));
                for c in changes {
                    let st = status_after(&services[i], &c, p, ts(now));
                    services[i].status = Some(st);
                    writes += 1;
                    changed = true;
                }
            }
            if !changed {
                return writes;
            }
        }
        panic!("plans did not settle");
    }

    fn address(s: &Service) -> Option<String> {
        let ips: Vec<Ipv4Addr> = ingress_ips(s).collect();
        assert!(ips.len() <= 1, "one address per Service: {ips:?}");
        ips.first().map(ToString::to_string)
    }

    fn cond(s: &Service) -> (String, String) {
        let c = condition(s).expect("condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn pool_parses_and_excludes_network_and_broadcast() {
        let p = pool(" 172.30.0.0/24, 172.30.1.0/28 ");
        assert_eq!(p.len(), 254 + 14);
        let all: Vec<Ipv4Addr> = p.addresses().collect();
        assert_eq!(all.len(), 268);
        assert_eq!(all[0], ip("172.30.0.1"));
        assert_eq!(all[253], ip("172.30.0.254"));
        assert_eq!(all[254], ip("172.30.1.1"));
        assert_eq!(all[267], ip("172.30.1.14"));
        assert!(!p.contains(ip("172.30.0.0")));
        assert!(!p.contains(ip("172.30.0.255")));
        assert!(!p.contains(ip("172.30.1.15")));
        assert!(p.contains(ip("172.30.1.14")));
        assert!(!p.contains(ip("10.0.0.1")));
        // /31 and /32 have no network or broadcast address (RFC 3021).
        let small = pool("10.9.0.0/31,10.9.1.7");
        assert_eq!(
            small.addresses().collect::<Vec<_>>(),
            vec![ip("10.9.0.0"), ip("10.9.0.1"), ip("10.9.1.7")]
        );
        // Normalised to the network address.
        assert_eq!(pool("172.30.0.77/24").cidrs[0].to_string(), "172.30.0.0/24");
        assert!(LbPool::parse("").is_err());
        assert!(LbPool::parse("nope").is_err());
        assert!(LbPool::parse("fd00::/64").is_err());
        assert!(LbPool::parse("172.30.0.0/24,172.30.0.128/25").is_err());
    }

    #[test]
    fn allocates_in_pool_order_and_reports_the_condition() {
        let p = pool("10.0.0.0/30,10.0.1.0/31");
        let mut services: Vec<Service> = (0..4).map(|i| svc(&format!("s{i}"), i)).collect();
        assert_eq!(settle(&p, &mut services), 4);
        let got: Vec<String> = services.iter().filter_map(address).collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "10.0.1.0", "10.0.1.1"]);
        for s in &services {
            assert_eq!(cond(s), ("True".into(), REASON_ALLOCATED.into()));
            let c = condition(s).expect("condition");
            assert_eq!(c.observed_generation, Some(1));
            assert_eq!(c.last_transition_time, Time(ts(100)));
        }
        // Satisfied Services plan nothing.
        assert_eq!(settle(&p, &mut services), 0);
    }

    #[test]
    fn requested_address_is_honoured_or_refused() {
        let p = pool("172.30.0.0/24");
        let mut services = vec![
            with_annotation(svc("wants-5", 0), "172.30.0.5"),
            with_annotation(svc("also-5", 1), "172.30.0.5"),
            with_annotation(svc("outside", 2), "192.168.7.7"),
            with_annotation(svc("two", 3), "172.30.0.8,172.30.0.9"),
            with_annotation(svc("six", 4), "fd00::1"),
            with_annotation(svc("junk", 5), "not-an-ip"),
            svc("free", 6),
        ];
        let mut legacy = svc("legacy", 7);
        legacy.spec.as_mut().expect("spec").load_balancer_ip = Some("172.30.0.100".into());
        services.push(legacy);
        // The annotation takes precedence over spec.loadBalancerIP.
        let mut both = with_annotation(svc("both", 8), "172.30.0.200");
        both.spec.as_mut().expect("spec").load_balancer_ip = Some("172.30.0.201".into());
        services.push(both);
        settle(&p, &mut services);
        let by = |n: &str| {
            services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(n))
                .expect("service")
        };
        assert_eq!(address(by("wants-5")).as_deref(), Some("172.30.0.5"));
        assert_eq!(address(by("also-5")), None);
        assert_eq!(
            cond(by("also-5")),
            ("False".into(), "AlreadyAllocated".into())
        );
        assert_eq!(address(by("outside")), None);
        assert_eq!(cond(by("outside")), ("False".into(), "OutOfPool".into()));
        for n in ["two", "six", "junk"] {
            assert_eq!(address(by(n)), None, "{n}");
            assert_eq!(
                cond(by(n)),
                ("False".into(), "InvalidRequest".into()),
                "{n}"
            );
        }
        assert_eq!(address(by("legacy")).as_deref(), Some("172.30.0.100"));
        assert_eq!(address(by("both")).as_deref(), Some("172.30.0.200"));
        // Unrequested Services skip requested addresses held before them.
        assert_eq!(address(by("free")).as_deref(), Some("172.30.0.1"));
        let mut all: Vec<String> = services.iter().filter_map(address).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn requested_address_taken_earlier_is_refused_and_granted_once_freed() {
        let p = pool("172.30.0.0/24");
        // "first" got .1 before "later" asked for it.
        let mut services = vec![
            with_ingress(svc("first", 0), "172.30.0.1"),
            with_annotation(svc("later", 1), "172.30.0.1"),
        ];
        settle(&p, &mut services);
        assert_eq!(address(&services[0]).as_deref(), Some("172.30.0.1"));
        assert_eq!(
            cond(&services[1]),
            ("False".into(), "AlreadyAllocated".into())
        );
        // The holder is deleted: the address is free for the request.
        services.remove(0);
        settle_at(&p, &mut services, 200);
        assert_eq!(address(&services[0]).as_deref(), Some("172.30.0.1"));
        assert_eq!(cond(&services[0]), ("True".into(), REASON_ALLOCATED.into()));
        // The False→True flip moved lastTransitionTime.
        assert_eq!(
            condition(&services[0]).expect("c").last_transition_time,
            Time(ts(200))
        );
    }

    #[test]
    fn unrequested_services_leave_requested_addresses_alone() {
        let p = pool("10.1.1.0/30"); // .1 and .2
        // "holder" got .1 before "wants-1" asked for it; "plain" must not take it when freed.
        let mut services = vec![
            with_ingress(svc("holder", 0), "10.1.1.1"),
            with_annotation(svc("wants-1", 1), "10.1.1.1"),
            svc("other", 2),
            svc("plain", 3),
        ];
        settle(&p, &mut services);
        assert_eq!(address(&services[0]).as_deref(), Some("10.1.1.1"));
        assert_eq!(
            cond(&services[1]),
            ("False".into(), "AlreadyAllocated".into())
        );
        assert_eq!(address(&services[2]).as_deref(), Some("10.1.1.2"));
        assert_eq!(cond(&services[3]), ("False".into(), "PoolExhausted".into()));
        services.remove(0);
        // "plain" is planned before "wants-1" and still leaves .1 to it.
        services.swap(0, 2);
        settle(&p, &mut services);
        assert_eq!(services[0].metadata.name.as_deref(), Some("plain"));
        assert_eq!(cond(&services[0]), ("False".into(), "PoolExhausted".into()));
        assert_eq!(address(&services[2]).as_deref(), Some("10.1.1.1"));
    }

    #[test]
    fn exhaustion_and_freeing_on_type_change() {
        let p = pool("10.1.0.0/30"); // .1 and .2
        let mut services = vec![svc("a", 0), svc("b", 1), svc("c", 2)];
        settle(&p, &mut services);
        assert_eq!(address(&services[0]).as_deref(), Some("10.1.0.1"));
        assert_eq!(address(&services[1]).as_deref(), Some("10.1.0.2"));
        assert_eq!(address(&services[2]), None);
        assert_eq!(cond(&services[2]), ("False".into(), "PoolExhausted".into()));
        // "a" becomes a ClusterIP Service: its address and condition go.
        services[0].spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
        assert_eq!(
            plan(&services[0], &snap(&p, &services)),
            vec![Change::Release]
        );
        // While the release is not written, the address is still held.
        assert_eq!(
            plan(&services[2], &snap(&p, &services)),
            vec![],
            "still exhausted, condition already says so"
        );
        settle(&p, &mut services);
        assert_eq!(address(&services[0]), None);
        assert!(condition(&services[0]).is_none());
        assert_eq!(address(&services[2]).as_deref(), Some("10.1.0.1"));
        assert_eq!(cond(&services[2]), ("True".into(), REASON_ALLOCATED.into()));
        // A ClusterIP Service with nothing of ours plans nothing.
        assert!(plan(&services[0], &snap(&p, &services)).is_empty());
    }

    #[test]
    fn never_double_allocates_across_many_services() {
        let p = pool("172.30.0.0/24,172.30.1.0/28");
        // Requests sprinkled over the pool, some colliding with earlier allocations.
        let mut services: Vec<Service> = (0..400)
            .map(|i| {
                let s = svc(&format!("s{i:03}"), i);
                if i % 7 == 0 {
                    with_annotation(s, &format!("172.30.0.{}", (i * 3) % 256))
                } else {
                    s
                }
            })
            .collect();
        settle(&p, &mut services);
        let mut all: Vec<String> = services.iter().filter_map(address).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "an address was given twice");
        assert!(all.iter().all(|a| p.contains(ip(a))));
        // Every Service either holds an address or says why not.
        for s in &services {
            let (status, reason) = cond(s);
            assert_eq!(status == "True", address(s).is_some(), "{reason}");
        }
        // Only pool exhaustion leaves unrequested Services without an address.
        let unserved_plain = services
            .iter()
            .filter(|s| s.metadata.annotations.is_none() && address(s).is_none())
            .count();
        assert!(unserved_plain > 0);
        assert_eq!(n as u64, p.len());
    }

    #[test]
    fn pending_assignments_are_held() {
        let p = pool("10.2.0.0/29");
        let services = vec![svc("a", 0), svc("b", 1)];
        let mut s = snap(&p, &services);
        s.pending.insert("default/a".into(), ip("10.2.0.1"));
        assert_eq!(
            plan(&services[1], &s),
            vec![Change::Assign { ip: ip("10.2.0.2") }]
        );
        // A request for a pending address is refused.
        let c = with_annotation(svc("c", 2), "10.2.0.1");
        assert!(matches!(
            plan(&c, &s).as_slice(),
            [Change::Refuse {
                refusal: Refusal::AlreadyAllocated,
                ..
            }]
        ));
    }

    #[test]
    fn restart_derives_allocations_from_status() {
        let p = pool("10.3.0.0/29"); // .1 to .6
        // Services as a previous run left them, one without an address yet.
        let mut services = vec![
            with_ingress(svc("a", 0), "10.3.0.4"),
            with_ingress(svc("b", 1), "10.3.0.1"),
            svc("new", 2),
        ];
        settle(&p, &mut services);
        // Kept addresses (the condition is (re)written, the address is not moved).
        assert_eq!(address(&services[0]).as_deref(), Some("10.3.0.4"));
        assert_eq!(address(&services[1]).as_deref(), Some("10.3.0.1"));
        assert_eq!(address(&services[2]).as_deref(), Some("10.3.0.2"));
        assert_eq!(settle(&p, &mut services), 0);
        // Two Services showing the same address (written by someone else): the older keeps it,
        // the newer gets another.
        let mut services = vec![
            with_ingress(svc("young", 5), "10.3.0.3"),
            with_ingress(svc("old", 1), "10.3.0.3"),
        ];
        settle(&p, &mut services);
        assert_eq!(address(&services[1]).as_deref(), Some("10.3.0.3"));
        assert_eq!(address(&services[0]).as_deref(), Some("10.3.0.1"));
    }

    #[test]
    fn other_classes_are_left_alone_but_their_addresses_respected() {
        let p = pool("10.4.0.0/30");
        let mut other = with_ingress(svc("other", 0), "10.4.0.1");
        other.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/lb".into());
        let mut ours = svc("ours", 1);
        ours.spec.as_mut().expect("spec").load_balancer_class = Some(LB_CLASS.into());
        let mut services = vec![other, ours];
        settle(&p, &mut services);
        assert_eq!(address(&services[0]).as_deref(), Some("10.4.0.1"));
        assert!(condition(&services[0]).is_none());
        assert_eq!(address(&services[1]).as_deref(), Some("10.4.0.2"));
    }

    #[test]
    fn release_keeps_foreign_status() {
        let p = pool("10.5.0.0/30");
        let mut s = with_ingress(svc("a", 0), "10.5.0.1");
        let foreign = Condition {
            type_: "example.com/Other".into(),
            status: "True".into(),
            reason: "X".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(ts(1)),
        };
        s.status.as_mut().expect("status").conditions = Some(vec![foreign.clone()]);
        let st = status_after(&s, &Change::Assign { ip: ip("10.5.0.1") }, &p, ts(5));
        let conds = st.conditions.clone().expect("conditions");
        assert_eq!(conds.len(), 2);
        s.status = Some(st);
        s.spec.as_mut().expect("spec").type_ = Some("NodePort".into());
        let st = status_after(&s, &Change::Release, &p, ts(6));
        assert_eq!(st.conditions, Some(vec![foreign]));
        assert_eq!(st.load_balancer, Some(LoadBalancerStatus { ingress: None }));
    }

    #[test]
    fn deleting_service_keeps_its_address_until_gone() {
        let p = pool("10.6.0.0/30");
        let mut services = vec![svc("a", 0), svc("b", 1)];
        settle(&p, &mut services);
        services[0].metadata.deletion_timestamp = Some(Time(ts(50)));
        assert!(plan(&services[0], &snap(&p, &services)).is_empty());
        let c = svc("c", 2);
        let mut with_c = services.clone();
        with_c.push(c);
        settle(&p, &mut with_c);
        assert_eq!(cond(&with_c[2]), ("False".into(), "PoolExhausted".into()));
        with_c.remove(0);
        settle(&p, &mut with_c);
        assert_eq!(address(&with_c[1]).as_deref(), Some("10.6.0.1"));
    }

    #[test]
    fn waiting_lists_refused_services_of_the_store() {
        let p = pool("10.7.0.0/32");
        let mut services = vec![svc("a", 0), svc("b", 1), svc("c", 2)];
        services[2].spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
        settle(&p, &mut services);
        let (store, mut writer) = kube::runtime::reflector::store();
        for s in services {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(s));
        }
        assert_eq!(waiting(&store), ["default/b"]);
    }

    /// The loop against a real `keelson server` in this process: allocation, refusal, release
    /// on a type change and on deletion, and a controller restart, all through the API.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loop_allocates_and_releases_through_the_api() {
        use crate::controllers::testutil::{Abort, start_server, wait_for};
        use kube::api::{DeleteParams, Patch, PatchParams};
        use serde_json::json;
        use std::time::Duration;

        const LIMIT: Duration = Duration::from_secs(20);
        fn spawn_controller(client: Client) -> Abort {
            Abort(tokio::spawn(async move {
                let mut runner = super::super::runtime::Runner::new(client);
                runner.add(LbIpamController {
                    pool: pool("10.8.0.0/30"),
                });
                if let Err(e) = runner.run().await {
                    panic!("lbipam failed: {e}");
                }
            }))
        }

        let server = start_server().await;
        let client = server.client.clone();
        let mut controller = spawn_controller(client.clone());
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        let create = |name: &'static str, annotations: serde_json::Value| {
            let api = api.clone();
            async move {
                let s: Service = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "annotations": annotations},
                    "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
                }))
                .expect("service");
                api.create(&PostParams::default(), &s)
                    .await
                    .expect("create service");
            }
        };
        // Waits until the Service's status shows `want` (address, condition reason).
        let expect = |name: &'static str, want: (Option<&'static str>, &'static str)| {
            let api = api.clone();
            async move {
                wait_for(&format!("{name} to show {want:?}"), LIMIT, || {
                    let api = api.clone();
                    async move {
                        let s = api.get_status(name).await.ok()?;
                        let got = (address(&s), condition(&s)?.reason.clone());
                        (got.0.as_deref() == want.0 && got.1 == want.1).then_some(())
                    }
                })
                .await;
            }
        };

        create("lb-a", json!({})).await;
        expect("lb-a", (Some("10.8.0.1"), REASON_ALLOCATED)).await;
        create("lb-b", json!({ LB_IPS_ANNOTATION: "10.8.0.1" })).await;
        expect("lb-b", (None, "AlreadyAllocated")).await;
        create("lb-c", json!({})).await;
        expect("lb-c", (Some("10.8.0.2"), REASON_ALLOCATED)).await;
        create("lb-d", json!({})).await;
        expect("lb-d", (None, "PoolExhausted")).await;

        // lb-a stops being a LoadBalancer: its address goes back, and lb-b's request for it
        // is granted.
        let to_cluster_ip = json!({"spec": {
            "type": "ClusterIP",
            "allocateLoadBalancerNodePorts": null,
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]
        }});
        api.patch(
            "lb-a",
            &PatchParams::default(),
            &Patch::Merge(&to_cluster_ip),
        )
        .await
        .expect("make lb-a a ClusterIP Service");
        wait_for("lb-a to lose its address and condition", LIMIT, || {
            let api = api.clone();
            async move {
                let s = api.get_status("lb-a").await.ok()?;
                (address(&s).is_none() && condition(&s).is_none()).then_some(())
            }
        })
        .await;
        expect("lb-b", (Some("10.8.0.1"), REASON_ALLOCATED)).await;
        expect("lb-d", (None, "PoolExhausted")).await;

        // Deleting lb-c frees 10.8.0.2 for lb-d.
        api.delete("lb-c", &DeleteParams::default())
            .await
            .expect("delete lb-c");
        expect("lb-d", (Some("10.8.0.2"), REASON_ALLOCATED)).await;

        // A restarted controller derives the allocations from the Services: nothing moves and
        // a new Service finds the pool exhausted.
        drop(controller);
        controller = spawn_controller(client.clone());
        create("lb-e", json!({})).await;
        expect("lb-e", (None, "PoolExhausted")).await;
        expect("lb-b", (Some("10.8.0.1"), REASON_ALLOCATED)).await;
        expect("lb-d", (Some("10.8.0.2"), REASON_ALLOCATED)).await;
        drop(controller);
    }
}
