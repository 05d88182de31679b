//! `keelson-bench`: measures keelson's socket-level Service load balancer against kube-proxy's
//! iptables and nftables modes, reproduced rule for rule, and against connections straight to
//! the endpoints (no Service translation), on this machine and in one run.
//! Entry point of `cargo xtask bench services`; the `client`/`server` subcommands are the
//! processes the bench starts inside its namespaces. `cargo xtask bench policy` measures
//! NetworkPolicy enforcement (`policy`); its `policy-server`/`policy-client` are its Pods'
//! processes. `cargo xtask bench scheduler` measures the scheduler with 1,000 fake Nodes
//! (`scheduler`); `cargo xtask bench api` measures the API server and its store against etcd
//! (`api`); `cargo xtask bench dns` measures the cluster DNS against dnsmasq (`dns`);
//! `cargo xtask bench pods` measures what a node costs per Pod: CNI ADD/DEL against the
//! reference bridge plugin and a Deployment's time to Ready (`pods`); `cargo xtask bench authz`
//! measures what RBAC costs a write (`authz`).

mod api_bench;
mod api_bench_load;
mod api_bench_procs;
mod api_bench_report;
mod api_latency;
mod authz_bench;
mod cleanup;
mod dns;
mod dns_report;
mod keelson_mode;
mod kube_proxy_hash;
mod kube_proxy_iptables;
mod kube_proxy_nftables;
mod load;
mod pods;
mod pods_cni;
mod pods_ready;
mod policy;
mod policy_cluster;
mod policy_load;
mod policy_report;
mod policy_stats;
mod policy_topology;
mod policy_workload;
mod report;
#[cfg(test)]
mod rules_tests;
mod run;
mod scheduler;
mod scheduler_report;
mod topology;
mod workload;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "keelson benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Service load balancing: keelson vs kube-proxy iptables vs kube-proxy nftables, and
    /// the same connections straight to the endpoints.
    Services {
        /// Shorter measurement windows (for development; not for published figures).
        #[arg(long)]
        quick: bool,
        /// Service counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        sizes: Vec<usize>,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Load windows per mode and size, the modes taking turns in rotated order; rates
        /// are reported as medians over them [default: 5, 3 with --quick].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: Option<u16>,
        /// Skip the part that needs a local cluster (API -> datapath latency, agent RSS).
        #[arg(long)]
        skip_api: bool,
        /// Modes to measure (all by default; a ratio and its goal need both of its modes).
        /// `direct` connects to the endpoints with no Service translation: the limit.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "keelson,iptables,nftables,direct"
        )]
        modes: Vec<run::Mode>,
    },
    /// (internal) The accept-and-close server, inside the server namespace.
    Server {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// (internal) The load generator, inside the client namespace and cgroup.
    Client {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        targets: PathBuf,
        /// Only check that the targets reach their endpoints (this many random samples).
        #[arg(long)]
        check: Option<usize>,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
    },
    /// NetworkPolicy: throughput and connection rate with 0, 100 and 1,000 policies against
    /// no policy and a bare veth; label change -> enforcement; agent RSS at 1,000 policies.
    Policy {
        /// Shorter measurement windows (for development; not for published figures).
        #[arg(long)]
        quick: bool,
        /// Windows per path, the paths taking turns in rotated order; figures are medians
        /// over them [default: 5, 3 with --quick].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: Option<u16>,
        /// Client threads of the connection windows.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// NetworkPolicy counts of the keelson paths; the first must be 0.
        #[arg(long, value_delimiter = ',', default_value = "0,100,1000")]
        counts: Vec<usize>,
        /// Label changes timed at each cluster size.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// NetworkPolicies and remote Pods of the cluster's large size (RSS).
        #[arg(long, default_value_t = 1000)]
        cluster_policies: usize,
        #[arg(long, default_value_t = 1000)]
        cluster_pods: usize,
        /// Leave out the datapath part (throughput, connection rate).
        #[arg(long)]
        skip_datapath: bool,
        /// Leave out the part that needs a local cluster (change latency, RSS).
        #[arg(long)]
        skip_cluster: bool,
    },
    /// The scheduler at cluster scale: 1,000 fake Nodes on a real `keelson server`, then
    /// 5,000 and 30,000 Pods; Pods/s from the first create to the last bind, per-Pod
    /// latency, spread over the Nodes.
    Scheduler {
        /// Fake Nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Pod counts, each on a fresh server.
        #[arg(long, value_delimiter = ',', default_value = "5000,30000")]
        pods: Vec<usize>,
        /// Concurrent create calls.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// The keelson binary to measure (e.g. another branch's build) [default: the release
        /// binary next to this one].
        #[arg(long)]
        keelson: Option<PathBuf>,
        /// The runs' name in the table.
        #[arg(long, default_value = "this build")]
        label: String,
        /// Give up waiting for the binds after this many seconds [default: pods/40 + 60].
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// The API server: creates/s at 1, 8 and 64 clients (durable across kill -9) against etcd
    /// 3.4, generateName creates, Services against ConfigMaps, list latency, watch fan-out and
    /// the server's RSS around a large create-and-delete.
    Api {
        /// Smaller sizes (for development; not for published figures).
        #[arg(long)]
        quick: bool,
        /// Leave out the etcd anchor.
        #[arg(long)]
        skip_etcd: bool,
    },
    /// What RBAC costs a write: ConfigMap creates/s at 64 clients from a user whose rights
    /// come from a RoleBinding against the admin's (authorization skipped), in one run.
    Authz {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Creates per round and user.
        #[arg(long, default_value_t = 5000)]
        creates: usize,
        /// Other namespaces with a Role and a RoleBinding each.
        #[arg(long, default_value_t = 200)]
        other_bindings: usize,
    },
    /// Cluster DNS: dnsperf's queries/s and p99 latency against `keelson dns` serving 1,000
    /// Services of a real `keelson server`, and against dnsmasq serving the same records.
    Dns {
        /// Services (A records) served.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Seconds per dnsperf window.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Windows per server, taking turns; figures are medians over them.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// dnsperf's outstanding queries in the saturating windows (`-q`).
        #[arg(long, default_value_t = 100)]
        outstanding: usize,
        /// dnsperf's clients (`-c`, one socket each).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// The fixed rate of the latency windows (`-Q`).
        #[arg(long, default_value_t = 20000)]
        paced_qps: u64,
    },
    /// Pods: CNI ADD/DEL latency of `keelson cni` against the reference `bridge` +
    /// `host-local` plugins, and `kubectl apply` of a Deployment -> all its Pods Ready.
    Pods {
        /// Pods (network namespaces) per plugin for the CNI latencies.
        #[arg(long, default_value_t = 200)]
        cni_pods: usize,
        /// Replicas of the Deployment.
        #[arg(long, default_value_t = 100)]
        replicas: usize,
        /// Nodes of the cluster the Deployment runs on.
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Leave out the CNI latencies.
        #[arg(long)]
        skip_cni: bool,
        /// Leave out the Deployment (the part that needs a local cluster).
        #[arg(long)]
        skip_ready: bool,
        /// Leave out the DNS part.
        #[arg(long)]
        skip_dns: bool,
        /// Services (A records) the DNS part serves.
        #[arg(long, default_value_t = 1000)]
        dns_services: usize,
        /// Seconds per dnsperf window.
        #[arg(long, default_value_t = 10)]
        dns_seconds: u64,
        /// dnsperf windows per DNS server, taking turns.
        #[arg(long, default_value_t = 3)]
        dns_rounds: usize,
    },
    /// (internal) The policy bench's server Pod: accept-and-close ports and a stream sink.
    PolicyServer {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// (internal) The policy bench's client Pod: a connection load, one stream, or a check.
    PolicyClient {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        server: std::net::Ipv4Addr,
        /// Only check what reaches the server and what policy drops.
        #[arg(long)]
        check: bool,
        /// One bulk stream instead of new connections.
        #[arg(long)]
        stream: bool,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Services {
            quick,
            sizes,
            threads,
            rounds,
            skip_api,
            modes,
        } => {
            // First in, last out: it sweeps what any guard left, after all of them.
            let _run = cleanup::Run::start()?;
            run::services(&run::Options {
                quick,
                sizes,
                threads,
                rounds: rounds.map_or(if quick { 3 } else { 5 }, usize::from),
                skip_api,
                modes,
            })
        }
        Cmd::Server { netns, threads } => load::serve(&netns, threads),
        Cmd::Client {
            netns,
            cgroup,
            targets,
            check,
            threads,
            warmup_ms,
            duration_ms,
        } => match check {
            Some(samples) => load::check(&netns, &cgroup, &targets, samples),
            None => load::load(
                &netns,
                &cgroup,
                &targets,
                threads,
                Duration::from_millis(warmup_ms),
                Duration::from_millis(duration_ms),
            ),
        },
        Cmd::Policy {
            quick,
            rounds,
            threads,
            counts,
            changes,
            cluster_policies,
            cluster_pods,
            skip_datapath,
            skip_cluster,
        } => policy::run(&policy::Options {
            quick,
            rounds: rounds.map_or(if quick { 3 } else { 5 }, usize::from),
            threads,
            counts,
            skip_datapath,
            skip_cluster,
            cluster: policy_cluster::ClusterOptions {
                changes,
                policies: cluster_policies,
                pods: cluster_pods,
            },
        }),
        Cmd::Scheduler {
            nodes,
            pods,
            clients,
            keelson,
            label,
            timeout_secs,
        } => scheduler::run(&scheduler::Options {
            nodes,
            pods,
            clients,
            keelson,
            label,
            timeout: timeout_secs.map(Duration::from_secs),
        }),
        Cmd::Api { quick, skip_etcd } => {
            let _run = cleanup::Run::start()?;
            api_bench::run(&api_bench::Options { quick, skip_etcd })
        }
        Cmd::Authz {
            rounds,
            creates,
            other_bindings,
        } => {
            let _run = cleanup::Run::start()?;
            authz_bench::run(
                &api_bench::keelson_bin()?,
                &authz_bench::Options {
                    rounds,
                    creates,
                    other_bindings,
                },
            )
        }
        Cmd::Dns {
            services,
            seconds,
            rounds,
            outstanding,
            clients,
            paced_qps,
        } => dns::run(&dns::Options {
            services,
            seconds,
            rounds: rounds.max(1),
            outstanding,
            clients,
            paced_qps,
        }),
        Cmd::Pods {
            cni_pods,
            replicas,
            nodes,
            skip_cni,
            skip_ready,
            skip_dns,
            dns_services,
            dns_seconds,
            dns_rounds,
        } => {
            let _run = cleanup::Run::start()?;
            pods::run(
                &pods::Options {
                    cni_pods,
                    replicas,
                    nodes,
                    skip_cni,
                    skip_ready,
                    dns: (!skip_dns).then_some(dns::Options {
                        services: dns_services,
                        seconds: dns_seconds,
                        rounds: dns_rounds.max(1),
                        outstanding: 100,
                        clients: 4,
                        paced_qps: 20_000,
                    }),
                },
                std::env::current_exe()?.with_file_name("keelson"),
            )
        }
        Cmd::PolicyServer {
            netns,
            cgroup,
            threads,
        } => policy_load::serve(&netns, cgroup.as_deref(), threads),
        Cmd::PolicyClient {
            netns,
            cgroup,
            server,
            check,
            stream,
            threads,
            warmup_ms,
            duration_ms,
        } => {
            let (cg, warmup, duration) = (
                cgroup.as_deref(),
                Duration::from_millis(warmup_ms),
                Duration::from_millis(duration_ms),
            );
            if check {
                policy_load::check(&netns, cg, server)
            } else if stream {
                policy_load::stream(&netns, cg, server, warmup, duration)
            } else {
                policy_load::connections(&netns, cg, server, threads, warmup, duration)
            }
        }
    }
}
