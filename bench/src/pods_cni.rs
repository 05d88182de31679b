//! CNI ADD and DEL latency of `keelson cni` (against a CNI server with the real eBPF datapath,
//! over its Unix socket, as a node's agent serves it) and of the reference `bridge` +
//! `host-local` plugins (Debian's containernetworking-plugins), each exec'd once per call with
//! the CNI environment and its config on stdin (CNI spec "Execution Protocol"), into network
//! namespaces this bench creates.

use std::{
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use keelson_agent::{
    cni::server::{CniServer, EndpointSink},
    links::Netlink,
    loader::{Datapath, DatapathConfig},
    netns,
};

/// Where Debian installs the reference plugins.
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";
/// The CNI version both plugins are driven with (containernetworking-plugins 1.1.1 speaks up
/// to 1.0.0).
const CNI_VERSION: &str = "1.0.0";

/// Latencies of one plugin, one entry per call.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
}

/// Both plugins' calls.
#[derive(Debug, Clone)]
pub struct CniFigures {
    pub pods: usize,
    pub keelson: Calls,
    pub bridge: Calls,
}

/// The `q`-quantile (nearest rank) of `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Namespaces, pin and cgroup directories of the run, removed even when it fails.
#[derive(Default)]
struct Cleanup {
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = netns::delete_named(n);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// One plugin as the bench drives it.
struct Plugin {
    program: PathBuf,
    args: Vec<String>,
    conf: String,
    /// The namespace the plugin process runs in (the node's, as a container runtime's).
    node_ns: PathBuf,
}

impl Plugin {
    /// Runs one CNI command for `pod`'s attachment and returns its wall time.
    fn call(&self, command: &str, id: &str, pod_ns: &Path) -> Result<Duration> {
        let node = File::open(&self.node_ns)
            .with_context(|| format!("opening {}", self.node_ns.display()))?;
        let fd = node.as_raw_fd();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod_ns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REFERENCE_CNI_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec only setns(2), an async-signal-safe system call, runs;
        // `fd` stays open in the parent (`node` lives past the spawn) and so in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.program.display()))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(self.conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let took = start.elapsed();
        drop(node);
        if !out.status.success() {
            bail!(
                "{} {command} for {id}: {}\n{}\n{}",
                self.program.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }
}

/// Measures `pods` ADDs then as many DELs of each plugin, the two taking turns call by call
/// so that a change of the machine's load hits both alike.
pub fn measure(pods: usize, keelson_bin: &Path) -> Result<CniFigures> {
    ensure!(
        Path::new(REFERENCE_CNI_DIR).join("bridge").exists(),
        "the reference plugins are missing from {REFERENCE_CNI_DIR}: `cargo xtask setup` \
         installs Debian's containernetworking-plugins"
    );
    ensure!(
        (1..=250).contains(&pods),
        "--cni-pods must be 1 to 250 (one /24)"
    );
    let pid = std::process::id();
    let mut cleanup = Cleanup::default();
    let tmp = tempdir(pid)?;
    cleanup.dirs.push(tmp.clone());

    // keelson: a CNI server for a node namespace, with the eBPF datapath loaded for it.
    let k_node_name = format!("knl-bench-{pid}-kn");
    cleanup.netns.push(k_node_name.clone());
    let k_node = netns::create_named(&k_node_name)?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/keelson-bench-pods-{pid}"));
    let cgroup = PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-bench-pods-{pid}"));
    std::fs::create_dir_all(&cgroup).context("creating the bench cgroup")?;
    cleanup.dirs.push(pin_dir.clone());
    cleanup.dirs.push(cgroup.clone());
    let dp = Datapath::load(DatapathConfig {
        pin_dir,
        cgroup_root: cgroup,
        node_netns: Some(k_node.clone()),
    })
    .context("loading the datapath")?;
    let sink: Arc<dyn EndpointSink> = Arc::new(dp);
    let server = Arc::new(CniServer::new(
        Some(k_node.clone()),
        "10.246.0.0/24".parse()?,
        &tmp.join("ipam.json"),
        Arc::new(Netlink::for_namespace(Some(k_node.clone()))),
        sink,
    )?);
    let socket = tmp.join("cni.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let serving = rt.spawn({
        let socket = socket.clone();
        async move { server.serve(&socket).await }
    });
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure!(socket.exists(), "the CNI server did not start");
    let keelson = Plugin {
        program: keelson_bin.to_owned(),
        args: vec!["cni".into()],
        conf: format!(
            r#"{{"cniVersion":"{CNI_VERSION}","name":"keelson","type":"keelson","agentSocket":"{}"}}"#,
            socket.display()
        ),
        node_ns: k_node,
    };

    // The reference: a Linux bridge with the gateway address, host-local addresses.
    let b_node_name = format!("knl-bench-{pid}-bn");
    cleanup.netns.push(b_node_name.clone());
    let b_node = netns::create_named(&b_node_name)?;
    let bridge = Plugin {
        program: Path::new(REFERENCE_CNI_DIR).join("bridge"),
        args: vec![],
        conf: format!(
            r#"{{"cniVersion":"{CNI_VERSION}","name":"knl-bench","type":"bridge","bridge":"knlbr0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","subnet":"10.247.0.0/24","dataDir":"{}"}}}}"#,
            tmp.join("host-local").display()
        ),
        node_ns: b_node,
    };

    let mut pod_ns = Vec::new();
    for i in 0..=pods {
        for side in ["k", "b"] {
            let name = format!("knl-bench-{pid}-{side}{i}");
            cleanup.netns.push(name.clone());
            pod_ns.push(netns::create_named(&name)?);
        }
    }
    let (k_ns, b_ns): (Vec<_>, Vec<_>) = pod_ns
        .chunks(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .unzip();
    let id = |i: usize| format!("knl-bench-{pid}-{i}");
    // One untimed ADD and DEL each first: the binaries and the datapath's programs are then
    // in the page cache, as on a node that has been running Pods.
    for (plugin, ns) in [(&keelson, &k_ns[pods]), (&bridge, &b_ns[pods])] {
        plugin.call("ADD", &id(pods), ns)?;
        plugin.call("DEL", &id(pods), ns)?;
    }
    let mut figures = CniFigures {
        pods,
        keelson: Calls::default(),
        bridge: Calls::default(),
    };
    eprintln!("bench: {pods} CNI ADDs per plugin");
    for i in 0..pods {
        figures
            .keelson
            .add
            .push(keelson.call("ADD", &id(i), &k_ns[i])?);
        figures
            .bridge
            .add
            .push(bridge.call("ADD", &id(i), &b_ns[i])?);
    }
    eprintln!("bench: {pods} CNI DELs per plugin");
    for i in 0..pods {
        figures
            .keelson
            .del
            .push(keelson.call("DEL", &id(i), &k_ns[i])?);
        figures
            .bridge
            .del
            .push(bridge.call("DEL", &id(i), &b_ns[i])?);
    }
    serving.abort();
    drop(rt);
    Ok(figures)
}

fn tempdir(pid: u32) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("knl-bench-pods-{pid}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let s: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(quantile(&s, 0.5), ms(50));
        assert_eq!(quantile(&s, 0.99), ms(99));
        assert_eq!(quantile(&s, 1.0), ms(100));
        assert_eq!(quantile(&[ms(7)], 0.99), ms(7));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
