//! NetworkPolicy enforcement: watches Pods, Namespaces, NetworkPolicies and Nodes, compiles
//! them into identities, ipcache entries and per-endpoint policy entries, and writes the
//! difference into the datapath's maps.

pub mod compile;
pub mod diff;
pub mod identity;
pub mod model;
pub mod ports;
pub mod rules;
pub mod selector;

pub use compile::plan;
pub use diff::{diff, diff_endpoints};
pub use model::{
    Cidr, ContainerPort, Desired, EndpointPolicy, NamespaceInfo, NodeContext, NodeInfo, PodInfo,
    PolicyEntryKey, PolicyOp, Snapshot,
};

#[cfg(test)]
mod compile_tests;
#[cfg(test)]
mod diff_tests;
#[cfg(test)]
mod maps_tests;
#[cfg(test)]
pub(crate) mod testutil;
