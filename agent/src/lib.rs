//! The keelson node agent: loads the eBPF datapath, programs Services into it, wires Pods to
//! it through `keelson cni`, and in a standalone cluster is also the Node's kubelet.
//!
//! The agent never links the control plane: it speaks the Kubernetes API through kube-rs, so an
//! agent that works against `keelson server` works against a real kube-apiserver.

pub mod bpf;
pub mod cni;
pub mod config;
pub mod ipam;
pub mod links;
pub mod loader;
pub mod netns;
pub mod node;
pub mod services;

pub use config::AgentConfig;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent failed: {0}")]
    Other(String),
}

/// Runs the agent until the process is told to stop.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let _ = cfg;
    Err(AgentError::Other("not built yet".into()))
}
