//! The processes the `api` benchmark measures, each behind a drop guard: a `keelson server`
//! (TLS, its own data directory, read through its `admin.kubeconfig` as kubectl would) and an
//! etcd 3.4 member (Debian `etcd-server`, fsync on: its default), both killed with SIGKILL on
//! drop and on the bench's own death (`PR_SET_PDEATHSIG`), and the scratch directory holding
//! their data, removed on drop.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cleanup::{TEMP_PREFIX, making};

/// How long a server or etcd gets to answer after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `<temp>/<TEMP_PREFIX><pid>-api`, removed on drop (and by the run's sweep if a signal ends
/// the bench first).
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{TEMP_PREFIX}{}-api", std::process::id()));
        making(|| fs::create_dir_all(&path))
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("bench: removing {}: {e}", self.0.display());
        }
    }
}

/// A port the kernel just handed out on loopback.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts `cmd` with its output to `log`, killed with SIGKILL when the bench dies. Spawned
/// from the thread that lives as long as the bench (the main thread): the parent-death signal
/// follows the spawning thread.
fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    // SAFETY: runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// Kills `child` with SIGKILL and reaps it; one already gone is fine.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The VmRSS of `pid` (KiB).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// A running `keelson server`.
#[derive(Debug)]
pub struct Server {
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    port: u16,
    /// Flags beyond the data dir and listen address.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server on a fresh data directory under `scratch` and waits until it answers.
    pub async fn start(bin: &Path, scratch: &Path) -> Result<(Self, kube::Client)> {
        Self::start_with(bin, scratch, &[]).await
    }

    /// [`Server::start`] with `extra` flags.
    pub async fn start_with(
        bin: &Path,
        scratch: &Path,
        extra: &[String],
    ) -> Result<(Self, kube::Client)> {
        let data_dir = scratch.join("server");
        fs::create_dir_all(&data_dir)?;
        let mut server = Self {
            bin: bin.to_owned(),
            log: scratch.join("server.log"),
            data_dir,
            port: free_port()?,
            extra: extra.to_vec(),
            child: None,
        };
        let client = server.restart().await?;
        Ok((server, client))
    }

    /// (Re)starts the server on its data directory and port, and waits until it answers.
    pub async fn restart(&mut self) -> Result<kube::Client> {
        ensure!(self.child.is_none(), "the server is still running");
        let child = spawn(
            Command::new(&self.bin)
                .arg("server")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .args(&self.extra),
            &self.log,
        )?;
        self.child = Some(child);
        let start = Instant::now();
        let mut last = String::from("no kubeconfig yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("keelson server exited ({status}):\n{}", log_tail(&self.log));
            }
            if self.kubeconfig().exists() {
                match self.client().await {
                    Ok(c) => match c.apiserver_version().await {
                        Ok(_) => return Ok(c),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = format!("{e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "keelson server did not answer in {} s ({last}):\n{}",
            READY_TIMEOUT.as_secs(),
            log_tail(&self.log)
        )
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    /// A new client (its own connections) from the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        keelson_localcluster::client(&self.kubeconfig())
            .await
            .context("API client")
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("the server is not running")
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running one-member etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    pub endpoint: String,
}

impl Etcd {
    /// Starts `etcd` (found on PATH or in /usr/bin) with its data under `scratch`; fsync is on
    /// (etcd's default: `--unsafe-no-fsync` is not given).
    pub async fn start(scratch: &Path) -> Result<(Self, etcd_client::Client)> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("etcd is missing: `cargo xtask setup` installs Debian's etcd-server")?;
        let data = scratch.join("etcd");
        let log = scratch.join("etcd.log");
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = spawn(
            Command::new(bin)
                .args(["--name", "bench"])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("bench={peer}")])
                // etcd 3.4 on Debian warns without it; the value is the default.
                .args(["--logger", "zap"]),
            &log,
        )?;
        let mut etcd = Self { child, endpoint };
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                bail!("etcd exited ({status}):\n{}", log_tail(&log));
            }
            match etcd.client().await {
                Ok(mut c) => match c.status().await {
                    Ok(_) => return Ok((etcd, c)),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Dropping `etcd` kills it.
        bail!(
            "etcd did not answer in {} s ({last}):\n{}",
            READY_TIMEOUT.as_secs(),
            log_tail(&log)
        )
    }

    /// A new client with its own connection.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .context("connecting to etcd")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
