//! The Node side of the agent in a standalone cluster: registration, Lease, Pods (the
//! kubelet-lite), routes to other nodes' podCIDRs, and the agent API the server proxies logs to.

pub mod api;
pub mod env;
pub mod exec;
pub mod pods;
pub mod portforward;
pub mod probe;
pub mod process;
pub mod registration;
pub mod status;
pub mod stream;
