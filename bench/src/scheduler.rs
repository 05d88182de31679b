//! `cargo xtask bench scheduler`: the scheduler at cluster scale. A real `keelson server`
//! (the release binary, a fresh data dir under /tmp per run) gets 1,000 fake Nodes (Ready, with
//! allocatable, and a Lease the bench renews so the node lifecycle controller keeps them
//! Ready; no agents), then N small Pods created by 64 concurrent clients; a Pod watch started
//! before the first create records when each Pod is bound and where. Figures and table in
//! [`crate::scheduler_report`]. The server dies with the bench (PR_SET_PDEATHSIG) and its
//! guard kills it and removes its data dir on every way out of a run.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeCondition, NodeStatus, Pod, PodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::scheduler_report::{self, Observed};

/// Where the runs keep their server data: `/tmp/<DATA_PREFIX><pid>-<run>`.
const DATA_PREFIX: &str = "keelson-sched-bench-";
/// The namespace of the Pods.
const NAMESPACE: &str = "sched-bench";
/// Namespace of Node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often the bench renews the Leases (the kubelet's default: every 10 s of a 40 s lease).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
/// API writes in flight while registering Nodes and renewing Leases.
const SETUP_CONCURRENCY: usize = 32;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    /// Pod counts, one fresh server each.
    pub pods: Vec<usize>,
    /// Concurrent create calls.
    pub clients: usize,
    /// The keelson binary to measure (default: the release one next to this binary).
    pub keelson: Option<PathBuf>,
    /// The run's name in the table.
    pub label: String,
    /// Give up on a run after this long (default: as if binding 40 Pods/s, plus a minute).
    pub timeout: Option<Duration>,
}

/// The `keelson` binary next to this one (both built by `cargo xtask bench`).
fn keelson_bin() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("keelson");
    ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release --bin keelson`",
        bin.display()
    );
    Ok(bin)
}

/// A running `keelson server`: killed, and its data dir removed, on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("bench: removing {}: {e}", self.dir.display());
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    /// Starts `bin server` on a free port with a fresh data dir. Must run on the main thread:
    /// PR_SET_PDEATHSIG fires when the forking thread exits.
    fn start(bin: &Path, run: usize) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{DATA_PREFIX}{}-{run}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = fs::File::create(dir.join("server.log"))?;
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: between fork and exec the closure makes one raw system call; no allocation,
        // no locks.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The guard exists before anything else can fail, so the dir goes in every case.
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("starting {}", bin.display()));
            }
        };
        Ok(Self { child, dir, port })
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn client(&mut self) -> Result<kube::Client> {
        let kubeconfig = self.dir.join("data").join("admin.kubeconfig");
        let start = Instant::now();
        let mut last = String::from("no kubeconfig yet");
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait()? {
                bail!("keelson server exited ({status}):\n{}", self.log_tail());
            }
            if kubeconfig.exists() {
                match keelson_localcluster::client(&kubeconfig).await {
                    Ok(c) => match c.apiserver_version().await {
                        Ok(_) => return Ok(c),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the API server on port {} did not answer in 60 s ({last}):\n{}",
            self.port,
            self.log_tail()
        )
    }
}

/// Removes the data dirs of runs whose process is gone.
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DATA_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("bench: removing leftover {}", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn quantities(kv: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn node_name(i: usize) -> String {
    format!("fake-{i:04}")
}

/// A Node as scheduler_perf's `node-default.yaml` makes them: 4 CPUs, 32 GiB, 110 Pods; in one
/// of three zones.
fn node(i: usize) -> Node {
    let name = node_name(i);
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name),
                (
                    "topology.kubernetes.io/zone".to_string(),
                    format!("zone-{}", i % 3),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn node_status() -> NodeStatus {
    let res = quantities(&[("cpu", "4"), ("memory", "32Gi"), ("pods", "110")]);
    let now = Time(Timestamp::now());
    NodeStatus {
        allocatable: Some(res.clone()),
        capacity: Some(res),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("fake node of the scheduler bench".into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        }]),
        ..Default::default()
    }
}

fn lease(i: usize) -> Lease {
    let name = node_name(i);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// A small Pod as scheduler_perf's `pod-default.yaml`: one container requesting 100m CPU and
/// 500 MiB, no owner; all alike.
fn pod(i: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("p-{i:05}")),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([(
                "app".to_string(),
                "sched-bench".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", "100m"), ("memory", "500Mi")])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(e) if is_already_exists(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Creates the Nodes, their Ready status and their Leases.
async fn register_nodes(client: &kube::Client, nodes: usize) -> Result<()> {
    ensure_namespace(client, LEASE_NAMESPACE).await?;
    let node_api: Api<Node> = Api::all(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    futures::stream::iter(0..nodes)
        .map(|i| {
            let (node_api, lease_api) = (node_api.clone(), lease_api.clone());
            async move {
                node_api
                    .create(&PostParams::default(), &node(i))
                    .await
                    .with_context(|| format!("creating Node {}", node_name(i)))?;
                // The API keeps no status from a create, as kube-apiserver: the status goes in
                // through its subresource, as a kubelet writes it.
                node_api
                    .patch_status(
                        &node_name(i),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": node_status() })),
                    )
                    .await
                    .with_context(|| format!("writing the status of Node {}", node_name(i)))?;
                lease_api
                    .create(&PostParams::default(), &lease(i))
                    .await
                    .with_context(|| format!("creating the Lease of {}", node_name(i)))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Renews every Lease each [`LEASE_RENEW`], as kubelets do, until aborted.
async fn renew_leases(client: kube::Client, nodes: usize) {
    let api: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = MicroTime(Timestamp::now());
        let failed = futures::stream::iter(0..nodes)
            .map(|i| {
                let (api, now) = (api.clone(), now.clone());
                async move {
                    api.patch(
                        &node_name(i),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"renewTime": now}})),
                    )
                    .await
                    .is_err()
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .filter(|failed| futures::future::ready(*failed))
            .count()
            .await;
        if failed > 0 {
            eprintln!("bench: {failed} Lease renewals failed");
        }
    }
}

/// Aborts a task on drop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When each Pod was seen bound, and where, by Pod index.
type Seen = Arc<Mutex<(Vec<Option<(Instant, String)>>, usize)>>;

fn pod_index(p: &Pod) -> Option<usize> {
    p.metadata.name.as_deref()?.strip_prefix("p-")?.parse().ok()
}

/// Watches the bench's Pods and records the first time each shows a Node; `ready` fires once
/// the watch is established (its initial list done).
async fn watch_binds(
    client: kube::Client,
    seen: Seen,
    all_bound: Arc<tokio::sync::Notify>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let stream = watcher::watcher(api, watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    let mut ready = Some(ready);
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        let pods: Vec<Pod> = match ev {
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                continue;
            }
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
            Ok(_) => continue,
            Err(e) => {
                eprintln!("bench: Pod watch: {e}");
                continue;
            }
        };
        for p in pods {
            let (Some(i), Some(node)) = (
                pod_index(&p),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            let (slots, count) = &mut *s;
            if let Some(slot) = slots.get_mut(i)
                && slot.is_none()
            {
                *slot = Some((now, node));
                *count += 1;
                if *count == slots.len() {
                    all_bound.notify_one();
                }
            }
        }
    }
}

/// One run on a fresh server: Nodes, then `pods` Pods, until all are bound or the timeout.
async fn measure(server: &mut Server, opts: &Options, pods: usize) -> Result<Observed> {
    let client = server.client().await?;
    let t = Instant::now();
    register_nodes(&client, opts.nodes).await?;
    eprintln!(
        "bench: {} Nodes registered in {:.1} s",
        opts.nodes,
        t.elapsed().as_secs_f64()
    );
    let _renew = AbortOnDrop(tokio::spawn(renew_leases(client.clone(), opts.nodes)));
    ensure_namespace(&client, NAMESPACE).await?;
    // Let the server's controllers and scheduler take in the Nodes (the IPAM controller writes
    // each one's podCIDR) before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let seen: Seen = Arc::new(Mutex::new((vec![None; pods], 0)));
    let all_bound = Arc::new(tokio::sync::Notify::new());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let _watch = AbortOnDrop(tokio::spawn(watch_binds(
        client.clone(),
        seen.clone(),
        all_bound.clone(),
        ready_tx,
    )));
    ready_rx
        .await
        .context("the Pod watch ended before listing")?;

    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    let times: Vec<(usize, Duration, Duration)> = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let sent = start.elapsed();
                api.create(&PostParams::default(), &pod(i))
                    .await
                    .with_context(|| format!("creating Pod {i}"))?;
                anyhow::Ok((i, sent, start.elapsed()))
            }
        })
        .buffer_unordered(opts.clients)
        .try_collect()
        .await?;
    let created = start.elapsed();
    eprintln!(
        "bench: {pods} Pods created in {:.1} s; waiting for the binds",
        created.as_secs_f64()
    );
    let timeout = opts
        .timeout
        .unwrap_or(Duration::from_secs(60 + pods as u64 / 40));
    let done = all_bound.notified();
    let complete = seen.lock().unwrap_or_else(|e| e.into_inner()).1 == pods;
    if !complete && tokio::time::timeout(timeout, done).await.is_err() {
        eprintln!("bench: gave up after {} s", timeout.as_secs());
    }

    let mut create_sent = vec![Duration::ZERO; pods];
    let mut create_done = vec![Duration::ZERO; pods];
    for (i, sent, done) in times {
        create_sent[i] = sent;
        create_done[i] = done;
    }
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Observed {
        label: opts.label.clone(),
        nodes: opts.nodes,
        create_sent,
        create_done,
        bound_at: s
            .0
            .iter()
            .map(|b| {
                b.as_ref()
                    .map(|(at, _)| at.saturating_duration_since(start))
            })
            .collect(),
        bound_to: s
            .0
            .iter()
            .map(|b| b.as_ref().map(|(_, n)| n.clone()))
            .collect(),
    })
}

/// Runs the benchmark and prints its table and `BENCH_JSON` line.
pub fn run(opts: &Options) -> Result<()> {
    ensure!(!opts.pods.is_empty(), "no Pod counts to run");
    sweep_leftovers();
    let bin = match &opts.keelson {
        Some(b) => b.clone(),
        None => keelson_bin()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for (i, &pods) in opts.pods.iter().enumerate() {
        eprintln!(
            "bench: run {}: {} Nodes, {pods} Pods, {} ({})",
            i + 1,
            opts.nodes,
            opts.label,
            bin.display()
        );
        let mut server = Server::start(&bin, i)?;
        let observed = rt.block_on(measure(&mut server, opts, pods));
        drop(server);
        let f = scheduler_report::figures(&observed?);
        eprintln!(
            "bench: {} of {} bound after {:.1} s: {:.0} Pods/s, p99 {:.0} ms, per Node {}..{}",
            f.bound,
            f.pods,
            f.all_bound_after.as_secs_f64(),
            f.pods_per_s,
            f.latency_p99.as_secs_f64() * 1000.0,
            f.per_node_min,
            f.per_node_max
        );
        runs.push(f);
    }
    println!("{}", scheduler_report::table(&runs));
    println!(
        "BENCH_JSON {}",
        serde_json::to_string(&scheduler_report::bench_json(&runs))?
    );
    Ok(())
}
