//! The machinery under every controller loop: informers (kube-runtime's watcher and reflector
//! store plus event handlers), shared per kind by every controller ([`Informers`]), the
//! [`Controller`] trait each controller module implements to wire itself, a deduplicating work
//! queue, creation/deletion expectations and the worker that drives a reconciler with retries.
//! Nothing here knows a controller's semantics.
//!
//! kube-runtime's `Controller` is not used for the loops: it calls its reconciler only with
//! objects its store still holds, while these controllers reconcile deleted owners
//! (expectations to forget, dependents to collect) and keys that name no object (the garbage
//! collector's sweep); it runs reconciles of different objects concurrently, where node and
//! LoadBalancer IPAM rely on one key at a time; and sharing one watch per kind between
//! controllers takes its `unstable-runtime` streams. Its watcher, reflector stores and backoff
//! are what [`Informer`] runs on.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

use super::ControllerError;

/// What an informer tells its handlers.
#[derive(Debug)]
pub enum Touch<'a, K> {
    /// The object was added or modified (the store already holds this version).
    Changed(&'a K),
    /// The object was deleted (the store no longer holds it).
    Deleted(&'a K),
    /// The watch was re-listed: the store now holds exactly these objects. Objects deleted while
    /// the watch was down produce no `Deleted`, so handlers re-enqueue everything here.
    Relisted(&'a [Arc<K>]),
}

type Handler<K> = Box<dyn Fn(Touch<'_, K>) + Send + Sync>;

/// A reflector store fed by a watch, with handlers called after the store has applied each
/// event, so a handler (and the work it enqueues) never sees a store older than the event.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    handlers: Vec<Handler<K>>,
}

impl<K> Debug for Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &K::kind(&()))
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer over `api` (all namespaces or one).
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        Self {
            api,
            config,
            writer,
            store,
            handlers: Vec::new(),
        }
    }

    /// A reader of the store; it becomes ready after the first list.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Registers a handler, called for every event after the store applied it.
    pub fn on(&mut self, handler: impl Fn(Touch<'_, K>) + Send + Sync + 'static) {
        self.handlers.push(Box::new(handler));
    }

    /// Watches forever: watch errors are logged and retried with backoff.
    pub async fn run(self) -> Result<(), ControllerError> {
        let kind = K::kind(&()).to_string();
        let Self {
            api,
            config,
            writer,
            store,
            handlers,
        } = self;
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Event::Apply(obj)) => {
                    for h in &handlers {
                        h(Touch::Changed(&obj));
                    }
                }
                // Objects of a (re)list reach the handlers together, as one Relisted at InitDone.
                Ok(Event::InitApply(_)) | Ok(Event::Init) => {}
                Ok(Event::Delete(obj)) => {
                    for h in &handlers {
                        h(Touch::Deleted(&obj));
                    }
                }
                Ok(Event::InitDone) => {
                    let all = store.state();
                    tracing::debug!(kind, objects = all.len(), "informer listed");
                    for h in &handlers {
                        h(Touch::Relisted(&all));
                    }
                }
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
            }
        }
        Err(ControllerError::WatchEnded(kind))
    }
}

/// An [`Informer`] of any kind, as [`Informers`] keeps them.
trait AnyInformer: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn ready(&self) -> BoxFuture<'static, bool>;
    fn run(self: Box<Self>) -> BoxFuture<'static, Result<(), ControllerError>>;
}

impl<K> AnyInformer for Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn ready(&self) -> BoxFuture<'static, bool> {
        let store = self.store();
        Box::pin(async move { store.wait_until_ready().await.is_ok() })
    }

    fn run(self: Box<Self>) -> BoxFuture<'static, Result<(), ControllerError>> {
        Box::pin((*self).run())
    }
}

/// The informers of every controller: one per kind (and namespace, for a kind watched in one
/// namespace only), made when a controller first asks for it, so a kind is watched once however
/// many controllers read it.
pub struct Informers {
    client: kube::Client,
    informers: Vec<(InformerKey, Box<dyn AnyInformer>)>,
}

/// An informer's kind and namespace (None: all namespaces), with the kind's name for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InformerKey {
    kind: TypeId,
    namespace: Option<String>,
    name: String,
}

impl Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.informers.iter().map(|(k, _)| (&k.name, &k.namespace)))
            .finish()
    }
}

impl Informers {
    /// No informer yet; they watch through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            informers: Vec::new(),
        }
    }

    /// The client the informers (and the controllers) use.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The informer of every `K` of the cluster (all namespaces).
    pub fn all<K>(&mut self) -> &mut Informer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.get(None, |c| Api::all(c))
    }

    /// The informer of the `K`s of namespace `ns`.
    pub fn namespaced<K>(&mut self, ns: &str) -> &mut Informer<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        self.get(Some(ns), |c| Api::namespaced(c, ns))
    }

    fn get<K>(
        &mut self,
        ns: Option<&str>,
        api: impl FnOnce(kube::Client) -> Api<K>,
    ) -> &mut Informer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let key = InformerKey {
            kind: TypeId::of::<K>(),
            namespace: ns.map(str::to_string),
            name: K::kind(&()).to_string(),
        };
        let at = match self.informers.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                let informer = Informer::new(api(self.client.clone()), watcher::Config::default());
                self.informers.push((key, Box::new(informer)));
                self.informers.len() - 1
            }
        };
        self.informers[at]
            .1
            .as_any()
            .downcast_mut::<Informer<K>>()
            .expect("an informer is keyed by its own kind")
    }

    /// Starts every informer on `tasks`; the future returned resolves once every store has
    /// listed (false if one never will).
    fn start(
        self,
        tasks: &mut tokio::task::JoinSet<(String, Result<(), ControllerError>)>,
    ) -> BoxFuture<'static, bool> {
        let ready: Vec<BoxFuture<'static, bool>> =
            self.informers.iter().map(|(_, i)| i.ready()).collect();
        for (key, informer) in self.informers {
            let name = format!("{} informer", key.name);
            tasks.spawn(async move { (name, informer.run().await) });
        }
        Box::pin(async move {
            for r in ready {
                if !r.await {
                    return false;
                }
            }
            true
        })
    }
}

/// A controller: what it watches, how changes of watched objects map to its keys, and the
/// reconciler that takes them. Each controller module implements it; [`Runner`] runs them.
pub trait Controller {
    /// Its name in logs.
    const NAME: &'static str;
    /// The reconciler its keys go to.
    type Loop: Reconciler + 'static;
    /// Registers, on the shared informers, the handlers mapping changes to keys of `queue`,
    /// and returns the reconciler over their stores.
    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> Self::Loop;
}

/// Runs controllers over shared informers: each gets its own work queue and worker, and the
/// workers start once every store has listed, so no plan runs on a partial view (the garbage
/// collector's above all).
pub struct Runner {
    informers: Informers,
    workers: Vec<(
        &'static str,
        BoxFuture<'static, Result<(), ControllerError>>,
    )>,
}

impl Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("informers", &self.informers)
            .field(
                "controllers",
                &self.workers.iter().map(|w| w.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Runner {
    /// No controller yet.
    pub fn new(client: kube::Client) -> Self {
        Self {
            informers: Informers::new(client),
            workers: Vec::new(),
        }
    }

    /// Wires `controller` in.
    pub fn add<C: Controller>(&mut self, controller: C) -> &mut Self {
        let queue = WorkQueue::default();
        let worker = controller.wire(&mut self.informers, &queue);
        self.workers
            .push((C::NAME, Box::pin(run_worker(C::NAME, queue, worker))));
        self
    }

    /// Runs every informer and controller until one stops (an error, or a bug: none ends by
    /// itself).
    pub async fn run(self) -> Result<(), ControllerError> {
        let mut tasks = tokio::task::JoinSet::new();
        let ready = self.informers.start(&mut tasks).shared();
        for (name, worker) in self.workers {
            let ready = ready.clone();
            tasks.spawn(async move {
                if !ready.await {
                    // An informer stopped before listing; its task reports why.
                    futures::future::pending::<()>().await;
                }
                (format!("{name} controller"), worker.await)
            });
        }
        match tasks.join_next().await {
            Some(Ok((name, Err(e)))) => {
                tracing::error!(task = name, error = %e, "controller task failed");
                Err(e)
            }
            Some(Ok((name, Ok(())))) => Err(ControllerError::Stopped { name, source: None }),
            Some(Err(e)) => Err(ControllerError::Stopped {
                name: "controller task".into(),
                source: Some(e),
            }),
            None => Err(ControllerError::Stopped {
                name: "controllers".into(),
                source: None,
            }),
        }
    }
}

/// The key of the owner of kind `kind` that controls `meta` (its controller ownerReference).
pub fn controller_key(meta: &ObjectMeta, kind: &str) -> Option<String> {
    let r = super::objects::controller_ref(meta).filter(|r| r.kind == kind)?;
    Some(format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        r.name
    ))
}

/// `namespace/name` (or `name` for cluster-scoped objects): the key of work queues.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    let name = meta.name.clone().unwrap_or_default();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// Splits a key made by [`key_of`] into (namespace, name).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// A deduplicating FIFO of keys with one consumer: a key queued twice before it is taken is
/// reconciled once, which is what makes a burst of events cost one reconcile.
#[derive(Clone, Debug, Default)]
pub struct WorkQueue {
    inner: Arc<QueueInner>,
}

#[derive(Debug, Default)]
struct QueueInner {
    state: Mutex<QueueState>,
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    order: VecDeque<String>,
    queued: HashSet<String>,
}

impl WorkQueue {
    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        {
            let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.queued.insert(key.clone()) {
                st.order.push_back(key);
            }
        }
        self.inner.notify.notify_one();
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    fn try_pop(&self) -> Option<String> {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = st.order.pop_front()?;
        st.queued.remove(&key);
        Some(key)
    }

    /// Waits for the next key. Only one task may consume a queue.
    pub async fn next(&self) -> String {
        loop {
            if let Some(k) = self.try_pop() {
                return k;
            }
            self.inner.notify.notified().await;
        }
    }

    /// Number of keys waiting (for tests and logs).
    pub fn len(&self) -> usize {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order
            .len()
    }

    /// True when no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a reconcile asks of the worker when it succeeds.
pub type Requeue = Option<Duration>;

/// One controller's reconcile step, called with a queue key.
pub trait Reconciler: Send {
    /// Reconciles the object named by `key`; `Ok(Some(d))` asks to be called again after `d`.
    fn reconcile(&mut self, key: &str)
    -> impl Future<Output = Result<Requeue, kube::Error>> + Send;
}

/// True for API errors worth retrying quickly: a write raced another (409) or an object we
/// expected is not visible yet (404).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// True when the API answered 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Deletes `name` with background propagation (its dependents are collected afterwards).
/// `Ok(false)` when it was already gone: someone else deleting it first is no error.
pub async fn delete_background<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when the API answered 409 AlreadyExists.
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// True when a create was refused because its namespace is being deleted (Kubernetes'
/// `NamespaceTerminatingCause`; controllers drop such errors instead of retrying).
pub fn is_namespace_terminating(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            s.details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
                || s.message.contains("because it is being terminated")
        }
        _ => false,
    }
}

/// Delay before retrying a key that failed `failures` times in a row: conflicts are the normal
/// outcome of optimistic concurrency and retry fast; other errors back off to 30 s.
pub fn retry_delay(failures: u32, conflict: bool) -> Duration {
    let base = if conflict { 20 } else { 200 };
    let ms = base * 2u64.saturating_pow(failures.min(10));
    Duration::from_millis(ms.min(30_000))
}

/// Drives `reconciler` with the keys of `queue` forever. Errors are logged and the key retried
/// with backoff; they never stop the loop, so one bad object cannot stall a controller.
pub async fn run_worker<R: Reconciler>(
    name: &'static str,
    queue: WorkQueue,
    mut reconciler: R,
) -> Result<(), ControllerError> {
    tracing::debug!(controller = name, queued = queue.len(), "worker started");
    let mut failures: HashMap<String, u32> = HashMap::new();
    loop {
        let key = queue.next().await;
        tracing::trace!(controller = name, key, "reconciling");
        match reconciler.reconcile(&key).await {
            Ok(requeue) => {
                failures.remove(&key);
                if let Some(d) = requeue {
                    queue.add_after(key, d);
                }
            }
            Err(e) if is_namespace_terminating(&e) => {
                // The namespace controller is deleting the owner too; nothing to retry.
                failures.remove(&key);
                tracing::debug!(controller = name, key, error = %e, "namespace terminating; dropped");
            }
            Err(e) => {
                let n = failures.entry(key.clone()).or_insert(0);
                let conflict = is_conflict(&e) || is_not_found(&e);
                let delay = retry_delay(*n, conflict);
                *n += 1;
                if conflict {
                    tracing::debug!(controller = name, key, error = %e, "conflict; retrying");
                } else {
                    tracing::warn!(controller = name, key, error = %e, ?delay, "reconcile failed; retrying");
                }
                queue.add_after(key, delay);
            }
        }
    }
}

/// What the store must show before an owner's next reconcile can trust it: objects this
/// controller created must be visible and objects it deleted must be gone (or terminating).
/// Without this, a reconcile running on a store that lags its own writes would create or delete
/// twice (Kubernetes' controller "expectations"). Expectations expire so a lost event cannot
/// stall an owner forever.
#[derive(Debug, Default)]
pub struct Expectations {
    owners: HashMap<String, Expected>,
}

#[derive(Debug)]
struct Expected {
    present: HashSet<String>,
    gone: HashSet<String>,
    deadline: Instant,
}

/// What a store shows of one object, for [`Expectations::satisfied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the store.
    Absent,
    /// In the store with a deletionTimestamp.
    Terminating,
    /// In the store and not being deleted.
    Live,
}

/// How long an expectation holds before it is dropped (Kubernetes uses 5 minutes; a local
/// control plane delivers events in milliseconds, so a shorter bound recovers sooner from a
/// lost event).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Expectations {
    /// Records that `owner` created `present` and deleted `gone`.
    pub fn expect(
        &mut self,
        owner: &str,
        present: impl IntoIterator<Item = String>,
        gone: impl IntoIterator<Item = String>,
    ) {
        let e = self
            .owners
            .entry(owner.to_string())
            .or_insert_with(|| Expected {
                present: HashSet::new(),
                gone: HashSet::new(),
                deadline: Instant::now() + EXPECTATION_TTL,
            });
        e.present.extend(present);
        e.gone.extend(gone);
        e.deadline = Instant::now() + EXPECTATION_TTL;
    }

    /// True when the store shows every expected effect for `owner` (then the record is dropped).
    pub fn satisfied(&mut self, owner: &str, seen: impl Fn(&str) -> Seen) -> bool {
        let Some(e) = self.owners.get_mut(owner) else {
            return true;
        };
        e.present.retain(|n| seen(n) == Seen::Absent);
        e.gone.retain(|n| seen(n) == Seen::Live);
        if (e.present.is_empty() && e.gone.is_empty()) || Instant::now() >= e.deadline {
            self.owners.remove(owner);
            return true;
        }
        false
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&mut self, owner: &str) {
        self.owners.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_deduplicates_and_keeps_order() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop().as_deref(), Some("a"));
        q.add("a");
        assert_eq!(q.try_pop().as_deref(), Some("b"));
        assert_eq!(q.try_pop().as_deref(), Some("a"));
        assert!(q.is_empty());
    }

    #[test]
    fn expectations_wait_for_creates_and_deletes() {
        let mut ex = Expectations::default();
        ex.expect("ns/rs", ["p1".to_string()], ["p2".to_string()]);
        let p1_absent = |n: &str| if n == "p1" { Seen::Absent } else { Seen::Live };
        assert!(
            !ex.satisfied("ns/rs", p1_absent),
            "p1 not visible, p2 not gone"
        );
        assert!(!ex.satisfied("ns/rs", |_| Seen::Live), "p2 not gone yet");
        assert!(ex.satisfied("ns/rs", |n| if n == "p1" {
            Seen::Live
        } else {
            Seen::Terminating
        }));
        assert!(ex.satisfied("ns/other", |_| Seen::Absent));
    }

    #[test]
    fn retry_delay_grows_and_is_bounded() {
        assert!(retry_delay(0, true) < retry_delay(0, false));
        assert!(retry_delay(3, false) > retry_delay(1, false));
        assert_eq!(retry_delay(50, false), Duration::from_secs(30));
    }
}
