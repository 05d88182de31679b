//! Typed access to the datapath's maps, from a freshly loaded object or from the pins of a
//! running node: reading the load-balancer state back and applying [`MapOp`]s.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use keelson_common::{
    AffinityKey, AffinityValue, Backend, Backend6, Counter, CtKey, CtValue, DropReason,
    EndpointInfo, EndpointKey, MaglevKey, MaglevTable, MetricValue, NodeConfig, RevNatValue,
    RevNatValue6, ServiceKey, ServiceKey6, ServiceName, ServiceValue, ct_closed, ct_dir,
    ct_idle_limit, limits, names, service_flags,
};

use crate::services::model::{BackendAddr, Frontend, LbState, MapOp, Proto, ServiceEntry};

/// Errors of map access.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("cannot open pinned map {path}")]
    OpenPin {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("map {map} has an unexpected type or layout")]
    Type {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {map} is full ({op})")]
    Full { map: &'static str, op: String },
    #[error("map {map} cannot take {what}")]
    Invalid { map: &'static str, what: String },
    #[error("{op} on map {map}")]
    Op {
        map: &'static str,
        op: String,
        #[source]
        source: MapError,
    },
}

/// Whether a metric counts refusals or events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A packet or socket call the datapath refused ([`DropReason`]).
    Drop,
    /// Something the datapath did ([`Counter`]).
    Count,
}

impl MetricKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricKind::Drop => "drop",
            MetricKind::Count => "count",
        }
    }
}

/// One counter of the `metrics` map, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricSample {
    pub kind: MetricKind,
    /// Stable snake_case name (`invalid_source`, `sock_connect_xlated`, ...).
    pub name: &'static str,
    /// For drops, the direction they are counted in (`ingress`, `egress`); empty otherwise.
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Declares [`Maps`] from the one list of maps in `keelson_common::maps`: a typed handle per
/// map, opened from a loaded object or from a node's pins.
macro_rules! declare_maps {
    ($(
        $(#[$doc:meta])*
        $konst:ident $field:ident $name:tt
        $kind:ident < $k:ty, $v:ty > ($max:expr, $flags:expr);
    )*) => {
        /// The datapath's maps, owned. The ring buffer of events is not among them: its
        /// reader opens it on its own (see `crate::flows`).
        pub struct Maps {
            $(
                $(#[$doc])*
                pub $field: declare_maps!(@ty $kind $k, $v),
            )*
        }

        impl Maps {
            /// Builds the handles from `get`, which hands out each map by name.
            fn build(
                mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
            ) -> Result<Self, MapsError> {
                Ok(Self {
                    $($field: declare_maps!(@open $kind names::$konst, get),)*
                })
            }
        }
    };
    (@ty Hash $k:ty, $v:ty) => { HashMap<MapData, $k, $v> };
    (@ty Lru $k:ty, $v:ty) => { HashMap<MapData, $k, $v> };
    (@ty Array $k:ty, $v:ty) => { Array<MapData, $v> };
    (@ty PerCpuArray $k:ty, $v:ty) => { PerCpuArray<MapData, $v> };
    (@ty Lpm $k:ty, $v:ty) => { LpmTrie<MapData, $k, $v> };
    (@ty RingBuf $k:ty, $v:ty) => { () };
    (@open RingBuf $name:expr, $get:ident) => { () };
    (@open $kind:ident $name:expr, $get:ident) => { typed($name, $get($name)?)? };
}

keelson_common::datapath_maps!(declare_maps);

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| MapsError::Type { map: name, source })
}

impl Maps {
    /// Takes the maps out of a loaded object (the programs keep their own references).
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing(name)))
    }

    /// Opens the maps pinned under `pin_dir` by a running agent.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapsError> {
        Self::build(|name| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| MapsError::OpenPin {
                path: path.display().to_string(),
                source,
            })?;
            Map::from_map_data(data).map_err(|source| MapsError::Type { map: name, source })
        })
    }

    /// Reads the services, backends and revnat maps back into an [`LbState`]. Entries the
    /// agent cannot interpret (an unknown protocol number) are skipped; the diff then removes
    /// nothing it does not understand.
    pub fn read_lb(&self) -> Result<LbState, MapsError> {
        let mut state = LbState::default();
        for item in self.backends.iter() {
            let (id, b) = item.map_err(|source| op_err(names::BACKENDS, "iterate", source))?;
            if let Some(addr) = backend_addr(ip_from_net(b.address).into(), b.port, b.proto) {
                state.backends.insert(id, addr);
            }
        }
        for item in self.backends6.iter() {
            let (id, b) = item.map_err(|source| op_err(names::BACKENDS6, "iterate", source))?;
            if let Some(addr) = backend_addr(ip6_from_net(b.address).into(), b.port, b.proto) {
                state.backends.insert(id, addr);
            }
        }
        // The protocol is not part of a revnat entry; the services map supplies it below.
        for item in self.revnat.iter() {
            let (index, v) = item.map_err(|source| op_err(names::REVNAT, "iterate", source))?;
            let address = ip_from_net(v.address).into();
            state.revnat.insert(index, revnat_frontend(address, v.port));
        }
        for item in self.revnat6.iter() {
            let (index, v) = item.map_err(|source| op_err(names::REVNAT6, "iterate", source))?;
            let address = ip6_from_net(v.address).into();
            state.revnat.insert(index, revnat_frontend(address, v.port));
        }
        let v4 = self.services.iter().map(|item| {
            item.map(|(k, v)| {
                (
                    k.address.to_ne_bytes().into(),
                    k.dport,
                    k.proto,
                    k.backend_slot,
                    v,
                )
            })
            .map_err(|source| op_err(names::SERVICES, "iterate", source))
        });
        let v6 = self.services6.iter().map(|item| {
            item.map(|(k, v)| {
                (
                    ip6_from_net(k.address).into(),
                    k.dport,
                    k.proto,
                    k.backend_slot,
                    v,
                )
            })
            .map_err(|source| op_err(names::SERVICES6, "iterate", source))
        });
        for item in v4.chain(v6) {
            let (address, dport, proto, slot, v): (IpAddr, u16, u8, u16, ServiceValue) = item?;
            let Some(proto) = Proto::from_number(proto) else {
                continue;
            };
            let frontend = Frontend {
                address,
                port: u16::from_be(dport),
                proto,
            };
            let entry: &mut ServiceEntry = state.services.entry(frontend).or_default();
            if slot == 0 {
                entry.master = Some((v.count, v.rev_nat_index));
                entry.affinity = (v.flags & service_flags::AFFINITY != 0).then_some(v.backend_id);
                entry.flags = v.flags & !service_flags::AFFINITY;
            } else {
                entry.slots.insert(slot, v.backend_id);
            }
        }
        // Give revnat entries the protocol of the frontend that uses them.
        for (frontend, entry) in &state.services {
            if let Some((_, index)) = entry.master
                && let Some(rn) = state.revnat.get_mut(&index)
                && rn.address == frontend.address
                && rn.port == frontend.port
            {
                rn.proto = frontend.proto;
            }
        }
        state.names = self.read_names()?;
        for item in self.maglev.iter() {
            let (k, v) = item.map_err(|source| op_err(names::MAGLEV, "iterate", source))?;
            if let Some(proto) = Proto::from_number(k.proto) {
                state
                    .maglev
                    .insert((k.rev_nat_index, proto), v.backend_ids.to_vec());
            }
        }
        Ok(state)
    }

    /// `namespace/name` per reverse-NAT index.
    pub fn read_names(&self) -> Result<BTreeMap<u16, String>, MapsError> {
        let mut out = BTreeMap::new();
        for item in self.svc_names.iter() {
            let (k, v) = item.map_err(|source| op_err(names::SVC_NAMES, "iterate", source))?;
            let end = v.name.iter().position(|&b| b == 0).unwrap_or(v.name.len());
            out.insert(k, String::from_utf8_lossy(&v.name[..end]).into_owned());
        }
        Ok(out)
    }

    /// Tells the programs the node's address and uplink.
    pub fn write_config(&mut self, config: NodeConfig) -> Result<(), MapsError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| op_err(names::CONFIG, "write", source))
    }

    /// The node configuration the programs see.
    pub fn read_config(&self) -> Result<NodeConfig, MapsError> {
        self.config
            .get(&0, 0)
            .map_err(|source| op_err(names::CONFIG, "read", source))
    }

    /// Every conntrack entry, sorted by key.
    pub fn read_ct(&self) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        let mut out = walk(&self.ct, names::CT)?;
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Deletes the conntrack entries (both directions) of flows whose backend is one of
    /// `backend_ids`: their next packet is balanced again, onto a live backend (a UDP flow
    /// keeps working, a TCP flow is reset by the new backend) instead of being sent to an
    /// address nobody serves — the stale-flow bug of kube-proxy's kubernetes#56903.
    pub fn purge_ct(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize, MapsError> {
        if backend_ids.is_empty() {
            return Ok(0);
        }
        let stale: Vec<CtKey> = self
            .read_ct()?
            .into_iter()
            .filter(|(_, v)| backend_ids.contains(&v.backend_id))
            .map(|(k, _)| k)
            .collect();
        self.remove_ct(&stale)
    }

    /// Removes conntrack entries idle past their protocol's limit (`limits::CT_*_IDLE_NS`;
    /// `now_ns` on the clock of `bpf_ktime_get_ns`). The uplink program takes over SNAT ports of
    /// such flows by itself; this keeps dead flows from filling the map, which refuses new flows when full.
    pub fn gc_ct(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let entries: BTreeMap<CtKey, CtValue> = self.read_ct()?.into_iter().collect();
        // A flow's two entries live and die together, judged by the newer of them: a flow
        // active one way only (a UDP client sending without answers) is not idle.
        let mut stale = Vec::new();
        for (key, value) in &entries {
            let partner_key = key.partner(value);
            let partner = entries.get(&partner_key);
            if key.dir == ct_dir::REPLY && partner.is_some() {
                // Judged with its original entry.
                continue;
            }
            let closed = ct_closed(value.flags, partner.map_or(0, |p| p.flags));
            let last_seen = value
                .last_seen_ns
                .max(partner.map_or(0, |p| p.last_seen_ns));
            let limit = ct_idle_limit(key.proto, closed);
            if now_ns.saturating_sub(last_seen) > limit {
                stale.push(*key);
                if partner.is_some() {
                    stale.push(partner_key);
                }
            }
        }
        self.remove_ct(&stale)
    }

    /// Deletes conntrack entries; one already gone is not an error. Returns how many were asked.
    fn remove_ct(&mut self, keys: &[CtKey]) -> Result<usize, MapsError> {
        for key in keys {
            match self.ct.remove(key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(op_err(names::CT, "delete", source)),
            }
        }
        Ok(keys.len())
    }

    /// Every session-affinity entry.
    pub fn read_affinity(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, MapsError> {
        walk(&self.affinity, names::AFFINITY)
    }

    /// Applies `ops` in order. Stops at the first failure: the next reconcile reads the maps
    /// back and continues from what was written.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<(), MapsError> {
        for op in ops {
            self.apply_one(op)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, op: &MapOp) -> Result<(), MapsError> {
        match op.clone() {
            MapOp::PutBackend { id, backend } => {
                let (port, proto) = (backend.port.to_be(), backend.proto.number());
                match backend.address {
                    IpAddr::V4(ip) => {
                        let value = Backend {
                            address: ip_to_net(ip),
                            port,
                            proto,
                            flags: 0,
                        };
                        insert(&mut self.backends, names::BACKENDS, id, value, op)
                    }
                    IpAddr::V6(ip) => {
                        let value = Backend6 {
                            address: ip6_to_net(ip),
                            port,
                            proto,
                            flags: 0,
                        };
                        insert(&mut self.backends6, names::BACKENDS6, id, value, op)
                    }
                }
            }
            MapOp::PutRevNat { index, frontend } => {
                let port = frontend.port.to_be();
                match frontend.address {
                    IpAddr::V4(ip) => {
                        let value = RevNatValue {
                            address: ip_to_net(ip),
                            port,
                            pad: [0; 2],
                        };
                        insert(&mut self.revnat, names::REVNAT, index, value, op)
                    }
                    IpAddr::V6(ip) => {
                        let value = RevNatValue6 {
                            address: ip6_to_net(ip),
                            port,
                            pad: [0; 2],
                        };
                        insert(&mut self.revnat6, names::REVNAT6, index, value, op)
                    }
                }
            }
            MapOp::PutSlot {
                frontend,
                slot,
                backend_id,
            } => {
                let value = ServiceValue {
                    backend_id,
                    count: 0,
                    rev_nat_index: 0,
                    flags: 0,
                    pad: [0; 3],
                };
                self.put_service(&frontend, slot, value, op)
            }
            MapOp::PutMaster {
                frontend,
                count,
                rev_nat_index,
                affinity_timeout,
                flags,
            } => {
                let affinity = if affinity_timeout.is_some() {
                    service_flags::AFFINITY
                } else {
                    0
                };
                let value = ServiceValue {
                    backend_id: affinity_timeout.unwrap_or(0),
                    count,
                    rev_nat_index,
                    flags: (flags & !service_flags::AFFINITY) | affinity,
                    pad: [0; 3],
                };
                self.put_service(&frontend, 0, value, op)
            }
            MapOp::PutName { index, name } => {
                let mut value = ServiceName { name: [0; 128] };
                // Namespace and name are DNS labels (at most 63 bytes each): they fit.
                let bytes = name.as_bytes();
                let n = bytes.len().min(value.name.len() - 1);
                value.name[..n].copy_from_slice(&bytes[..n]);
                insert(&mut self.svc_names, names::SVC_NAMES, index, value, op)
            }
            MapOp::PutMaglev {
                index,
                proto,
                table,
            } => {
                let mut value = MaglevTable {
                    backend_ids: [0; limits::MAGLEV_TABLE_SIZE as usize],
                };
                if table.len() != value.backend_ids.len() {
                    return Err(MapsError::Invalid {
                        map: names::MAGLEV,
                        what: format!(
                            "a table of {} entries, {} expected",
                            table.len(),
                            value.backend_ids.len()
                        ),
                    });
                }
                value.backend_ids.copy_from_slice(&table);
                let key = MaglevKey {
                    rev_nat_index: index,
                    proto: proto.number(),
                    pad: 0,
                };
                insert(&mut self.maglev, names::MAGLEV, key, value, op)
            }
            MapOp::DeleteMaglev { index, proto } => {
                let key = MaglevKey {
                    rev_nat_index: index,
                    proto: proto.number(),
                    pad: 0,
                };
                remove(&mut self.maglev, names::MAGLEV, &key, op)
            }
            MapOp::DeleteSlot { frontend, slot } => {
                let (port, proto) = (frontend.port.to_be(), frontend.proto.number());
                match frontend.address {
                    IpAddr::V4(ip) => {
                        let key = ServiceKey::new(ip_to_net(ip), port, proto, slot);
                        remove(&mut self.services, names::SERVICES, &key, op)
                    }
                    IpAddr::V6(ip) => {
                        let key = ServiceKey6::new(ip6_to_net(ip), port, proto, slot);
                        remove(&mut self.services6, names::SERVICES6, &key, op)
                    }
                }
            }
            // Indexes and ids are unique over both families: delete from both maps.
            MapOp::DeleteRevNat { index } => {
                remove(&mut self.revnat, names::REVNAT, &index, op)?;
                remove(&mut self.revnat6, names::REVNAT6, &index, op)?;
                remove(&mut self.svc_names, names::SVC_NAMES, &index, op)
            }
            MapOp::DeleteBackend { id } => {
                remove(&mut self.backends, names::BACKENDS, &id, op)?;
                remove(&mut self.backends6, names::BACKENDS6, &id, op)
            }
        }
    }

    fn put_service(
        &mut self,
        frontend: &Frontend,
        slot: u16,
        value: ServiceValue,
        op: &MapOp,
    ) -> Result<(), MapsError> {
        let (port, proto) = (frontend.port.to_be(), frontend.proto.number());
        match frontend.address {
            IpAddr::V4(ip) => {
                let key = ServiceKey::new(ip_to_net(ip), port, proto, slot);
                insert(&mut self.services, names::SERVICES, key, value, op)
            }
            IpAddr::V6(ip) => {
                let key = ServiceKey6::new(ip6_to_net(ip), port, proto, slot);
                insert(&mut self.services6, names::SERVICES6, key, value, op)
            }
        }
    }

    /// Records a local endpoint.
    pub fn put_endpoint(&mut self, ip: Ipv4Addr, info: EndpointInfo) -> Result<(), MapsError> {
        let key = EndpointKey {
            address: ip_to_net(ip),
        };
        let what = format!("put endpoint {ip}");
        self.endpoints
            .insert(key, info, 0)
            .map_err(|source| classify(names::ENDPOINTS, what, source))
    }

    /// A local endpoint's entry, if there is one.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointInfo>, MapsError> {
        let key = EndpointKey {
            address: ip_to_net(ip),
        };
        match self.endpoints.get(&key, 0) {
            Ok(info) => Ok(Some(info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(op_err(
                names::ENDPOINTS,
                &format!("read endpoint {ip}"),
                source,
            )),
        }
    }

    /// Forgets a local endpoint; forgetting an unknown one is not an error.
    pub fn delete_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        let key = EndpointKey {
            address: ip_to_net(ip),
        };
        match self.endpoints.remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(op_err(
                names::ENDPOINTS,
                &format!("delete endpoint {ip}"),
                source,
            )),
        }
    }

    /// All local endpoints, sorted by address.
    pub fn read_endpoints(&self) -> Result<Vec<(Ipv4Addr, EndpointInfo)>, MapsError> {
        let mut out = Vec::new();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(|source| op_err(names::ENDPOINTS, "iterate", source))?;
            out.push((ip_from_net(k.address), v));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// Every named counter of the `metrics` map, drop reasons first, summed over CPUs.
    pub fn read_metrics(&self) -> Result<Vec<MetricSample>, MapsError> {
        let drops = DropReason::ALL.iter().map(|r| {
            let dir = keelson_common::policy::direction::name(r.direction());
            (MetricKind::Drop, r.name(), dir, *r as u32)
        });
        let counters = Counter::ALL
            .iter()
            .map(|c| (MetricKind::Count, c.name(), "", *c as u32));
        drops
            .chain(counters)
            .map(|(kind, name, direction, index)| {
                let value = self.metric(index)?;
                Ok(MetricSample {
                    kind,
                    name,
                    direction,
                    packets: value.packets,
                    bytes: value.bytes,
                })
            })
            .collect()
    }

    /// How many entries the maps that grow with the cluster hold, and how many they can.
    pub fn fill_levels(&self) -> Result<Vec<(&'static str, u64, u32)>, MapsError> {
        fn count<I, T, E>(iter: I) -> u64
        where
            I: Iterator<Item = Result<T, E>>,
        {
            iter.filter(Result::is_ok).count() as u64
        }
        Ok(vec![
            (
                names::SERVICES,
                count(self.services.keys()),
                limits::MAX_SERVICE_ENTRIES,
            ),
            (
                names::BACKENDS,
                count(self.backends.keys()),
                limits::MAX_BACKENDS,
            ),
            (
                names::ENDPOINTS,
                count(self.endpoints.keys()),
                limits::MAX_ENDPOINTS,
            ),
            (names::CT, count(self.ct.keys()), limits::MAX_CT),
            (
                names::IPCACHE,
                count(self.ipcache.keys()),
                limits::MAX_IPCACHE,
            ),
            (names::POLICY, count(self.policy.keys()), limits::MAX_POLICY),
        ])
    }

    /// The sum over CPUs of metrics slot `index`.
    pub fn metric(&self, index: u32) -> Result<MetricValue, MapsError> {
        let values = self
            .metrics
            .get(&index, 0)
            .map_err(|source| op_err(names::METRICS, &format!("read slot {index}"), source))?;
        Ok(values
            .iter()
            .fold(MetricValue::default(), |acc, v| MetricValue {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            }))
    }
}

/// Every entry of a map the datapath changes while it is walked (LRU evictions, flows
/// created and removed): an entry deleted between two steps of the walk is skipped.
fn walk<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, MapsError> {
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(e) if is_not_found(&e) => continue,
            Err(source) => return Err(op_err(name, "iterate", source)),
        }
    }
    Ok(out)
}

fn insert<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: K,
    value: V,
    op: &MapOp,
) -> Result<(), MapsError> {
    map.insert(key, value, 0)
        .map_err(|source| classify(name, format!("{op:?}"), source))
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
    op: &MapOp,
) -> Result<(), MapsError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(op_err(name, &format!("{op:?}"), source)),
    }
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

pub(crate) fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound) || errno(e) == Some(libc::ENOENT)
}

/// A map that holds max_entries refuses a new key: hash maps with E2BIG, LPM tries with
/// ENOSPC (kernel/bpf/lpm_trie.c, trie_update_elem).
pub(crate) fn classify(map: &'static str, op: String, source: MapError) -> MapsError {
    match errno(&source) {
        Some(libc::E2BIG | libc::ENOSPC) => MapsError::Full { map, op },
        _ => MapsError::Op { map, op, source },
    }
}

pub(crate) fn op_err(map: &'static str, op: &str, source: MapError) -> MapsError {
    MapsError::Op {
        map,
        op: op.to_owned(),
        source,
    }
}

/// An IPv4 address as the datapath stores it: the four wire bytes read as a native u32.
pub fn ip_to_net(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_net(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// An IPv6 address as the datapath stores it: four words of wire bytes read as native u32s
/// (the layout of `bpf_sock_addr.user_ip6`).
pub fn ip6_to_net(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

pub fn ip6_from_net(words: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

fn revnat_frontend(address: IpAddr, port: u16) -> Frontend {
    Frontend {
        address,
        port: u16::from_be(port),
        proto: Proto::Tcp,
    }
}

fn backend_addr(address: IpAddr, port: u16, proto: u8) -> Option<BackendAddr> {
    Some(BackendAddr {
        address,
        port: u16::from_be(port),
        proto: Proto::from_number(proto)?,
    })
}
