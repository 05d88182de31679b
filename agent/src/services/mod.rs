//! Service load balancing: watches Services and EndpointSlices, computes the desired
//! frontend/backend set and writes the difference into the datapath's maps.
//!
//! [`plan`] is pure (desired state, diff); this module is the thin loop around it: two
//! reflectors, and on every change (or every [`RESYNC`]) read the maps, diff, apply. Reading
//! the maps rather than remembering what was written makes a restarted agent converge from
//! what the kernel still holds, without flushing anything.

pub mod health;
pub mod maglev;
pub mod model;
pub mod plan;
pub mod teardown;

use std::{collections::BTreeSet, net::IpAddr, sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::Notify;

use crate::loader::{Datapath, MapsError};
use model::{BackendAddr, MapOp};

/// How often the maps are compared with the API even without a change (repairs a failed
/// write, e.g. after a full map was drained).
pub const RESYNC: Duration = Duration::from_secs(30);
/// Changes arriving this close together are applied in one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

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
pub async fn run(
    client: kube::Client,
    dp: Arc<Datapath>,
    node: plan::NodeContext,
) -> Result<(), ServicesError> {
    let notify = Arc::new(Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, eps_writer) = reflector::store::<EndpointSlice>();

    let svc_watch = reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let eps_watch = reflector(
        eps_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let mut svc_task = tokio::spawn(drive(svc_watch, notify.clone(), "services"));
    let mut eps_task = tokio::spawn(drive(eps_watch, notify.clone(), "endpointslices"));

    // Program nothing before both caches hold a full list: a partial view would delete
    // frontends a restarted agent's maps rightly still hold.
    let ready = async {
        services
            .wait_until_ready()
            .await
            .map_err(|_| ServicesError::WatchEnded("services"))?;
        slices
            .wait_until_ready()
            .await
            .map_err(|_| ServicesError::WatchEnded("endpointslices"))
    };
    tokio::select! {
        r = ready => r?,
        _ = &mut svc_task => return Err(ServicesError::WatchEnded("services")),
        _ = &mut eps_task => return Err(ServicesError::WatchEnded("endpointslices")),
    }

    // healthCheckNodePorts answer in the node's namespace, where load balancers probe them.
    let mut health = health::HealthServers::new(
        tokio::runtime::Handle::current(),
        dp.config().node_netns.as_deref(),
    );
    loop {
        if svc_task.is_finished() {
            return Err(ServicesError::WatchEnded("services"));
        }
        if eps_task.is_finished() {
            return Err(ServicesError::WatchEnded("endpointslices"));
        }
        let svcs: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        let eps: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
        if let Err(e) = reconcile(&dp, &svcs, &eps, &node) {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "programming services failed; retrying");
        }
        for (port, e) in health.sync(&health::desired(&svcs, &eps, &node.node_name)) {
            tracing::warn!(port, error = %e, "healthCheckNodePort not served; retrying");
        }
        let _ = tokio::time::timeout(RESYNC, notify.notified()).await;
        tokio::time::sleep(DEBOUNCE).await;
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
    let desired = plan::desired(services, slices, node);
    let current = dp.read_lb().map_err(ServicesError::Maps)?;
    let ops = plan::diff(&current, &desired);
    if ops.is_empty() {
        return Ok(0);
    }
    tracing::debug!(
        ops = ops.len(),
        frontends = desired.services.len(),
        "programming services"
    );
    dp.apply(&ops).map_err(ServicesError::Maps)?;
    let removed: BTreeSet<u32> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::DeleteBackend { id } => Some(*id),
            _ => None,
        })
        .collect();
    let purged = dp
        .with_maps(|m| m.purge_ct(&removed))
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
        .filter_map(|id| current.backends.get(id))
        .filter(|b| !listed.contains(&b.address))
        .copied()
        .collect();
    if !gone.is_empty() {
        let cfg = dp.config();
        match teardown::destroy_connections(&cfg.cgroup_root, cfg.node_netns.as_deref(), &gone) {
            Ok(n) if n > 0 => tracing::info!(sockets = n, "connections to removed backends reset"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "resetting connections to removed backends"),
        }
    }
    Ok(ops.len())
}

async fn drive<S, T>(stream: S, notify: Arc<Notify>, what: &'static str)
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => notify.notify_one(),
            Err(e) => tracing::warn!(watch = what, error = %e, "watch error; retrying"),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod plan_external_tests;
