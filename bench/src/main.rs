//! `keelson-bench`: measures keelson's socket-level Service load balancer against kube-proxy's
//! iptables and nftables modes, reproduced rule for rule, and against connections straight to
//! the endpoints (no Service translation), on this machine and in one run.
//! Entry point of `cargo xtask bench services`; the `client`/`server` subcommands are the
//! processes the bench starts inside its namespaces.

mod api_latency;
mod cleanup;
mod keelson_mode;
mod kube_proxy_hash;
mod kube_proxy_iptables;
mod kube_proxy_nftables;
mod load;
mod report;
#[cfg(test)]
mod rules_tests;
mod run;
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
    }
}
