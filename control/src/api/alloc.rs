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

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fmt,
    net::Ipv4Addr,
    sync::{Arc, Mutex as StdMutex, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use super::{ApiConfig, error::Cause};
use crate::ipam::{Allocator, PortAllocator, Range, Reserve};
use crate::registry::validation::{externally_accessible, needs_health_check_node_port};
use crate::store::{Store, StoreError, WatchEvent, WatchStream};

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

/// How long an admission waits for the store's change stream to reach the current revision
/// before it rebuilds the index from a list instead.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reservation whose write has returned is kept when the index has not seen the
/// write: a failed write (a name clash, a dry run) frees its numbers after this, and a write
/// whose caller went away before it committed (the store does not cancel it) is seen first.
const RESERVATION_GRACE: Duration = Duration::from_secs(2);

/// Service writes in flight: the API takes a [`WriteTicket`] before admitting a Service and
/// drops it when the store write has returned. Tickets never wait for each other (they replace
/// a lock held across the write, which serialised every Service create on its own fsync); the
/// index uses them to know when a reservation's write has returned.
#[derive(Debug, Clone, Default)]
pub struct WriteGate {
    inner: Arc<StdMutex<Gate>>,
}

#[derive(Debug, Default)]
struct Gate {
    next: u64,
    live: BTreeSet<u64>,
}

impl WriteGate {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for one Service write; hold it until the store write has returned.
    pub async fn lock(&self) -> WriteTicket {
        let mut g = self.gate();
        let seq = g.next;
        g.next += 1;
        g.live.insert(seq);
        WriteTicket {
            gate: self.inner.clone(),
            seq,
        }
    }

    /// Every ticket numbered below this has been dropped.
    fn settled(&self) -> u64 {
        let g = self.gate();
        g.live.first().copied().unwrap_or(g.next)
    }

    /// Every ticket taken so far is numbered below this.
    fn issued(&self) -> u64 {
        self.gate().next
    }
}

/// One Service write in flight (see [`WriteGate`]).
#[derive(Debug)]
pub struct WriteTicket {
    gate: Arc<StdMutex<Gate>>,
    seq: u64,
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .remove(&self.seq);
    }
}

/// How many holders each ClusterIP has: a bit in the Service range's bitmap for the first, a
/// count beside it for more (only writes that bypass admission make two) and for addresses
/// outside the range (Services stored under another configuration).
#[derive(Debug)]
struct IpHolders {
    bitmap: Option<Allocator>,
    extra: HashMap<Ipv4Addr, u32>,
}

impl IpHolders {
    fn new(range: Option<&Range>) -> Self {
        Self {
            bitmap: range.cloned().map(Allocator::new),
            extra: HashMap::new(),
        }
    }

    fn add(&mut self, ip: Ipv4Addr) {
        if self.bitmap.as_mut().is_none_or(|b| b.allocate(ip).is_err()) {
            *self.extra.entry(ip).or_default() += 1;
        }
    }

    fn remove(&mut self, ip: Ipv4Addr) {
        if let Some(n) = self.extra.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.extra.remove(&ip);
            }
        } else if let Some(b) = self.bitmap.as_mut() {
            b.release(ip);
        }
    }

    fn count(&self, ip: &Ipv4Addr) -> u32 {
        u32::from(self.bitmap.as_ref().is_some_and(|b| b.is_allocated(*ip)))
            + self.extra.get(ip).copied().unwrap_or(0)
    }
}

/// How many holders each (nodePort, protocol) has: one port bitmap per protocol, counts
/// beside them as for [`IpHolders`].
#[derive(Debug)]
struct PortHolders {
    range: (u16, u16),
    bitmaps: HashMap<String, PortAllocator>,
    extra: HashMap<(u16, String), u32>,
}

impl PortHolders {
    fn new(range: (u16, u16)) -> Self {
        Self {
            range,
            bitmaps: HashMap::new(),
            extra: HashMap::new(),
        }
    }

    fn add(&mut self, (port, proto): &(u16, String)) {
        let (lo, hi) = self.range;
        let bitmap = self
            .bitmaps
            .entry(proto.clone())
            .or_insert_with(|| PortAllocator::new(lo, hi));
        if bitmap.allocate(*port).is_err() {
            *self.extra.entry((*port, proto.clone())).or_default() += 1;
        }
    }

    fn remove(&mut self, key: &(u16, String)) {
        if let Some(n) = self.extra.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.extra.remove(key);
            }
        } else if let Some(b) = self.bitmaps.get_mut(&key.1) {
            b.release(key.0);
        }
    }

    fn count(&self, port: u16, proto: &str) -> u32 {
        u32::from(
            self.bitmaps
                .get(proto)
                .is_some_and(|b| b.is_allocated(port)),
        ) + self
            .extra
            .get(&(port, proto.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// Both kinds of holders.
#[derive(Debug)]
struct Holders {
    ips: IpHolders,
    ports: PortHolders,
}

impl Holders {
    fn new(range: Option<&Range>, ports: (u16, u16)) -> Self {
        Self {
            ips: IpHolders::new(range),
            ports: PortHolders::new(ports),
        }
    }

    fn add(&mut self, own: &Allocated) {
        own.ips.iter().for_each(|ip| self.ips.add(*ip));
        own.node_ports.iter().for_each(|p| self.ports.add(p));
    }

    fn remove(&mut self, own: &Allocated) {
        own.ips.iter().for_each(|ip| self.ips.remove(*ip));
        own.node_ports.iter().for_each(|p| self.ports.remove(p));
    }
}

/// The allocations of every stored Service, in memory: built from one list of the Services,
/// then kept current from a watch of the whole store (every write is an event there, so the
/// index knows when it has seen every write up to a revision). Before each admission it takes
/// the writes up to the store's current revision, so it answers as
/// [`Allocated::from_services`] over a fresh list would, plus the reservations of admitted
/// Services whose writes it has not seen yet.
pub struct AllocationIndex {
    gate: WriteGate,
    range: Option<Range>,
    node_ports: (u16, u16),
    state: Mutex<State>,
}

impl fmt::Debug for AllocationIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllocationIndex")
            .field("range", &self.range)
            .field("node_ports", &self.node_ports)
            .finish_non_exhaustive()
    }
}

struct State {
    stored: Option<Index>,
    reserved: Reservations,
}

/// Allocations admitted but not yet seen in the store.
struct Reservations {
    next: u64,
    by_id: HashMap<u64, Reservation>,
    /// Ids in the order they were made (their epochs ascend); released ids are skipped.
    order: VecDeque<u64>,
    by_name: HashMap<(String, String), Vec<u64>>,
    holders: Holders,
}

struct Reservation {
    name: (String, String),
    own: Allocated,
    /// Every ticket that could be this Service's write is numbered below this.
    epoch: u64,
    /// The index had seen every write up to here when it was made.
    revision: i64,
    /// When the write it waits for was first known to have returned.
    settled_at: Option<Instant>,
}

impl Reservations {
    fn new(range: Option<&Range>, ports: (u16, u16)) -> Self {
        Self {
            next: 0,
            by_id: HashMap::new(),
            order: VecDeque::new(),
            by_name: HashMap::new(),
            holders: Holders::new(range, ports),
        }
    }

    fn add(&mut self, r: Reservation) {
        let id = self.next;
        self.next += 1;
        self.holders.add(&r.own);
        self.by_name.entry(r.name.clone()).or_default().push(id);
        self.order.push_back(id);
        self.by_id.insert(id, r);
    }

    fn release(&mut self, id: u64) {
        let Some(r) = self.by_id.remove(&id) else {
            return;
        };
        self.holders.remove(&r.own);
        if let Some(ids) = self.by_name.get_mut(&r.name) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_name.remove(&r.name);
            }
        }
    }

    /// The store shows a write of `name` at `revision`: reservations of `name` made before it
    /// are accounted for by the stored Service (that write was theirs, or theirs will fail: a
    /// create finds the name taken, an update's compare-and-swap finds a newer revision).
    fn written(&mut self, name: &(String, String), revision: i64) {
        let ids: Vec<u64> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| self.by_id.get(id).is_some_and(|r| r.revision < revision))
            .collect();
        ids.into_iter().for_each(|id| self.release(id));
    }

    /// Releases the reservations whose writes returned (tickets below `settled`) at least
    /// [`RESERVATION_GRACE`] ago without the index seeing them.
    fn expire(&mut self, settled: u64, now: Instant) {
        while let Some(&id) = self.order.front() {
            let Some(r) = self.by_id.get_mut(&id) else {
                self.order.pop_front();
                continue;
            };
            if r.epoch > settled {
                break;
            }
            let at = *r.settled_at.get_or_insert(now);
            if now.duration_since(at) < RESERVATION_GRACE {
                break;
            }
            self.order.pop_front();
            self.release(id);
        }
    }

    /// What the reservations of `name` hold.
    fn of(&self, name: &(String, String)) -> impl Iterator<Item = &Allocated> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .map(|r| &r.own)
    }
}

/// The fields of a stored Service the index reads: decoding only these (the watch delivers
/// every Service write) costs a fraction of a whole [`Value`].
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct StoredService {
    metadata: StoredMeta,
    spec: StoredSpec,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct StoredMeta {
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct StoredSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Value,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Value,
    ports: Value,
    health_check_node_port: Value,
}

impl StoredService {
    /// As [`Allocated::of`] the whole Service.
    fn allocated(&self) -> Allocated {
        let spec = &self.spec;
        let mut own = Allocated::default();
        let no_ports = Vec::new();
        own.add_spec(
            &spec.cluster_ip,
            &spec.cluster_ips,
            spec.ports.as_array().unwrap_or(&no_ports),
            &spec.health_check_node_port,
        );
        own
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
    holders: Holders,
}

impl Index {
    async fn build<S: Store>(
        store: &S,
        prefix: &str,
        range: Option<&Range>,
        ports: (u16, u16),
    ) -> Result<Self, StoreError> {
        let listed = store.list(prefix, None, 0).await?;
        let changes = store.watch("", listed.revision).await?;
        let mut index = Self {
            prefix: prefix.to_string(),
            revision: listed.revision,
            changes,
            services: HashMap::new(),
            names: HashMap::new(),
            holders: Holders::new(range, ports),
        };
        for kv in &listed.items {
            index.put(&kv.key, &kv.value);
        }
        Ok(index)
    }

    /// Takes the store's writes up to `target`, telling `reserved` which Services were
    /// written.
    async fn catch_up(
        &mut self,
        target: i64,
        reserved: &mut Reservations,
    ) -> Result<(), StoreError> {
        while self.revision < target {
            let event = match self.changes.next().await {
                Some(event) => event?,
                None => return Err(StoreError::Backend("the store's watch ended".into())),
            };
            self.revision = event.revision();
            match event {
                WatchEvent::Put { kv, .. } if kv.key.starts_with(&self.prefix) => {
                    if let Some(name) = self.put(&kv.key, &kv.value) {
                        reserved.written(&name, self.revision);
                    }
                }
                WatchEvent::Delete { prev, .. } if prev.key.starts_with(&self.prefix) => {
                    self.remove(&prev.key);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records the Service stored at `key`; its (namespace, name) when it could be read.
    fn put(&mut self, key: &str, value: &[u8]) -> Option<(String, String)> {
        self.remove(key);
        // An unreadable stored object holds nothing, as the handlers' list skips it.
        let svc = serde_json::from_slice::<StoredService>(value).ok()?;
        let own = svc.allocated();
        let name = (
            svc.metadata.namespace.unwrap_or_default(),
            svc.metadata.name.unwrap_or_default(),
        );
        self.holders.add(&own);
        self.names.insert(key.to_string(), name.clone());
        if let Some(before) = self.services.insert(name.clone(), own) {
            // Two keys naming one Service: keep the counts of the one replaced.
            self.holders.remove(&before);
        }
        Some(name)
    }

    fn remove(&mut self, key: &str) {
        let Some(name) = self.names.remove(key) else {
            return;
        };
        if let Some(own) = self.services.remove(&name) {
            self.holders.remove(&own);
        }
    }
}

impl AllocationIndex {
    /// An index for `cfg`'s Service CIDR and nodePort range; it lists the Services at the
    /// first admission.
    pub fn new(cfg: &ApiConfig) -> Self {
        let range = service_range(cfg);
        let node_ports = cfg.node_port_range;
        Self {
            gate: WriteGate::default(),
            state: Mutex::new(State {
                stored: None,
                reserved: Reservations::new(range.as_ref(), node_ports),
            }),
            range,
            node_ports,
        }
    }

    /// The gate whose tickets the API holds across each Service write.
    pub fn gate(&self) -> WriteGate {
        self.gate.clone()
    }

    /// The allocations of every Service stored under `prefix` except `skip` (namespace,
    /// name), as of the store's current revision, with the reservations of Services admitted
    /// but not yet seen. Admission through the returned view reserves what it gives `skip`.
    pub async fn used<S: Store>(
        &self,
        store: &S,
        prefix: &str,
        skip: (&str, &str),
    ) -> Result<IndexedAllocations<'_>, StoreError> {
        let mut guard = self.state.lock().await;
        // Read before the revision: every write whose ticket is below `settled` has returned,
        // so the revision read next covers it.
        let settled = self.gate.settled();
        let target = store.current_revision().await?;
        let State { stored, reserved } = &mut *guard;
        let current = match stored.as_mut() {
            Some(index) if index.prefix == prefix => {
                // A watch that ended (compacted past), failed or stalls is replaced by a
                // fresh list.
                matches!(
                    tokio::time::timeout(CATCH_UP_TIMEOUT, index.catch_up(target, reserved)).await,
                    Ok(Ok(()))
                )
            }
            _ => false,
        };
        if !current {
            *stored =
                Some(Index::build(store, prefix, self.range.as_ref(), self.node_ports).await?);
        }
        reserved.expire(settled, Instant::now());
        let revision = stored.as_ref().map_or(target, |i| i.revision);
        Ok(IndexedAllocations {
            guard,
            range: self.range.as_ref(),
            node_ports: self.node_ports,
            skip: (skip.0.to_string(), skip.1.to_string()),
            epoch: self.gate.issued(),
            revision,
            admitted: StdMutex::new(None),
        })
    }
}

/// The view [`AllocationIndex::used`] returns: every stored or reserved Service's
/// allocations but one's.
pub struct IndexedAllocations<'a> {
    guard: MutexGuard<'a, State>,
    range: Option<&'a Range>,
    node_ports: (u16, u16),
    skip: (String, String),
    epoch: u64,
    revision: i64,
    admitted: StdMutex<Option<Allocated>>,
}

impl fmt::Debug for IndexedAllocations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedAllocations")
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl IndexedAllocations<'_> {
    fn stored(&self) -> Option<&Index> {
        self.guard.stored.as_ref()
    }

    fn skipped(&self) -> Option<&Allocated> {
        self.stored()?.services.get(&self.skip)
    }

    fn reserved_ip(&self, ip: &Ipv4Addr) -> bool {
        let r = &self.guard.reserved;
        let own = r.of(&self.skip).filter(|a| a.ips.contains(ip)).count();
        r.holders.ips.count(ip) as usize > own
    }

    fn reserved_port(&self, port: u16, proto: &str) -> bool {
        let r = &self.guard.reserved;
        let key = (port, proto.to_string());
        let own = r
            .of(&self.skip)
            .filter(|a| a.node_ports.contains(&key))
            .count();
        r.holders.ports.count(port, proto) as usize > own
    }
}

impl InUse for IndexedAllocations<'_> {
    fn ip_in_use(&self, ip: &Ipv4Addr) -> bool {
        let held = self.stored().map_or(0, |i| i.holders.ips.count(ip));
        held > u32::from(self.skipped().is_some_and(|a| a.ips.contains(ip))) || self.reserved_ip(ip)
    }

    fn node_port_in_use(&self, port: u16, proto: &str) -> bool {
        let key = (port, proto.to_string());
        let held = self
            .stored()
            .map_or(0, |i| i.holders.ports.count(port, proto));
        held > u32::from(self.skipped().is_some_and(|a| a.node_ports.contains(&key)))
            || self.reserved_port(port, proto)
    }

    fn free_ip(&self, cfg: &ApiConfig) -> Option<Ipv4Addr> {
        let bitmap = self.stored()?.holders.ips.bitmap.as_ref();
        match bitmap {
            // The stored Services' bitmap, less the reservations.
            Some(b) if self.range == service_range(cfg).as_ref() => {
                let start = rand::random::<u64>() % b.range().len();
                b.next_free(start, |n| !self.ip_in_use(&n.network()))
                    .map(|n| n.network())
            }
            // Another range than the index's: scan it.
            _ => scan_free_ip(cfg, &|ip| self.ip_in_use(ip)),
        }
    }

    fn free_node_port(
        &self,
        cfg: &ApiConfig,
        proto: &str,
        also_free: &dyn Fn(u16) -> bool,
    ) -> Option<u16> {
        let bitmap = self.stored()?.holders.ports.bitmaps.get(proto);
        match bitmap {
            Some(b) if cfg.node_port_range == self.node_ports => {
                let span = u64::from(self.node_ports.1 - self.node_ports.0) + 1;
                let start = rand::random::<u64>() % span;
                b.next_free(start, |p| !self.node_port_in_use(p, proto) && also_free(p))
            }
            _ => {
                let (lo, hi) = cfg.node_port_range;
                let span = u32::from(hi.checked_sub(lo)?) + 1;
                let start = rand::random::<u32>() % span;
                (0..span)
                    .filter_map(|i| u16::try_from(u32::from(lo) + (start + i) % span).ok())
                    .find(|p| !self.node_port_in_use(*p, proto) && also_free(*p))
            }
        }
    }

    fn hold(&self, svc: &Value) {
        *self.admitted.lock().unwrap_or_else(PoisonError::into_inner) = Some(Allocated::of(svc));
    }
}

impl Drop for IndexedAllocations<'_> {
    fn drop(&mut self) {
        let admitted = self
            .admitted
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(own) = admitted {
            self.guard.reserved.add(Reservation {
                name: self.skip.clone(),
                own,
                epoch: self.epoch,
                revision: self.revision,
                settled_at: None,
            });
        }
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
        use crate::store::SqliteStore;

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
        let cpu0 = cpu_ms();
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
        println!("CPU {uri}: {} ms for {n} creates", cpu_ms() - cpu0);
        n as f64 / start.elapsed().as_secs_f64()
    }

    /// CPU time of this process so far (user + system, proc(5) `utime` and `stime`, in ticks
    /// of 10 ms), to tell a phase bound by CPU from one waiting on a lock or the disk.
    fn cpu_ms() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .map_or("", |x| x.1)
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        fields.iter().sum::<u64>() * 10
    }

    async fn post(app: &axum::Router, uri: &str, body: serde_json::Value) -> StatusCode {
        let req = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer t")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        app.clone()
            .oneshot(req)
            .await
            .expect("router answers")
            .status()
    }

    /// Concurrent creates (no lock is held across their writes) never share a ClusterIP or a
    /// nodePort, and of many asking for one nodePort exactly one gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn api_alloc_concurrent_creates_never_share() {
        use crate::store::Store as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        let mut cfg =
            ApiConfig::with_admin_token("10.96.0.0/24".parse().expect("cidr"), "t".into());
        cfg.node_port_range = (30000, 30299);
        let state = ApiState::new(store.clone(), cfg);
        crate::server::ensure_system_namespaces(&state)
            .await
            .expect("namespaces");
        let app = router(state);
        let uri = "/api/v1/namespaces/default/services";
        // Many asking for one address and port at once: one gets them.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let app = app.clone();
            tasks.spawn(async move {
                let body = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("want-{i}")},
                    "spec": {"type": "NodePort", "clusterIP": "10.96.0.250",
                             "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30299}]}});
                post(&app, uri, body).await
            });
        }
        let mut statuses = Vec::new();
        while let Some(r) = tasks.join_next().await {
            statuses.push(r.expect("task"));
        }
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{statuses:?}");
        // Many allocating at once, as many as the ranges have room for, less the one above.
        for i in 0..251 {
            let app = app.clone();
            tasks.spawn(async move {
                let body = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("s-{i}")},
                    "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
                post(&app, uri, body).await
            });
        }
        let mut statuses = Vec::new();
        while let Some(r) = tasks.join_next().await {
            statuses.push(r.expect("task"));
        }
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 251, "{statuses:?}");
        let listed = store
            .list("/registry/core/services/", None, 0)
            .await
            .expect("list");
        let mut ips = std::collections::HashSet::new();
        let mut ports = std::collections::HashSet::new();
        for kv in &listed.items {
            let svc: serde_json::Value = serde_json::from_slice(&kv.value).expect("json");
            let ip = svc["spec"]["clusterIP"].as_str().expect("ip").to_string();
            assert!(ips.insert(ip.clone()), "{ip} given twice");
            let port = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("port");
            assert!(ports.insert(port), "{port} given twice");
        }
        assert_eq!(ips.len(), 252, "the whole /24 but .0, .1 and .255");
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
        let cm = rate(
            &app,
            "/api/v1/namespaces/default/configmaps",
            n,
            conc,
            |i| {
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}})
            },
        )
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
