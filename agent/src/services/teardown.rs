//! Connection teardown for removed backends: destroys every socket connected to a backend that
//! is gone, in the node's network namespace and in the namespaces of its Pods, so that
//! applications get an error at once instead of a silently blackholed connection.
//!
//! The socket load balancer translates a ClusterIP to a backend at connect() time; the
//! connected socket then talks to the backend's address directly and no later map change
//! reaches it. A connected UDP socket would keep sending into the void forever, which is
//! kubernetes#56903 (kube-proxy clears the conntrack entries for the NAT case); TCP would
//! wait for retransmission timeouts. The kernel's SOCK_DESTROY (sock_diag, Linux 4.5,
//! c1e64e298b8c for TCP and 5d77dca82839 for UDP; CONFIG_INET_DIAG_DESTROY) aborts such a
//! socket with ECONNABORTED, as Cilium does for its socket load balancer.
//!
//! Sockets live in the namespaces of the processes that own them: those of every process in
//! the node's cgroup subtree (the Pods), plus the node namespace itself. The namespaces are
//! found here; the destroying goes through the narrow [`SocketDestroyer`] trait, implemented
//! on sock_diag netlink messages by [`super::sockdiag`].

use std::{
    collections::BTreeSet,
    fs, io,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::model::{BackendAddr, Proto};

/// Errors of tearing down connections.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("reading cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("destroying {proto} sockets in network namespace {netns}")]
    Destroy {
        netns: PathBuf,
        proto: Proto,
        #[source]
        source: io::Error,
    },
}

/// Destroys sockets in one network namespace.
pub trait SocketDestroyer {
    /// Destroys every `proto` socket in the namespace at `netns` whose remote address is one of
    /// `targets`, and returns how many it destroyed.
    fn destroy(&self, netns: &Path, proto: Proto, targets: &[SocketAddr]) -> io::Result<usize>;
}

/// The network namespaces sockets to backends may live in: `node_netns` (if any) first, then
/// one `/proc/<pid>/ns/net` per distinct namespace among the processes of `cgroup_root`'s
/// subtree. Namespaces are told apart by the (device, inode) of their nsfs file, so the node
/// namespace and Pods sharing it (hostNetwork) appear once. Processes and cgroups that vanish
/// while they are read are skipped (Pods come and go).
pub fn namespaces(
    cgroup_root: &Path,
    node_netns: Option<&Path>,
) -> Result<Vec<PathBuf>, TeardownError> {
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut out = Vec::new();
    if let Some(node) = node_netns
        && let Ok(meta) = fs::metadata(node)
    {
        seen.insert((meta.dev(), meta.ino()));
        out.push(node.to_owned());
    }
    let mut pids = BTreeSet::new();
    collect_pids(cgroup_root, true, &mut pids)?;
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // A process that exited (or a kernel thread without a namespace) has nothing to tear.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Reads `cgroup.procs` of `dir` and of every cgroup below it. Only the root must exist.
fn collect_pids(dir: &Path, root: bool, pids: &mut BTreeSet<u32>) -> Result<(), TeardownError> {
    let tolerate = |e: io::Error| -> Result<(), TeardownError> {
        if !root && e.kind() == io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(TeardownError::Cgroup {
                path: dir.to_owned(),
                source: e,
            })
        }
    };
    match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) => pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        Err(e) => return tolerate(e),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return tolerate(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), false, pids)?;
        }
    }
    Ok(())
}

/// Destroys every TCP and UDP socket connected to one of `backends` in the node namespace and
/// in the namespaces of the processes under `cgroup_root`; returns how many were destroyed.
/// SCTP backends are skipped (the kernel cannot destroy SCTP sockets).
pub fn destroy_connections(
    cgroup_root: &Path,
    node_netns: Option<&Path>,
    backends: &[BackendAddr],
) -> Result<usize, TeardownError> {
    destroy_with(
        &super::sockdiag::NetlinkDestroyer,
        cgroup_root,
        node_netns,
        backends,
    )
}

/// [`destroy_connections`] with a given destroyer. Every namespace is tried even when one
/// fails; the first failure is returned after all were tried. A namespace that disappeared
/// before its turn (its last process exited) is not a failure.
pub fn destroy_with(
    destroyer: &dyn SocketDestroyer,
    cgroup_root: &Path,
    node_netns: Option<&Path>,
    backends: &[BackendAddr],
) -> Result<usize, TeardownError> {
    let by_proto: Vec<(Proto, Vec<SocketAddr>)> = [Proto::Tcp, Proto::Udp]
        .into_iter()
        .map(|proto| {
            let targets: BTreeSet<SocketAddr> = backends
                .iter()
                .filter(|b| b.proto == proto)
                .map(|b| SocketAddr::new(b.address, b.port))
                .collect();
            (proto, targets.into_iter().collect())
        })
        .filter(|(_, t): &(Proto, Vec<SocketAddr>)| !t.is_empty())
        .collect();
    if by_proto.is_empty() {
        return Ok(0);
    }
    let mut destroyed = 0;
    let mut first_error = None;
    for netns in namespaces(cgroup_root, node_netns)? {
        for (proto, targets) in &by_proto {
            match destroyer.destroy(&netns, *proto, targets) {
                Ok(n) => destroyed += n,
                Err(_) if !netns.exists() => break,
                Err(source) => {
                    tracing::warn!(netns = %netns.display(), %proto, error = %source, "destroying sockets failed");
                    first_error.get_or_insert(TeardownError::Destroy {
                        netns: netns.clone(),
                        proto: *proto,
                        source,
                    });
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(destroyed),
    }
}

#[cfg(test)]
#[path = "teardown_tests.rs"]
mod tests;
