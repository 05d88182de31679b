//! The bench's own little node: a client "Pod" namespace, a node namespace (where kube-proxy's
//! rules live, forwarding between the two veths) and a server namespace answering on every
//! endpoint address (AnyIP: `local 10.244.0.0/17 dev lo`). Every name carries the bench's pid;
//! guards remove namespaces (and with them their veths and rules), cgroups and pins even when
//! the bench fails, and `cleanup` finds by name whatever a guard could not remove.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::cleanup::{self, NETNS_PREFIX, STATE_PREFIX, making};

/// The node's address on the server-side link (NodePort address in kube-proxy's rules).
pub const NODE_SERVER_SIDE_IP: &str = "10.253.0.1";
/// The client Pod's address (inside the cluster CIDR, so kube-proxy does not masquerade it).
pub const CLIENT_IP: &str = "10.244.200.2";

/// Runs `cmd args`, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("spawning {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `ip -n <ns> args`.
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ],
    )
}

/// A network namespace deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        making(|| run("ip", &["netns", "add", &name]))?;
        let ns = Self { name };
        ip(&ns.name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cleanup::delete_netns(&self.name) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// A cgroup v2 directory directly under the cgroup v2 mount, removed on drop (stragglers
/// moved to the root first).
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    root: PathBuf,
}

impl Cgroup {
    fn new(root: &Path, name: &str) -> Result<Self> {
        let path = root.join(name);
        // Not create_dir_all: a missing root would be made a cgroup of its own, which nothing
        // removes.
        making(|| fs::create_dir(&path)).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            root: root.to_path_buf(),
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = cleanup::remove_cgroup(&self.path, &self.root) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// A bpffs pin directory (made by whatever pins there), removed on drop (unpinning the
/// links detaches the programs).
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("bench: removing {}: {e}", self.0.display());
            }
            _ => {}
        }
    }
}

/// One fresh topology (one mode at one size). Fields drop in declaration order: the pins
/// first (unpinning the links detaches the programs from the cgroup), then the cgroup, then
/// the namespaces (with their veths and rules).
#[derive(Debug)]
pub struct Topology {
    pub pins: PinDir,
    pub cgroup: Cgroup,
    pub cli: Netns,
    pub node: Netns,
    pub srv: Netns,
}

impl Topology {
    /// Builds the three namespaces and their links; `tag` makes the names unique within the
    /// run.
    pub fn new(tag: &str) -> Result<Self> {
        let pid = std::process::id();
        let base = format!("{NETNS_PREFIX}{pid}-{tag}");
        let places = cleanup::Places::system();
        let cli = Netns::new(format!("{base}-cli"))?;
        let node = Netns::new(format!("{base}-node"))?;
        let srv = Netns::new(format!("{base}-srv"))?;
        let state = format!("{STATE_PREFIX}{pid}-{tag}");
        let cgroup = Cgroup::new(&places.cgroup, &state)?;
        let pins = PinDir(places.pins.join(&state));
        let t = Self {
            pins,
            cgroup,
            cli,
            node,
            srv,
        };
        t.wire()?;
        Ok(t)
    }

    fn wire(&self) -> Result<()> {
        let (cli, node, srv) = (&self.cli.name, &self.node.name, &self.srv.name);
        // Client Pod <-> node.
        ip(
            node,
            &[
                "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", cli,
            ],
        )?;
        ip(
            cli,
            &["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"],
        )?;
        ip(cli, &["link", "set", "eth0", "up"])?;
        ip(node, &["addr", "add", "10.244.200.1/24", "dev", "pod0"])?;
        ip(node, &["link", "set", "pod0", "up"])?;
        ip(cli, &["route", "add", "default", "via", "10.244.200.1"])?;
        // Node <-> server.
        ip(
            node,
            &[
                "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", srv,
            ],
        )?;
        ip(
            node,
            &[
                "addr",
                "add",
                &format!("{NODE_SERVER_SIDE_IP}/30"),
                "dev",
                "srv0",
            ],
        )?;
        ip(node, &["link", "set", "srv0", "up"])?;
        ip(srv, &["addr", "add", "10.253.0.2/30", "dev", "eth0"])?;
        ip(srv, &["link", "set", "eth0", "up"])?;
        ip(
            srv,
            &["route", "add", "default", "via", NODE_SERVER_SIDE_IP],
        )?;
        ip(
            node,
            &[
                "route",
                "add",
                crate::workload::ENDPOINT_RANGE,
                "via",
                "10.253.0.2",
            ],
        )?;
        // Every endpoint address is local to the server namespace.
        ip(
            srv,
            &[
                "route",
                "add",
                "local",
                crate::workload::ENDPOINT_RANGE,
                "dev",
                "lo",
            ],
        )?;
        sysctl(node, "net.ipv4.ip_forward", "1")?;
        // Many short connections: the whole port range for the client, quick reuse of
        // TIME_WAIT on the server (which closes first).
        sysctl(cli, "net.ipv4.ip_local_port_range", "1024 65535")?;
        sysctl(srv, "net.ipv4.tcp_max_syn_backlog", "65536")?;
        sysctl(srv, "net.core.somaxconn", "65536")?;
        Ok(())
    }
}

/// Enters the network namespace at `path` (the calling thread; threads spawned afterwards
/// inherit it).
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = fs::File::open(path)?;
    // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
