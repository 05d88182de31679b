//! The scheduler's loop, as kube-scheduler runs it: watches of Pods and Nodes feed events to
//! one thread that owns the [`Cache`] and the [`SchedulingQueue`]; for each Pod it takes from
//! the queue it runs the pure [`schedule`], assumes the Pod on the chosen Node in the cache and
//! hands the binding to an async binder with several bindings in flight, so the next Pod is
//! scheduled without waiting for the last one's write. A failed binding comes back as an
//! event: the assumption is forgotten and the Pod requeued with back-off
//! (`pkg/scheduler/schedule_one.go`: `assume`, `bindingCycle`, `handleBindingCycleError`).

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc as amsc};
use tokio::task::JoinSet;

use super::cache::Cache;
use super::queue::SchedulingQueue;
use super::{Cursor, Decision, SchedulerError, is_pending, schedule, unschedulable_condition};
use crate::controllers::runtime::{is_conflict, is_not_found};

/// Bindings written at once. kube-scheduler runs each binding cycle in its own goroutine,
/// bounded only by its client's rate limit; a bound keeps a burst from opening a connection
/// per Pod.
pub const BIND_CONCURRENCY: usize = 64;

/// What the scheduling thread learns.
#[derive(Debug)]
enum Event {
    Pod(Arc<Pod>),
    PodDeleted(Arc<Pod>),
    /// A (re)list of Pods ended; these uids are all there is.
    PodsListed(HashSet<String>),
    Node(Arc<Node>),
    NodeDeleted(Arc<Node>),
    /// A (re)list of Nodes ended; these names are all there is.
    NodesListed(HashSet<String>),
    /// The binding of this Pod failed; `retry` unless the API said it is bound or gone.
    BindFailed {
        pod: Arc<Pod>,
        retry: bool,
    },
}

/// What the scheduling thread asks the binder to write.
#[derive(Debug)]
enum Action {
    Bind { pod: Arc<Pod>, node: String },
    Unschedulable { pod: Arc<Pod>, message: String },
}

/// The state the scheduling thread owns.
struct Worker {
    cache: Cache,
    queue: SchedulingQueue,
    cursor: Cursor,
    actions: amsc::UnboundedSender<Action>,
    pods_listed: bool,
    nodes_listed: bool,
    announced: bool,
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

impl Worker {
    fn apply(&mut self, e: Event) {
        match e {
            Event::Pod(p) => {
                if self.cache.set_pod(&p) {
                    self.queue.move_all_to_active();
                }
                let id = uid(&p);
                if !is_pending(&p) {
                    self.queue.remove(id);
                } else if !self.cache.is_assumed(id) {
                    self.queue.add(p);
                }
            }
            Event::PodDeleted(p) => {
                self.queue.remove(uid(&p));
                if self.cache.remove_pod(&p) {
                    self.queue.move_all_to_active();
                }
            }
            Event::PodsListed(uids) => {
                self.queue.retain(&uids);
                if self.cache.retain_pods(&uids) {
                    self.queue.move_all_to_active();
                }
                self.pods_listed = true;
            }
            Event::Node(n) => {
                if self.cache.set_node(n) {
                    self.queue.move_all_to_active();
                }
            }
            Event::NodeDeleted(n) => {
                self.cache
                    .remove_node(n.metadata.name.as_deref().unwrap_or_default());
            }
            Event::NodesListed(names) => {
                self.cache.retain_nodes(&names);
                self.queue.move_all_to_active();
                self.nodes_listed = true;
            }
            Event::BindFailed { pod, retry } => {
                if self.cache.forget(uid(&pod)) {
                    self.queue.move_all_to_active();
                }
                if retry {
                    self.queue.back_off(pod, Instant::now());
                }
            }
        }
    }

    /// Schedules one Pod; false when the binder is gone.
    fn schedule_one(&mut self, pod: Arc<Pod>) -> bool {
        let id = uid(&pod).to_string();
        if !is_pending(&pod) || self.cache.is_assumed(&id) {
            self.queue.remove(&id);
            return true;
        }
        let action = match schedule(&pod, self.cache.nodes(), &mut self.cursor) {
            Decision::Bind(node) => {
                self.cache.assume(&pod, &node);
                self.queue.remove(&id);
                Action::Bind { pod, node }
            }
            Decision::Unschedulable(message) => {
                self.queue.mark_unschedulable(&id, Instant::now());
                Action::Unschedulable { pod, message }
            }
        };
        self.actions.send(action).is_ok()
    }

    /// Runs until the event senders or the binder are gone.
    fn run(mut self, events: mpsc::Receiver<Event>) {
        loop {
            loop {
                match events.try_recv() {
                    Ok(e) => self.apply(e),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            if self.pods_listed && self.nodes_listed {
                if !self.announced {
                    self.announced = true;
                    tracing::info!(
                        nodes = self.cache.nodes().len(),
                        pending = self.queue.len(),
                        "scheduler started"
                    );
                }
                if let Some(pod) = self.queue.pop(now) {
                    if !self.schedule_one(pod) {
                        return;
                    }
                    continue;
                }
            }
            let wait = self
                .queue
                .next_wakeup()
                .map_or(Duration::from_secs(60), |at| {
                    at.saturating_duration_since(now)
                });
            match events.recv_timeout(wait) {
                Ok(e) => self.apply(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Forwards a watch of `api` to the scheduling thread: objects as `on_apply`, deletions as
/// `on_delete`, and the keys (by `key`) of each complete (re)list as `on_listed`.
async fn forward<K>(
    api: Api<K>,
    events: mpsc::Sender<Event>,
    key: fn(&K) -> String,
    on_apply: fn(Arc<K>) -> Event,
    on_delete: fn(Arc<K>) -> Event,
    on_listed: fn(HashSet<String>) -> Event,
) -> Result<(), SchedulerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::kind(&()).to_string();
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listing = HashSet::new();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(WatchEvent::Init) => {
                listing.clear();
                continue;
            }
            Ok(WatchEvent::InitApply(o)) => {
                listing.insert(key(&o));
                on_apply(Arc::new(o))
            }
            Ok(WatchEvent::InitDone) => on_listed(std::mem::take(&mut listing)),
            Ok(WatchEvent::Apply(o)) => on_apply(Arc::new(o)),
            Ok(WatchEvent::Delete(o)) => on_delete(Arc::new(o)),
            Err(e) => {
                tracing::warn!(kind, error = %e, "scheduler watch failed; retrying");
                continue;
            }
        };
        if events.send(event).is_err() {
            return Err(SchedulerError::Stopped("scheduling thread"));
        }
    }
    Err(SchedulerError::Stopped("watch"))
}

/// Writes one binding; a failure goes back to the scheduling thread.
async fn bind(client: Client, pod: Arc<Pod>, node: String, events: mpsc::Sender<Event>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let res = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await;
    let retry = match res {
        Ok(_) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), node, "bound pod");
            return;
        }
        // Bound by someone else meanwhile, or deleted: the watch tells which.
        Err(e) if is_conflict(&e) || is_not_found(&e) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "binding not applied");
            false
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), node, error = %e, "binding failed; retrying");
            true
        }
    };
    let _ = events.send(Event::BindFailed { pod, retry });
}

/// Writes PodScheduled=False (Unschedulable) unless the Pod already says so.
async fn mark_unschedulable(client: Client, pod: Arc<Pod>, message: String) {
    let Some(cond) = unschedulable_condition(&pod, &message, Timestamp::now()) else {
        return;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut obj = (*pod).clone();
    let st = obj.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != "PodScheduled");
    conds.push(cond);
    let api: Api<Pod> = Api::namespaced(client, &ns);
    match api
        .replace_status(&name, &PostParams::default(), &obj)
        .await
    {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), message, "pod unschedulable"),
        // A newer version is on its way through the watch; it is tried again with it.
        Err(e) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "condition not written")
        }
    }
}

/// Carries out the thread's actions, at most [`BIND_CONCURRENCY`] at once.
async fn act(
    client: Client,
    mut actions: amsc::UnboundedReceiver<Action>,
    events: mpsc::Sender<Event>,
) -> Result<(), SchedulerError> {
    let permits = Arc::new(Semaphore::new(BIND_CONCURRENCY));
    let mut inflight = JoinSet::new();
    while let Some(a) = actions.recv().await {
        while inflight.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let events = events.clone();
        inflight.spawn(async move {
            match a {
                Action::Bind { pod, node } => bind(client, pod, node, events).await,
                Action::Unschedulable { pod, message } => {
                    mark_unschedulable(client, pod, message).await
                }
            }
            drop(permit);
        });
    }
    Err(SchedulerError::Stopped("scheduling thread"))
}

fn pod_uid(p: &Pod) -> String {
    uid(p).to_string()
}

fn node_name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

/// Runs the scheduler until it fails.
pub async fn run(client: Client) -> Result<(), SchedulerError> {
    let (events_tx, events_rx) = mpsc::channel();
    let (actions_tx, actions_rx) = amsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker {
        cache: Cache::default(),
        queue: SchedulingQueue::default(),
        cursor: Cursor::default(),
        actions: actions_tx,
        pods_listed: false,
        nodes_listed: false,
        announced: false,
    };
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            worker.run(events_rx);
            let _ = done_tx.send(());
        })
        .map_err(|_| SchedulerError::Stopped("scheduling thread"))?;

    let mut tasks: JoinSet<Result<(), SchedulerError>> = JoinSet::new();
    tasks.spawn(forward(
        Api::<Pod>::all(client.clone()),
        events_tx.clone(),
        pod_uid,
        Event::Pod,
        Event::PodDeleted,
        Event::PodsListed,
    ));
    tasks.spawn(forward(
        Api::<Node>::all(client.clone()),
        events_tx.clone(),
        node_name,
        Event::Node,
        Event::NodeDeleted,
        Event::NodesListed,
    ));
    tasks.spawn(act(client, actions_rx, events_tx));
    tasks.spawn(async move {
        let _ = done_rx.await;
        Err(SchedulerError::Stopped("scheduling thread"))
    });
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Ok(Ok(()))) | Some(Err(_)) | None => Err(SchedulerError::Stopped("scheduler task")),
    }
}
