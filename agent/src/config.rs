//! The agent's configuration, as `keelson agent` and `keelson up` fill it in.

use std::{net::Ipv4Addr, net::SocketAddr, path::PathBuf};

/// Everything `keelson agent` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Name of the Node this agent registers and serves.
    pub node_name: String,
    /// kubeconfig to reach the API server; `None` means in-cluster config or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// The node's network namespace (`/run/netns/<name>`). `None`: the agent's own namespace.
    /// The agent process stays in its own namespace (so it keeps `/sys/fs/cgroup` and the
    /// bpffs, and reaches the API server on loopback) and enters this one per operation.
    pub node_netns: Option<PathBuf>,
    /// The node's InternalIP, reported in Node.status.addresses and used by other nodes as the
    /// next hop to this node's podCIDR.
    pub node_ip: Ipv4Addr,
    /// cgroup v2 directory the socket-level load balancer attaches to; Pods run below it.
    pub cgroup_root: PathBuf,
    /// bpffs directory the maps and links are pinned in (`<bpffs>/keelson/<node>`).
    pub pin_dir: PathBuf,
    /// Pod logs, the CNI socket and local state live here.
    pub data_dir: PathBuf,
    /// Where the agent serves its node API (logs, exec, attach, port-forward) for the server
    /// to proxy (standalone clusters).
    pub api_listen: SocketAddr,
    /// The node API's TLS; without it the node API is plain HTTP open to any caller.
    pub node_tls: Option<crate::node::tls::TlsFiles>,
    /// Where the agent serves `/metrics`, `/flows` and `/healthz` (plain HTTP).
    pub metrics_listen: SocketAddr,
    /// Path of the `keelson` binary, invoked as the CNI plugin.
    pub cni_bin: PathBuf,
    /// Whether this agent is also the Node's kubelet (standalone clusters) or only its
    /// dataplane (a DaemonSet on an existing cluster).
    pub kubelet: bool,
    /// Flows from outside the node use Maglev unless a Service asks for random selection.
    pub maglev_default: bool,
    /// The cluster's DNS Service address (the kubelet's `--cluster-dns`); `None`: Pods with
    /// `dnsPolicy: ClusterFirst` get the node's resolv.conf.
    pub cluster_dns: Option<Ipv4Addr>,
    /// The cluster's DNS domain (the kubelet's `--cluster-domain`).
    pub cluster_domain: String,
    /// Whether the datapath reports every new flow (`keelson flows`, `policy whatif`), or
    /// drops only.
    pub all_flow_events: bool,
}
