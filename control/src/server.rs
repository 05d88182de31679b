//! `keelson server`: wires the store, the API, the scheduler and the controllers together.

use std::{net::SocketAddr, path::PathBuf};

/// Everything `keelson server` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds the SQLite store, the CA and serving certificates and `admin.kubeconfig`.
    pub data_dir: PathBuf,
    /// Where the HTTPS API listens, e.g. 127.0.0.1:6443.
    pub listen: SocketAddr,
    /// ClusterIPs are allocated from here (e.g. 10.96.0.0/16).
    pub service_cidr: String,
    /// Node podCIDRs are carved from here (e.g. 10.244.0.0/16).
    pub cluster_cidr: String,
    /// Prefix length of each Node's podCIDR (e.g. 24).
    pub node_cidr_mask: u8,
}

/// Errors of the server as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server failed: {0}")]
    Other(String),
}

/// Runs the control plane until the process is told to stop.
pub async fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    let _ = cfg;
    Err(ServerError::Other("not built yet".into()))
}
