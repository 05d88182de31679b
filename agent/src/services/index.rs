//! The desired datapath state kept per Service, so that a change re-plans one Service and
//! diffs only the frontends and backends it touched: a change costs the same at 10 Services
//! and at 10,000.
//!
//! [`DesiredIndex`] holds each Service's [`ServicePlan`], which Services claim each frontend
//! (the first by `namespace/name` is served, should two claim one), and how many Services list
//! each backend. [`DesiredIndex::diff`] is the incremental twin of [`super::plan::diff`]: the
//! same operations in the same order, restricted to what a set of plan changes touched. The
//! full diff stays the reference (after a start and on every resync); a test holds the two to
//! the same result.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use keelson_common::limits;

use super::{
    input::ObjectKey,
    model::{BackendAddr, DesiredState, Frontend, MapOp, Proto},
    plan::{Wanted, delete_frontend_ops, frontend_ops},
    programmed::Programmed,
};

/// One frontend of a Service and what it is programmed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendPlan {
    pub frontend: Frontend,
    /// Backends in slot order.
    pub backends: Vec<BackendAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity: Option<u32>,
    /// Master flags besides affinity.
    pub flags: u8,
}

/// What one Service asks of the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePlan {
    pub frontends: Vec<FrontendPlan>,
    /// Every endpoint its slices list for its ports, whatever the conditions (sorted): these
    /// keep their backend entries, and so their established flows (KEP-1669).
    pub retained: Vec<BackendAddr>,
}

/// The frontends and backends whose desired state may have changed.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    pub frontends: HashSet<Frontend>,
    pub backends: HashSet<BackendAddr>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.backends.is_empty()
    }
}

/// Every Service's plan, indexed by frontend and backend.
#[derive(Clone, Debug, Default)]
pub struct DesiredIndex {
    plans: HashMap<ObjectKey, ServicePlan>,
    /// The Services claiming each frontend, sorted; the first one's plan is served.
    owners: HashMap<Frontend, Vec<ObjectKey>>,
    /// How many Services retain each backend.
    retained: HashMap<BackendAddr, u32>,
}

const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

impl DesiredIndex {
    /// Replaces the plan of Service `key` (`None`: it has none any more) and records what
    /// that touched. An unchanged plan touches nothing.
    pub fn set(&mut self, key: &ObjectKey, plan: Option<ServicePlan>, touched: &mut Touched) {
        if self.plans.get(key) == plan.as_ref() {
            return;
        }
        if let Some(old) = self.plans.remove(key) {
            for f in &old.frontends {
                touched.frontends.insert(f.frontend);
                if let Some(owners) = self.owners.get_mut(&f.frontend) {
                    owners.retain(|o| o != key);
                    if owners.is_empty() {
                        self.owners.remove(&f.frontend);
                    }
                }
            }
            for b in &old.retained {
                touched.backends.insert(*b);
                if let Some(n) = self.retained.get_mut(b) {
                    *n -= 1;
                    if *n == 0 {
                        self.retained.remove(b);
                    }
                }
            }
        }
        let Some(plan) = plan else { return };
        for f in &plan.frontends {
            touched.frontends.insert(f.frontend);
            let owners = self.owners.entry(f.frontend).or_default();
            if let Err(at) = owners.binary_search(key) {
                owners.insert(at, key.clone());
            }
        }
        for b in &plan.retained {
            touched.backends.insert(*b);
            *self.retained.entry(*b).or_default() += 1;
        }
        self.plans.insert(key.clone(), plan);
    }

    /// The Services with a plan.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The plan a frontend is served by, and the Service it is of.
    fn served(&self, frontend: &Frontend) -> Option<(&ObjectKey, &FrontendPlan)> {
        let owner = self.owners.get(frontend)?.first()?;
        let plan = self.plans.get(owner)?;
        plan.frontends
            .iter()
            .find(|f| f.frontend == *frontend)
            .map(|f| (owner, f))
    }

    /// The name of a reverse-NAT index: the Services served at an address and port, joined
    /// (a TCP and a UDP Service may share one, as a DNS Service split in two does).
    fn name_at(&self, address: IpAddr, port: u16) -> Option<String> {
        let names: BTreeSet<&str> = PROTOS
            .iter()
            .filter_map(|&proto| {
                self.served(&Frontend {
                    address,
                    port,
                    proto,
                })
            })
            .map(|(owner, _)| &**owner)
            .collect();
        (!names.is_empty()).then(|| names.into_iter().collect::<Vec<_>>().join(","))
    }

    /// The whole desired state, for a full diff.
    pub fn to_desired_state(&self) -> DesiredState {
        let mut state = DesiredState::default();
        for frontend in self.owners.keys() {
            let Some((owner, f)) = self.served(frontend) else {
                continue;
            };
            state.services.insert(*frontend, f.backends.clone());
            if let Some(timeout) = f.affinity {
                state.affinity.insert(*frontend, timeout);
            }
            if f.flags != 0 {
                state.flags.insert(*frontend, f.flags);
            }
            state.names.insert(*frontend, owner.to_string());
        }
        state.retained = self.retained.keys().copied().collect();
        state
    }

    /// The operations that bring the `touched` frontends and backends from what `current`
    /// holds to what the plans say, in [`super::plan::diff`]'s order: new backends and
    /// reverse-NAT entries; per frontend its Maglev table, slots, master and the slots past a
    /// shrunk count; the frontends no Service serves any more; then Maglev tables,
    /// reverse-NAT entries and backends nobody wants.
    pub fn diff(&self, current: &Programmed, touched: &Touched) -> Vec<MapOp> {
        let mut ops = Vec::new();
        let frontends: BTreeSet<Frontend> = touched.frontends.iter().copied().collect();
        let served: Vec<(Frontend, &FrontendPlan)> = frontends
            .iter()
            .filter_map(|f| self.served(f).map(|(_, p)| (*f, p)))
            .collect();

        // Backend ids for backends the maps do not hold yet, lowest free first.
        let mut new_ids: HashMap<BackendAddr, u32> = HashMap::new();
        let mut free_ids = current.backend_ids.candidates();
        for addr in served.iter().flat_map(|(_, p)| &p.backends) {
            if current.id_of(addr).is_some() || new_ids.contains_key(addr) {
                continue;
            }
            let Some(id) = free_ids.next().filter(|&id| id <= limits::MAX_BACKENDS) else {
                tracing::warn!(backend = %addr, "no backend id left");
                continue;
            };
            new_ids.insert(*addr, id);
            ops.push(MapOp::PutBackend { id, backend: *addr });
        }
        let id_of = |b: &BackendAddr| current.id_of(b).or_else(|| new_ids.get(b).copied());

        // Reverse-NAT indexes per touched address and port that some frontend is served at.
        let keys: BTreeSet<(IpAddr, u16)> = frontends.iter().map(|f| (f.address, f.port)).collect();
        let mut new_revnat: HashMap<(IpAddr, u16), u16> = HashMap::new();
        let mut free_revnat = current.revnat_ids.candidates();
        for &(frontend, _) in &served {
            let key = (frontend.address, frontend.port);
            if current.revnat_of(key.0, key.1).is_some() || new_revnat.contains_key(&key) {
                continue;
            }
            let Some(index) = free_revnat.next().and_then(|i| u16::try_from(i).ok()) else {
                tracing::warn!(%frontend, "no reverse-NAT index left");
                continue;
            };
            new_revnat.insert(key, index);
            ops.push(MapOp::PutRevNat { index, frontend });
        }
        let revnat_of = |address: IpAddr, port: u16| {
            current
                .revnat_of(address, port)
                .or_else(|| new_revnat.get(&(address, port)).copied())
        };
        for &(address, port) in &keys {
            if let (Some(index), Some(name)) =
                (revnat_of(address, port), self.name_at(address, port))
                && current.state.names.get(&index) != Some(&name)
            {
                ops.push(MapOp::PutName { index, name });
            }
        }

        let mut wanted_maglev: HashSet<(u16, Proto)> = HashSet::new();
        for &(frontend, plan) in &served {
            let Some(rev_nat_index) = revnat_of(frontend.address, frontend.port) else {
                continue;
            };
            let want = Wanted {
                frontend,
                backends: &plan.backends,
                rev_nat_index,
                affinity: plan.affinity,
                flags: plan.flags,
            };
            wanted_maglev.extend(frontend_ops(&current.state, &want, id_of, &mut ops));
        }

        for frontend in &frontends {
            if self.owners.contains_key(frontend) {
                continue;
            }
            if let Some(entry) = current.state.services.get(frontend) {
                delete_frontend_ops(*frontend, entry, &mut ops);
            }
        }

        let mut dead_maglev = BTreeSet::new();
        for frontend in &frontends {
            if let Some(index) = current.revnat_of(frontend.address, frontend.port) {
                let key = (index, frontend.proto);
                if current.state.maglev.contains_key(&key) && !wanted_maglev.contains(&key) {
                    dead_maglev.insert(key);
                }
            }
        }
        ops.extend(
            dead_maglev
                .into_iter()
                .map(|(index, proto)| MapOp::DeleteMaglev { index, proto }),
        );
        let dead_revnat: BTreeSet<u16> = keys
            .iter()
            .filter(|&&(address, port)| {
                PROTOS.iter().all(|&proto| {
                    !self.owners.contains_key(&Frontend {
                        address,
                        port,
                        proto,
                    })
                })
            })
            .filter_map(|&(address, port)| current.revnat_of(address, port))
            .collect();
        ops.extend(
            dead_revnat
                .into_iter()
                .map(|index| MapOp::DeleteRevNat { index }),
        );
        let dead_backends: BTreeSet<u32> = touched
            .backends
            .iter()
            .filter(|b| !self.retained.contains_key(b))
            .filter_map(|b| current.id_of(b))
            .collect();
        ops.extend(
            dead_backends
                .into_iter()
                .map(|id| MapOp::DeleteBackend { id }),
        );
        ops
    }
}
