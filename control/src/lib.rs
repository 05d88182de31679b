//! The keelson control plane: a revisioned store, the Kubernetes API over it, a scheduler and
//! the controllers that reconcile Deployments, ReplicaSets, Services, EndpointSlices and Nodes.
//!
//! The control plane never links the agent: the Kubernetes API is the only contract between them.

pub mod api;
pub mod controllers;
pub mod ipam;
pub mod listen;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod store;
