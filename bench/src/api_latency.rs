//! The end-to-end figures that need a running control plane and agent: a one-node local
//! cluster (`keelson up`, the release binary), 10,000 selector-less Services with
//! hand-written EndpointSlices created through the API, the time until the node's pinned maps
//! hold them all, the time from one EndpointSlice change in the API to the datapath (100
//! changes, polled by direct map lookups), and the agent's RSS.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use keelson_agent::loader::{Maps, maps::ip_to_net};
use keelson_common::ServiceKey;
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{
    cleanup::{CLUSTER_PREFIX, making},
    keelson_mode,
    workload::{BenchService, NAMESPACE, SERVICE_PORT},
};

/// How many API writes are in flight at once while creating the Services.
pub const CREATE_CONCURRENCY: usize = 32;
/// How many single EndpointSlice changes are timed.
pub const CHANGES: usize = 100;
const PROTO_TCP: u8 = 6;

/// What this part measured.
#[derive(Debug, Clone)]
pub struct ApiFigures {
    /// From the first create call to the answer of the last one (the API server's share).
    pub api_writes: Duration,
    /// From the first create call to all Services in the node's maps.
    pub create_to_datapath: Duration,
    /// From each EndpointSlice patch call to its new endpoint in the maps, sorted.
    pub changes: Vec<Duration>,
    /// The agent's VmRSS after the Services were programmed and after the changes (KiB).
    pub rss_kib_programmed: u64,
    pub rss_kib_after_changes: u64,
}

/// The cluster, removed on drop.
struct ClusterGuard(String);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if let Err(e) = keelson_localcluster::down(&self.0) {
            eprintln!("bench: removing cluster {}: {e}", self.0);
        }
    }
}

/// The `keelson` binary next to this one (both built by `cargo xtask bench`).
fn keelson_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("keelson");
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
        if args.iter().any(|a| *a == b"agent")
            && args
                .windows(2)
                .any(|w| w[0] == b"--node-name" && w[1] == node.as_bytes())
        {
            return Ok(pid);
        }
    }
    bail!("no agent process for node {node}")
}

fn rss_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Counts the frontends (master slots) in the services map.
fn count_frontends(maps: &Maps) -> usize {
    maps.services
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.backend_slot == 0)
        .count()
}

/// Whether `vip:80/TCP` has `ip` among its backends in the maps.
fn has_backend(maps: &Maps, vip: Ipv4Addr, ip: Ipv4Addr) -> bool {
    let addr = ip_to_net(vip);
    let port = SERVICE_PORT.to_be();
    let Ok(master) = maps
        .services
        .get(&ServiceKey::new(addr, port, PROTO_TCP, 0), 0)
    else {
        return false;
    };
    (1..=master.count).any(|slot| {
        maps.services
            .get(&ServiceKey::new(addr, port, PROTO_TCP, slot), 0)
            .ok()
            .and_then(|v| maps.backends.get(&v.backend_id, 0).ok())
            .is_some_and(|b| b.address == ip_to_net(ip))
    })
}

/// Runs the end-to-end part with `services` (their ClusterIPs are allocated by the API
/// server; endpoints as given).
pub fn measure(services: &[BenchService]) -> Result<ApiFigures> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let name = format!("{CLUSTER_PREFIX}{}", std::process::id());
    let opts = keelson_localcluster::UpOptions {
        name: name.clone(),
        nodes: 1,
        data_dir: None,
        keelson_bin: keelson_bin()?,
    };
    eprintln!("bench: starting a one-node cluster {name}");
    // The guard comes before the cluster: `keelson down` finds what to remove by name, so a
    // start that fails half-way is removed too.
    let _guard = ClusterGuard(name);
    let cluster = making(|| rt.block_on(keelson_localcluster::up(&opts))).context("keelson up")?;
    rt.block_on(measure_async(&cluster, services))
}

async fn measure_async(
    cluster: &keelson_localcluster::Cluster,
    services: &[BenchService],
) -> Result<ApiFigures> {
    let node = cluster.nodes.first().context("no node")?.clone();
    let pin_dir = Path::new("/sys/fs/bpf/keelson").join(&node);
    let client = keelson_localcluster::client(&cluster.kubeconfig)
        .await
        .context("API client")?;
    let agent = agent_pid(&node)?;
    // The agent has loaded its datapath once the node is Ready.
    let maps = Maps::open_pinned(&pin_dir).context("opening the node's maps")?;
    let baseline = count_frontends(&maps);

    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match ns_api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the namespace"),
    }

    let (mut svcs, slices) = keelson_mode::objects(services);
    // ClusterIPs come from the API server's allocator, as for any Service.
    for s in &mut svcs {
        if let Some(spec) = s.spec.as_mut() {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
    }
    let svc_api: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let eps_api: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    eprintln!("bench: creating {} Services and EndpointSlices", svcs.len());
    let start = Instant::now();
    let created: Vec<Service> = futures::stream::iter(svcs.into_iter().zip(slices))
        .map(|(svc, slice)| {
            let (svc_api, eps_api) = (svc_api.clone(), eps_api.clone());
            async move {
                let svc = svc_api.create(&PostParams::default(), &svc).await?;
                eps_api.create(&PostParams::default(), &slice).await?;
                Ok::<_, kube::Error>(svc)
            }
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await
        .context("creating Services")?;
    let api_done = start.elapsed();
    let want = baseline + services.len();
    loop {
        if count_frontends(&maps) >= want {
            break;
        }
        // The agent gets 10 minutes after the last write (the writes themselves may take
        // minutes on a busy machine).
        if start.elapsed() > api_done + Duration::from_secs(600) {
            bail!(
                "the datapath holds {} of {want} frontends 10 minutes after the last API write",
                count_frontends(&maps)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let create_to_datapath = start.elapsed();
    eprintln!(
        "bench: API writes took {:.1} s, all in the datapath after {:.1} s",
        api_done.as_secs_f64(),
        create_to_datapath.as_secs_f64()
    );
    let rss_kib_programmed = rss_kib(agent)?;

    let vips: Vec<Ipv4Addr> = created
        .iter()
        .map(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.cluster_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
                .context("created Service without a ClusterIP")
        })
        .collect::<Result<_>>()?;
    let mut changes = Vec::with_capacity(CHANGES);
    // New endpoint addresses from a range the initial endpoints do not use.
    let fresh_base = u32::from(Ipv4Addr::new(10, 244, 120, 0));
    for c in 0..CHANGES {
        let i = (c * 97) % services.len();
        let svc = &services[i];
        let fresh = Ipv4Addr::from(fresh_base + u32::try_from(c)?);
        let mut endpoints: Vec<serde_json::Value> = svc.endpoints[..svc.endpoints.len() - 1]
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect();
        endpoints.push(json!({"addresses": [fresh.to_string()], "conditions": {"ready": true}}));
        let patch = json!({"endpoints": endpoints});
        let t0 = Instant::now();
        eps_api
            .patch(
                &format!("{}-bench", svc.name),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .context("patching an EndpointSlice")?;
        while !has_backend(&maps, vips[i], fresh) {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {c} did not reach the datapath within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        changes.push(t0.elapsed());
    }
    changes.sort();
    let rss_kib_after_changes = rss_kib(agent)?;
    Ok(ApiFigures {
        api_writes: api_done,
        create_to_datapath,
        changes,
        rss_kib_programmed,
        rss_kib_after_changes,
    })
}
