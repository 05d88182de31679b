//! Service load balancing: watches Services and EndpointSlices, computes the desired
//! frontend/backend set and writes the difference into the datapath's maps.
//!
//! [`plan`] is pure (one Service's plan, the full diff), [`index`] keeps the plans and diffs
//! incrementally; [`Programmer`] is the state between passes and this module's loop the thin
//! part around it: two watches feeding it, and on every change a pass. A pass re-plans only
//! the Services whose objects changed and diffs only what their plans touched, against what
//! the maps hold, which is read from the kernel on the first pass and on every [`RESYNC`] (a
//! full diff then) and carried forward in memory from the operations applied in between: a
//! restarted agent converges from what the kernel still holds, without flushing anything,
//! while one change costs the same at any number of Services.

pub mod cache;
pub mod health;
pub mod index;
pub mod input;
pub mod maglev;
pub mod model;
pub mod plan;
pub mod programmed;
pub mod sockdiag;
pub mod teardown;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::time::Instant;

use crate::loader::{Datapath, MapsError};
use cache::ObjectCache;
use index::{DesiredIndex, Touched};
use input::{ObjectKey, ServiceInput, SliceInput};
use model::{BackendAddr, MapOp};
use programmed::Programmed;

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

impl From<crate::watch::WatchEnded> for ServicesError {
    fn from(e: crate::watch::WatchEnded) -> Self {
        Self::WatchEnded(e.0)
    }
}

/// Everything the Service programming keeps between passes: the planner's input, the plans,
/// what the maps hold, and which Services changed since the last pass.
#[derive(Debug)]
pub struct Programmer {
    node: plan::NodeContext,
    services: ObjectCache<ServiceInput>,
    slices: ObjectCache<SliceInput>,
    /// The slices of each Service, by the slice's Service label.
    slices_of: HashMap<ObjectKey, HashSet<ObjectKey>>,
    /// Services to plan again on the next pass.
    dirty: HashSet<ObjectKey>,
    index: DesiredIndex,
    /// What the maps hold after the last pass; None: read them on the next pass.
    programmed: Option<Programmed>,
}

impl Programmer {
    pub fn new(node: plan::NodeContext) -> Self {
        Self {
            node,
            services: ObjectCache::default(),
            slices: ObjectCache::default(),
            slices_of: HashMap::new(),
            dirty: HashSet::new(),
            index: DesiredIndex::default(),
            programmed: None,
        }
    }

    /// Takes one event of the Service watch; returns whether a pass has work.
    pub fn service_event(&mut self, event: watcher::Event<Service>) -> bool {
        let dirty = &mut self.dirty;
        self.services
            .apply(event, ServiceInput::from_service, |key, _, _| {
                dirty.insert(key.clone());
            })
    }

    /// Takes one event of the EndpointSlice watch; returns whether a pass has work.
    pub fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) -> bool {
        let node_name = self.node.node_name.as_str();
        let (dirty, slices_of) = (&mut self.dirty, &mut self.slices_of);
        self.slices.apply(
            event,
            |s| Some(SliceInput::from_slice(s, node_name)),
            |key, old, new| {
                for (slice, present) in [(old, false), (new, true)] {
                    let Some(service) = slice.and_then(|s| s.service.as_ref()) else {
                        continue;
                    };
                    dirty.insert(service.clone());
                    let of = slices_of.entry(service.clone()).or_default();
                    if present {
                        of.insert(key.clone());
                    } else {
                        of.remove(key);
                        if of.is_empty() {
                            slices_of.remove(service);
                        }
                    }
                }
            },
        )
    }

    /// Takes complete lists of Services and EndpointSlices, as the watches' first lists.
    pub fn load(
        &mut self,
        services: impl IntoIterator<Item = Service>,
        slices: impl IntoIterator<Item = EndpointSlice>,
    ) {
        self.service_event(watcher::Event::Init);
        for s in services {
            self.service_event(watcher::Event::InitApply(s));
        }
        self.service_event(watcher::Event::InitDone);
        self.slice_event(watcher::Event::Init);
        for s in slices {
            self.slice_event(watcher::Event::InitApply(s));
        }
        self.slice_event(watcher::Event::InitDone);
    }

    /// Both watches have delivered a complete list: programming before that would delete
    /// frontends a restarted agent's maps rightly still hold.
    pub fn is_ready(&self) -> bool {
        self.services.is_ready() && self.slices.is_ready()
    }

    /// Makes the next pass read the maps back and diff everything.
    pub fn resync(&mut self) {
        self.programmed = None;
    }

    /// Whether the next pass reads the maps back.
    pub fn needs_read(&self) -> bool {
        self.programmed.is_none()
    }

    /// The healthCheckNodePort servers the Services ask for.
    pub fn health(&self) -> BTreeMap<u16, health::HealthEntry> {
        health::desired_of(self.services.iter(), |key| {
            health::local_ready_endpoints(
                self.slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| self.slices.get(s)),
            )
        })
    }

    /// Plans again the Services whose objects changed since the last pass; returns what
    /// their plans touched.
    fn replan(&mut self) -> Touched {
        let mut touched = Touched::default();
        for key in std::mem::take(&mut self.dirty) {
            let plan = self.services.get(&key).and_then(|svc| {
                let own: Vec<&SliceInput> = self
                    .slices_of
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| self.slices.get(s))
                    .collect();
                plan::plan_service(svc, &own, &self.node)
            });
            self.index.set(&key, plan, &mut touched);
        }
        touched
    }

    /// One pass: plan the Services that changed, diff, apply; then forget the conntrack
    /// entries of backends that are gone, so their flows are balanced again. Returns the
    /// number of map operations written.
    ///
    /// On a failed read or write, what the maps hold is read again on the next pass rather
    /// than trusted from a half-applied plan.
    pub async fn pass(&mut self, dp: &Datapath) -> Result<usize, ServicesError> {
        let touched = self.replan();
        let (mut current, ops) = match self.programmed.take() {
            Some(current) if touched.is_empty() => (current, Vec::new()),
            Some(current) => {
                let ops = self.index.diff(&current, &touched);
                (current, ops)
            }
            None => {
                let read = dp.maps().run(|m| m.read_lb()).await;
                let current = Programmed::new(read.map_err(ServicesError::Maps)?);
                let ops = plan::diff(&current.state, &self.index.to_desired_state());
                (current, ops)
            }
        };
        if ops.is_empty() {
            self.programmed = Some(current);
            return Ok(0);
        }
        tracing::debug!(
            ops = ops.len(),
            services = self.index.len(),
            "programming services"
        );
        let removed: Vec<(u32, Option<BackendAddr>)> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::DeleteBackend { id } => Some((*id, current.state.backends.get(id).copied())),
                _ => None,
            })
            .collect();
        let written = ops.len();
        current.apply(&ops);
        dp.program(ops).await.map_err(ServicesError::Maps)?;
        self.programmed = Some(current);
        if !removed.is_empty() {
            self.forget_removed(dp, &removed).await?;
        }
        Ok(written)
    }

    async fn forget_removed(
        &self,
        dp: &Datapath,
        removed: &[(u32, Option<BackendAddr>)],
    ) -> Result<(), ServicesError> {
        let removed_ids: BTreeSet<u32> = removed.iter().map(|&(id, _)| id).collect();
        let purged = dp
            .maps()
            .run(move |m| m.purge_ct(&removed_ids))
            .await
            .map_err(ServicesError::Maps)?;
        if purged > 0 {
            tracing::debug!(purged, "conntrack entries of removed backends deleted");
        }
        // Sockets the socket hooks connected straight to a removed backend would wait on an
        // address nobody serves: a backend is removed once no EndpointSlice lists its address
        // for its port and protocol, whatever the conditions (the Pod is gone, or no longer
        // serves that port), so they are destroyed and applications see an error at once. A
        // backend that only stopped being ready is still listed and keeps its connections
        // (KEP-1669); so is one that another Service lists for the same port and protocol.
        // Other Services listing the address for other ports do not keep it: a UDP socket to
        // a deleted Pod must not wait for the slices of the Pod's TCP-only Services.
        let gone: Vec<BackendAddr> = removed.iter().filter_map(|&(_, addr)| addr).collect();
        if gone.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }
}

/// Keeps the datapath's service maps equal to the API's Services and EndpointSlices.
///
/// A change is programmed as soon as it arrives when the loop is idle; changes that arrive
/// while a pass runs are all taken into the next one, so a burst is batched by the cost of a
/// pass itself and a lone change waits for nothing.
///
/// `synced` turns true after the first pass that programmed the initial lists: the Pods of
/// this node start only then (see `node::pods::run`).
pub async fn run(
    client: kube::Client,
    dp: Arc<Datapath>,
    node: plan::NodeContext,
    synced: tokio::sync::watch::Sender<bool>,
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
    let mut programmer = Programmer::new(node);
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
                dirty |= crate::watch::take(event, "services", |e| programmer.service_event(e))?;
            }
            event = eps_watch.next() => {
                dirty |= crate::watch::take(event, "endpointslices", |e| programmer.slice_event(e))?;
            }
            () = tokio::time::sleep_until(next_resync) => {
                programmer.resync();
                dirty = true;
                next_resync = Instant::now() + RESYNC;
            }
        }
        // Whatever else has already arrived goes into the same pass.
        let mut taken = 1;
        while taken < MAX_EVENTS_PER_PASS {
            let mut any = false;
            if let Some(event) = svc_watch.next().now_or_never() {
                dirty |= crate::watch::take(event, "services", |e| programmer.service_event(e))?;
                any = true;
                taken += 1;
            }
            if let Some(event) = eps_watch.next().now_or_never() {
                dirty |=
                    crate::watch::take(event, "endpointslices", |e| programmer.slice_event(e))?;
                any = true;
                taken += 1;
            }
            if !any {
                break;
            }
        }
        if !dirty || !programmer.is_ready() {
            continue;
        }
        dirty = false;
        if programmer.needs_read() {
            next_resync = Instant::now() + RESYNC;
        }
        match programmer.pass(&dp).await {
            Ok(_) => {
                if !*synced.borrow() {
                    tracing::info!("services programmed from the initial lists");
                    synced.send_replace(true);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "programming services failed; retrying");
            }
        }
        for (port, e) in health.sync(&programmer.health()) {
            tracing::warn!(port, error = %e, "healthCheckNodePort not served; retrying");
        }
        // A pass allocates its plan and diff (megabytes after a start or a resync, when every
        // Service is planned) on whichever runtime thread it runs, and glibc keeps the freed
        // memory in that thread's arena; handing it back keeps the agent's resident set near
        // what it actually holds.
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

/// One full pass from nothing but the objects: read the maps, plan every Service, apply.
/// Blocks the calling thread (tools and tests; the agent runs [`run`]).
pub fn reconcile(
    dp: &Datapath,
    services: &[Service],
    slices: &[EndpointSlice],
    node: &plan::NodeContext,
) -> Result<usize, ServicesError> {
    let mut programmer = Programmer::new(node.clone());
    programmer.load(services.iter().cloned(), slices.iter().cloned());
    futures::executor::block_on(programmer.pass(dp))
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod plan_external_tests;
#[cfg(test)]
pub(crate) mod testutil;
