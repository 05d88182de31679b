//! `keelson bpf ...`: reads a node's pinned maps and prints them for people and scripts.

use std::path::Path;

/// Errors of reading pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("bpf dump: {0}")]
    Other(String),
}

/// Renders the map `what` (services, backends, endpoints) pinned under `pin_dir`.
pub fn dump(pin_dir: &Path, what: &str, json: bool) -> Result<String, DumpError> {
    Err(DumpError::Other(format!("not built yet: {} {what} {json}", pin_dir.display())))
}
