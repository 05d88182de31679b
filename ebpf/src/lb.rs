//! Frontend lookup and backend selection shared by the socket hooks (Cilium's `lb4_lookup_service`
//! and `lb4_select_backend_id` in spirit: master slot, then a random slot).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use keelson_common::{Backend, DropReason, ServiceKey};

use crate::maps::{BACKENDS, SERVICES};

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

/// Looks up `address:port/proto` (network byte order) and picks a backend at random.
#[inline(always)]
pub fn select_backend(address: u32, port: u16, proto: u8) -> Result<Lookup, DropReason> {
    // SAFETY: the value is copied out at once; entries are only replaced whole by the agent.
    let master = match unsafe { SERVICES.get(ServiceKey::new(address, port, proto, 0)) } {
        Some(m) => *m,
        None => return Ok(Lookup::NotService),
    };
    if master.count == 0 {
        return Err(DropReason::NoBackend);
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = (random % u32::from(master.count)) as u16 + 1;
    // SAFETY: as above, copied out at once.
    let slot_value = match unsafe { SERVICES.get(ServiceKey::new(address, port, proto, slot)) } {
        Some(v) => *v,
        None => return Err(DropReason::MissingBackend),
    };
    // SAFETY: as above.
    let backend = match unsafe { BACKENDS.get(slot_value.backend_id) } {
        Some(b) => *b,
        None => return Err(DropReason::MissingBackend),
    };
    Ok(Lookup::Backend {
        backend,
        rev_nat_index: master.rev_nat_index,
    })
}
