//! The maps of the datapath. Their layouts and names are defined in `keelson-common`; the
//! literal names here must equal `keelson_common::names` (the agent's tests check it).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use keelson_common::{
    AffinityKey, AffinityValue, Backend, Backend6, BackendKey, EndpointInfo, EndpointKey,
    MetricValue, RevNatKey, RevNatValue, RevNatValue6, ServiceKey, ServiceKey6, ServiceValue,
    SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6, limits,
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
