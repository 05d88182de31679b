//! `cargo xtask bench dns`: cluster DNS throughput and latency. A real `keelson server` (the
//! release binary, a fresh data dir under /tmp) gets 1,000 ClusterIP Services; `keelson dns`
//! serves their records from its watches and dnsmasq serves the same 1,000 names as
//! `host-record`s from a file; dnsperf asks both, on loopback, in the same run, taking turns.
//! Figures and table in [`crate::dns_report`]. Every process dies with the bench
//! (PR_SET_PDEATHSIG) and is killed, and the data dir removed, on every way out of a run.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, ListParams, PostParams};
use rand::seq::SliceRandom as _;
use serde_json::json;

use crate::dns_report::{self, Measured, Window};

/// Where a run keeps its files: `/tmp/<DATA_PREFIX><pid>`.
const DATA_PREFIX: &str = "keelson-dns-bench-";
const NAMESPACE: &str = "dns-bench";
/// Concurrent creates while making the Services.
const SETUP_CONCURRENCY: usize = 32;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub services: usize,
    /// Seconds per dnsperf window.
    pub seconds: u64,
    /// Windows per server, the servers taking turns.
    pub rounds: usize,
    /// dnsperf's outstanding queries (`-q`) and clients (`-c`).
    pub outstanding: usize,
    pub clients: usize,
    /// The fixed query rate of the latency windows (`-Q`).
    pub paced_qps: u64,
}

/// A child process killed on drop; it also dies with the bench (PR_SET_PDEATHSIG).
struct Proc {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` with its output in `log`. Must run on the main thread: PR_SET_PDEATHSIG
    /// fires when the forking thread exits.
    fn start(what: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let out = fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: between fork and exec the closure makes one raw system call; no allocation,
        // no locks.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { what, child, log })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            bail!(
                "{} exited ({status}):\n{}",
                self.what,
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        Ok(())
    }
}

/// The run's directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("bench: removing {}: {e}", self.0.display());
        }
    }
}

fn free_port() -> Result<u16> {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
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

fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// Removes the directories of runs whose process is gone.
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DATA_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let (measured, rss) = measure(opts)?;
    print!("{}", dns_report::render(opts, &measured, rss));
    Ok(())
}

/// Both servers' windows and, after them, their RSS in KiB (keelson's, dnsmasq's).
pub fn measure(opts: &Options) -> Result<(Measured, Option<(u64, u64)>)> {
    sweep_leftovers();
    for tool in ["dnsperf", "dnsmasq"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} is missing: `cargo xtask setup` installs it"
        );
    }
    let dir = std::env::temp_dir().join(format!("{DATA_PREFIX}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let dir = Dir(dir);
    let bin = keelson_bin()?;
    let api_port = free_port()?;
    let mut server = Proc::start(
        "keelson server",
        Command::new(&bin)
            .arg("server")
            .arg("--data-dir")
            .arg(dir.0.join("server"))
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .env("RUST_LOG", "warn"),
        dir.0.join("server.log"),
    )?;
    let kubeconfig = dir.0.join("server/admin.kubeconfig");
    let rt = tokio::runtime::Runtime::new()?;
    let records = rt.block_on(async {
        let client = wait_api(&mut server, &kubeconfig).await?;
        create_services(&client, opts.services).await
    })?;
    ensure!(
        records.len() == opts.services,
        "{} Services listed",
        records.len()
    );

    // keelson dns, from the server's watches.
    let keelson_port = free_port()?;
    let health_port = free_port()?;
    let mut keelson_dns = Proc::start(
        "keelson dns",
        Command::new(&bin)
            .arg("dns")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{keelson_port}")])
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            // Nothing is forwarded in this bench; the discard port answers nothing.
            .args(["--upstream", "127.0.0.1:9"])
            .env("RUST_LOG", "warn"),
        dir.0.join("dns.log"),
    )?;
    // dnsmasq: the same names and addresses as host-records.
    let conf = dir.0.join("dnsmasq.conf");
    let mut text = String::new();
    for (name, ip) in &records {
        text.push_str(&format!("host-record={name},{ip}\n"));
    }
    fs::write(&conf, text)?;
    let dnsmasq_port = free_port()?;
    let mut dnsmasq = Proc::start(
        "dnsmasq",
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--user=root",
                // dnsmasq's cap on concurrent queries; answers from local data do not use it.
                "--dns-forward-max=1000",
            ])
            .arg(format!("--port={dnsmasq_port}"))
            .arg(format!("--conf-file={}", conf.display())),
        dir.0.join("dnsmasq.log"),
    )?;

    // Queries: every name once, in a shuffled order dnsperf cycles through.
    let mut names: Vec<&str> = records.iter().map(|(n, _)| n.as_str()).collect();
    names.shuffle(&mut rand::rng());
    let queries = dir.0.join("queries.txt");
    fs::write(
        &queries,
        names.iter().map(|n| format!("{n} A\n")).collect::<String>(),
    )?;

    let keelson_addr: SocketAddr = ([127, 0, 0, 1], keelson_port).into();
    let dnsmasq_addr: SocketAddr = ([127, 0, 0, 1], dnsmasq_port).into();
    // Both answer every name before anything is measured.
    let start = Instant::now();
    for (what, addr, proc) in [
        ("keelson dns", keelson_addr, &mut keelson_dns),
        ("dnsmasq", dnsmasq_addr, &mut dnsmasq),
    ] {
        loop {
            proc.check_alive()?;
            let check = dnsperf(addr, &queries, &["-n", "1", "-q", "10"], false)?;
            if check.noerror == opts.services as u64 {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "{what} answered {} of {} names with NOERROR",
                check.noerror,
                opts.services
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let secs = opts.seconds.to_string();
    let (q, c) = (opts.outstanding.to_string(), opts.clients.to_string());
    let paced = opts.paced_qps.to_string();
    let mut measured = Measured::default();
    for round in 0..opts.rounds {
        // Rotate who goes first so neither always runs on a warmer or cooler machine.
        let order: [(&str, SocketAddr); 2] = if round % 2 == 0 {
            [("keelson", keelson_addr), ("dnsmasq", dnsmasq_addr)]
        } else {
            [("dnsmasq", dnsmasq_addr), ("keelson", keelson_addr)]
        };
        for (who, addr) in order {
            let full = dnsperf(addr, &queries, &["-l", &secs, "-q", &q, "-c", &c], true)?;
            let slow = dnsperf(addr, &queries, &["-l", &secs, "-Q", &paced, "-c", &c], true)?;
            eprintln!(
                "bench dns: round {} {who}: {:.0} q/s (p99 {:.3} ms), at {paced} q/s p99 {:.3} ms",
                round + 1,
                full.qps,
                full.p99_ms(),
                slow.p99_ms()
            );
            measured.push(who, full, slow);
        }
        keelson_dns.check_alive()?;
        dnsmasq.check_alive()?;
    }
    let rss = rss_kib(keelson_dns.child.id()).zip(rss_kib(dnsmasq.child.id()));
    drop((keelson_dns, dnsmasq, server));
    drop(dir);
    Ok((measured, rss))
}

/// One dnsperf window; `verbose` records every latency (dnsperf prints one line per answer).
fn dnsperf(addr: SocketAddr, queries: &Path, args: &[&str], verbose: bool) -> Result<Window> {
    let mut cmd = Command::new("dnsperf");
    cmd.args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(args);
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd.output().context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dnsperf failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    dns_report::parse_dnsperf(&text)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn wait_api(server: &mut Proc, kubeconfig: &Path) -> Result<kube::Client> {
    let start = Instant::now();
    let mut last = String::from("no kubeconfig yet");
    while start.elapsed() < Duration::from_secs(60) {
        server.check_alive()?;
        if kubeconfig.exists() {
            match keelson_localcluster::client(kubeconfig).await {
                Ok(c) => match c.apiserver_version().await {
                    Ok(_) => return Ok(c),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the API server did not answer in 60 s ({last})")
}

/// Creates `n` ClusterIP Services and returns each one's name and address.
async fn create_services(client: &kube::Client, n: usize) -> Result<Vec<(String, String)>> {
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
    )
    .await
    .context("creating the namespace")?;
    let api: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": service_name(i)},
                    "spec": {"ports": [{"name": "http", "port": 80}]},
                }))?;
                api.create(&PostParams::default(), &svc)
                    .await
                    .with_context(|| format!("creating {}", service_name(i)))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|s| {
            let name = s.metadata.name.as_deref()?;
            let ip = s.spec.as_ref()?.cluster_ip.as_deref()?;
            Some((
                format!("{name}.{NAMESPACE}.svc.cluster.local"),
                ip.to_owned(),
            ))
        })
        .collect())
}
