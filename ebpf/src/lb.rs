//! Frontend lookup and backend selection shared by the socket hooks (Cilium's
//! `lb4_lookup_service` and `lb4_select_backend_id` in spirit: master slot, then a random
//! slot), for both address families.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use keelson_common::{
    AffinityKey, AffinityValue, Backend, Backend6, DropReason, MaglevKey, ServiceKey, ServiceKey6,
    ServiceValue, limits, service_flags,
};

use crate::maps::{AFFINITY, BACKENDS, BACKENDS6, MAGLEV, SERVICES, SERVICES6};

/// The maps of one address family.
pub trait Lb {
    /// An address as the hooks see it (network byte order).
    type Addr: Copy;
    type Backend: Copy;
    fn service(address: Self::Addr, port: u16, proto: u8, slot: u16) -> Option<ServiceValue>;
    fn backend(id: u32) -> Option<Self::Backend>;
    /// The backend's address and port (network byte order).
    fn backend_addr(backend: &Self::Backend) -> (Self::Addr, u16);
}

/// IPv4: `services`, `backends`.
pub struct Lb4;
/// IPv6: `services6`, `backends6`.
pub struct Lb6;

impl Lb for Lb4 {
    type Addr = u32;
    type Backend = Backend;

    #[inline(always)]
    fn service(address: u32, port: u16, proto: u8, slot: u16) -> Option<ServiceValue> {
        // SAFETY: the value is copied out at once; entries are only replaced whole.
        unsafe { SERVICES.get(ServiceKey::new(address, port, proto, slot)) }.copied()
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<Backend> {
        // SAFETY: as above.
        unsafe { BACKENDS.get(id) }.copied()
    }

    #[inline(always)]
    fn backend_addr(backend: &Backend) -> (u32, u16) {
        (backend.address, backend.port)
    }
}

impl Lb for Lb6 {
    type Addr = [u32; 4];
    type Backend = Backend6;

    #[inline(always)]
    fn service(address: [u32; 4], port: u16, proto: u8, slot: u16) -> Option<ServiceValue> {
        // SAFETY: as above.
        unsafe { SERVICES6.get(ServiceKey6::new(address, port, proto, slot)) }.copied()
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<Backend6> {
        // SAFETY: as above.
        unsafe { BACKENDS6.get(id) }.copied()
    }

    #[inline(always)]
    fn backend_addr(backend: &Backend6) -> ([u32; 4], u16) {
        (backend.address, backend.port)
    }
}

/// The outcome of looking up a destination.
pub enum Lookup<B> {
    /// The destination is not a Service frontend: leave it alone.
    NotService,
    /// A backend was chosen for the frontend whose reverse-NAT index is given.
    Backend {
        backend_id: u32,
        backend: B,
        rev_nat_index: u16,
    },
}

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Looks up `address:port/proto` (network byte order) and picks a backend: the client's
/// previous one when the frontend has session affinity and it is still valid; else, for a
/// Maglev frontend and a flow `hash`, the table's choice; else one at random. Frontends
/// without all of `required_flags` are not Services to this caller. `client` identifies the
/// caller for affinity.
#[inline(always)]
pub fn select_backend<L: Lb>(
    address: L::Addr,
    port: u16,
    proto: u8,
    required_flags: u8,
    hash: Option<u32>,
    client: impl FnOnce() -> u64,
) -> Result<Lookup<L::Backend>, DropReason> {
    let Some(master) = L::service(address, port, proto, 0) else {
        return Ok(Lookup::NotService);
    };
    if master.flags & required_flags != required_flags {
        return Ok(Lookup::NotService);
    }
    if master.count == 0 {
        return Err(DropReason::NoBackend);
    }
    let affinity = master.flags & service_flags::AFFINITY != 0;
    let mut affinity_key = AffinityKey {
        client: 0,
        rev_nat_index: master.rev_nat_index,
        pad: [0; 6],
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if affinity {
        affinity_key.client = client();
        if let Some((backend_id, backend)) =
            affinity_backend::<L>(address, port, proto, &master, &affinity_key, now)
        {
            return Ok(Lookup::Backend {
                backend_id,
                backend,
                rev_nat_index: master.rev_nat_index,
            });
        }
    }
    if let (true, Some(hash)) = (master.flags & service_flags::MAGLEV != 0, hash) {
        let key = MaglevKey {
            rev_nat_index: master.rev_nat_index,
            proto,
            pad: 0,
        };
        let index = hash % limits::MAGLEV_TABLE_SIZE;
        // The compiler turns `%` into multiplications the verifier cannot bound; re-reading the
        // index through a volatile load keeps an explicit check the verifier does see.
        // SAFETY: a read of a local variable.
        let index = unsafe { core::ptr::read_volatile(&index) } as usize;
        if index >= limits::MAGLEV_TABLE_SIZE as usize {
            return Err(DropReason::MissingBackend);
        }
        // SAFETY: the table is read at `index` only, which is below its length.
        let table = unsafe { MAGLEV.get(key) }.ok_or(DropReason::MissingBackend)?;
        let backend_id = *table
            .backend_ids
            .get(index)
            .ok_or(DropReason::MissingBackend)?;
        let backend = L::backend(backend_id).ok_or(DropReason::MissingBackend)?;
        return Ok(Lookup::Backend {
            backend_id,
            backend,
            rev_nat_index: master.rev_nat_index,
        });
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = (random % u32::from(master.count)) as u16 + 1;
    let (backend_id, backend) = slot_backend::<L>(address, port, proto, slot)?;
    if affinity {
        let value = AffinityValue {
            backend_id,
            slot,
            pad: [0; 2],
            last_used_ns: now,
        };
        // Best effort: without the entry the next connect just picks again.
        let _ = AFFINITY.insert(affinity_key, value, u64::from(BPF_ANY));
    }
    Ok(Lookup::Backend {
        backend_id,
        backend,
        rev_nat_index: master.rev_nat_index,
    })
}

#[inline(always)]
fn slot_backend<L: Lb>(
    address: L::Addr,
    port: u16,
    proto: u8,
    slot: u16,
) -> Result<(u32, L::Backend), DropReason> {
    let slot_value = L::service(address, port, proto, slot).ok_or(DropReason::MissingBackend)?;
    let backend = L::backend(slot_value.backend_id).ok_or(DropReason::MissingBackend)?;
    Ok((slot_value.backend_id, backend))
}

/// The client's remembered backend, if the entry is fresh and the backend still holds the same
/// slot of this frontend (a changed backend set re-picks, as kube-proxy's affinity does when a
/// backend goes away).
#[inline(always)]
fn affinity_backend<L: Lb>(
    address: L::Addr,
    port: u16,
    proto: u8,
    master: &ServiceValue,
    key: &AffinityKey,
    now: u64,
) -> Option<(u32, L::Backend)> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: the pointer is a live LRU entry; the fields are plain integers, a racing update
    // at worst yields another valid backend choice.
    let (backend_id, slot, last_used) =
        unsafe { ((*entry).backend_id, (*entry).slot, (*entry).last_used_ns) };
    let timeout_ns = u64::from(master.backend_id) * NSEC_PER_SEC;
    if now.saturating_sub(last_used) > timeout_ns || slot == 0 || slot > master.count {
        return None;
    }
    let (current_id, backend) = slot_backend::<L>(address, port, proto, slot).ok()?;
    if current_id != backend_id {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Some((backend_id, backend))
}
