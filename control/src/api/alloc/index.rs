//! The [`AllocationIndex`]: every stored Service's ClusterIPs and nodePorts in bitmaps, kept
//! current from the store's watch, with the reservations of admitted Services whose writes it
//! has not seen yet, and the [`WriteGate`] that tells it when those writes have returned.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fmt,
    net::Ipv4Addr,
    sync::{Arc, Mutex as StdMutex, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use super::{Allocated, InUse, scan_free_ip, service_range};
use crate::api::ApiConfig;
use crate::ipam::{Allocator, PortAllocator, Range};
use crate::store::{Store, StoreError, WatchEvent, WatchStream};

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
