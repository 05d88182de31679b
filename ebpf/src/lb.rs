//! Frontend lookup and backend selection shared by the socket hooks (Cilium's `lb4_lookup_service`
//! and `lb4_select_backend_id` in spirit: master slot, then a random slot).

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use keelson_common::{
    AffinityKey, AffinityValue, Backend, DropReason, ServiceKey, ServiceValue, service_flags,
};

use crate::maps::{AFFINITY, BACKENDS, SERVICES};

/// The outcome of looking up a destination.
pub enum Lookup {
    /// The destination is not a Service frontend: leave it alone.
    NotService,
    /// A backend was chosen for the frontend whose reverse-NAT index is given.
    Backend {
        backend: Backend,
        rev_nat_index: u16,
    },
}

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Looks up `address:port/proto` (network byte order) and picks a backend: the client's
/// previous one when the frontend has session affinity and it is still valid, else one at
/// random. `client` identifies the caller for affinity (its network namespace cookie).
#[inline(always)]
pub fn select_backend(
    address: u32,
    port: u16,
    proto: u8,
    client: impl FnOnce() -> u64,
) -> Result<Lookup, DropReason> {
    // SAFETY: the value is copied out at once; entries are only replaced whole by the agent.
    let master = match unsafe { SERVICES.get(ServiceKey::new(address, port, proto, 0)) } {
        Some(m) => *m,
        None => return Ok(Lookup::NotService),
    };
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
        if let Some(backend) = affinity_backend(address, port, proto, &master, &affinity_key, now) {
            return Ok(Lookup::Backend {
                backend,
                rev_nat_index: master.rev_nat_index,
            });
        }
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = (random % u32::from(master.count)) as u16 + 1;
    let (backend_id, backend) = slot_backend(address, port, proto, slot)?;
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
        backend,
        rev_nat_index: master.rev_nat_index,
    })
}

#[inline(always)]
fn slot_backend(
    address: u32,
    port: u16,
    proto: u8,
    slot: u16,
) -> Result<(u32, Backend), DropReason> {
    // SAFETY: copied out at once.
    let slot_value = match unsafe { SERVICES.get(ServiceKey::new(address, port, proto, slot)) } {
        Some(v) => *v,
        None => return Err(DropReason::MissingBackend),
    };
    // SAFETY: as above.
    match unsafe { BACKENDS.get(slot_value.backend_id) } {
        Some(b) => Ok((slot_value.backend_id, *b)),
        None => Err(DropReason::MissingBackend),
    }
}

/// The client's remembered backend, if the entry is fresh and the backend still holds the same
/// slot of this frontend (a changed backend set re-picks, as kube-proxy's affinity does when a
/// backend goes away).
#[inline(always)]
fn affinity_backend(
    address: u32,
    port: u16,
    proto: u8,
    master: &ServiceValue,
    key: &AffinityKey,
    now: u64,
) -> Option<Backend> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: the pointer is a live LRU entry; the fields are plain integers, a racing update
    // at worst yields another valid backend choice.
    let (backend_id, slot, last_used) =
        unsafe { ((*entry).backend_id, (*entry).slot, (*entry).last_used_ns) };
    let timeout_ns = u64::from(master.backend_id) * NSEC_PER_SEC;
    if now.saturating_sub(last_used) > timeout_ns || slot == 0 || slot > master.count {
        return None;
    }
    let (current_id, backend) = slot_backend(address, port, proto, slot).ok()?;
    if current_id != backend_id {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Some(backend)
}
