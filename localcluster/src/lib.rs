//! Local keelson clusters on one machine (`keelson up`, `keelson down`): a server and N agents,
//! each node a network namespace on a shared underlay, each agent with its own cgroup root and
//! bpffs directory — like kind, without containers.

pub mod cleanup;
pub mod dns;
pub mod names;
pub mod topology;

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

/// Errors of creating or removing a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidName(String),
    #[error("keelson up needs root: it creates network namespaces and cgroups and loads eBPF")]
    NotRoot,
    #[error("cluster {0} is already running (keelson down --name {0} removes it)")]
    AlreadyRunning(String),
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// A step of the network topology (the `ip` command it is equivalent to) failed.
    #[error("network setup, `{step}`")]
    Network {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("timed out after {secs}s waiting for {what}\n{logs}")]
    Timeout {
        what: String,
        secs: u64,
        logs: String,
    },
}

/// What `keelson up` is asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub nodes: u8,
    pub data_dir: Option<PathBuf>,
    /// The `keelson` binary to run as server, agents and CNI plugin.
    pub keelson_bin: PathBuf,
}

/// A running local cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub nodes: Vec<String>,
}

const API_READY_TIMEOUT: Duration = Duration::from_secs(60);
const NODES_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts a cluster and returns once every node is Ready. On any failure everything made so
/// far is removed again.
pub async fn up(opts: &UpOptions) -> Result<Cluster, Error> {
    names::validate_cluster_name(&opts.name).map_err(Error::InvalidName)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    let leftovers = cleanup::inventory(&opts.name);
    if leftovers.pids.iter().any(|&p| p > 0) && leftovers.run_file.is_some() {
        return Err(Error::AlreadyRunning(opts.name.clone()));
    }
    // What a crashed cluster of this name left behind goes first.
    if !leftovers.is_empty() {
        cleanup::remove(&leftovers)?;
    }
    match start(opts).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = cleanup::remove(&cleanup::inventory(&opts.name));
            Err(e)
        }
    }
}

/// Removes a cluster, whatever state it is in.
pub fn down(name: &str) -> Result<cleanup::Report, Error> {
    names::validate_cluster_name(name).map_err(Error::InvalidName)?;
    cleanup::remove(&cleanup::inventory(name))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn start(opts: &UpOptions) -> Result<Cluster, Error> {
    let name = &opts.name;
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| names::default_data_dir(name));
    fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
    let data_dir = fs::canonicalize(&data_dir).map_err(io(&data_dir))?;
    let run_dir = Path::new(names::RUN_DIR);
    fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let run_file = run_dir.join(name);
    fs::write(&run_file, data_dir.to_string_lossy().as_bytes()).map_err(io(&run_file))?;

    let cgroup = names::cluster_cgroup(&cleanup::cgroup2_root(), name);
    let system_cg = cgroup.join("system");
    fs::create_dir_all(&system_cg).map_err(io(&system_cg))?;

    // The underlay first: the server listens on it too.
    topology::create_underlay(name)?;
    let nodes: Vec<String> = (1..=opts.nodes)
        .map(|i| names::node_name(name, i))
        .collect();
    for i in 1..=opts.nodes {
        topology::create_node(name, i)?;
    }

    let server_dir = data_dir.join("server");
    fs::create_dir_all(&server_dir).map_err(io(&server_dir))?;
    let api_port = free_port()?;
    let server_log = data_dir.join("server.log");
    let underlay = Path::new(names::NETNS_DIR).join(names::underlay_netns(name));
    spawn_detached(
        Command::new(&opts.keelson_bin)
            .arg("server")
            .arg("--data-dir")
            .arg(&server_dir)
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--advertise-address", names::API_IP])
            .args(["--advertise-port", &names::API_PORT.to_string()])
            .arg("--advertise-netns")
            .arg(&underlay)
            .args(["--lb-pool", names::LB_POOL])
            .args(["--service-cidr", names::SERVICE_CIDR]),
        &server_log,
        &system_cg,
    )?;

    let kubeconfig = server_dir.join("admin.kubeconfig");
    let client = wait_api(&kubeconfig, &server_log).await?;

    for (i, node) in (1..=opts.nodes).zip(&nodes) {
        let node_cg = cgroup.join(node);
        fs::create_dir_all(&node_cg).map_err(io(&node_cg))?;
        let node_dir = data_dir.join("nodes").join(node);
        fs::create_dir_all(&node_dir).map_err(io(&node_dir))?;
        let netns = Path::new(names::NETNS_DIR).join(names::node_netns(node));
        let node_kubeconfig =
            node_credential(&opts.keelson_bin, &server_dir, &kubeconfig, node, &node_dir)?;
        spawn_detached(
            Command::new(&opts.keelson_bin)
                .arg("agent")
                .args(["--node-name", node])
                .arg("--kubeconfig")
                .arg(&node_kubeconfig)
                .arg("--node-netns")
                .arg(&netns)
                .args(["--node-ip", &names::node_ip(i)])
                .args(["--cluster-dns", names::CLUSTER_DNS])
                .arg("--cgroup-root")
                .arg(&node_cg)
                .arg("--pin-dir")
                .arg(Path::new(names::BPFFS_KEELSON).join(node))
                .arg("--data-dir")
                .arg(&node_dir)
                .args(["--api-listen", &format!("127.0.0.1:{}", free_port()?)])
                .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()?)])
                .arg("--client-ca-file")
                .arg(server_dir.join("agent-client-ca.crt")),
            &node_dir.join("agent.log"),
            &system_cg,
        )?;
    }
    wait_nodes_ready(&client, &nodes, &data_dir).await?;
    route_pod_cidrs(&client, name).await?;
    // The cluster DNS Pods; their readiness needs the Pods' routes above.
    dns::install(
        &client,
        &kubeconfig,
        &opts.keelson_bin,
        names::SERVICE_CIDR,
        nodes.len(),
    )
    .await
    .map_err(|e| match e {
        Error::Timeout { what, secs, logs } => Error::Timeout {
            what,
            secs,
            logs: std::iter::once(logs)
                .chain(
                    nodes
                        .iter()
                        .map(|n| log_tail(&data_dir.join("nodes").join(n).join("agent.log"), 20)),
                )
                .collect::<Vec<_>>()
                .join("\n"),
        },
        other => other,
    })?;
    Ok(Cluster {
        name: name.clone(),
        data_dir,
        kubeconfig,
        nodes,
    })
}

/// Writes the agent's own credential into `node_dir`: a kubeconfig with a client certificate
/// for `system:node:<node>` in `system:nodes` (what the Node authorizer knows), for the server
/// of the admin kubeconfig. No agent holds the admin token.
fn node_credential(
    keelson: &Path,
    server_dir: &Path,
    admin: &Path,
    node: &str,
    node_dir: &Path,
) -> Result<PathBuf, Error> {
    let kc =
        kube::config::Kubeconfig::read_from(admin).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let server = kc
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.server.clone())
        .ok_or_else(|| Error::Kubeconfig("the admin kubeconfig names no server".into()))?;
    let out = node_dir.join("kubeconfig");
    let status = Command::new(keelson)
        .arg("kubeconfig")
        .arg("--data-dir")
        .arg(server_dir)
        .args(["--user", &format!("system:node:{node}")])
        .args(["--group", "system:nodes"])
        .args(["--server", &server])
        .arg("--out")
        .arg(&out)
        .output()
        .map_err(io(keelson))?;
    if !status.status.success() {
        return Err(Error::Kubeconfig(format!(
            "keelson kubeconfig for {node}: {}",
            String::from_utf8_lossy(&status.stderr)
        )));
    }
    Ok(out)
}

/// Routes every Node's podCIDR via its InternalIP in the underlay namespace (Nodes are Ready,
/// so both are set).
async fn route_pod_cidrs(client: &kube::Client, cluster: &str) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?;
    for node in &list.items {
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.as_str());
        if let (Some(cidr), Some(ip)) = (cidr, ip) {
            topology::route_pod_cidr(cluster, cidr, ip)?;
        }
    }
    Ok(())
}

/// A port the kernel just handed out on loopback, free at the time of asking.
fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io(Path::new("127.0.0.1:0")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(io(Path::new("127.0.0.1:0")))
}

/// Starts a long-running process that outlives `keelson up`: its own session, output to `log`,
/// and placed in `cgroup` so `keelson down` finds and kills it.
fn spawn_detached(cmd: &mut Command, log: &Path, cgroup: &Path) -> Result<(), Error> {
    let out = fs::File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    // SAFETY: the closure runs in the forked child before exec and only calls setsid, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    join_cgroup_on_exec(cmd, cgroup)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().map(drop).map_err(|e| Error::Spawn {
        what: format!("{cmd:?}"),
        source: e,
    })
}

/// Makes the command's process move itself into the cgroup v2 directory `cgroup` between fork
/// and exec, so it (and everything it forks) is in the cgroup before it runs any code.
pub fn join_cgroup_on_exec(cmd: &mut Command, cgroup: &Path) -> Result<(), Error> {
    let procs = CString::new(cgroup.join("cgroup.procs").to_string_lossy().into_owned())
        .map_err(|_| Error::InvalidName(format!("{} contains NUL", cgroup.display())))?;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (open, write, close) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Writing "0" to cgroup.procs moves the writing process itself (cgroup v2).
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last lines of {} ---\n{}",
        path.display(),
        all[start..].join("\n")
    )
}

async fn wait_api(kubeconfig: &Path, server_log: &Path) -> Result<kube::Client, Error> {
    let start = Instant::now();
    let mut last = String::from("no kubeconfig yet");
    while start.elapsed() < API_READY_TIMEOUT {
        if kubeconfig.exists() {
            match client(kubeconfig).await {
                Ok(c) => match c.apiserver_version().await {
                    Ok(_) => return Ok(c),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Timeout {
        what: format!("the API server ({last})"),
        secs: API_READY_TIMEOUT.as_secs(),
        logs: log_tail(server_log, 30),
    })
}

/// A client for the cluster's admin kubeconfig.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client, Error> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(Error::Kube)
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_nodes_ready(
    client: &kube::Client,
    nodes: &[String],
    data_dir: &Path,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    while start.elapsed() < NODES_READY_TIMEOUT {
        if let Ok(list) = api.list(&ListParams::default()).await {
            // A podCIDR too: the underlay's route back to each node's Pods is made from it
            // next, and a node can report Ready a moment before the controller assigns one
            // (a Pod on that node would then never hear back from the API server).
            let ready = nodes.iter().all(|n| {
                list.items.iter().any(|node| {
                    node.metadata.name.as_deref() == Some(n)
                        && is_ready(node)
                        && node
                            .spec
                            .as_ref()
                            .and_then(|s| s.pod_cidr.as_ref())
                            .is_some()
                })
            });
            if ready {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = nodes
        .iter()
        .map(|n| log_tail(&data_dir.join("nodes").join(n).join("agent.log"), 20))
        .chain(std::iter::once(log_tail(&data_dir.join("server.log"), 20)))
        .collect::<Vec<_>>()
        .join("\n");
    Err(Error::Timeout {
        what: format!("nodes {nodes:?} to be Ready with a podCIDR"),
        secs: NODES_READY_TIMEOUT.as_secs(),
        logs,
    })
}
