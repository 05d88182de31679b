//! What the service maps hold, with the reverse indexes an incremental diff looks things up
//! in (backend id of an address, reverse-NAT index of a frontend address and port) and the
//! free ids, all kept in step with every operation applied.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::{
    model::{BackendAddr, LbState, MapOp},
    plan::apply_to_state,
};

/// Ids from 1 upwards: the lowest free one is handed out first, as the full diff does, so
/// the maps stay dense and an incremental pass and a full one agree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdPool {
    /// Free ids below `high`.
    free: BTreeSet<u32>,
    /// One above the highest id in use (at least 1).
    high: u32,
}

impl IdPool {
    /// The pool of ids not in `used`.
    pub fn from_used(used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().filter(|&id| id != 0).collect();
        let high = used.last().map_or(1, |&id| id + 1);
        let free = (1..high).filter(|id| !used.contains(id)).collect();
        Self { free, high }
    }

    /// The free ids in the order they are handed out (never ends; the caller checks limits).
    pub fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().copied().chain(self.high.max(1)..)
    }

    fn take(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        if id >= self.high.max(1) {
            self.free.extend(self.high.max(1)..id);
            self.high = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    fn give_back(&mut self, id: u32) {
        if id == 0 || id >= self.high {
            return;
        }
        if id + 1 == self.high {
            self.high = id;
            while self.high > 1 && self.free.remove(&(self.high - 1)) {
                self.high -= 1;
            }
        } else {
            self.free.insert(id);
        }
    }
}

/// The maps' content as the agent last wrote or read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub state: LbState,
    id_of: HashMap<BackendAddr, u32>,
    revnat_of: HashMap<(IpAddr, u16), u16>,
    pub backend_ids: IdPool,
    pub revnat_ids: IdPool,
}

impl Programmed {
    pub fn new(state: LbState) -> Self {
        let mut id_of = HashMap::with_capacity(state.backends.len());
        // The lowest id stands for an address held twice, as in the full diff.
        for (&id, &addr) in &state.backends {
            id_of.entry(addr).or_insert(id);
        }
        let mut revnat_of = HashMap::with_capacity(state.revnat.len());
        for (&index, f) in &state.revnat {
            revnat_of.entry((f.address, f.port)).or_insert(index);
        }
        Self {
            backend_ids: IdPool::from_used(state.backends.keys().copied()),
            revnat_ids: IdPool::from_used(state.revnat.keys().map(|&i| u32::from(i))),
            id_of,
            revnat_of,
            state,
        }
    }

    /// The backend id of `backend`, if the maps hold it.
    pub fn id_of(&self, backend: &BackendAddr) -> Option<u32> {
        self.id_of.get(backend).copied()
    }

    /// The reverse-NAT index of a frontend address and port, if the maps hold one.
    pub fn revnat_of(&self, address: IpAddr, port: u16) -> Option<u16> {
        self.revnat_of.get(&(address, port)).copied()
    }

    /// Applies `ops` as the maps took them.
    pub fn apply(&mut self, ops: &[MapOp]) {
        for op in ops {
            match op {
                MapOp::PutBackend { id, backend } => {
                    if let Some(old) = self.state.backends.get(id)
                        && self.id_of.get(old) == Some(id)
                    {
                        self.id_of.remove(old);
                    }
                    self.id_of.entry(*backend).or_insert(*id);
                    self.backend_ids.take(*id);
                }
                MapOp::DeleteBackend { id } => {
                    if let Some(old) = self.state.backends.get(id)
                        && self.id_of.get(old) == Some(id)
                    {
                        self.id_of.remove(old);
                    }
                    self.backend_ids.give_back(*id);
                }
                MapOp::PutRevNat { index, frontend } => {
                    if let Some(old) = self.state.revnat.get(index)
                        && self.revnat_of.get(&(old.address, old.port)) == Some(index)
                    {
                        self.revnat_of.remove(&(old.address, old.port));
                    }
                    self.revnat_of
                        .entry((frontend.address, frontend.port))
                        .or_insert(*index);
                    self.revnat_ids.take(u32::from(*index));
                }
                MapOp::DeleteRevNat { index } => {
                    if let Some(old) = self.state.revnat.get(index)
                        && self.revnat_of.get(&(old.address, old.port)) == Some(index)
                    {
                        self.revnat_of.remove(&(old.address, old.port));
                    }
                    self.revnat_ids.give_back(u32::from(*index));
                }
                _ => {}
            }
            apply_to_state(&mut self.state, std::slice::from_ref(op));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_pool_hands_out_the_lowest_free_id() {
        let mut pool = IdPool::from_used([1, 2, 4, 7]);
        assert_eq!(pool.candidates().take(4).collect::<Vec<_>>(), [3, 5, 6, 8]);
        pool.take(3);
        pool.take(9);
        assert_eq!(pool.candidates().take(3).collect::<Vec<_>>(), [5, 6, 8]);
        pool.give_back(9);
        pool.give_back(7);
        // 7, 8 and 9 are all free again: the pool shrinks back to 4.
        assert_eq!(pool, IdPool::from_used([1, 2, 3, 4]));
        pool.give_back(1);
        assert_eq!(pool.candidates().take(2).collect::<Vec<_>>(), [1, 5]);
        let empty = IdPool::default();
        assert_eq!(empty.candidates().next(), Some(1));
    }
}
