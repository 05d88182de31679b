//! The kubelet-lite: runs the Pods bound to this Node. It watches Pods with
//! `spec.nodeName=<node>` and gives each one a worker ([`worker`]) that sets up its sandbox
//! ([`sandbox`]), what its containers are made from, runs them ([`containers`], [`launch`])
//! with their probes ([`probes`]), reports `pods/status`, and on deletion stops and removes it.

mod containers;
mod launch;
mod probes;
mod sandbox;
#[cfg(test)]
mod tests;
mod worker;

pub use sandbox::cni_call;

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::watcher::{self, Event},
};
use serde_json::json;
use tokio::sync::watch;

use self::{sandbox::teardown_sandbox, worker::pod_worker};
use super::{
    podfiles::ClusterDns,
    process::{self, PodRecord},
};
use crate::{cni::protocol::CniError, netns};

/// The default `terminationGracePeriodSeconds`.
pub(super) const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Delay between attempts to set up a sandbox that failed.
pub(super) const SANDBOX_RETRY: Duration = Duration::from_secs(5);

/// What the Pod runtime needs from the agent's configuration.
#[derive(Debug, Clone)]
pub struct PodRuntimeConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// The node's network namespace (`None`: the agent's own); hostNetwork Pods run in it.
    pub node_netns: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The node's cgroup root; Pods run in `<root>/pods/<uid>`.
    pub cgroup_root: PathBuf,
    /// The `keelson` binary, run as `keelson cni`.
    pub cni_bin: PathBuf,
    /// The `keelson` binary run as `keelson logger` for each container's output; `None`:
    /// output goes into the log file as it is.
    pub logger_bin: Option<PathBuf>,
    /// The agent's CNI socket, passed to the plugin in the network configuration.
    pub cni_socket: PathBuf,
    /// The cluster's DNS server and domain, for the Pods' resolv.conf and hosts.
    pub cluster_dns: ClusterDns,
}

impl PodRuntimeConfig {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }
    pub fn pod_cgroup(&self, uid: &str) -> PathBuf {
        self.cgroup_root.join("pods").join(uid)
    }
    /// The network configuration handed to the plugin on stdin.
    pub fn cni_config(&self) -> serde_json::Value {
        json!({
            "cniVersion": crate::cni::protocol::CNI_VERSION,
            "name": "keelson",
            "type": "keelson",
            "agentSocket": self.cni_socket,
        })
    }
}

/// Errors of running a Pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("creating {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace")]
    Netns(#[from] netns::NetnsError),
    #[error("running the CNI plugin {bin}")]
    CniSpawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI {command} failed")]
    Cni {
        command: &'static str,
        #[source]
        source: CniError,
    },
    #[error("CNI {command} printed an unreadable answer: {output}")]
    CniOutput {
        command: &'static str,
        output: String,
    },
    #[error("pod state")]
    Process(#[from] process::ProcessError),
}

/// Removes sandboxes of Pods that no longer exist (deleted while the agent was down).
async fn cleanup_orphans(
    cfg: &PodRuntimeConfig,
    known: &HashMap<String, watch::Sender<Option<Pod>>>,
) {
    let Ok(dirs) = std::fs::read_dir(cfg.data_dir.join("pods")) else {
        return;
    };
    for dir in dirs.flatten() {
        let uid = dir.file_name().to_string_lossy().into_owned();
        if known.contains_key(&uid) {
            continue;
        }
        if let Ok(Some(rec)) = PodRecord::load(&dir.path()) {
            tracing::info!(%uid, pod = %rec.name, "cleaning up the sandbox of a pod that is gone");
            teardown_sandbox(cfg, &rec).await;
        }
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

/// How long Pods wait for the first Services pass before they start regardless.
const SERVICES_SYNC_WAIT: Duration = Duration::from_secs(30);

async fn wait_services_synced(mut synced: watch::Receiver<bool>) {
    match tokio::time::timeout(SERVICES_SYNC_WAIT, synced.wait_for(|s| *s)).await {
        Ok(Ok(_)) => {}
        // The services loop ended: the agent is stopping with it.
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            waited_s = SERVICES_SYNC_WAIT.as_secs(),
            "services not programmed yet; starting pods anyway"
        ),
    }
}

/// Runs the Pods bound to this node until the task is dropped. Pods start once
/// `services_synced` is true (or after [`SERVICES_SYNC_WAIT`]): the connect4 hook translates
/// a ClusterIP once, at connect(), so a Pod that connects to a Service (the API server's,
/// say) before the node's first Services pass keeps a socket to the bare ClusterIP until its
/// connect times out. Cilium holds endpoint creation until its Kubernetes caches have synced
/// for the same reason.
pub async fn run(client: Client, cfg: PodRuntimeConfig, services_synced: watch::Receiver<bool>) {
    wait_services_synced(services_synced).await;
    let cfg = Arc::new(cfg);
    let api: Api<Pod> = Api::all(client.clone());
    let selector = format!("spec.nodeName={}", cfg.node_name);
    let mut events = watcher::watcher(api, watcher::Config::default().fields(&selector)).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut init_seen: Vec<String> = Vec::new();
    let mut orphans_checked = false;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                // A later watch event for the same uid (its deletion) must not start it again.
                if let Some(tx) = workers.get(&uid) && tx.is_closed() {
                    workers.remove(&uid);
                }
            }
            ev = events.try_next() => {
                let pod_apply = |pod: Pod, workers: &mut HashMap<String, watch::Sender<Option<Pod>>>| {
                    let Some(uid) = pod.metadata.uid.clone() else { return };
                    if let Some(tx) = workers.get(&uid) {
                        let _ = tx.send(Some(pod));
                        return;
                    }
                    let (tx, rx) = watch::channel(Some(pod));
                    workers.insert(uid.clone(), tx);
                    let (cfg, client, done) = (Arc::clone(&cfg), client.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        pod_worker(cfg, client, rx).await;
                        let _ = done.send(uid);
                    });
                };
                match ev {
                    Ok(Some(Event::Init)) => init_seen.clear(),
                    Ok(Some(Event::InitApply(pod))) => {
                        init_seen.extend(pod.metadata.uid.clone());
                        pod_apply(pod, &mut workers);
                    }
                    Ok(Some(Event::InitDone)) => {
                        // Pods that vanished while the watch was re-listing.
                        for (uid, tx) in &workers {
                            if !init_seen.contains(uid) {
                                let _ = tx.send(None);
                            }
                        }
                        if !orphans_checked {
                            orphans_checked = true;
                            cleanup_orphans(&cfg, &workers).await;
                        }
                    }
                    Ok(Some(Event::Apply(pod))) => pod_apply(pod, &mut workers),
                    Ok(Some(Event::Delete(pod))) => {
                        if let Some(tx) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            let _ = tx.send(None);
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching pods");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}
