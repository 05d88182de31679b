//! Reads the datapath's `events` ring buffer (woken by epoll through tokio's `AsyncFd`),
//! decodes each event, names it and records it in the [`FlowStore`].

use std::{sync::Arc, time::Duration};

use aya::maps::{Map, MapData, RingBuf};
use jiff::{SignedDuration, Timestamp};
use keelson_common::{FlowEvent, names, policy::verdict};
use tokio::io::unix::AsyncFd;

use super::{FlowStore, decode, names::Namer};
use crate::loader::{Datapath, sys::monotonic_ns};

/// Errors of the flows reader.
#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("cannot open the events ring buffer {path}")]
    Open {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot poll the events ring buffer")]
    Poll(#[source] std::io::Error),
}

/// Reads events until the task is dropped.
pub async fn run(
    dp: Arc<Datapath>,
    store: Arc<FlowStore>,
    namer: Arc<Namer>,
    node: String,
) -> Result<(), FlowsError> {
    let path = dp.config().pin_dir.join(names::EVENTS);
    let open_err = |source| FlowsError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_err)?;
    let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(open_err)?;
    // SAFETY: the ring buffer owns its map's fd (MapData holds it as an OwnedFd), which stays
    // open and the same until the AsyncFd, which owns the ring buffer, is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| FlowsError::Poll(e.into()))?;
    loop {
        let mut guard = fd.readable_mut().await.map_err(FlowsError::Poll)?;
        let mut batch = Vec::new();
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<FlowEvent>() {
                    // SAFETY: the programs write whole FlowEvents; the bytes are read
                    // unaligned into an owned copy before the item is released.
                    batch.push(unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>())
                    });
                }
            }
        }
        guard.clear_ready();
        // bpf_ktime_get_ns counts CLOCK_MONOTONIC; the wall clock is now minus the age.
        let (now, mono) = (Timestamp::now(), monotonic_ns());
        for event in batch {
            let age = Duration::from_nanos(mono.saturating_sub(event.time_ns));
            let time = now
                .checked_sub(SignedDuration::try_from(age).unwrap_or(SignedDuration::ZERO))
                .unwrap_or(now);
            let mut flow = decode(&event, time, &node);
            let policy = if event.verdict == verdict::ALLOWED {
                event.policy
            } else {
                0
            };
            namer.name(&dp, &mut flow, policy).await;
            store.push(flow);
        }
    }
}
