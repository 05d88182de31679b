//! The end-to-end part of the `policy` benchmark, on a real one-node local cluster (`keelson
//! up` with the release binary): a server Pod, a NetworkPolicy selecting it that allows
//! `role: allowed`, a client Pod; the time from a label change of the client in the API to
//! enforcement on the node (the pinned maps polled every ~1 ms until the client's identity and
//! the server's entries for it are what the new label asks), confirmed by a real connection
//! attempt from the client Pod's namespace after each change; then 999 more policies and 1,000
//! Pods bound to a second Node that has no agent (remote Pods to the agent), the agent's RSS,
//! and the label changes again at that size.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use keelson_agent::loader::{Maps, maps::ip_to_net};
use keelson_common::{
    IpcacheKey, PolicyKey,
    policy::{direction, endpoint_flags, policy_prefix},
    proto,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{
    policy_topology::{self, enter_netns},
    policy_workload::{self, ALLOWED_ROLE, CONN_PORT, DENIED_ROLE, NAMESPACE, ROLE, SERVER_LABEL},
};

/// The cluster's name (`keelson up --name`; names are letters and digits only). A fixed name,
/// so that a run removes whatever a killed earlier run left of it before it starts.
pub const CLUSTER: &str = "klsbenchpol";
/// How many API writes are in flight at once while loading the cluster.
const CREATE_CONCURRENCY: usize = 32;
/// How often the maps are read while waiting for a change.
const POLL: Duration = Duration::from_millis(1);
/// How long a denied connection attempt waits before it counts as dropped.
const DENIED_WAIT: Duration = Duration::from_millis(300);

/// What this part asks for.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Label changes timed at each size.
    pub changes: usize,
    /// NetworkPolicies and remote Pods of the large size.
    pub policies: usize,
    pub pods: usize,
}

/// One set of timed label changes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// From each label patch call to the maps enforcing it, sorted.
    pub times: Vec<Duration>,
    /// Changes after which a connection attempt did what the label asks (connected when
    /// allowed, dropped when denied), of `times.len()`.
    pub confirmed: usize,
    /// The changes whose connection attempt did not, with what it did.
    pub unconfirmed: Vec<String>,
}

/// What this part measured.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    /// Label changes with one policy and the two Pods.
    pub small: Changes,
    /// From the first API write of the large size to all of it in the node's maps.
    pub load: Duration,
    /// The API writes alone.
    pub load_writes: Duration,
    /// Entries in the node's policy and ipcache maps at the large size.
    pub policy_entries: usize,
    pub ipcache_entries: usize,
    /// Label changes at the large size.
    pub large: Changes,
    /// The agent's VmRSS and VmHWM (KiB): with one policy, at the large size once
    /// programmed, and after the large size's changes.
    pub rss_kib_small: u64,
    pub rss_kib_large: u64,
    pub rss_kib_after: u64,
    pub hwm_kib: u64,
}

/// The cluster, removed on drop (and by the signal path while it is recorded).
struct ClusterGuard(String);

impl ClusterGuard {
    fn new(name: &str) -> Self {
        *policy_topology::CLUSTER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(name.to_string());
        Self(name.to_string())
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        eprintln!("bench: removing cluster {}", self.0);
        if let Err(e) = keelson_localcluster::down(&self.0) {
            eprintln!("bench: removing cluster {}: {e}", self.0);
        }
        *policy_topology::CLUSTER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
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

/// The pid of the agent of `node` (a `keelson agent --node-name <node>` process).
fn agent_pid(node: &str) -> Result<i32> {
    for e in fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.contains(&b"agent".as_slice())
            && args
                .windows(2)
                .any(|w| w[0] == b"--node-name" && w[1] == node.as_bytes())
        {
            return Ok(pid);
        }
    }
    bail!("no agent process for node {node}")
}

/// `VmRSS` and `VmHWM` of `pid`, KiB.
fn memory_kib(pid: i32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// What the node's maps say about the client as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The client's identity in the ipcache.
    ipcache: u32,
    /// The client's identity in its endpoint entry (what the programs use for a local Pod).
    endpoint: u32,
    /// Whether the server's trie allows that identity to connect.
    allowed: bool,
    /// Whether the server is isolated for ingress.
    isolated: bool,
}

fn seen(maps: &Maps, server: Ipv4Addr, client: Ipv4Addr) -> Seen {
    let ipcache = maps
        .ipcache
        .get(
            &aya_key(
                32,
                IpcacheKey {
                    address: ip_to_net(client),
                },
            ),
            0,
        )
        .map_or(0, |v| v.identity);
    let endpoint = maps
        .endpoint(client)
        .ok()
        .flatten()
        .map_or(0, |e| e.identity);
    let isolated = maps
        .endpoint(server)
        .ok()
        .flatten()
        .is_some_and(|e| e.flags & endpoint_flags::INGRESS_ISOLATED != 0);
    let key = PolicyKey::lookup(
        ip_to_net(server),
        endpoint,
        direction::INGRESS,
        proto::TCP,
        CONN_PORT.to_be(),
    );
    let allowed = endpoint != 0
        && maps
            .policy
            .get(&aya_key(policy_prefix::FULL, key), 0)
            .is_ok();
    Seen {
        ipcache,
        endpoint,
        allowed,
        isolated,
    }
}

fn aya_key<K: aya::Pod>(prefix: u32, data: K) -> aya::maps::lpm_trie::Key<K> {
    aya::maps::lpm_trie::Key::new(prefix, data)
}

/// Whether the maps enforce `role` for the client: its identity changed from `before`'s and
/// agrees in the ipcache and the endpoint entry, the server is isolated, and the server's
/// entries allow it exactly when the role is allowed.
fn enforced(now: &Seen, before: &Seen, allowed: bool) -> bool {
    now.endpoint != 0
        && now.endpoint != before.endpoint
        && now.ipcache == now.endpoint
        && now.isolated
        && now.allowed == allowed
}

/// A connection attempt from inside the namespace at `netns`: whether it connected within
/// `wait`.
fn connects(netns: &Path, to: Ipv4Addr, wait: Duration) -> Result<bool> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<bool> {
        enter_netns(&netns).context("entering the client Pod's namespace")?;
        let addr = SocketAddr::V4(SocketAddrV4::new(to, CONN_PORT));
        Ok(TcpStream::connect_timeout(&addr, wait).is_ok())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("connection thread panicked"))?
}

/// The two real Pods of the cluster.
struct Pods {
    server_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
    /// The client Pod's network namespace.
    client_netns: PathBuf,
}

/// A Pod's address and uid once it runs.
async fn wait_running(pods: &Api<Pod>, name: &str) -> Result<(Ipv4Addr, String)> {
    let start = Instant::now();
    loop {
        let p = pods.get(name).await.context("reading a Pod")?;
        let status = p.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()) == Some("Running")
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
        {
            return Ok((ip, p.metadata.uid.clone().unwrap_or_default()));
        }
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "Pod {name} not running after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The accept-and-close server of the server Pod: the host's python, as in the end-to-end
/// tests (a Pod's command runs from the node's filesystem).
const SERVER_PY: &str = r"import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1])))
s.listen(128)
while True:
    c, _ = s.accept()
    c.close()
";

async fn start_pods(client: &kube::Client, node: &str) -> Result<Pods> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let port = CONN_PORT.to_string();
    let server = policy_workload::pod(
        "server",
        node,
        &[SERVER_LABEL],
        &["/usr/bin/python3", "-c", SERVER_PY, &port],
        &[CONN_PORT],
        None,
    );
    let client_pod = policy_workload::pod(
        "client",
        node,
        &[(ROLE, ALLOWED_ROLE)],
        &["/bin/sleep", "infinity"],
        &[],
        None,
    );
    create(&pods, &server)
        .await
        .context("creating the server Pod")?;
    create(&pods, &client_pod)
        .await
        .context("creating the client Pod")?;
    let (server_ip, _) = wait_running(&pods, "server").await?;
    let (client_ip, uid) = wait_running(&pods, "client").await?;
    let client_netns =
        keelson_agent::netns::named_path(&keelson_agent::netns::pod_netns_name(node, &uid));
    ensure!(
        client_netns.exists(),
        "the client Pod's namespace {} is missing",
        client_netns.display()
    );
    Ok(Pods {
        server_ip,
        client_ip,
        client_netns,
    })
}

/// Waits until `done` holds of the maps (polled every [`POLL`]), at most `limit`.
async fn wait_maps(
    maps: &Maps,
    pods: &Pods,
    limit: Duration,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) -> Result<Seen> {
    let start = Instant::now();
    loop {
        let s = seen(maps, pods.server_ip, pods.client_ip);
        if done(&s) {
            return Ok(s);
        }
        if start.elapsed() > limit {
            bail!("{what}: not in the node's maps after {limit:?} (last seen {s:?})");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `n` label changes of the client, alternating denied and allowed (it starts allowed, and
/// ends allowed when `n` is even); each timed from the patch call to the maps enforcing it,
/// then confirmed by a connection attempt.
async fn label_changes(
    client: &kube::Client,
    maps: &Maps,
    pods: &Pods,
    n: usize,
) -> Result<Changes> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut before = wait_maps(
        maps,
        pods,
        Duration::from_secs(60),
        "the client allowed",
        |s| s.isolated && s.allowed && s.ipcache == s.endpoint,
    )
    .await?;
    // A path that does not connect when allowed would confirm every denial: an error, not a
    // figure. The server may still be starting.
    let start = Instant::now();
    while !connects(&pods.client_netns, pods.server_ip, Duration::from_secs(1))? {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the allowed client does not reach the server Pod"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = Changes::default();
    for c in 0..n {
        let allow = c % 2 == 1;
        let role = if allow { ALLOWED_ROLE } else { DENIED_ROLE };
        let patch = json!({"metadata": {"labels": {ROLE: role}}});
        let t0 = Instant::now();
        api.patch("client", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("patching the client's labels")?;
        let now = wait_maps(maps, pods, Duration::from_secs(30), "a label change", |s| {
            enforced(s, &before, allow)
        })
        .await?;
        out.times.push(t0.elapsed());
        before = now;
        // Not timed: what a connection does now.
        let wait = if allow {
            Duration::from_secs(2)
        } else {
            DENIED_WAIT
        };
        let connected = connects(&pods.client_netns, pods.server_ip, wait)?;
        if connected == allow {
            out.confirmed += 1;
        } else {
            out.unconfirmed.push(format!(
                "change {c} to {role}: the connection {}",
                if connected {
                    "was let through"
                } else {
                    "was not"
                }
            ));
        }
    }
    out.times.sort();
    Ok(out)
}

/// Counts the entries of an LPM trie map.
fn count_keys<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::LpmTrie<aya::maps::MapData, K, V>,
) -> usize {
    map.keys().filter_map(Result::ok).count()
}

/// Loads 999 more policies (`opts.policies` in all) and `opts.pods` Pods bound to a Node
/// without an agent, with their addresses set through the status subresource as a kubelet
/// would; returns once the node's maps hold them.
async fn load_large(
    client: &kube::Client,
    maps: &Maps,
    ghost: &str,
    opts: &ClusterOptions,
    figures: &mut ClusterFigures,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = policy_workload::node(ghost, policy_workload::REMOTE_NODE_IP);
    create(&nodes, &node)
        .await
        .context("creating the Node without an agent")?;
    // The API server drops the status of a created object, as kube-apiserver does.
    nodes
        .patch_status(
            ghost,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": node.status })),
        )
        .await
        .context("setting the Node's addresses")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), NAMESPACE);
    eprintln!(
        "bench: creating {} NetworkPolicies and {} Pods on {ghost}",
        opts.policies - 1,
        opts.pods
    );
    let start = Instant::now();
    futures::stream::iter(1..opts.policies)
        .map(|i| {
            let policies = policies.clone();
            async move { create(&policies, &policy_workload::policy(i)).await }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .context("creating NetworkPolicies")?;
    futures::stream::iter(1..=opts.pods)
        .map(|i| {
            let (pods, ghost) = (pods.clone(), ghost.to_string());
            async move {
                let mut pod = policy_workload::remote_pod(i, &ghost);
                let status = pod.status.take();
                create(&pods, &pod).await?;
                let name = pod.metadata.name.clone().unwrap_or_default();
                pods.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "status": status })),
                )
                .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .context("creating the remote Pods")?;
    figures.load_writes = start.elapsed();
    // Every policy gives the server two entries (the connection ports' range is one prefix,
    // the stream port another) for the one identity it allows; the last remote Pod is in the
    // ipcache once all are.
    let want_entries = 2 * opts.policies.min(opts.pods + 1);
    let last = aya_key(
        32,
        IpcacheKey {
            address: ip_to_net(policy_workload::remote_ip(opts.pods)),
        },
    );
    loop {
        let entries = count_keys(&maps.policy);
        if entries >= want_entries && maps.ipcache.get(&last, 0).is_ok() {
            figures.policy_entries = entries;
            figures.ipcache_entries = count_keys(&maps.ipcache);
            break;
        }
        if start.elapsed() > figures.load_writes + Duration::from_secs(600) {
            bail!(
                "the node's maps hold {entries} of {want_entries} policy entries 10 minutes \
                 after the last API write"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    figures.load = start.elapsed();
    eprintln!(
        "bench: API writes took {:.1} s, all in the node's maps after {:.1} s ({} policy \
         entries, {} ipcache entries)",
        figures.load_writes.as_secs_f64(),
        figures.load.as_secs_f64(),
        figures.policy_entries,
        figures.ipcache_entries
    );
    Ok(())
}

/// Runs the whole part.
pub fn measure(opts: &ClusterOptions) -> Result<ClusterFigures> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure_async(opts))
}

async fn measure_async(opts: &ClusterOptions) -> Result<ClusterFigures> {
    ensure!(
        opts.policies >= 1 && opts.policies <= policy_workload::MAX_REMOTE + 1,
        "policies must be 1 to {}",
        policy_workload::MAX_REMOTE + 1
    );
    ensure!(opts.pods <= policy_workload::MAX_REMOTE, "too many Pods");
    // An even number of changes leaves the client allowed, as the large size's load expects.
    ensure!(opts.changes.is_multiple_of(2), "--changes must be even");
    // A killed earlier run's cluster of this name goes first.
    keelson_localcluster::down(CLUSTER).context("removing an earlier bench cluster")?;
    let up = keelson_localcluster::UpOptions {
        name: CLUSTER.into(),
        nodes: 1,
        data_dir: None,
        keelson_bin: keelson_bin()?,
    };
    eprintln!("bench: starting a one-node cluster {CLUSTER}");
    let guard = ClusterGuard::new(CLUSTER);
    let cluster = keelson_localcluster::up(&up).await.context("keelson up")?;
    let node = cluster.nodes.first().context("no node")?.clone();
    let client = keelson_localcluster::client(&cluster.kubeconfig)
        .await
        .context("API client")?;
    let agent = agent_pid(&node)?;
    let maps = Maps::open_pinned(&Path::new("/sys/fs/bpf/keelson").join(&node))
        .context("opening the node's maps")?;
    create(
        &Api::<Namespace>::all(client.clone()),
        &policy_workload::namespace(),
    )
    .await
    .context("creating the namespace")?;
    let pods = start_pods(&client, &node).await?;
    create(
        &Api::<NetworkPolicy>::namespaced(client.clone(), NAMESPACE),
        &policy_workload::policy(0),
    )
    .await
    .context("creating the policy")?;
    let mut figures = ClusterFigures::default();
    eprintln!("bench: {} label changes with one policy", opts.changes);
    figures.small = label_changes(&client, &maps, &pods, opts.changes).await?;
    figures.rss_kib_small = memory_kib(agent)?.0;

    let ghost = format!("{CLUSTER}-ghost");
    load_large(&client, &maps, &ghost, opts, &mut figures).await?;
    // One periodic pass of the agent after the load (`policy::REFRESH` is 2 s), so the RSS is
    // of the agent at rest with everything programmed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    figures.rss_kib_large = memory_kib(agent)?.0;
    eprintln!(
        "bench: {} label changes with {} policies and {} more Pods",
        opts.changes, opts.policies, opts.pods
    );
    figures.large = label_changes(&client, &maps, &pods, opts.changes).await?;
    let (rss, hwm) = memory_kib(agent)?;
    figures.rss_kib_after = rss;
    figures.hwm_kib = hwm;
    drop(guard);
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ipcache: u32, endpoint: u32, allowed: bool) -> Seen {
        Seen {
            ipcache,
            endpoint,
            allowed,
            isolated: true,
        }
    }

    #[test]
    fn a_change_is_enforced_once_both_maps_agree_on_a_new_identity() {
        let before = s(300, 300, true);
        // Nothing changed yet.
        assert!(!enforced(&before, &before, false));
        // The ipcache has the new identity, the endpoint entry not yet.
        assert!(!enforced(&s(400, 300, false), &before, false));
        // Both have it and the server's trie has no entry for it: denied.
        assert!(enforced(&s(400, 400, false), &before, false));
        // Back to allowed: only once the entry for it is there.
        let denied = s(400, 400, false);
        assert!(!enforced(&s(300, 300, false), &denied, true));
        assert!(enforced(&s(300, 300, true), &denied, true));
        // An unisolated server enforces nothing.
        let mut open = s(300, 300, true);
        open.isolated = false;
        assert!(!enforced(&open, &denied, true));
    }
}
