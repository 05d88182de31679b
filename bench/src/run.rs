//! The `services` benchmark run: for every size, each mode gets a fresh topology, is
//! programmed from nothing (timed), checked for correct translation, then loaded with new
//! connections; modes alternate within a size so drift of the machine hits all of them alike.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    api_latency, keelson_mode, kube_proxy_iptables, kube_proxy_nftables,
    load::{Target, write_targets},
    report,
    topology::{self, NODE_SERVER_SIDE_IP, Topology},
    workload::{self, BenchService},
};

/// What `cargo xtask bench services` asked for.
#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    pub sizes: Vec<usize>,
    pub threads: usize,
    /// Skip the part that needs a local cluster (API -> datapath latency, agent RSS).
    pub skip_api: bool,
    /// The datapaths measured.
    pub modes: Vec<Mode>,
}

/// A datapath implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Keelson,
    Iptables,
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Keelson, Mode::Iptables, Mode::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Keelson => "keelson",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// The figures of one mode at one size.
#[derive(Debug, Clone)]
pub struct Point {
    pub mode: Mode,
    pub size: usize,
    /// From nothing to all Services in the datapath.
    pub program: Duration,
    pub rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub connections: u64,
    pub errors: u64,
    /// keelson only: the agent's pass for one EndpointSlice change, sorted.
    pub change_passes: Vec<Duration>,
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

pub fn temp_file(name: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!("keelson-bench-{}-{name}", std::process::id())))
}

/// `cmd args` inside the network namespace at `netns` (setns between fork and exec, so no
/// `ip netns exec` and its remount of /sys); returns how long it ran.
pub fn run_in(netns: &Path, cmd: &str, args: &[String]) -> Result<Duration> {
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let fd = ns.as_raw_fd();
    let mut c = Command::new(cmd);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure makes one raw system call on a descriptor
    // opened before the fork; no allocation, no locks.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let out = c.output().with_context(|| format!("spawning {cmd}"))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn spawn_server(exe: &Path, topo: &Topology) -> Result<ChildGuard> {
    let mut child = ChildGuard(
        Command::new(exe)
            .arg("server")
            .arg("--netns")
            .arg(topo.srv.path())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the server")?,
    );
    let stdout = child.0.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(line.trim() == "READY", "the server did not start: {line:?}");
    Ok(child)
}

fn client(exe: &Path, topo: &Topology, targets: &Path, extra: &[String]) -> Result<Value> {
    let out = Command::new(exe)
        .arg("client")
        .arg("--netns")
        .arg(topo.cli.path())
        .arg("--cgroup")
        .arg(&topo.cgroup.0)
        .arg("--targets")
        .arg(targets)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .context("running the client")?;
    ensure!(out.status.success(), "the client failed: {}", out.status);
    serde_json::from_slice(&out.stdout).context("parsing the client's output")
}

fn program_iptables(topo: &Topology, services: &[BenchService]) -> Result<Duration> {
    let ns = topo.node.path();
    for args in kube_proxy_iptables::jump_rules() {
        run_in(&ns, "iptables", &args)?;
    }
    let file = temp_file("iptables.rules");
    fs::write(&file.0, kube_proxy_iptables::restore_input(services))?;
    let path = file.0.to_string_lossy().into_owned();
    run_in(
        &ns,
        "iptables-restore",
        &["-w".into(), "--noflush".into(), path],
    )
}

fn program_nftables(topo: &Topology, services: &[BenchService]) -> Result<Duration> {
    let file = temp_file("nftables.rules");
    let node_ip = NODE_SERVER_SIDE_IP.parse()?;
    fs::write(&file.0, kube_proxy_nftables::ruleset(services, node_ip))?;
    let path = file.0.to_string_lossy().into_owned();
    run_in(&topo.node.path(), "nft", &["-f".into(), path])
}

fn measure(
    exe: &Path,
    opts: &Options,
    mode: Mode,
    services: &[BenchService],
    targets: &Path,
) -> Result<Point> {
    let size = services.len();
    eprintln!("bench: {} with {size} Services", mode.name());
    let topo = Topology::new(&format!("{}-{size}", mode.name()))?;
    let _server = spawn_server(exe, &topo)?;
    // Declared after the topology: dropped (detached) before its pins and cgroup go.
    let mut datapath = None;
    let mut change_passes = Vec::new();
    let program = match mode {
        Mode::Keelson => {
            let (dp, took, passes) =
                keelson_mode::load_and_program(&topo.cgroup.0, &topo.pins.0, services)?;
            datapath = Some(dp);
            change_passes = passes;
            took
        }
        Mode::Iptables => program_iptables(&topo, services)?,
        Mode::Nftables => program_nftables(&topo, services)?,
    };
    let check = client(exe, &topo, targets, &["--check".into(), "50".into()])?;
    let errors = check["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        bail!(
            "{} does not translate ClusterIPs correctly: {errors:?}",
            mode.name()
        );
    }
    let (warmup, duration) = if opts.quick {
        (300, 1500)
    } else {
        (1000, 5000)
    };
    let r = client(
        exe,
        &topo,
        targets,
        &[
            "--threads".into(),
            opts.threads.to_string(),
            "--warmup-ms".into(),
            warmup.to_string(),
            "--duration-ms".into(),
            duration.to_string(),
        ],
    )?;
    drop(datapath);
    let point = Point {
        mode,
        size,
        program,
        rate: r["rate"].as_f64().unwrap_or(0.0),
        p50_us: r["p50_us"].as_u64().unwrap_or(0),
        p99_us: r["p99_us"].as_u64().unwrap_or(0),
        connections: r["connections"].as_u64().unwrap_or(0),
        errors: r["errors"].as_u64().unwrap_or(0),
        change_passes,
    };
    eprintln!(
        "bench: {} {size}: {:.0} conn/s, p50 {} us, p99 {} us, {} errors, programmed in {:.1} ms",
        mode.name(),
        point.rate,
        point.p50_us,
        point.p99_us,
        point.errors,
        point.program.as_secs_f64() * 1e3
    );
    Ok(point)
}

/// Runs the whole benchmark and prints the table and the `BENCH_JSON` line.
pub fn services(opts: &Options) -> Result<()> {
    ensure!(
        nix_root(),
        "the benchmark creates namespaces and loads eBPF: run it as root"
    );
    for tool in ["iptables", "iptables-restore", "nft"] {
        ensure!(
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    topology::cleanup_leftovers();
    let exe = std::env::current_exe()?;
    let mut points = Vec::new();
    for &size in &opts.sizes {
        let services = workload::services(size);
        let targets_file = temp_file(&format!("{size}.targets"));
        let targets: Vec<Target> = services
            .iter()
            .map(|s| Target {
                vip: s.cluster_ip,
                endpoints: s.endpoints.clone(),
            })
            .collect();
        write_targets(&targets_file.0, &targets)?;
        for mode in Mode::ALL.into_iter().filter(|m| opts.modes.contains(m)) {
            points.push(measure(&exe, opts, mode, &services, &targets_file.0)?);
        }
    }
    let max = opts.sizes.iter().copied().max().unwrap_or(0);
    let api = if opts.skip_api {
        Err("skipped (--skip-api)".to_string())
    } else {
        api_latency::measure(&workload::services(max)).map_err(|e| format!("{e:#}"))
    };
    if let Err(e) = &api {
        eprintln!("bench: API part: {e}");
    }
    report::print(opts, &points, &api);
    Ok(())
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
