//! `cargo xtask bench api`: the API server and its store against etcd 3.4, in one run.
//!
//! One `keelson server` (release build, TLS, a fresh data directory) is measured, in order:
//! its idle RSS; a large create-and-delete of ConfigMaps with its RSS loaded and idle after;
//! ConfigMap creates at 1, 8 and 64 concurrent clients; 10,000 ConfigMaps against 10,000
//! Services at 64 clients; full lists of those 10,000 ConfigMaps; a watch fan-out; 80,000
//! `generateName` creates at 64 clients; and durability: the server is killed with SIGKILL in
//! the middle of creates at 64 clients, restarted on the same data, and every acknowledged
//! object must be there. Then the same creates go straight to an etcd 3.4 member (fsync on)
//! as kube-apiserver's storage layer issues them: the anchor for the store.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    api_bench_load::{self as load, clients},
    api_bench_procs::{Etcd, Scratch, Server, rss_kib},
    api_bench_report::{Durability, Figures, Memory},
};

/// Client counts of the create workload.
pub const CLIENTS: [usize; 3] = [1, 8, 64];
/// The concurrency of every other write phase.
const MANY: usize = 64;

/// How big each phase is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// Creates per client count (same index as [`CLIENTS`]).
    pub creates: [usize; 3],
    pub generate_name: usize,
    /// ConfigMaps and Services each.
    pub kinds: usize,
    pub list_rounds: usize,
    pub watchers: usize,
    pub watch_events: usize,
    pub memory_objects: usize,
    /// How long creates run before the kill -9.
    pub kill_after: Duration,
    /// How long the server idles before each idle RSS sample.
    pub settle: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                creates: [300, 1_000, 2_000],
                generate_name: 8_000,
                kinds: 1_000,
                list_rounds: 10,
                watchers: 100,
                watch_events: 200,
                memory_objects: 10_000,
                kill_after: Duration::from_secs(1),
                settle: Duration::from_secs(5),
            }
        } else {
            Self {
                creates: [2_000, 8_000, 20_000],
                generate_name: 80_000,
                kinds: 10_000,
                list_rounds: 30,
                watchers: 100,
                watch_events: 1_000,
                memory_objects: 100_000,
                kill_after: Duration::from_secs(3),
                settle: Duration::from_secs(10),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Leave out the etcd anchor.
    pub skip_etcd: bool,
}

/// The `keelson` binary next to this one (both built by `cargo xtask bench`).
pub fn keelson_bin() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("keelson");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release --bin keelson`",
        bin.display()
    );
    Ok(bin)
}

/// Runs the benchmark and prints the table and the `BENCH_JSON` line.
pub fn run(opts: &Options) -> Result<()> {
    let sizes = Sizes::new(opts.quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = Scratch::new()?;
    let mut figures = Figures {
        quick: opts.quick,
        ..Figures::default()
    };
    // Everything below runs on this (the main) thread's block_on: the server and etcd are
    // spawned from it, so their parent-death signal lasts as long as the bench.
    rt.block_on(async {
        if let Err(e) = keelson(&keelson_bin()?, &scratch, &sizes, &mut figures).await {
            eprintln!("bench: keelson part failed: {e:#}");
            figures.failures.push(format!("keelson: {e:#}"));
        }
        if !opts.skip_etcd
            && let Err(e) = etcd(&scratch, &sizes, &mut figures).await
        {
            eprintln!("bench: etcd part failed: {e:#}");
            figures.failures.push(format!("etcd: {e:#}"));
        }
        anyhow::Ok(())
    })?;
    drop(rt);
    drop(scratch);
    println!("\n{}", figures.table());
    for f in &figures.failures {
        println!("FAILED: {f}");
    }
    for (what, b) in [
        ("generateName", figures.generate_name.as_ref()),
        ("Services", figures.services.as_ref()),
    ] {
        if let Some(e) = b.and_then(|b| b.first_error.as_deref()) {
            println!("first {what} error: {e}");
        }
    }
    println!("\nBENCH_JSON {}", figures.json());
    anyhow::ensure!(figures.failures.is_empty(), "parts of the bench failed");
    Ok(())
}

fn log(msg: &str) {
    eprintln!("bench: {msg}");
}

/// The idle RSS after `settle`, sampled once a second; the last sample and all of them.
async fn idle_rss(pid: u32, settle: Duration) -> Result<(u64, Vec<u64>)> {
    let mut samples = Vec::new();
    let secs = settle.as_secs().max(1);
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(rss_kib(pid)?);
    }
    Ok((*samples.last().context("no sample")?, samples))
}

async fn keelson(
    bin: &std::path::Path,
    scratch: &Scratch,
    sizes: &Sizes,
    figures: &mut Figures,
) -> Result<()> {
    log("starting keelson server");
    let (mut server, admin) = Server::start(bin, scratch.path()).await?;
    let pid = server.pid()?;

    // Memory first, so that "before" is the idle server before any load.
    let (idle_before_kib, _) = idle_rss(pid, sizes.settle).await?;
    let n = sizes.memory_objects;
    load::namespace(&admin, "bench-rss").await?;
    log(&format!(
        "memory: creating {n} ConfigMaps at {MANY} clients"
    ));
    let create =
        load::create_configmaps(clients(&server, MANY).await?, "bench-rss", "rss", n, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_kib = rss_kib(pid)?;
    log("memory: deleting them");
    let delete =
        load::delete_configmaps(clients(&server, MANY).await?, "bench-rss", "rss", n).await;
    let (idle_after_kib, after_samples_kib) = idle_rss(pid, sizes.settle).await?;
    figures.memory = Some(Memory {
        objects: n,
        idle_before_kib,
        loaded_kib,
        idle_after_kib,
        after_samples_kib,
        create: create.batch,
        delete: delete.batch,
    });

    for (&c, &total) in CLIENTS.iter().zip(&sizes.creates) {
        let ns = format!("bench-c{c}");
        load::namespace(&admin, &ns).await?;
        log(&format!("creates: {total} ConfigMaps at {c} clients"));
        let out =
            load::create_configmaps(clients(&server, c).await?, &ns, "cm", total, false).await;
        figures.keelson.push(out.batch);
    }

    let k = sizes.kinds;
    load::namespace(&admin, "bench-cm").await?;
    load::namespace(&admin, "bench-svc").await?;
    log(&format!(
        "kinds: {k} ConfigMaps, then {k} Services at {MANY} clients"
    ));
    let cms =
        load::create_configmaps(clients(&server, MANY).await?, "bench-cm", "cm", k, false).await;
    figures.configmaps = Some(cms.batch);
    let svcs = load::create_services(clients(&server, MANY).await?, "bench-svc", k).await;
    figures.services = Some(svcs.batch);

    log(&format!(
        "lists: {} full lists of {k} ConfigMaps",
        sizes.list_rounds
    ));
    figures.lists = Some(load::lists(&admin, "bench-cm", k, sizes.list_rounds).await?);

    log(&format!(
        "watch: {} events to {} watchers",
        sizes.watch_events, sizes.watchers
    ));
    figures.fanout = Some(
        load::fanout(
            &server,
            "bench-watch",
            sizes.watchers,
            sizes.watch_events,
            MANY,
        )
        .await?,
    );

    let g = sizes.generate_name;
    load::namespace(&admin, "bench-gen").await?;
    log(&format!("generateName: {g} creates at {MANY} clients"));
    let gen_out = load::create_generated(clients(&server, MANY).await?, "bench-gen", g).await;
    figures.generate_name = Some(gen_out.batch);

    figures.durability = Some(durability(&mut server, &admin, sizes).await?);
    drop(server);
    Ok(())
}

/// Creates at 64 clients, `kill -9` of the server after `kill_after`, a restart on the same
/// data, and a list: every acknowledged create must be there.
async fn durability(
    server: &mut Server,
    admin: &kube::Client,
    sizes: &Sizes,
) -> Result<Durability> {
    const NS: &str = "bench-kill";
    load::namespace(admin, NS).await?;
    let conns = clients(server, MANY).await?;
    log(&format!(
        "durability: creates at {MANY} clients, kill -9 after {} s",
        sizes.kill_after.as_secs_f64()
    ));
    let writes = tokio::spawn(load::create_configmaps(conns, NS, "k", usize::MAX, true));
    tokio::time::sleep(sizes.kill_after).await;
    server.kill9();
    let out = writes.await.context("the writers")?;
    log(&format!(
        "durability: {} acknowledged before the kill; restarting",
        out.acknowledged.len()
    ));
    let admin = server.restart().await?;
    let (names, _) = load::configmap_names(&admin, NS).await?;
    let missing: Vec<String> = out
        .acknowledged
        .iter()
        .map(|i| format!("k-{i}"))
        .filter(|n| !names.contains(n))
        .collect();
    Ok(Durability {
        clients: MANY,
        acknowledged: out.acknowledged.len(),
        failed_at_kill: out.batch.errors,
        missing: missing.len(),
        missing_names: missing.into_iter().take(10).collect(),
    })
}

async fn etcd(scratch: &Scratch, sizes: &Sizes, figures: &mut Figures) -> Result<()> {
    log("starting etcd");
    let (etcd, _client) = Etcd::start(scratch.path()).await?;
    for (&c, &total) in CLIENTS.iter().zip(&sizes.creates) {
        let mut conns = Vec::with_capacity(c);
        for _ in 0..c {
            conns.push(etcd.client().await?);
        }
        log(&format!("etcd: {total} creates at {c} clients"));
        let out = load::etcd_creates(conns, &format!("c{c}"), total).await;
        figures.etcd.push(out.batch);
    }
    drop(etcd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sizes_are_the_issues_and_quick_ones_smaller() {
        let full = Sizes::new(false);
        assert_eq!(full.generate_name, 80_000);
        assert_eq!(full.kinds, 10_000);
        assert_eq!(full.memory_objects, 100_000);
        assert_eq!(full.watchers, 100);
        let quick = Sizes::new(true);
        assert!(quick.creates.iter().zip(&full.creates).all(|(q, f)| q < f));
        assert!(quick.memory_objects < full.memory_objects);
    }
}
