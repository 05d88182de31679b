//! The bench's own little node: a client "Pod" namespace, a node namespace (where kube-proxy's
//! rules live, forwarding between the two veths) and a server namespace answering on every
//! endpoint address (AnyIP: `local 10.244.0.0/17 dev lo`). Every name carries the bench's pid;
//! guards remove namespaces, cgroups and pins even when the bench fails, and leftovers of a
//! crashed run (whose pid is gone) are removed at start.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

/// The node's address on the server-side link (NodePort address in kube-proxy's rules).
pub const NODE_SERVER_SIDE_IP: &str = "10.253.0.1";
/// The client Pod's address (inside the cluster CIDR, so kube-proxy does not masquerade it).
pub const CLIENT_IP: &str = "10.244.200.2";

const NETNS_PREFIX: &str = "kls-b-";
/// Where the bench's cgroups and pin directories go: `<root>/<STATE_PREFIX><pid>-<tag>`, each
/// directly under its root, so removing a run's own directories leaves nothing behind.
const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
const PIN_ROOT: &str = "/sys/fs/bpf";
const STATE_PREFIX: &str = "keelson-test-bench-";

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
        run("ip", &["netns", "add", &name])?;
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory removed on drop (stragglers moved to the root first).
#[derive(Debug)]
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    fn new(path: PathBuf) -> Result<Self> {
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.0);
    }
}

fn remove_cgroup(path: &Path) {
    if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs.lines() {
            let _ = fs::write("/sys/fs/cgroup/unified/cgroup.procs", pid);
        }
    }
    let _ = fs::remove_dir(path);
}

/// A bpffs pin directory removed on drop (unpinning the links detaches the programs).
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One fresh topology (one mode at one size).
#[derive(Debug)]
pub struct Topology {
    pub cli: Netns,
    pub node: Netns,
    pub srv: Netns,
    pub cgroup: Cgroup,
    pub pins: PinDir,
}

impl Topology {
    /// Builds the three namespaces and their links; `tag` makes the names unique within the
    /// run.
    pub fn new(tag: &str) -> Result<Self> {
        let pid = std::process::id();
        let base = format!("{NETNS_PREFIX}{pid}-{tag}");
        let cli = Netns::new(format!("{base}-cli"))?;
        let node = Netns::new(format!("{base}-node"))?;
        let srv = Netns::new(format!("{base}-srv"))?;
        let cgroup =
            Cgroup::new(PathBuf::from(CGROUP_ROOT).join(format!("{STATE_PREFIX}{pid}-{tag}")))?;
        let pins = PinDir(PathBuf::from(PIN_ROOT).join(format!("{STATE_PREFIX}{pid}-{tag}")));
        let t = Self {
            cli,
            node,
            srv,
            cgroup,
            pins,
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

/// Removes namespaces, cgroups and pin directories of earlier runs whose process is gone.
pub fn cleanup_leftovers() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let pid_of = |name: &str, prefix: &str| -> Option<String> {
        name.strip_prefix(prefix)?
            .split('-')
            .next()
            .map(str::to_string)
    };
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = pid_of(&name, NETNS_PREFIX)
                && !alive(&pid)
            {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    for (parent, is_cgroup) in [(CGROUP_ROOT, true), (PIN_ROOT, false)] {
        let Ok(dir) = fs::read_dir(parent) else {
            continue;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = pid_of(&name, STATE_PREFIX)
                && !alive(&pid)
            {
                if is_cgroup {
                    remove_cgroup(&e.path());
                } else {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
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
