//! The Node side of the agent in a standalone cluster: registration, Lease, Pods (the
//! kubelet-lite: sandboxes, each container's filesystem and volumes, its environment and
//! cgroups, status), and the agent API the server proxies logs, exec, attach and port-forward to.

pub mod api;
pub mod cgroups;
pub mod env;
pub mod exec;
pub mod lifecycle;
pub mod logfile;
pub mod podfiles;
pub mod pods;
pub mod portforward;
pub mod probe;
pub mod process;
pub mod registration;
pub mod rootfs;
pub mod sources;
pub mod status;
pub mod stream;
pub mod tls;
pub mod tokens;
pub mod volumes;
