//! The `keelson` binary: command-line parsing only. Each subcommand hands over to a library:
//! the control plane (`keelson-control`), the agent (`keelson-agent`) or local clusters
//! (`keelson-localcluster`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keelson",
    version,
    about = "eBPF-first Kubernetes dataplane and control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane: Kubernetes API, store, scheduler, controllers.
    Server {
        #[arg(long, default_value = "/var/lib/keelson/server")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        #[arg(long, default_value = "10.96.0.0/16")]
        service_cidr: String,
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
        #[arg(long, default_value_t = 24)]
        node_cidr_mask: u8,
        /// LoadBalancer Services get addresses from these CIDRs (e.g. 172.30.0.0/24,172.30.1.0/28).
        #[arg(long)]
        lb_pool: Option<String>,
        /// The address Pods reach the API server on: the endpoint of the `kubernetes` Service
        /// (default: the listen address, unless it is loopback or a wildcard).
        #[arg(long)]
        advertise_address: Option<IpAddr>,
        /// The port of the advertised address (default: the listen port).
        #[arg(long, requires = "advertise_address")]
        advertise_port: Option<u16>,
        /// Also listen on the advertised address and port inside this network namespace
        /// (e.g. /run/netns/kls-keelson-ul, the underlay of a local cluster).
        #[arg(long, requires = "advertise_address")]
        advertise_netns: Option<PathBuf>,
        /// Static bearer tokens: CSV rows `token,user,uid[,"group1,group2"]`, as
        /// kube-apiserver's flag of this name.
        #[arg(long)]
        token_auth_file: Option<PathBuf>,
    },
    /// Run the node agent: eBPF datapath, Service load balancing, CNI and (standalone) kubelet.
    Agent {
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// The node's network namespace (e.g. /run/netns/kls-keelson-n1); default: the agent's own.
        #[arg(long)]
        node_netns: Option<PathBuf>,
        #[arg(long)]
        node_ip: Ipv4Addr,
        /// cgroup v2 directory the socket-level load balancer attaches to.
        #[arg(long, default_value = "/sys/fs/cgroup/unified")]
        cgroup_root: PathBuf,
        /// bpffs directory for pinned maps and links (default /sys/fs/bpf/keelson/<node>).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/keelson/agent")]
        data_dir: PathBuf,
        /// The node API (logs, exec, attach, port-forward) the server proxies to.
        #[arg(long, default_value = "127.0.0.1:10250")]
        api_listen: SocketAddr,
        /// CA of the client certificate the API server presents (the server keeps it in
        /// `<data-dir>/agent-client-ca.crt`): with it the node API serves TLS to that
        /// certificate only; without it, plain HTTP to anyone who reaches `--api-listen`.
        #[arg(long)]
        client_ca_file: Option<PathBuf>,
        /// The node API's serving certificate; default: self-signed, kept in the data dir.
        #[arg(long, requires = "tls_private_key_file")]
        tls_cert_file: Option<PathBuf>,
        #[arg(long, requires = "tls_cert_file")]
        tls_private_key_file: Option<PathBuf>,
        /// Plain-HTTP `/metrics`, `/flows` and `/healthz`.
        #[arg(long, default_value = "127.0.0.1:9962")]
        metrics_listen: SocketAddr,
        /// Only the dataplane (a DaemonSet on an existing cluster): no Node registration, no Pods.
        #[arg(long)]
        no_kubelet: bool,
        /// Backend selection for flows from outside the node (NodePort, LoadBalancer,
        /// externalIPs): `random`, or `maglev` consistent hashing. A Service's annotation
        /// `service.keelson.io/lb-algorithm` overrides it.
        #[arg(long, default_value = "random", value_parser = ["random", "maglev"])]
        lb_algorithm: String,
        /// Which flows the datapath reports (`keelson flows`): `all` new flows with their
        /// verdicts, or only `drops`.
        #[arg(long, default_value = "all", value_parser = ["all", "drops"])]
        flow_events: String,
        /// The cluster DNS Service's address Pods resolve names through (the kubelet's
        /// `--cluster-dns`); without it, `dnsPolicy: ClusterFirst` Pods get the node's
        /// resolv.conf.
        #[arg(long)]
        cluster_dns: Option<Ipv4Addr>,
        /// The cluster's DNS domain (the kubelet's `--cluster-domain`).
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
    },
    /// Copy a container's stdout (stdin) and stderr (descriptor 3) into its log file in the CRI
    /// format; the agent starts one per container.
    #[command(hide = true)]
    Logger { file: PathBuf },
    /// Write a kubeconfig for a user with a client certificate of a server's CA, as
    /// `kubeadm kubeconfig user` does: `--user system:node:n1 --group system:nodes` is a node
    /// agent's credential.
    Kubeconfig {
        /// The server's data dir (its `ca.key` signs the certificate).
        #[arg(long, default_value = "/var/lib/keelson/server")]
        data_dir: PathBuf,
        /// The certificate's common name: the user.
        #[arg(long)]
        user: String,
        /// Its organization: a group.
        #[arg(long)]
        group: Option<String>,
        /// The server's URL, e.g. https://127.0.0.1:6443.
        #[arg(long)]
        server: String,
        /// Where to write it (mode 0600); stdout without.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Cluster DNS: answers the Kubernetes DNS records of Services, endpoints and Pods (what
    /// CoreDNS's kubernetes plugin serves) and forwards other names upstream.
    Dns {
        /// UDP and TCP address to answer on.
        #[arg(long, default_value = "0.0.0.0:53")]
        listen: SocketAddr,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// kubeconfig (default: in-cluster, the service account token and CA, or $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Resolvers for names outside the cluster, `IP` or `IP:port`, comma-separated
        /// (default: the nameservers of /etc/resolv.conf).
        #[arg(long, value_delimiter = ',', value_parser = parse_upstream)]
        upstream: Option<Vec<SocketAddr>>,
        /// HTTP `/health`, `/ready` (once the watches have synced) and `/metrics`.
        #[arg(long, default_value = "0.0.0.0:8080")]
        health_listen: SocketAddr,
    },
    /// The CNI plugin (CNI 1.1): reads CNI_* variables and the network config on stdin.
    Cni,
    /// Start a local cluster: a server and N agents, each node in its own network namespace.
    Up {
        #[arg(long, default_value_t = 1)]
        nodes: u8,
        #[arg(long, default_value = "keelson")]
        name: String,
        /// Default: /var/lib/keelson/<name>.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Remove a local cluster: processes, namespaces, links, cgroups, pins and data.
    Down {
        #[arg(long, default_value = "keelson")]
        name: String,
    },
    /// Show what the datapath did with each flow and why: drops, verdicts, the policy that
    /// allowed a flow, the Pods and Services at both ends (like `hubble observe`).
    Flows {
        /// Keep printing new flows as they come.
        #[arg(long, short)]
        follow: bool,
        /// Only this node's flows (all nodes by default).
        #[arg(long)]
        node: Option<String>,
        /// Only flows from or to this Pod (`namespace/name`).
        #[arg(long)]
        pod: Option<String>,
        /// Only `allowed` or `dropped` flows.
        #[arg(long, value_parser = ["allowed", "dropped"])]
        verdict: Option<String>,
        /// Only flows of the last duration (`30s`, `5m`, `1h`); all kept flows by default.
        #[arg(long, value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// kubeconfig of the cluster (`$KUBECONFIG` or in-cluster by default).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// NetworkPolicy tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Inspect the eBPF datapath of a node.
    Bpf {
        #[command(subcommand)]
        cmd: BpfCmd,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Replay the recorded flows against the policies as they would be with a draft applied,
    /// and list the flows whose verdict would change. Nothing is applied.
    Whatif {
        /// The draft: NetworkPolicies in YAML or JSON (several documents or a List).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace of draft policies that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Flows of the last duration (`10m`, `1h`).
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        since: std::time::Duration,
        /// kubeconfig of the cluster (`$KUBECONFIG` or in-cluster by default).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BpfCmd {
    /// Print a map decoded: services, backends, revnat, ct, affinity, maglev, endpoints,
    /// metrics, policy, ipcache, identities.
    Dump {
        what: String,
        /// Node whose pins to read (/sys/fs/bpf/keelson/<node>).
        #[arg(long, conflicts_with = "pin_dir")]
        node: Option<String>,
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn default_pin_dir(node: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/keelson").join(node)
}

fn main() -> ExitCode {
    // A container runtime executes a CNI plugin by its type name with no arguments and the
    // request in CNI_* variables (CNI spec, section "Parameters").
    if std::env::args_os().len() == 1 && std::env::var_os("CNI_COMMAND").is_some() {
        return exit_code(keelson_agent::cni::plugin_main());
    }
    let cli = Cli::parse();
    if let Cmd::Cni = cli.cmd {
        return exit_code(keelson_agent::cni::plugin_main());
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelson: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Server {
            data_dir,
            listen,
            service_cidr,
            cluster_cidr,
            node_cidr_mask,
            lb_pool,
            advertise_address,
            advertise_port,
            advertise_netns,
            token_auth_file,
        } => {
            init_tracing();
            let cfg = keelson_control::server::ServerConfig {
                data_dir,
                listen,
                service_cidr,
                cluster_cidr,
                node_cidr_mask,
                lb_pool,
                advertise: advertise_address.map(|address| keelson_control::server::Advertise {
                    address,
                    port: advertise_port,
                    netns: advertise_netns,
                }),
                token_auth_file,
            };
            runtime()?.block_on(keelson_control::server::run(cfg))?;
        }
        Cmd::Agent {
            node_name,
            kubeconfig,
            node_netns,
            node_ip,
            cgroup_root,
            pin_dir,
            data_dir,
            api_listen,
            client_ca_file,
            tls_cert_file,
            tls_private_key_file,
            metrics_listen,
            no_kubelet,
            lb_algorithm,
            flow_events,
            cluster_dns,
            cluster_domain,
        } => {
            init_tracing();
            let pin_dir = pin_dir.unwrap_or_else(|| default_pin_dir(&node_name));
            let cfg = keelson_agent::AgentConfig {
                node_name,
                kubeconfig,
                node_netns,
                node_ip,
                cgroup_root,
                pin_dir,
                data_dir,
                api_listen,
                node_tls: client_ca_file.map(|client_ca| keelson_agent::node::tls::TlsFiles {
                    cert_and_key: tls_cert_file.zip(tls_private_key_file),
                    client_ca,
                }),
                metrics_listen,
                cni_bin: std::env::current_exe().context("locating the keelson binary")?,
                kubelet: !no_kubelet,
                maglev_default: lb_algorithm == "maglev",
                all_flow_events: flow_events == "all",
                cluster_dns,
                cluster_domain,
            };
            runtime()?.block_on(keelson_agent::run(cfg))?;
        }
        Cmd::Kubeconfig {
            data_dir,
            user,
            group,
            server,
            out,
        } => {
            let kc = keelson_control::api::pki::client_kubeconfig(
                &data_dir,
                &user,
                group.as_deref(),
                &server,
            )?;
            match out {
                Some(path) => {
                    use std::io::Write as _;
                    use std::os::unix::fs::OpenOptionsExt as _;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                        .and_then(|mut f| f.write_all(kc.as_bytes()))
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                None => println!("{kc}"),
            }
        }
        Cmd::Logger { file } => {
            keelson_agent::node::logfile::run_logger(&file)?;
        }
        Cmd::Dns {
            listen,
            cluster_domain,
            kubeconfig,
            upstream,
            health_listen,
        } => {
            init_tracing();
            let cfg = keelson_agent::dns::DnsConfig {
                listen,
                cluster_domain,
                kubeconfig,
                upstream,
                health_listen,
            };
            runtime()?.block_on(keelson_agent::dns::run(cfg))?;
        }
        Cmd::Cni => unreachable!("handled before"),
        Cmd::Up {
            nodes,
            name,
            data_dir,
        } => {
            let opts = keelson_localcluster::UpOptions {
                name,
                nodes,
                data_dir,
                keelson_bin: std::env::current_exe().context("locating the keelson binary")?,
            };
            let cluster = runtime()?.block_on(keelson_localcluster::up(&opts))?;
            println!("KUBECONFIG={}", cluster.kubeconfig.display());
        }
        Cmd::Down { name } => {
            let report = keelson_localcluster::down(&name)?;
            eprintln!("{report}");
        }
        Cmd::Bpf {
            cmd:
                BpfCmd::Dump {
                    what,
                    node,
                    pin_dir,
                    json,
                },
        } => {
            let pin_dir = match (pin_dir, node) {
                (Some(dir), _) => dir,
                (None, Some(node)) => default_pin_dir(&node),
                (None, None) => {
                    anyhow::bail!("name the node (--node) or its pin directory (--pin-dir)")
                }
            };
            print!("{}", keelson_agent::bpf::dump(&pin_dir, &what, json)?);
        }
        Cmd::Flows {
            follow,
            node,
            pod,
            verdict,
            since,
            json,
            kubeconfig,
        } => runtime()?.block_on(async move {
            use keelson_agent::flows::{Flow, client};
            let kube = keelson_agent::kube_client(kubeconfig.as_deref()).await?;
            let agents = client::agents(&kube, node.as_deref()).await?;
            let filter = client::Filter { pod, verdict };
            let print = |f: &Flow| {
                if json {
                    println!("{}", serde_json::to_string(f).unwrap_or_default());
                } else {
                    println!("{}", f.line());
                }
            };
            if follow {
                client::follow(&agents, since, &filter, print).await?;
            } else {
                client::collect(&agents, since, &filter)
                    .await?
                    .iter()
                    .for_each(print);
            }
            Ok::<_, anyhow::Error>(())
        })?,
        Cmd::Policy {
            cmd:
                PolicyCmd::Whatif {
                    file,
                    namespace,
                    since,
                    kubeconfig,
                },
        } => runtime()?.block_on(async move {
            use keelson_agent::flows::{client, whatif};
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let draft = whatif::parse_draft(&text, &namespace)?;
            let kube = keelson_agent::kube_client(kubeconfig.as_deref()).await?;
            let agents = client::agents(&kube, None).await?;
            let flows = client::collect(&agents, Some(since), &client::Filter::default()).await?;
            let now = whatif::snapshot(&kube).await?;
            let changes = whatif::changes(&now, &draft, &flows);
            for c in &changes {
                println!("{}", c.line());
            }
            eprintln!(
                "{} of {} recorded flows would change verdict with the draft ({} polic{})",
                changes.iter().map(|c| c.flows).sum::<usize>(),
                flows.len(),
                draft.len(),
                if draft.len() == 1 { "y" } else { "ies" }
            );
            Ok::<_, anyhow::Error>(())
        })?,
    }
    Ok(())
}

/// A resolver address: `IP` (port 53) or `IP:port`.
fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse()
        .map_err(|_| format!("{text:?}: expected IP or IP:port"))
}

/// A duration such as `90s`, `5m`, `1h30m` or `2d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: expected a number before {c:?}"))?;
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (s, m, h, d)")),
        };
    }
    if !number.is_empty() {
        return Err(format!(
            "{text:?}: a unit (s, m, h, d) must follow {number}"
        ));
    }
    if total == 0 {
        return Err(format!("{text:?}: not a duration"));
    }
    Ok(std::time::Duration::from_secs(total))
}
