//! The pure half of Service programming: what the API asks for ([`desired`]) and the map
//! operations that get the datapath there from what it holds ([`diff`]). No I/O.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use keelson_common::{limits, service_flags};

pub use super::input::{LB_ALGORITHM_ANNOTATION, SERVICE_NAME_LABEL};
use super::{
    index::{DesiredIndex, FrontendPlan, ServicePlan, Touched},
    input::{ServiceInput, SliceInput, object_key},
    maglev::{self, MaglevBackend},
    model::{BackendAddr, DesiredState, Frontend, LbState, MapOp, Proto, ServiceEntry},
};

/// What the planner needs to know about the node it plans for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name: endpoints with this `nodeName` are local (traffic policies `Local`).
    pub node_name: String,
    /// The node's addresses NodePorts are served on.
    pub node_ips: Vec<IpAddr>,
    /// The agent's default selection for per-packet flows is Maglev (`--lb-algorithm`).
    pub maglev_default: bool,
}

/// One endpoint address of a Service port, with the conditions that decide whether traffic
/// may go to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    backend: BackendAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// The endpoint runs on this node.
    local: bool,
}

/// Computes each frontend's backends from Services and their EndpointSlices: [`plan_service`]
/// for every Service, merged as [`DesiredIndex`] merges them.
pub fn desired(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> DesiredState {
    let inputs: Vec<SliceInput> = slices
        .iter()
        .map(|s| SliceInput::from_slice(s, &node.node_name))
        .collect();
    let mut by_service: HashMap<&str, Vec<&SliceInput>> = HashMap::new();
    for s in &inputs {
        if let Some(service) = &s.service {
            by_service.entry(service).or_default().push(s);
        }
    }
    let mut index = DesiredIndex::default();
    let mut touched = Touched::default();
    for svc in services {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let Some(input) = ServiceInput::from_service(svc) else {
            continue;
        };
        let key = object_key(svc.metadata.namespace.as_deref(), name);
        let own = by_service.get(&*key).map(Vec::as_slice).unwrap_or_default();
        index.set(&key, plan_service(&input, own, node), &mut touched);
    }
    index.to_desired_state()
}

/// The frontends of one Service, each with its backends, and the endpoints it lists.
///
/// - Only ClusterIP-bearing Services: headless (`clusterIP: None`) and ExternalName Services
///   have nothing to balance. Each ClusterIP (one per family on dual-stack Services) gets
///   the endpoints of the slices of its own family (`addressType` IPv4 or IPv6).
/// - NodePort and LoadBalancer Services also get a frontend per node address and nodePort,
///   LoadBalancer Services one per `status.loadBalancer.ingress[].ip`, and every Service one
///   per `spec.externalIPs` entry: these are `EXTERNAL`, served per packet on the uplink.
/// - `externalTrafficPolicy: Local` gives the external frontends this node's endpoints only
///   (and `LOCAL`: the client's address is kept); `internalTrafficPolicy: Local` does the same
///   for the ClusterIPs. Among local endpoints the ready/terminating rule below applies again
///   (KEP-1669).
/// - The backend port of a Service port is the port of the same name (and protocol) in each
///   EndpointSlice — slices carry the resolved targetPort, which may differ per Pod.
/// - Ready endpoints are used; only when none is ready, endpoints that are serving and
///   terminating are (KEP-1669, as kube-proxy does).
/// - A frontend without any usable endpoint is still programmed, with no backends, so that
///   connecting to it is refused rather than sent to an address nobody serves.
///
/// `None` for a Service with nothing to program.
pub fn plan_service(
    svc: &ServiceInput,
    slices: &[&SliceInput],
    node: &NodeContext,
) -> Option<ServicePlan> {
    if svc.cluster_ips.is_empty() {
        return None;
    }
    let mut external_flags = service_flags::EXTERNAL;
    if svc.maglev.unwrap_or(node.maglev_default) {
        external_flags |= service_flags::MAGLEV;
    }
    if svc.external_local {
        external_flags |= service_flags::LOCAL;
    }
    let mut plan = ServicePlan::default();
    let mut retained = BTreeSet::new();
    for sp in &svc.ports {
        let all4 = candidates(slices, false, &sp.name, sp.proto);
        let all6 = candidates(slices, true, &sp.name, sp.proto);
        retained.extend(all4.iter().chain(all6.iter()).map(|c| c.backend));
        let pick = |ip: &IpAddr, local_only: bool| {
            let all = if ip.is_ipv4() { &all4 } else { &all6 };
            if local_only {
                select(all.iter().filter(|c| c.local).copied().collect())
            } else {
                select(all.clone())
            }
        };
        let mut put = |frontend: Frontend, backends: Vec<BackendAddr>, flags: u8| {
            let entry = FrontendPlan {
                frontend,
                backends,
                affinity: svc.affinity,
                flags,
            };
            // A frontend the Service yields twice (an externalIP that is also a node
            // address, say) is programmed as its last occurrence says.
            match plan.frontends.iter_mut().find(|f| f.frontend == frontend) {
                Some(held) => *held = entry,
                None => plan.frontends.push(entry),
            }
        };
        for address in &svc.cluster_ips {
            let frontend = Frontend {
                address: *address,
                port: sp.port,
                proto: sp.proto,
            };
            put(frontend, pick(address, svc.internal_local), 0);
        }
        let node_frontends = sp
            .node_port
            .into_iter()
            .flat_map(|np| node.node_ips.iter().map(move |ip| (*ip, np)));
        let other_frontends = svc.external_ips.iter().map(|ip| (*ip, sp.port));
        for (address, port) in node_frontends.chain(other_frontends) {
            let frontend = Frontend {
                address,
                port,
                proto: sp.proto,
            };
            put(frontend, pick(&address, svc.external_local), external_flags);
        }
    }
    plan.retained = retained.into_iter().collect();
    Some(plan)
}

fn candidates(
    slices: &[&SliceInput],
    ipv6: bool,
    port_name: &str,
    proto: Proto,
) -> BTreeSet<Candidate> {
    let mut out = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.ipv6 == ipv6) {
        let Some(port) = slice.port_of(port_name, proto) else {
            continue;
        };
        for ep in &slice.endpoints {
            out.insert(Candidate {
                backend: BackendAddr {
                    address: ep.address,
                    port,
                    proto,
                },
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                local: ep.local,
            });
        }
    }
    out
}

fn select(candidates: BTreeSet<Candidate>) -> Vec<BackendAddr> {
    let ready: BTreeSet<BackendAddr> = candidates
        .iter()
        .filter(|c| c.ready)
        .map(|c| c.backend)
        .collect();
    let chosen = if ready.is_empty() {
        candidates
            .iter()
            .filter(|c| c.serving && c.terminating)
            .map(|c| c.backend)
            .collect()
    } else {
        ready
    };
    chosen.into_iter().collect()
}

/// The operations that turn `current` into `desired`, ordered so the datapath never follows a
/// reference to something missing:
///
/// 1. new backends and reverse-NAT entries;
/// 2. per frontend: backend slots, then the master entry (a growing service publishes its new
///    count only after the new slots exist), then the slots past a shrunk count;
/// 3. frontends that are gone: master first (no new lookups), then their slots;
/// 4. reverse-NAT entries, and backends no frontend uses and no EndpointSlice lists any more.
///
/// Backend ids and reverse-NAT indexes already in the maps are kept, so an unchanged Service
/// produces no operation at all (after an agent restart, too).
pub fn diff(current: &LbState, desired: &DesiredState) -> Vec<MapOp> {
    let mut ops = Vec::new();

    // Backend ids: reuse the id already holding an address, allocate the lowest free ones.
    let mut id_of: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    for (&id, &addr) in &current.backends {
        id_of.entry(addr).or_insert(id);
    }
    let mut used_ids: BTreeSet<u32> = current.backends.keys().copied().collect();
    let mut next_id = 1u32;
    for addr in desired.services.values().flatten() {
        if id_of.contains_key(addr) {
            continue;
        }
        while used_ids.contains(&next_id) {
            next_id += 1;
        }
        if next_id > limits::MAX_BACKENDS {
            tracing::warn!(backend = %addr, "no backend id left");
            continue;
        }
        used_ids.insert(next_id);
        id_of.insert(*addr, next_id);
        ops.push(MapOp::PutBackend {
            id: next_id,
            backend: *addr,
        });
    }

    // Reverse-NAT indexes are per (address, port): TCP and UDP frontends of a port share one.
    let mut revnat_of: BTreeMap<(IpAddr, u16), u16> = BTreeMap::new();
    for (&index, f) in &current.revnat {
        revnat_of.entry((f.address, f.port)).or_insert(index);
    }
    let mut used_revnat: BTreeSet<u16> = current.revnat.keys().copied().collect();
    let mut next_revnat = 1u16;
    let mut wanted_revnat: BTreeSet<u16> = BTreeSet::new();
    let mut wanted_maglev: BTreeSet<(u16, Proto)> = BTreeSet::new();
    let mut named: BTreeSet<u16> = BTreeSet::new();
    // One reverse-NAT index stands for an address and port, which a TCP and a UDP Service may
    // share (a DNS Service split in two): its name lists them all.
    let mut names_by_key: BTreeMap<(IpAddr, u16), BTreeSet<&str>> = BTreeMap::new();
    for (f, name) in &desired.names {
        names_by_key
            .entry((f.address, f.port))
            .or_default()
            .insert(name.as_str());
    }
    let names_of: BTreeMap<(IpAddr, u16), String> = names_by_key
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>().join(",")))
        .collect();
    let mut per_frontend = Vec::new();
    for (frontend, backends) in &desired.services {
        let key = (frontend.address, frontend.port);
        let rev_nat_index = match revnat_of.get(&key) {
            Some(&index) => index,
            None => {
                while used_revnat.contains(&next_revnat) && next_revnat < u16::MAX {
                    next_revnat += 1;
                }
                if used_revnat.contains(&next_revnat) {
                    tracing::warn!(%frontend, "no reverse-NAT index left");
                    continue;
                }
                used_revnat.insert(next_revnat);
                revnat_of.insert(key, next_revnat);
                ops.push(MapOp::PutRevNat {
                    index: next_revnat,
                    frontend: *frontend,
                });
                next_revnat
            }
        };
        wanted_revnat.insert(rev_nat_index);
        if let Some(name) = names_of.get(&key)
            && current.names.get(&rev_nat_index) != Some(name)
            && named.insert(rev_nat_index)
        {
            ops.push(MapOp::PutName {
                index: rev_nat_index,
                name: name.clone(),
            });
        }

        let want = Wanted {
            frontend: *frontend,
            backends,
            rev_nat_index,
            affinity: desired.affinity.get(frontend).copied(),
            flags: desired.flags.get(frontend).copied().unwrap_or(0),
        };
        wanted_maglev.extend(frontend_ops(
            current,
            &want,
            |b| id_of.get(b).copied(),
            &mut per_frontend,
        ));
    }
    ops.extend(per_frontend);

    for (frontend, entry) in &current.services {
        if !desired.services.contains_key(frontend) {
            delete_frontend_ops(*frontend, entry, &mut ops);
        }
    }

    for &(index, proto) in current.maglev.keys() {
        if !wanted_maglev.contains(&(index, proto)) {
            ops.push(MapOp::DeleteMaglev { index, proto });
        }
    }
    // Deleting a reverse-NAT index deletes its name too.
    for &index in current.revnat.keys() {
        if !wanted_revnat.contains(&index) {
            ops.push(MapOp::DeleteRevNat { index });
        }
    }
    let wanted_ids: BTreeSet<u32> = desired
        .services
        .values()
        .flatten()
        .chain(desired.retained.iter())
        .filter_map(|b| id_of.get(b).copied())
        .collect();
    for &id in current.backends.keys() {
        if !wanted_ids.contains(&id) {
            ops.push(MapOp::DeleteBackend { id });
        }
    }
    ops
}

/// One frontend as a diff wants it programmed.
pub(super) struct Wanted<'a> {
    pub frontend: Frontend,
    /// Backends in slot order.
    pub backends: &'a [BackendAddr],
    pub rev_nat_index: u16,
    /// Session-affinity timeout in seconds, `None` without affinity.
    pub affinity: Option<u32>,
    /// Master flags besides affinity.
    pub flags: u8,
}

/// The operations that program one frontend over what `current` holds, in the order the
/// datapath may see them: its Maglev table, then its slots, then the master that publishes
/// them, then the slots past a shrunk count. Backends without an id (`id_of`) are left out.
/// Returns the Maglev table key the frontend uses, if any.
pub(super) fn frontend_ops(
    current: &LbState,
    want: &Wanted<'_>,
    id_of: impl Fn(&BackendAddr) -> Option<u32>,
    ops: &mut Vec<MapOp>,
) -> Option<(u16, Proto)> {
    let frontend = want.frontend;
    let usable: Vec<(u32, &BackendAddr)> = want
        .backends
        .iter()
        .filter_map(|b| id_of(b).map(|id| (id, b)))
        .take(usize::from(limits::MAX_BACKENDS_PER_SERVICE))
        .collect();
    let count = usable.len() as u16;
    let cur = current.services.get(&frontend);
    let mut maglev_key = None;
    if want.flags & service_flags::MAGLEV != 0 && !usable.is_empty() {
        let members: Vec<MaglevBackend> = usable
            .iter()
            .map(|&(id, b)| MaglevBackend {
                id,
                key: b.to_string(),
            })
            .collect();
        let table = maglev::table(&members, limits::MAGLEV_TABLE_SIZE);
        let key = (want.rev_nat_index, frontend.proto);
        maglev_key = Some(key);
        if current.maglev.get(&key) != Some(&table) {
            ops.push(MapOp::PutMaglev {
                index: want.rev_nat_index,
                proto: frontend.proto,
                table,
            });
        }
    }
    for (i, &(backend_id, _)) in usable.iter().enumerate() {
        let slot = i as u16 + 1;
        if cur.and_then(|c| c.slots.get(&slot)) != Some(&backend_id) {
            ops.push(MapOp::PutSlot {
                frontend,
                slot,
                backend_id,
            });
        }
    }
    if cur.and_then(|c| c.master) != Some((count, want.rev_nat_index))
        || cur.and_then(|c| c.affinity) != want.affinity
        || cur.map(|c| c.flags) != Some(want.flags)
    {
        ops.push(MapOp::PutMaster {
            frontend,
            count,
            rev_nat_index: want.rev_nat_index,
            affinity_timeout: want.affinity,
            flags: want.flags,
        });
    }
    for &slot in cur.iter().flat_map(|c| c.slots.keys()) {
        if slot > count {
            ops.push(MapOp::DeleteSlot { frontend, slot });
        }
    }
    maglev_key
}

/// The deletes of a frontend no longer wanted: its master first (no new lookups find it),
/// then its slots.
pub(super) fn delete_frontend_ops(frontend: Frontend, entry: &ServiceEntry, ops: &mut Vec<MapOp>) {
    if entry.master.is_some() {
        ops.push(MapOp::DeleteSlot { frontend, slot: 0 });
    }
    for &slot in entry.slots.keys() {
        ops.push(MapOp::DeleteSlot { frontend, slot });
    }
}

/// Applies `ops` to an in-memory [`LbState`] the way the maps would take them; lets tests
/// (and the agent's own consistency checks) see the outcome of a plan without a kernel.
pub fn apply_to_state(state: &mut LbState, ops: &[MapOp]) {
    for op in ops {
        match op.clone() {
            MapOp::PutBackend { id, backend } => {
                state.backends.insert(id, backend);
            }
            MapOp::PutRevNat { index, frontend } => {
                state.revnat.insert(index, frontend);
            }
            MapOp::PutSlot {
                frontend,
                slot,
                backend_id,
            } => {
                state
                    .services
                    .entry(frontend)
                    .or_default()
                    .slots
                    .insert(slot, backend_id);
            }
            MapOp::PutMaster {
                frontend,
                count,
                rev_nat_index,
                affinity_timeout,
                flags,
            } => {
                let entry = state.services.entry(frontend).or_default();
                entry.master = Some((count, rev_nat_index));
                entry.affinity = affinity_timeout;
                entry.flags = flags;
            }
            MapOp::PutName { index, name } => {
                state.names.insert(index, name);
            }
            MapOp::PutMaglev {
                index,
                proto,
                table,
            } => {
                state.maglev.insert((index, proto), table);
            }
            MapOp::DeleteMaglev { index, proto } => {
                state.maglev.remove(&(index, proto));
            }
            MapOp::DeleteSlot { frontend, slot } => {
                if let Some(entry) = state.services.get_mut(&frontend) {
                    if slot == 0 {
                        entry.master = None;
                        entry.affinity = None;
                        entry.flags = 0;
                    } else {
                        entry.slots.remove(&slot);
                    }
                    if entry.master.is_none() && entry.slots.is_empty() {
                        state.services.remove(&frontend);
                    }
                }
            }
            MapOp::DeleteRevNat { index } => {
                state.revnat.remove(&index);
                state.names.remove(&index);
            }
            MapOp::DeleteBackend { id } => {
                state.backends.remove(&id);
            }
        }
    }
}
