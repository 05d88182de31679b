//! Time from `kubectl apply` of a Deployment to all its Pods Ready on a two-node `keelson up`
//! cluster, with the moments each stage is complete for every Pod (created, scheduled,
//! given an address, Ready), so a slow stage shows where the time goes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};

/// The cluster of this part (names the bench may use without colliding with anyone).
const CLUSTER: &str = "knl";
const APP: &str = "knl-bench";
const TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(20);

/// When, after the apply started, the last Pod reached each stage.
#[derive(Debug, Clone, Default)]
pub struct ReadyFigures {
    pub replicas: usize,
    pub nodes: u8,
    pub created: Duration,
    pub scheduled: Duration,
    pub addressed: Duration,
    pub ready: Duration,
}

/// The cluster, removed on drop.
struct ClusterGuard;

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        eprintln!("bench: removing cluster {CLUSTER}");
        if let Err(e) = keelson_localcluster::down(CLUSTER) {
            eprintln!("bench: removing cluster {CLUSTER}: {e}");
        }
    }
}

fn manifest(replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {APP}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {APP}}}
  template:
    metadata:
      labels: {{app: {APP}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: sleep
          image: example.invalid/sleep:1
          command: ["/usr/bin/sleep", "infinity"]
"#
    )
}

/// The real kubectl (`cargo xtask setup` installs it; xtask passes its path).
pub fn kubectl() -> PathBuf {
    std::env::var_os("KEELSON_KUBECTL").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".local/share/keelson/venv/bin/kubectl")
        },
        PathBuf::from,
    )
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Starts the cluster, applies the Deployment and waits for every Pod to be Ready.
pub fn measure(replicas: usize, nodes: u8, keelson_bin: &Path) -> Result<ReadyFigures> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure_async(replicas, nodes, keelson_bin))
}

async fn measure_async(replicas: usize, nodes: u8, keelson_bin: &Path) -> Result<ReadyFigures> {
    ensure!(replicas > 0, "--replicas must be at least 1");
    // A killed earlier run's cluster of this name goes first.
    keelson_localcluster::down(CLUSTER).context("removing an earlier bench cluster")?;
    eprintln!("bench: starting a {nodes}-node cluster {CLUSTER}");
    let _guard = ClusterGuard;
    let cluster = keelson_localcluster::up(&keelson_localcluster::UpOptions {
        name: CLUSTER.into(),
        nodes,
        data_dir: None,
        keelson_bin: keelson_bin.to_owned(),
    })
    .await
    .context("keelson up")?;
    let client = keelson_localcluster::client(&cluster.kubeconfig)
        .await
        .context("API client")?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let file = cluster.data_dir.join("knl-bench-deployment.yaml");
    std::fs::write(&file, manifest(replicas))?;

    eprintln!("bench: kubectl apply of a {replicas}-replica Deployment");
    let start = Instant::now();
    let out = Command::new(kubectl())
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut figures = ReadyFigures {
        replicas,
        nodes,
        ..ReadyFigures::default()
    };
    let (mut created, mut scheduled, mut addressed) = (None, None, None);
    let lp = ListParams::default().labels(&format!("app={APP}"));
    loop {
        let list = pods.list(&lp).await.context("listing the Pods")?;
        let now = start.elapsed();
        let live: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count();
        let all = |n: usize| n >= replicas;
        if created.is_none() && all(live.len()) {
            created = Some(now);
        }
        if scheduled.is_none()
            && all(count(&|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            }))
        {
            scheduled = Some(now);
        }
        if addressed.is_none()
            && all(count(&|p| {
                p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
            }))
        {
            addressed = Some(now);
        }
        if all(count(&is_ready)) {
            figures.ready = now;
            break;
        }
        if now > TIMEOUT {
            bail!(
                "only {} of {replicas} Pods Ready after {}s",
                count(&is_ready),
                TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    figures.created = created.unwrap_or(figures.ready);
    figures.scheduled = scheduled.unwrap_or(figures.ready);
    figures.addressed = addressed.unwrap_or(figures.ready);
    Ok(figures)
}
