//! Giving the heap back after bulk writes: when the store's writer has committed many writes
//! and then goes idle, the process's free heap memory is returned to the kernel.
//!
//! Why here: a burst of writes (100,000 creates, then their deletes) passes every object
//! through many threads (the API's workers, the blocking readers, the writer), and glibc's
//! malloc keeps what they freed in per-thread arenas, holding the pages even once nothing
//! lives in them (measured: 543 MiB RSS idle after a 92,000-object create-and-delete, most of
//! it free chunks). `malloc_trim(0)` walks every arena and releases each free page
//! (`madvise(MADV_DONTNEED)`), not only the top of the main heap. The writer is the one place
//! that sees every write and knows when they stop, so it decides; the trim runs when it is
//! idle, never in the middle of a burst.

use std::time::Duration;

/// Writes after which an idle writer releases the free heap.
pub const TRIM_AFTER_WRITES: u64 = 2_000;
/// How long the writer must have been idle.
pub const TRIM_IDLE: Duration = Duration::from_secs(2);

/// Counts writes since the last release and says when the next one is due.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    since: u64,
}

impl TrimPolicy {
    /// Records `n` committed writes.
    pub fn wrote(&mut self, n: u64) {
        self.since = self.since.saturating_add(n);
    }

    /// How long to wait for the next write before releasing (None: wait forever, nothing is
    /// due).
    pub fn idle_deadline(&self) -> Option<Duration> {
        (self.since >= TRIM_AFTER_WRITES).then_some(TRIM_IDLE)
    }

    /// The writer was idle for the deadline: releases the free heap.
    pub fn idle(&mut self) {
        self.since = 0;
        release_free_heap();
    }
}

/// Returns free heap pages of every malloc arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    let start = std::time::Instant::now();
    // SAFETY: malloc_trim only walks the allocator's own free lists under its arena locks;
    // it has no preconditions and is safe to call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        took_ms = start.elapsed().as_millis(),
        "released free heap after bulk writes"
    );
}

/// Other allocators return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_due_only_after_enough_writes_and_resets() {
        let mut p = TrimPolicy::default();
        assert_eq!(p.idle_deadline(), None);
        p.wrote(TRIM_AFTER_WRITES - 1);
        assert_eq!(p.idle_deadline(), None);
        p.wrote(1);
        assert_eq!(p.idle_deadline(), Some(TRIM_IDLE));
        p.idle();
        assert_eq!(p.idle_deadline(), None);
        p.wrote(u64::MAX);
        p.wrote(u64::MAX);
        assert_eq!(p.idle_deadline(), Some(TRIM_IDLE));
    }
}
