//! The controllers: each a pure `plan(&object, &snapshot) -> changes` plus a thin loop that
//! applies the changes through the Kubernetes API, like any other client.
//!
//! Each controller's module wires it ([`runtime::Controller`]): the informers it reads and the
//! mappers from changes of watched objects to its keys. [`run_all`] adds them to a
//! [`runtime::Runner`]: one informer per watched kind shared by every controller, one work
//! queue and worker per controller. The controllers: [`deployment`], [`replicaset`],
//! [`daemonset`], [`endpointslice`], [`nodeipam`], [`nodelifecycle`], [`gc`] (garbage
//! collection through ownerReferences), [`namespace`] (Namespace deletion),
//! [`serviceaccount`] (each Namespace's `default` ServiceAccount), [`rootcacert`] (each
//! Namespace's `kube-root-ca.crt`), [`clusterroleaggregation`] (ClusterRoles made of others)
//! and [`lbipam`] (LoadBalancer addresses).

pub mod clusterroleaggregation;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod lbipam;
#[cfg(test)]
mod loop_tests;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod objects;
pub mod podtemplate;
pub mod replicaset;
pub mod rootcacert;
pub mod runtime;
pub mod serviceaccount;
#[cfg(test)]
pub(crate) mod testutil;

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// Node podCIDRs are carved from here (e.g. 10.244.0.0/16).
    pub cluster_cidr: String,
    /// Prefix length of each Node's podCIDR (e.g. 24).
    pub node_cidr_mask: u8,
    /// LoadBalancer addresses are allocated from these CIDRs ("172.30.0.0/24,..."); `None`
    /// leaves LoadBalancer Services without an address, as a cluster without LB-IPAM does.
    pub lb_pool: Option<String>,
    /// The cluster CA, published in every Namespace as `kube-root-ca.crt`; `None` publishes
    /// nothing.
    pub root_ca_pem: Option<String>,
}

/// Errors of the controller loops.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A watch stream ended (watchers retry forever, so this is a bug).
    #[error("the watch of {0} ended")]
    WatchEnded(String),
    /// A controller task ended or panicked.
    #[error("controller {name} stopped")]
    Stopped {
        name: String,
        #[source]
        source: Option<tokio::task::JoinError>,
    },
    /// The configuration cannot be used.
    #[error("invalid controller configuration: {0}")]
    Config(String),
}

/// Runs every controller until one fails: each controller module wires itself
/// ([`runtime::Controller`]) onto informers shared per kind, and gets its own work queue and
/// worker ([`runtime::Runner`]). Only a controller or watch that stops is fatal; API errors
/// (409 conflicts included) are retried per object.
pub async fn run_all(client: kube::Client, cfg: ControllersConfig) -> Result<(), ControllerError> {
    let pool = nodeipam::Pool::new(&cfg.cluster_cidr, cfg.node_cidr_mask)?;
    let lb_pool = cfg
        .lb_pool
        .as_deref()
        .map(lbipam::LbPool::parse)
        .transpose()?;
    let mut runner = runtime::Runner::new(client);
    runner
        .add(deployment::DeploymentController)
        .add(replicaset::ReplicaSetController)
        .add(daemonset::DaemonSetController)
        .add(endpointslice::EndpointSliceController)
        .add(nodeipam::NodeIpamController { pool })
        .add(nodelifecycle::NodeLifecycleController)
        .add(gc::GarbageCollector)
        .add(namespace::NamespaceController)
        .add(serviceaccount::ServiceAccountsController)
        .add(clusterroleaggregation::AggregationController);
    if let Some(ca) = cfg.root_ca_pem {
        runner.add(rootcacert::RootCaController { ca });
    }
    if let Some(pool) = lb_pool {
        tracing::info!(pool = ?pool.cidrs, addresses = pool.len(), "LoadBalancer IPAM started");
        runner.add(lbipam::LbIpamController { pool });
    }
    tracing::info!(cluster_cidr = %pool.cluster, node_cidr_mask = pool.mask, "controllers started");
    runner.run().await
}
