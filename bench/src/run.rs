//! The `services` benchmark run. For every size, each mode gets a fresh topology, is
//! programmed from nothing (timed) and checked for correct translation; all of them stay up
//! together while rounds of load windows run, one window per mode and round, the order of the
//! modes rotated every round, so drift of the machine (other work, frequency) hits every mode
//! alike, and the windows of one round, seconds apart, can be compared pair by pair. A size's
//! topologies go before the next size is built (10,000-Service rulesets are large).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use keelson_agent::loader::Datapath;
use keelson_common::names;
use serde_json::Value;

use crate::{
    api_latency,
    cleanup::{self, making},
    keelson_mode::{self, HookRun},
    kube_proxy_iptables, kube_proxy_nftables,
    load::{endpoint_targets, service_targets, targets_text},
    report,
    topology::{NODE_SERVER_SIDE_IP, Topology},
    workload::{self, BenchService},
};

/// What `cargo xtask bench services` asked for.
#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    pub sizes: Vec<usize>,
    pub threads: usize,
    /// Load windows per mode and size, one per round.
    pub rounds: usize,
    /// Skip the part that needs a local cluster (API -> datapath latency, agent RSS).
    pub skip_api: bool,
    /// The datapaths measured.
    pub modes: Vec<Mode>,
}

/// A datapath implementation under test, or the baseline without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Keelson,
    Iptables,
    Nftables,
    /// No Service translation at all: the client connects to the endpoints' own addresses,
    /// with no program attached and no rules, over the same topology. The physical limit
    /// of the other modes.
    Direct,
}

impl Mode {
    /// Every mode, in the order of a round's windows before rotation: direct right after
    /// keelson, so that in most rounds the two windows whose ratio is keelson's distance
    /// from the limit run back to back.
    pub const ALL: [Mode; 4] = [Mode::Keelson, Mode::Direct, Mode::Iptables, Mode::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Keelson => "keelson",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Direct => "direct",
        }
    }
}

/// The figures of one load window (one mode, one size, one round).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The round the window ran in (windows of one round ran back to back).
    pub round: usize,
    /// Its place within the round (0 = first).
    pub slot: usize,
    pub rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub connections: u64,
    pub errors: u64,
    /// keelson only: its socket hooks that ran during the window, from the kernel's
    /// run-time statistics.
    pub hooks: Vec<HookRun>,
}

impl Window {
    /// What the hook `name` did in this window, if it ran.
    pub fn hook(&self, name: &str) -> Option<&HookRun> {
        self.hooks.iter().find(|h| h.name == name)
    }
}

/// The figures of one mode at one size.
#[derive(Debug, Clone)]
pub struct Point {
    pub mode: Mode,
    pub size: usize,
    /// From nothing to all Services in the datapath; none for the direct mode, which has
    /// nothing to program.
    pub program: Option<Duration>,
    /// One per round, in round order.
    pub windows: Vec<Window>,
    /// keelson only: the agent's pass for one EndpointSlice change, sorted.
    pub change_passes: Vec<Duration>,
}

impl Point {
    /// The median rate over the rounds.
    pub fn rate(&self) -> f64 {
        median(self.windows.iter().map(|w| w.rate))
    }

    /// The lowest and the highest rate of a round.
    pub fn rate_range(&self) -> (f64, f64) {
        self.windows
            .iter()
            .map(|w| w.rate)
            .fold((f64::NAN, f64::NAN), |(lo, hi), r| (lo.min(r), hi.max(r)))
    }

    /// The median over the rounds of each window's connect-latency p50.
    #[expect(clippy::cast_precision_loss, reason = "microseconds")]
    pub fn p50_us(&self) -> f64 {
        median(self.windows.iter().map(|w| w.p50_us as f64))
    }

    /// The median over the rounds of each window's connect-latency p99.
    #[expect(clippy::cast_precision_loss, reason = "microseconds")]
    pub fn p99_us(&self) -> f64 {
        median(self.windows.iter().map(|w| w.p99_us as f64))
    }

    /// The median over the rounds of the hook `name`'s average ns per run (rounds it ran
    /// in); NaN if it never ran.
    pub fn hook_ns_per_run(&self, name: &str) -> f64 {
        median(
            self.windows
                .iter()
                .filter_map(|w| w.hook(name))
                .map(HookRun::ns_per_run),
        )
    }

    /// keelson's connect4 hook, whose run is its per-connection work in this bench.
    pub fn connect4_ns(&self) -> f64 {
        self.hook_ns_per_run(names::PROG_CONNECT4)
    }

    /// The names of the hooks that ran in any window, in the datapath's order.
    pub fn hooks_ran(&self) -> Vec<&'static str> {
        let mut ran: Vec<&'static str> = Vec::new();
        for h in self.windows.iter().flat_map(|w| &w.hooks) {
            if !ran.contains(&h.name) {
                ran.push(h.name);
            }
        }
        ran
    }

    /// Failed connections over all windows.
    pub fn errors(&self) -> u64 {
        self.windows.iter().map(|w| w.errors).sum()
    }
}

/// The median (the mean of the two middle values for an even count); NaN for no values.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// `a`'s rate over `b`'s, round by round (only rounds both ran in and `b` had a rate): two
/// windows of one round ran within seconds of each other, so the ratio is free of the drift
/// between rounds.
pub fn paired_ratios(a: &Point, b: &Point) -> Vec<f64> {
    a.windows
        .iter()
        .filter_map(|wa| {
            let wb = b.windows.iter().find(|wb| wb.round == wa.round)?;
            (wb.rate > 0.0).then(|| wa.rate / wb.rate)
        })
        .collect()
}

/// The order in which `modes` modes run in `round`: the list rotated by the round, so that
/// round r starts with mode r % modes and every mode takes every place equally often.
pub fn round_order(modes: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..modes).map(move |k| (round + k) % modes)
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

/// A file of the run's in the temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `contents` to `<temp dir>/keelson-bench-<pid>-<name>`.
    pub fn write(name: &str, contents: impl AsRef<[u8]>) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "{}{}-{name}",
            cleanup::TEMP_PREFIX,
            std::process::id()
        ));
        // The guard exists before the file does: a failed write leaves nothing either.
        let file = Self(path);
        making(|| fs::write(&file.0, contents))
            .with_context(|| format!("writing {}", file.0.display()))?;
        Ok(file)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Makes the child get SIGKILL when the bench dies, however it dies (even SIGKILL, where no
/// guard runs): a server or a long `iptables-restore` never outlives the run.
///
/// The kernel sends it when the thread that forked the child exits; every child is forked
/// by the main thread, which lives as long as the process.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec the closure makes one raw system call; no allocation,
    // no locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// `cmd args` inside the network namespace at `netns` (setns between fork and exec, so no
/// `ip netns exec` and its remount of /sys); returns how long it ran.
pub fn run_in(netns: &Path, cmd: &str, args: &[String]) -> Result<Duration> {
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let fd = ns.as_raw_fd();
    let mut c = Command::new(cmd);
    die_with_parent(&mut c)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
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
        die_with_parent(&mut Command::new(exe))
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
    let out = die_with_parent(&mut Command::new(exe))
        .arg("client")
        .arg("--netns")
        .arg(topo.cli.path())
        .arg("--cgroup")
        .arg(&topo.cgroup.path)
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
    let file = TempFile::write(
        "iptables.rules",
        kube_proxy_iptables::restore_input(services),
    )?;
    let path = file.0.to_string_lossy().into_owned();
    run_in(
        &ns,
        "iptables-restore",
        &["-w".into(), "--noflush".into(), path],
    )
}

fn program_nftables(topo: &Topology, services: &[BenchService]) -> Result<Duration> {
    let node_ip = NODE_SERVER_SIDE_IP.parse()?;
    let file = TempFile::write(
        "nftables.rules",
        kube_proxy_nftables::ruleset(services, node_ip),
    )?;
    let path = file.0.to_string_lossy().into_owned();
    run_in(&topo.node.path(), "nft", &["-f".into(), path])
}

/// One mode at one size, programmed and checked, kept up across the rounds. Fields drop in
/// declaration order: the datapath is detached before the server stops and before the
/// topology's pins and cgroup go.
struct Prepared {
    mode: Mode,
    size: usize,
    datapath: Option<Datapath>,
    _server: ChildGuard,
    topo: Topology,
    /// The client's input for this mode: Service VIPs, or the endpoints for direct.
    targets: PathBuf,
    program: Option<Duration>,
    change_passes: Vec<Duration>,
}

/// Builds `mode`'s topology, starts its server, programs `services` (timed) and checks that
/// the first, the last and a sample of the targets reach their endpoints.
fn prepare(
    exe: &Path,
    mode: Mode,
    services: &[BenchService],
    targets: &TargetFiles,
) -> Result<Prepared> {
    let size = services.len();
    eprintln!("bench: {} with {size} Services: programming", mode.name());
    let topo = Topology::new(&format!("{}-{size}", mode.name()))?;
    let server = spawn_server(exe, &topo)?;
    let mut datapath = None;
    let mut change_passes = Vec::new();
    let program = match mode {
        Mode::Keelson => {
            let (dp, took, passes) =
                keelson_mode::load_and_program(&topo.cgroup.path, &topo.pins.0, services)?;
            datapath = Some(dp);
            change_passes = passes;
            Some(took)
        }
        Mode::Iptables => Some(program_iptables(&topo, services)?),
        Mode::Nftables => Some(program_nftables(&topo, services)?),
        Mode::Direct => None,
    };
    let targets = targets.for_mode(mode).to_path_buf();
    let check = client(exe, &topo, &targets, &["--check".into(), "50".into()])?;
    let errors = check["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        match mode {
            Mode::Direct => bail!("the endpoints do not answer on their own addresses: {errors:?}"),
            _ => bail!(
                "{} does not translate ClusterIPs correctly: {errors:?}",
                mode.name()
            ),
        }
    }
    match program {
        Some(took) => eprintln!(
            "bench: {} {size}: programmed in {:.1} ms",
            mode.name(),
            took.as_secs_f64() * 1e3
        ),
        None => eprintln!("bench: {} {size}: nothing to program", mode.name()),
    }
    Ok(Prepared {
        mode,
        size,
        datapath,
        _server: server,
        topo,
        targets,
        program,
        change_passes,
    })
}

/// The client's two input files of one size, removed on drop.
struct TargetFiles {
    /// One line per Service VIP (keelson, iptables, nftables).
    services: TempFile,
    /// One line per endpoint, addressed directly (direct).
    endpoints: TempFile,
}

impl TargetFiles {
    fn write(services: &[BenchService]) -> Result<Self> {
        let size = services.len();
        Ok(Self {
            services: TempFile::write(
                &format!("{size}.targets"),
                targets_text(&service_targets(services)),
            )?,
            endpoints: TempFile::write(
                &format!("{size}.direct-targets"),
                targets_text(&endpoint_targets(services)),
            )?,
        })
    }

    fn for_mode(&self, mode: Mode) -> &Path {
        match mode {
            Mode::Direct => &self.endpoints.0,
            Mode::Keelson | Mode::Iptables | Mode::Nftables => &self.services.0,
        }
    }
}

/// One load window against a prepared mode.
fn window(exe: &Path, opts: &Options, p: &Prepared, round: usize, slot: usize) -> Result<Window> {
    // kube-proxy's modes track every connection; entries of earlier rounds (TIME_WAIT, 120 s)
    // would pile up towards nf_conntrack_max over the rounds, so each window starts from the
    // same empty table, as a single window per topology did. Nothing to flush for keelson
    // and direct, whose node namespaces have no rules and so no conntrack.
    if matches!(p.mode, Mode::Iptables | Mode::Nftables) {
        run_in(&p.topo.node.path(), "conntrack", &["-F".into()])?;
    }
    let (warmup, duration) = if opts.quick {
        (300, 1500)
    } else {
        (1000, 5000)
    };
    let args = [
        "--threads".into(),
        opts.threads.to_string(),
        "--warmup-ms".into(),
        warmup.to_string(),
        "--duration-ms".into(),
        duration.to_string(),
    ];
    let run = || client(exe, &p.topo, &p.targets, &args);
    // keelson's windows run with the kernel's BPF run-time statistics on, read from the
    // programs of this mode's own datapath (see `with_hook_stats` for what that costs).
    let (r, hooks) = match &p.datapath {
        Some(dp) => keelson_mode::with_hook_stats(dp, run)?,
        None => (run()?, Vec::new()),
    };
    let w = Window {
        round,
        slot,
        rate: r["rate"].as_f64().unwrap_or(0.0),
        p50_us: r["p50_us"].as_u64().unwrap_or(0),
        p99_us: r["p99_us"].as_u64().unwrap_or(0),
        connections: r["connections"].as_u64().unwrap_or(0),
        errors: r["errors"].as_u64().unwrap_or(0),
        hooks,
    };
    let hook = w
        .hook(names::PROG_CONNECT4)
        .map(|h| format!(", connect4 hook {:.0} ns x {}", h.ns_per_run(), h.runs))
        .unwrap_or_default();
    eprintln!(
        "bench: round {}/{} {} {}: {:.0} conn/s, p50 {} us, p99 {} us, {} errors{hook}",
        round + 1,
        opts.rounds,
        p.mode.name(),
        p.size,
        w.rate,
        w.p50_us,
        w.p99_us,
        w.errors
    );
    Ok(w)
}

/// All selected modes at one size: prepared together, then `opts.rounds` rounds of one
/// window each, then torn down together.
fn measure_size(exe: &Path, opts: &Options, services: &[BenchService]) -> Result<Vec<Point>> {
    let targets = TargetFiles::write(services)?;
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| opts.modes.contains(m))
        .collect();
    let mut prepared = Vec::with_capacity(modes.len());
    for &mode in &modes {
        prepared.push(prepare(exe, mode, services, &targets)?);
    }
    let mut windows = vec![Vec::with_capacity(opts.rounds); prepared.len()];
    for round in 0..opts.rounds {
        for (slot, i) in round_order(prepared.len(), round).enumerate() {
            windows[i].push(window(exe, opts, &prepared[i], round, slot)?);
        }
    }
    let points = prepared
        .iter()
        .zip(windows)
        .map(|(p, windows)| Point {
            mode: p.mode,
            size: p.size,
            program: p.program,
            windows,
            change_passes: p.change_passes.clone(),
        })
        .collect();
    // Each Prepared drops its datapath, server and topology in that order.
    drop(prepared);
    Ok(points)
}

/// Runs the whole benchmark and prints the table and the `BENCH_JSON` line.
pub fn services(opts: &Options) -> Result<()> {
    for tool in ["iptables", "iptables-restore", "nft", "conntrack"] {
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
    ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    let exe = std::env::current_exe()?;
    let mut points = Vec::new();
    for &size in &opts.sizes {
        let services = workload::services(size);
        points.extend(measure_size(&exe, opts, &services)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn point(mode: Mode, rates: &[f64]) -> Point {
        Point {
            mode,
            size: 10,
            program: None,
            windows: rates
                .iter()
                .enumerate()
                .map(|(round, &rate)| Window {
                    round,
                    slot: 0,
                    rate,
                    p50_us: 100 + round as u64 * 10,
                    p99_us: 1000 * (round as u64 + 1),
                    connections: 1000,
                    errors: round as u64,
                    hooks: vec![HookRun {
                        name: names::PROG_CONNECT4,
                        runs: 1000,
                        run_time_ns: 1000 * (200 + round as u64),
                    }],
                })
                .collect(),
            change_passes: Vec::new(),
        }
    }

    #[test]
    fn temp_files_go_with_their_guard() {
        let file = TempFile::write("unit-test", "x").expect("write");
        let path = file.0.clone();
        assert!(
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| cleanup::owner(n, cleanup::TEMP_PREFIX))
                == Some(std::process::id()),
            "{path:?} carries the run's pid"
        );
        assert_eq!(fs::read_to_string(&path).expect("read"), "x");
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median([5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median([4.0, 1.0, 3.0, 10.0]), 3.5);
        assert!(median([]).is_nan());
    }

    #[test]
    fn each_round_starts_one_mode_later_and_every_mode_takes_every_place() {
        let order = |r| round_order(3, r).collect::<Vec<_>>();
        assert_eq!(order(0), [0, 1, 2]);
        assert_eq!(order(1), [1, 2, 0]);
        assert_eq!(order(2), [2, 0, 1]);
        assert_eq!(order(3), [0, 1, 2]);
        let mut firsts = [0; 3];
        for r in 0..6 {
            firsts[order(r)[0]] += 1;
        }
        assert_eq!(firsts, [2, 2, 2]);
        assert_eq!(round_order(1, 4).collect::<Vec<_>>(), [0]);
        // All four modes: keelson (0) and direct (1) are neighbours in three rounds of four.
        assert_eq!(round_order(4, 1).collect::<Vec<_>>(), [1, 2, 3, 0]);
    }

    #[test]
    fn point_figures_are_medians_over_rounds() {
        let p = point(
            Mode::Keelson,
            &[9000.0, 12_000.0, 10_000.0, 30_000.0, 11_000.0],
        );
        assert_eq!(p.rate(), 11_000.0);
        assert_eq!(p.rate_range(), (9000.0, 30_000.0));
        // p50s 100..140, p99s 1000..5000.
        assert_eq!(p.p50_us(), 120.0);
        assert_eq!(p.p99_us(), 3000.0);
        assert_eq!(p.errors(), 10);
        // 200..204 ns per run.
        assert_eq!(p.connect4_ns(), 202.0);
        assert!(p.hook_ns_per_run(names::PROG_SENDMSG4).is_nan());
        assert_eq!(p.hooks_ran(), [names::PROG_CONNECT4]);
    }

    #[test]
    fn paired_ratios_compare_windows_of_the_same_round() {
        // The machine slows down in rounds 1 and 2; the paired ratio stays 2.
        let k = point(Mode::Keelson, &[20_000.0, 10_000.0, 8000.0]);
        let mut i = point(Mode::Iptables, &[10_000.0, 5000.0, 4000.0]);
        assert_eq!(paired_ratios(&k, &i), [2.0, 2.0, 2.0]);
        // Pairing is by round, not by position; a round with no rate has no ratio.
        i.windows.reverse();
        i.windows[0].rate = 0.0;
        assert_eq!(paired_ratios(&k, &i), [2.0, 2.0]);
        // The ratio of the medians mixes rounds: 10000 / 5000 here too, but not in general.
        let n = point(Mode::Nftables, &[5000.0, 10_000.0, 16_000.0]);
        assert_eq!(paired_ratios(&k, &n), [4.0, 1.0, 0.5]);
        assert!((k.rate() / n.rate() - 1.0).abs() < 1e-12);
    }
}
