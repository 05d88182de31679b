//! Loads the eBPF object, pins its maps under the node's bpffs directory and attaches the
//! programs: socket hooks to the node's cgroup root, tc programs to each endpoint's host veth.

use std::{net::Ipv4Addr, path::PathBuf};

/// Where the datapath of one node lives.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// bpffs directory for this node's pinned maps and links.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory the socket hooks attach to.
    pub cgroup_root: PathBuf,
    /// The node's network namespace; tc programs attach to veths inside it.
    pub node_netns: Option<PathBuf>,
}

/// A local Pod endpoint as the datapath sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// ifindex of the host-side veth, inside the node's network namespace.
    pub host_ifindex: u32,
    pub host_ifname: String,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("datapath: {0}")]
    Other(String),
}

/// The loaded datapath of one node.
#[derive(Debug)]
pub struct Datapath {
    _cfg: DatapathConfig,
}

impl Datapath {
    /// Mounts bpffs if needed, loads the object, reuses or pins maps, attaches socket hooks.
    pub fn load(cfg: DatapathConfig) -> Result<Self, LoaderError> {
        Err(LoaderError::Other(format!("not built yet: {cfg:?}")))
    }
    /// Attaches the tc programs to the endpoint's host veth and records it in `endpoints`.
    pub fn add_endpoint(&self, ep: &Endpoint) -> Result<(), LoaderError> {
        Err(LoaderError::Other(format!("not built yet: {ep:?}")))
    }
    /// Forgets an endpoint (its veth, and so its tc links, are gone with the Pod's netns).
    pub fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), LoaderError> {
        Err(LoaderError::Other(format!("not built yet: {ip}")))
    }
}
