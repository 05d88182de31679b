//! Per-CPU counters: drop reasons and datapath events share the `metrics` array.

use keelson_common::{Counter, DropReason};

use crate::maps::METRICS;

#[inline(always)]
fn add(index: u32, bytes: u64) {
    if let Some(cell) = METRICS.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's cell of a per-CPU array; programs run with
        // preemption disabled on one CPU, so nothing else writes it concurrently.
        unsafe {
            (*cell).packets += 1;
            (*cell).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count(counter: Counter, bytes: u64) {
    add(counter as u32, bytes);
}

#[inline(always)]
pub fn drop(reason: DropReason, bytes: u64) {
    add(reason as u32, bytes);
}
