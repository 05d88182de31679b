//! The two "Pods" of the `policy` benchmark and the paths between them: a bare veth pair
//! between their namespaces (the physical limit), or a node namespace with one veth per Pod
//! wired as keelson's CNI wires a Pod (`/32` address, link-local gateway with a permanent
//! neighbour entry, a `/32` route to it on the node), either forwarded by the node's kernel
//! or carried by keelson's datapath, loaded with a pin directory and cgroup of its own and
//! attached to both veths with `Datapath::add_endpoint`.
//!
//! Everything here is named after the bench's pid (`kls-bp-<pid>-…` namespaces,
//! `keelson-test-benchpol-<pid>-…` cgroups and pin directories) and removed by drop guards;
//! [`cleanup_leftovers`] removes what a killed run left, and [`on_signal_clean_up`] makes
//! SIGINT, SIGTERM and SIGHUP remove this run's own before it exits.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use keelson_agent::loader::{Datapath, DatapathConfig, Endpoint};

use crate::policy_workload::{CLIENT_IP, SERVER_IP};

const NETNS_DIR: &str = "/run/netns";
const NETNS_PREFIX: &str = "kls-bp-";
const STATE_PREFIX: &str = "keelson-test-benchpol-";
const PIN_ROOT: &str = "/sys/fs/bpf";
/// The gateway every Pod routes through (keelson's CNI gives Pods the same).
const GATEWAY: &str = "169.254.1.1";

/// Runs `cmd args`, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("spawning {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A network namespace deleted on drop (with it go its veths).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn new(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-q",
                "-w",
                &format!("{key}={value}"),
            ],
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory removed on drop (stragglers moved to the root first).
#[derive(Debug)]
pub struct Cgroup(pub PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.0);
    }
}

fn remove_cgroup(path: &Path) {
    if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
        let root = keelson_localcluster::cleanup::cgroup2_root().join("cgroup.procs");
        for pid in procs.lines() {
            let _ = fs::write(&root, pid);
        }
    }
    let _ = fs::remove_dir(path);
}

/// A bpffs pin directory removed on drop: unpinning the links detaches the programs,
/// unpinning the maps frees them.
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop, and killed by [`on_signal_clean_up`] too.
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        if let Ok(pid) = i32::try_from(child.id()) {
            CHILDREN
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(pid);
        }
        Self(child)
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let pid = i32::try_from(self.0.id()).unwrap_or(-1);
        CHILDREN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|&p| p != pid);
    }
}

/// The children alive, for the signal path (which runs no destructor).
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// The local cluster up, for the signal path.
pub static CLUSTER: Mutex<Option<String>> = Mutex::new(None);

/// How the two Pods are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// One veth pair between the two namespaces: no node, no routing, no eBPF.
    Veth,
    /// Through a node namespace that forwards with the kernel's routing, no eBPF.
    Routed,
    /// Through a node namespace carrying keelson's datapath (forwarding off: only the
    /// datapath can deliver between the veths).
    Keelson,
}

/// One Pod's end of a path through the node.
#[derive(Debug, Clone)]
pub struct PodLink {
    pub ip: Ipv4Addr,
    pub host_if: String,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One built path. Fields drop in declaration order: the datapath's handle first, then the
/// namespaces (and their veths), then the pins (detaching the programs), then the cgroup.
#[derive(Debug)]
pub struct TwoPods {
    pub datapath: Option<Datapath>,
    pub client: Netns,
    pub server: Netns,
    pub node: Option<Netns>,
    pub pins: Option<PinDir>,
    pub cgroup: Option<Cgroup>,
    pub links: Vec<PodLink>,
}

impl TwoPods {
    /// Builds the path `kind` under the name `tag` (unique within the run).
    pub fn new(kind: Wiring, tag: &str) -> Result<Self> {
        let pid = std::process::id();
        let base = format!("{NETNS_PREFIX}{pid}-{tag}");
        let client = Netns::new(format!("{base}-cli"))?;
        let server = Netns::new(format!("{base}-srv"))?;
        if kind == Wiring::Veth {
            let t = Self {
                datapath: None,
                client,
                server,
                node: None,
                pins: None,
                cgroup: None,
                links: Vec::new(),
            };
            t.wire_veth()?;
            return Ok(t);
        }
        let node = Netns::new(format!("{base}-node"))?;
        let mut t = Self {
            datapath: None,
            client,
            server,
            node: Some(node),
            pins: None,
            cgroup: None,
            links: Vec::new(),
        };
        t.links = vec![
            t.wire_pod(true, SERVER_IP, 1)?,
            t.wire_pod(false, CLIENT_IP, 2)?,
        ];
        let node = t.node.as_ref().context("node")?;
        if kind == Wiring::Routed {
            node.sysctl("net.ipv4.ip_forward", "1")?;
            // The node has no address to ask ARP from; it knows its Pods' MACs as the
            // Pods know the gateway's.
            for l in &t.links {
                node.ip(&[
                    "neigh",
                    "replace",
                    &l.ip.to_string(),
                    "lladdr",
                    &mac_str(&l.pod_mac),
                    "dev",
                    &l.host_if,
                    "nud",
                    "permanent",
                ])?;
            }
            return Ok(t);
        }
        let state = format!("{STATE_PREFIX}{pid}-{tag}");
        let cgroup_path = keelson_localcluster::cleanup::cgroup2_root().join(&state);
        fs::create_dir(&cgroup_path)
            .with_context(|| format!("creating {}", cgroup_path.display()))?;
        t.cgroup = Some(Cgroup(cgroup_path.clone()));
        let pins = PathBuf::from(PIN_ROOT).join(&state);
        t.pins = Some(PinDir(pins.clone()));
        let dp = Datapath::load(DatapathConfig {
            pin_dir: pins,
            cgroup_root: cgroup_path,
            node_netns: Some(node.path()),
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "loading the datapath: {e}: {:?}",
                std::error::Error::source(&e)
            )
        })?;
        for l in &t.links {
            let ep = Endpoint {
                ip: l.ip,
                host_ifindex: ifindex(node, &l.host_if)?,
                host_ifname: l.host_if.clone(),
                pod_mac: l.pod_mac,
                host_mac: l.host_mac,
            };
            dp.add_endpoint(&ep).map_err(|e| {
                anyhow::anyhow!(
                    "adding endpoint {}: {e}: {:?}",
                    l.ip,
                    std::error::Error::source(&e)
                )
            })?;
        }
        t.datapath = Some(dp);
        Ok(t)
    }

    /// The cgroup the Pods' processes join (keelson paths only).
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(|c| c.0.as_path())
    }

    fn wire_veth(&self) -> Result<()> {
        self.client.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.server.name,
        ])?;
        for (ns, ip) in [(&self.client, CLIENT_IP), (&self.server, SERVER_IP)] {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The server's or the client's namespace, wired to the node as keelson's CNI does.
    fn wire_pod(&self, server: bool, ip: Ipv4Addr, n: u8) -> Result<PodLink> {
        let node = self.node.as_ref().context("node")?;
        let ns = if server { &self.server } else { &self.client };
        let host_if = if server { "pod-srv" } else { "pod-cli" }.to_string();
        let pod_mac = [0x02, 0xaa, 0, 0, n, 1];
        let host_mac = [0x02, 0xbb, 0, 0, n, 2];
        node.ip(&[
            "link",
            "add",
            &host_if,
            "address",
            &mac_str(&host_mac),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &mac_str(&pod_mac),
            "netns",
            &ns.name,
        ])?;
        node.ip(&["link", "set", &host_if, "up"])?;
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
        ns.ip(&[
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            &mac_str(&host_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        Ok(PodLink {
            ip,
            host_if,
            pod_mac,
            host_mac,
        })
    }
}

fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", "dev", ifname])
        .output()
        .context("ip link show")?;
    ensure!(out.status.success(), "ip link show {ifname} failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    v[0]["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .with_context(|| format!("no ifindex for {ifname}"))
}

/// Enters the network namespace at `path` (the calling thread; threads spawned afterwards
/// inherit it).
pub fn enter_netns(path: &Path) -> std::io::Result<()> {
    let f = fs::File::open(path)?;
    // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The pid a name of ours carries, if it is one of ours.
fn pid_of<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.split('-').next()
}

/// Removes the namespaces, cgroups and pin directories of runs for which `remove(pid)`
/// holds.
fn remove_ours(remove: impl Fn(&str) -> bool) {
    if let Ok(dir) = fs::read_dir(NETNS_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if pid_of(&name, NETNS_PREFIX).is_some_and(&remove) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    let roots = [
        (keelson_localcluster::cleanup::cgroup2_root(), true),
        (PathBuf::from(PIN_ROOT), false),
    ];
    for (root, is_cgroup) in roots {
        let Ok(dir) = fs::read_dir(&root) else {
            continue;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if pid_of(&name, STATE_PREFIX).is_some_and(&remove) {
                if is_cgroup {
                    remove_cgroup(&e.path());
                } else {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Removes what earlier runs whose process is gone left behind.
pub fn cleanup_leftovers() {
    remove_ours(|pid| !Path::new("/proc").join(pid).exists());
}

/// The signal that arrived (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// On SIGINT, SIGTERM or SIGHUP: kills this run's children, removes the local cluster and
/// everything named after this run, and exits. Destructors do not run on a signal, so a
/// watcher thread does their work; the handler itself only records the signal (the one
/// thing a handler may safely do), and exec resets it in the children.
pub fn on_signal_clean_up() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores into an atomic.
        unsafe {
            libc::signal(sig, note_signal as *const () as libc::sighandler_t);
        }
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let sig = SIGNALLED.load(Ordering::SeqCst);
            if sig == 0 {
                continue;
            }
            eprintln!("bench: signal {sig}: removing everything this run made");
            for pid in CHILDREN
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                // SAFETY: kill(2) on a child of ours.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
            if let Some(name) = CLUSTER
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_deref()
                && let Err(e) = keelson_localcluster::down(name)
            {
                eprintln!("bench: removing cluster {name}: {e}");
            }
            let me = std::process::id().to_string();
            remove_ours(|pid| pid == me);
            std::process::exit(128 + sig);
        }
    });
}
