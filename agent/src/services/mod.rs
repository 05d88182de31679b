//! Service load balancing: watches Services and EndpointSlices, computes the desired
//! frontend/backend set and writes the difference into the datapath's maps.
//!
//! [`plan`] is pure (desired state, diff); this module is the thin loop around it: two
//! watches feeding [`cache`], and on every change a pass (plan, diff against what the maps
//! hold, apply). What the maps hold is read from the kernel on the first pass and on every
//! [`RESYNC`], and between those carried forward in memory from the operations applied: a
//! restarted agent converges from what the kernel still holds, without flushing anything,
//! while one change costs a plan and a diff rather than a read of every map.

pub mod cache;
pub mod health;
pub mod maglev;
pub mod model;
pub mod plan;
pub mod teardown;

use std::{collections::BTreeSet, net::IpAddr, sync::Arc, time::Duration};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::time::Instant;

use crate::loader::{Datapath, MapsError};
use cache::ObjectCache;
use model::{BackendAddr, LbState, MapOp};

/// How often the maps are read back and compared with the API even without a change
/// (repairs a failed write, e.g. after a full map was drained, or an entry changed by hand).
pub const RESYNC: Duration = Duration::from_secs(30);
/// Most watch events taken into one pass: a long burst is programmed in steps rather than
/// only when it ends.
const MAX_EVENTS_PER_PASS: usize = 4096;
/// Least time between two returns of freed heap memory to the kernel.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the Service programming loop.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("a watch of {0} ended")]
    WatchEnded(&'static str),
    #[error("service maps")]
    Maps(#[source] MapsError),
}

/// Keeps the datapath's service maps equal to the API's Services and EndpointSlices.
///
/// A change is programmed as soon as it arrives when the loop is idle; changes that arrive
/// while a pass runs are all taken into the next one, so a burst is batched by the cost of a
/// pass itself and a lone change waits for nothing.
pub async fn run(
    client: kube::Client,
    dp: Arc<Datapath>,
    node: plan::NodeContext,
) -> Result<(), ServicesError> {
    let svc_watch = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let eps_watch = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut svc_watch = std::pin::pin!(svc_watch);
    let mut eps_watch = std::pin::pin!(eps_watch);
    let mut services = ObjectCache::<Service>::default();
    let mut slices = ObjectCache::<EndpointSlice>::default();
    // What the maps hold after the last pass; None: read them on the next pass.
    let mut programmed: Option<LbState> = None;
    let mut next_resync = Instant::now() + RESYNC;
    let mut dirty = false;
    let mut last_trim = Instant::now();

    // healthCheckNodePorts answer in the node's namespace, where load balancers probe them.
    let mut health = health::HealthServers::new(
        tokio::runtime::Handle::current(),
        dp.config().node_netns.as_deref(),
    );
    loop {
        tokio::select! {
            event = svc_watch.next() => {
                dirty |= take(&mut services, event, cache::slim_service, "services")?;
            }
            event = eps_watch.next() => {
                dirty |= take(&mut slices, event, cache::slim_slice, "endpointslices")?;
            }
            () = tokio::time::sleep_until(next_resync) => {
                programmed = None;
                dirty = true;
                next_resync = Instant::now() + RESYNC;
            }
        }
        // Whatever else has already arrived goes into the same pass.
        let mut taken = 1;
        while taken < MAX_EVENTS_PER_PASS {
            let mut any = false;
            if let Some(event) = svc_watch.next().now_or_never() {
                dirty |= take(&mut services, event, cache::slim_service, "services")?;
                any = true;
                taken += 1;
            }
            if let Some(event) = eps_watch.next().now_or_never() {
                dirty |= take(&mut slices, event, cache::slim_slice, "endpointslices")?;
                any = true;
                taken += 1;
            }
            if !any {
                break;
            }
        }
        // Program nothing before both caches hold a full list: a partial view would delete
        // frontends a restarted agent's maps rightly still hold.
        if !dirty || !services.is_ready() || !slices.is_ready() {
            continue;
        }
        dirty = false;
        if programmed.is_none() {
            next_resync = Instant::now() + RESYNC;
        }
        let (svcs, eps) = (services.items(), slices.items());
        if let Err(e) = reconcile_known(&dp, &mut programmed, svcs, eps, &node) {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "programming services failed; retrying");
        }
        for (port, e) in health.sync(&health::desired(svcs, eps, &node.node_name)) {
            tracing::warn!(port, error = %e, "healthCheckNodePort not served; retrying");
        }
        // A pass allocates its plan and diff afresh (megabytes at 10,000 Services) on
        // whichever runtime thread it runs, and glibc keeps the freed memory in that thread's
        // arena; handing it back after the pass keeps the agent's resident set near what it
        // actually holds.
        if last_trim.elapsed() >= TRIM_INTERVAL {
            release_free_heap();
            last_trim = Instant::now();
        }
    }
}

/// Returns the allocator's free memory to the kernel (glibc's `malloc_trim`, which also
/// releases free pages inside its heaps, not only at their tops).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes the arena locks
    // itself and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Takes one item of a watch into `cache`; returns whether the cached objects changed.
fn take<K: Resource>(
    cache: &mut ObjectCache<K>,
    event: Option<Result<watcher::Event<K>, watcher::Error>>,
    slim: fn(&mut K),
    what: &'static str,
) -> Result<bool, ServicesError> {
    match event {
        None => Err(ServicesError::WatchEnded(what)),
        Some(Ok(event)) => Ok(cache.apply(event.modify(slim))),
        Some(Err(e)) => {
            tracing::warn!(watch = what, error = %e, "watch error; retrying");
            Ok(false)
        }
    }
}

/// One pass: read the maps, plan, apply; then forget the conntrack entries of backends that
/// are gone, so their flows are balanced again.
pub fn reconcile(
    dp: &Datapath,
    services: &[Service],
    slices: &[EndpointSlice],
    node: &plan::NodeContext,
) -> Result<usize, ServicesError> {
    reconcile_known(dp, &mut None, services, slices, node)
}

/// One pass against `known`, what the maps hold (read from them when None), as the loop runs
/// it. On success `known` is what they hold afterwards; after a failed read or write it is
/// None, so the next pass reads the maps again rather than trusting a half-applied plan.
pub fn reconcile_known(
    dp: &Datapath,
    known: &mut Option<LbState>,
    services: &[Service],
    slices: &[EndpointSlice],
    node: &plan::NodeContext,
) -> Result<usize, ServicesError> {
    let mut current = match known.take() {
        Some(state) => state,
        None => dp.read_lb().map_err(ServicesError::Maps)?,
    };
    let desired = plan::desired(services, slices, node);
    let ops = plan::diff(&current, &desired);
    if ops.is_empty() {
        *known = Some(current);
        return Ok(0);
    }
    tracing::debug!(
        ops = ops.len(),
        frontends = desired.services.len(),
        "programming services"
    );
    dp.apply(&ops).map_err(ServicesError::Maps)?;
    let removed: Vec<(u32, Option<BackendAddr>)> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::DeleteBackend { id } => Some((*id, current.backends.get(id).copied())),
            _ => None,
        })
        .collect();
    plan::apply_to_state(&mut current, &ops);
    *known = Some(current);
    if removed.is_empty() {
        return Ok(ops.len());
    }
    let removed_ids: BTreeSet<u32> = removed.iter().map(|&(id, _)| id).collect();
    let purged = dp
        .with_maps(|m| m.purge_ct(&removed_ids))
        .map_err(ServicesError::Maps)?;
    if purged > 0 {
        tracing::debug!(purged, "conntrack entries of removed backends deleted");
    }
    // Sockets the socket hooks connected straight to a backend that no longer exists at all
    // (its endpoint left every EndpointSlice: the Pod is gone) would wait on a dead address;
    // they are destroyed so applications see an error at once. A backend that only stopped
    // being ready keeps its connections (KEP-1669).
    let listed: BTreeSet<IpAddr> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect();
    let gone: Vec<BackendAddr> = removed
        .iter()
        .filter_map(|&(_, addr)| addr)
        .filter(|b| !listed.contains(&b.address))
        .collect();
    if !gone.is_empty() {
        // One `ss -K` per network namespace of the node: off the programming path, so the next
        // change does not wait for it.
        let cfg = dp.config();
        let (cgroup_root, node_netns) = (cfg.cgroup_root.clone(), cfg.node_netns.clone());
        std::thread::spawn(move || {
            match teardown::destroy_connections(&cgroup_root, node_netns.as_deref(), &gone) {
                Ok(n) if n > 0 => {
                    tracing::info!(sockets = n, "connections to removed backends reset");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "resetting connections to removed backends"),
            }
        });
    }
    Ok(ops.len())
}

#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod plan_external_tests;
#[cfg(test)]
pub(crate) mod testutil;
