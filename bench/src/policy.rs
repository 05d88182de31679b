//! The `policy` benchmark: what NetworkPolicy enforcement costs in keelson's datapath, and
//! how fast the agent enforces a change.
//!
//! Datapath part: TCP throughput of one stream and new connections per second between two
//! "Pods", measured in one run over five paths: a bare veth pair (the physical limit), a node
//! namespace forwarding with the kernel's routing (no eBPF), and keelson's datapath with 0,
//! 100 and 1,000 NetworkPolicies selecting the server (compiled by the agent's own compiler,
//! `keelson_agent::policy::reconcile`, into the maps). All paths are built first and stay up;
//! each round runs one stream window and one connection window per path, the order rotated
//! every round, and the figures are medians over the rounds and ratios paired within a round.
//!
//! Every connection is a new flow to policy: the policy conntrack keeps each 4-tuple it let
//! through until its LRU evicts it, so connections that reuse a source port towards one
//! destination port would pass with a conntrack hit once the ports have wrapped (after ~64,000
//! connections, four seconds here) and measure nothing of the policy lookup. The client
//! spreads its connections over 16 server ports, so a 4-tuple comes back only after ~1 million
//! connections, more than a run makes per path.
//!
//! Cluster part (`policy_cluster`): label change → enforcement on the node, and the agent's
//! RSS with 1,000 policies and 1,000 Pods.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use keelson_agent::{
    loader::Datapath,
    policy::{NamespaceInfo, NodeContext, NodeInfo, PodInfo, Snapshot},
};
use keelson_common::policy::endpoint_flags;
use serde_json::Value;

use crate::{
    keelson_mode::{self, HookRun},
    policy_cluster::{self, ClusterFigures, ClusterOptions},
    policy_report, policy_stats,
    policy_topology::{self, ChildGuard, TwoPods, Wiring},
    policy_workload::{
        self, CLIENT_IP, NODE, NODE_IP, REMOTE_NODE, REMOTE_NODE_IP, SERVER_IP, SERVER_LABEL,
    },
    run::round_order,
};

/// What `cargo xtask bench policy` asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Windows per path, one per round.
    pub rounds: usize,
    /// Client threads of the connection windows.
    pub threads: usize,
    /// NetworkPolicy counts of the keelson paths (0 is the path without policy).
    pub counts: Vec<usize>,
    pub skip_datapath: bool,
    pub skip_cluster: bool,
    pub cluster: ClusterOptions,
}

impl Options {
    /// Warm-up and window of each measurement (ms).
    pub fn window_ms(&self) -> (u64, u64) {
        if self.quick {
            (300, 1500)
        } else {
            (1000, 5000)
        }
    }
}

/// One path between the Pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Veth,
    Routed,
    /// keelson's datapath with this many NetworkPolicies selecting the server.
    Keelson(usize),
}

impl Mode {
    /// The name in the table.
    pub fn label(self) -> String {
        match self {
            Mode::Veth => "bare veth".into(),
            Mode::Routed => "node-routed, no eBPF".into(),
            Mode::Keelson(n) => format!("keelson, {n} policies"),
        }
    }

    /// The name in the JSON line and in namespace names.
    pub fn tag(self) -> String {
        match self {
            Mode::Veth => "veth".into(),
            Mode::Routed => "routed".into(),
            Mode::Keelson(n) => format!("keelson{n}"),
        }
    }
}

/// The figures of one round of one path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub round: usize,
    /// Its place within the round (0 = first).
    pub slot: usize,
    /// Bytes/s of the one stream.
    pub stream_bps: f64,
    /// New connections/s.
    pub conn_rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub connections: u64,
    pub errors: u64,
    /// keelson only: its tc programs during the stream window and the connection window,
    /// and its socket hooks during the connection window.
    pub tc_stream: Vec<HookRun>,
    pub tc_conn: Vec<HookRun>,
    pub sock_conn: Vec<HookRun>,
}

/// The figures of one path.
#[derive(Debug, Clone)]
pub struct Point {
    pub mode: Mode,
    /// keelson with policies: the compiler's pass from nothing to all policies in the maps.
    pub program: Option<Duration>,
    /// Entries of the policy map.
    pub entries: usize,
    pub windows: Vec<Window>,
}

/// A path built, programmed, checked and serving. Fields drop in declaration order: the
/// server process leaves the cgroup before the path is torn down.
struct Prepared {
    mode: Mode,
    _server: ChildGuard,
    pods: TwoPods,
    program: Option<Duration>,
    entries: usize,
}

/// The compiler's input: the benchmark's namespace, this node and the remote one, the two
/// local Pods, `remote` remote Pods and `policies` policies.
pub fn snapshot(policies: usize, remote: usize) -> Result<Snapshot> {
    let mut s = Snapshot::default();
    s.add_namespace(
        NamespaceInfo::from_namespace(&policy_workload::namespace()).context("namespace")?,
    );
    for (name, ip) in [(NODE, NODE_IP), (REMOTE_NODE, REMOTE_NODE_IP)] {
        s.add_node(NodeInfo::from_node(&policy_workload::node(name, ip)).context("node")?);
    }
    let local = [
        policy_workload::pod(
            "server",
            NODE,
            &[SERVER_LABEL],
            &["server"],
            &[],
            Some(SERVER_IP),
        ),
        policy_workload::pod(
            "client",
            NODE,
            &[(policy_workload::ROLE, policy_workload::ALLOWED_ROLE)],
            &["client"],
            &[],
            Some(CLIENT_IP),
        ),
    ];
    let remote = (1..=remote).map(|i| policy_workload::remote_pod(i, REMOTE_NODE));
    for pod in local.into_iter().chain(remote) {
        s.add_pod(PodInfo::from_pod(&pod).context("pod")?);
    }
    for i in 0..policies {
        s.add_policy(policy_workload::policy(i));
    }
    Ok(s)
}

/// Compiles `policies` policies (with the same remote Pods for every count) into `dp`'s
/// maps with the agent's compiler, timed, and checks what the maps hold.
fn program(dp: &Datapath, policies: usize, remote: usize) -> Result<(Duration, usize)> {
    let snapshot = snapshot(policies, remote)?;
    let node = NodeContext {
        node_name: NODE.into(),
        node_ip: NODE_IP,
    };
    let start = Instant::now();
    keelson_agent::policy::reconcile(dp, snapshot, &node).map_err(|e| {
        anyhow::anyhow!(
            "programming policy: {e}: {:?}",
            std::error::Error::source(&e)
        )
    })?;
    let took = start.elapsed();
    let (entries, server, client) = dp.with_maps(|m| {
        (
            m.policy.keys().filter_map(Result::ok).count(),
            m.endpoint(SERVER_IP),
            m.endpoint(CLIENT_IP),
        )
    });
    let server = server?.context("the server's endpoint entry is gone")?;
    let client = client?.context("the client's endpoint entry is gone")?;
    ensure!(
        (server.flags & endpoint_flags::INGRESS_ISOLATED != 0) == (policies > 0),
        "the server's isolation flags are {:#x} with {policies} policies",
        server.flags
    );
    ensure!(
        server.identity != 0 && client.identity != 0,
        "the Pods have no identity"
    );
    // Every policy allows one identity on two port prefixes.
    ensure!(
        entries == 2 * policies,
        "the policy map holds {entries} entries, expected {}",
        2 * policies
    );
    Ok((took, entries))
}

/// Runs `exe args` and waits for its READY line.
fn spawn_ready(exe: &Path, args: &[String]) -> Result<ChildGuard> {
    let mut child = ChildGuard::new(
        Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the server")?,
    );
    let stdout = child.child().stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(line.trim() == "READY", "the server did not start: {line:?}");
    Ok(child)
}

/// `--netns`/`--cgroup` of one Pod's process.
fn pod_args(netns: &Path, cgroup: Option<&Path>) -> Vec<String> {
    let mut a = vec!["--netns".into(), netns.display().to_string()];
    if let Some(cg) = cgroup {
        a.extend(["--cgroup".into(), cg.display().to_string()]);
    }
    a
}

/// Runs the client in the client Pod with `extra` arguments; parses its JSON line.
fn client(exe: &Path, pods: &TwoPods, extra: &[String]) -> Result<Value> {
    let mut args = vec!["policy-client".to_string()];
    args.extend(pod_args(&pods.client.path(), pods.cgroup_path()));
    args.extend(["--server".into(), SERVER_IP.to_string()]);
    args.extend_from_slice(extra);
    // Guarded like the servers, so that a signal ends it with the run.
    let mut child = ChildGuard::new(
        Command::new(exe)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running the client")?,
    );
    let mut out = Vec::new();
    child
        .child()
        .stdout
        .take()
        .context("client stdout")?
        .read_to_end(&mut out)?;
    let status = child.child().wait()?;
    ensure!(status.success(), "the client failed: {status}");
    serde_json::from_slice(&out).context("parsing the client's output")
}

/// Builds `mode`'s path, starts its server, programs its policies and checks that the
/// client reaches every server port and that policy is (or is not) enforced.
fn prepare(exe: &Path, mode: Mode, remote: usize) -> Result<Prepared> {
    eprintln!("bench: {}: building", mode.label());
    let wiring = match mode {
        Mode::Veth => Wiring::Veth,
        Mode::Routed => Wiring::Routed,
        Mode::Keelson(_) => Wiring::Keelson,
    };
    let pods = TwoPods::new(wiring, &mode.tag())?;
    let (mut program_time, mut entries) = (None, 0);
    if let (Mode::Keelson(n), Some(dp)) = (mode, &pods.datapath) {
        let (took, e) = program(dp, n, remote)?;
        eprintln!(
            "bench: {}: {n} policies compiled and written in {:.1} ms ({e} entries)",
            mode.label(),
            took.as_secs_f64() * 1e3
        );
        program_time = Some(took);
        entries = e;
    }
    let mut args = vec!["policy-server".to_string()];
    args.extend(pod_args(&pods.server.path(), pods.cgroup_path()));
    let server = spawn_ready(exe, &args)?;
    let check = client(exe, &pods, &["--check".into()])?;
    let errors = check["errors"].as_array().cloned().unwrap_or_default();
    ensure!(
        errors.is_empty(),
        "{}: the client does not reach the server: {errors:?}",
        mode.label()
    );
    // A port no policy allows: refused by the server's kernel without policy, dropped (a
    // timeout) when policy isolates the server.
    let want = if matches!(mode, Mode::Keelson(n) if n > 0) {
        "timeout"
    } else {
        "refused"
    };
    let got = check["closed_port"].as_str().unwrap_or("");
    ensure!(
        got == want,
        "{}: a connection to a port no policy allows was {got}, expected {want}",
        mode.label()
    );
    Ok(Prepared {
        mode,
        _server: server,
        pods,
        program: program_time,
        entries,
    })
}

/// Runs `f` with the kernel's BPF run-time statistics on when `dp` is given, and returns what
/// its tc programs and socket hooks did meanwhile.
fn with_stats<T>(
    dp: Option<&Datapath>,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<HookRun>, Vec<HookRun>)> {
    let Some(dp) = dp else {
        return Ok((f()?, Vec::new(), Vec::new()));
    };
    let ((out, tc), sock) = keelson_mode::with_hook_stats(dp, || {
        let before = policy_stats::tc_counters(dp)?;
        let out = f()?;
        let after = policy_stats::tc_counters(dp)?;
        Ok((out, keelson_mode::hook_deltas(&before, &after)))
    })?;
    Ok((out, tc, sock))
}

/// One round of one path: a stream window, then a connection window.
fn window(exe: &Path, opts: &Options, p: &Prepared, round: usize, slot: usize) -> Result<Window> {
    let (warmup, duration) = opts.window_ms();
    let timing = [
        "--warmup-ms".to_string(),
        warmup.to_string(),
        "--duration-ms".into(),
        duration.to_string(),
    ];
    let dp = p.pods.datapath.as_ref();
    let mut stream_args = vec!["--stream".to_string()];
    stream_args.extend_from_slice(&timing);
    let (s, tc_stream, _) = with_stats(dp, || client(exe, &p.pods, &stream_args))?;
    let mut conn_args = vec!["--threads".to_string(), opts.threads.to_string()];
    conn_args.extend_from_slice(&timing);
    let (c, tc_conn, sock_conn) = with_stats(dp, || client(exe, &p.pods, &conn_args))?;
    let w = Window {
        round,
        slot,
        stream_bps: s["rate"].as_f64().unwrap_or(0.0),
        conn_rate: c["rate"].as_f64().unwrap_or(0.0),
        p50_us: c["p50_us"].as_u64().unwrap_or(0),
        p99_us: c["p99_us"].as_u64().unwrap_or(0),
        connections: c["connections"].as_u64().unwrap_or(0),
        errors: c["errors"].as_u64().unwrap_or(0),
        tc_stream,
        tc_conn,
        sock_conn,
    };
    let tc = w
        .tc_conn
        .iter()
        .map(|h| format!(", {} {:.0} ns x {}", h.name, h.ns_per_run(), h.runs))
        .collect::<String>();
    eprintln!(
        "bench: round {}/{} {}: {:.2} Gbit/s, {:.0} conn/s, p50 {} us, p99 {} us, {} errors{tc}",
        round + 1,
        opts.rounds,
        p.mode.label(),
        w.stream_bps * 8e-9,
        w.conn_rate,
        w.p50_us,
        w.p99_us,
        w.errors
    );
    Ok(w)
}

/// The modes of a run: the bare veth, the routed node, keelson at each count.
pub fn modes(counts: &[usize]) -> Vec<Mode> {
    let mut m = vec![Mode::Veth, Mode::Routed];
    m.extend(counts.iter().map(|&n| Mode::Keelson(n)));
    m
}

fn measure_datapath(opts: &Options) -> Result<Vec<Point>> {
    let exe = std::env::current_exe()?;
    // The same remote Pods (one per policy beyond the first at the largest count) on every
    // keelson path, so that only the number of policies differs.
    let remote = opts
        .counts
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    ensure!(
        remote <= policy_workload::MAX_REMOTE,
        "at most {} policies",
        policy_workload::MAX_REMOTE + 1
    );
    let mut prepared = Vec::new();
    for mode in modes(&opts.counts) {
        prepared.push(prepare(&exe, mode, remote)?);
    }
    let mut windows = vec![Vec::with_capacity(opts.rounds); prepared.len()];
    for round in 0..opts.rounds {
        for (slot, i) in round_order(prepared.len(), round).enumerate() {
            windows[i].push(window(&exe, opts, &prepared[i], round, slot)?);
        }
    }
    let points = prepared
        .iter()
        .zip(windows)
        .map(|(p, windows)| Point {
            mode: p.mode,
            program: p.program,
            entries: p.entries,
            windows,
        })
        .collect();
    drop(prepared);
    Ok(points)
}

/// Runs the benchmark and prints the table and the `BENCH_JSON` line.
pub fn run(opts: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the benchmark creates namespaces and loads eBPF: run it as root"
    );
    ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    if opts.counts.is_empty() || opts.counts[0] != 0 {
        bail!("--counts must start with 0 (the path without policy every ratio is to)");
    }
    policy_topology::on_signal_clean_up();
    policy_topology::cleanup_leftovers();
    let points = if opts.skip_datapath {
        Vec::new()
    } else {
        measure_datapath(opts)?
    };
    let cluster: Result<ClusterFigures, String> = if opts.skip_cluster {
        Err("skipped (--skip-cluster)".into())
    } else {
        policy_cluster::measure(&opts.cluster).map_err(|e| format!("{e:#}"))
    };
    if let Err(e) = &cluster {
        eprintln!("bench: cluster part: {e}");
    }
    policy_report::print(opts, &points, &cluster);
    Ok(())
}
