//! Keeps the DNS snapshot current: kube-rs reflectors of Services, EndpointSlices and Pods,
//! and a task that rebuilds the snapshot after every change (changes that arrive while a
//! rebuild runs are folded into the next one).

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Notify;

use super::records::Snapshot;

/// Errors of the DNS watches.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the watches of Services, EndpointSlices and Pods ended")]
    Ended,
    #[error("rebuilding the DNS snapshot")]
    Rebuild(#[source] tokio::task::JoinError),
}

/// The snapshot DNS answers from, swapped whole after each rebuild: a lookup holds the read
/// lock only to clone an `Arc`.
#[derive(Debug, Default)]
pub struct SharedSnapshot {
    current: RwLock<Arc<Snapshot>>,
    ready: AtomicBool,
}

impl SharedSnapshot {
    /// The snapshot as of the last rebuild.
    pub fn get(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the snapshot.
    pub fn set(&self, snap: Snapshot) {
        let snap = Arc::new(snap);
        match self.current.write() {
            Ok(mut g) => *g = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    /// Whether all three watches have listed once and the snapshot holds what they listed
    /// (`/ready`, like CoreDNS's kubernetes plugin reporting ready after its informers synced).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Watches the cluster and keeps `shared` current until a watch ends.
pub async fn run(client: kube::Client, shared: Arc<SharedSnapshot>) -> Result<(), WatchError> {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let changed = Arc::new(Notify::new());

    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .map(|e| e.map(drop))
    .boxed();
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(eps_writer)
    .map(|e| e.map(drop))
    .boxed();
    let pods = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .map(|e| e.map(drop))
        .boxed();
    let mut events = stream::select(stream::select(services, slices), pods);

    let rebuild = {
        let (changed, shared) = (Arc::clone(&changed), Arc::clone(&shared));
        let stores = (svc_store.clone(), eps_store.clone(), pod_store.clone());
        async move {
            wait_ready(&stores).await;
            let mut serial: u32 = 1;
            loop {
                let (svc, eps, pods) = (stores.0.state(), stores.1.state(), stores.2.state());
                // Building walks every object: off the async runtime.
                let snap = tokio::task::spawn_blocking(move || {
                    Snapshot::build(
                        svc.iter().map(AsRef::as_ref),
                        eps.iter().map(AsRef::as_ref),
                        pods.iter().map(AsRef::as_ref),
                        serial,
                    )
                })
                .await
                .map_err(WatchError::Rebuild)?;
                tracing::debug!(
                    services = snap.service_count(),
                    serial,
                    "DNS snapshot rebuilt"
                );
                shared.set(snap);
                shared.mark_ready();
                serial = serial.wrapping_add(1);
                changed.notified().await;
            }
        }
    };
    let watch = async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(()) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "DNS watch error; retrying"),
            }
        }
        Err::<(), _>(WatchError::Ended)
    };
    tokio::select! {
        r = rebuild => r,
        r = watch => r,
    }
}

async fn wait_ready(stores: &(Store<Service>, Store<EndpointSlice>, Store<Pod>)) {
    // `wait_until_ready` fails only when the writer is dropped, which ends the watch too.
    let _ = stores.0.wait_until_ready().await;
    let _ = stores.1.wait_until_ready().await;
    let _ = stores.2.wait_until_ready().await;
}
