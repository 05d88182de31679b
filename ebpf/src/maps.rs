//! The maps of the datapath. Their layouts and names are defined in `keelson-common`; the
//! literal names here must equal `keelson_common::names` (the agent's tests check it).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use keelson_common::{
    AffinityKey, AffinityValue, Backend, Backend6, BackendKey, CtKey, CtValue, EndpointInfo,
    EndpointKey, MaglevKey, MaglevTable, MetricValue, NodeConfig, RevNatKey, RevNatValue,
    RevNatValue6, ServiceKey, ServiceKey6, ServiceName, ServiceValue, SockRevNatKey,
    SockRevNatKey6, SockRevNatValue, SockRevNatValue6, limits,
};

#[map(name = "kls_services")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(limits::MAX_SERVICE_ENTRIES, 0);

#[map(name = "kls_backends")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(limits::MAX_BACKENDS, 0);

#[map(name = "kls_revnat")]
pub static REVNAT: HashMap<RevNatKey, RevNatValue> = HashMap::pinned(limits::MAX_REVNAT, 0);

#[map(name = "kls_sock_revnat")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(limits::MAX_SOCK_REVNAT, 0);

#[map(name = "kls_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::pinned(limits::MAX_ENDPOINTS, 0);

#[map(name = "kls_metrics")]
pub static METRICS: PerCpuArray<MetricValue> = PerCpuArray::pinned(limits::METRICS_SLOTS, 0);

#[map(name = "kls_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(limits::MAX_AFFINITY, 0);

#[map(name = "kls_services6")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue> =
    HashMap::pinned(limits::MAX_SERVICE_ENTRIES, 0);

#[map(name = "kls_backends6")]
pub static BACKENDS6: HashMap<BackendKey, Backend6> = HashMap::pinned(limits::MAX_BACKENDS, 0);

#[map(name = "kls_revnat6")]
pub static REVNAT6: HashMap<RevNatKey, RevNatValue6> = HashMap::pinned(limits::MAX_REVNAT, 0);

#[map(name = "kls_sockrevnat6")]
pub static SOCK_REVNAT6: LruHashMap<SockRevNatKey6, SockRevNatValue6> =
    LruHashMap::pinned(limits::MAX_SOCK_REVNAT, 0);

/// A plain hash, not an LRU: a full table refuses new flows (counted as `ct_full`, as
/// netfilter's "table full, dropping packet") instead of silently evicting established ones.
/// The agent's GC removes closed and idle flows.
#[map(name = "kls_ct")]
pub static CT: HashMap<CtKey, CtValue> = HashMap::pinned(limits::MAX_CT, 0);

#[map(name = "kls_config")]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// Tables are 4 KiB each and only Maglev frontends have one: allocated on insert.
#[map(name = "kls_maglev")]
pub static MAGLEV: HashMap<MaglevKey, MaglevTable> =
    HashMap::pinned(limits::MAX_MAGLEV, BPF_F_NO_PREALLOC);

/// `namespace/name` per reverse-NAT index, for the dump tools; no program reads it, but it
/// lives beside the maps it explains so that it survives agent restarts with them.
#[map(name = "kls_svc_names")]
pub static SVC_NAMES: HashMap<RevNatKey, ServiceName> =
    HashMap::pinned(limits::MAX_REVNAT, BPF_F_NO_PREALLOC);
