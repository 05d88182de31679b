//! The controllers: each a pure `plan(&object, &snapshot) -> changes` plus a thin loop that
//! applies the changes through the Kubernetes API, like any other client.
//!
//! [`run_all`] wires them up: one informer per watched kind (shared by every controller),
//! event handlers that map each change to the keys of the controllers it concerns, and one
//! work queue and worker per controller ([`runtime`]). The controllers: [`deployment`],
//! [`replicaset`], [`daemonset`], [`endpointslice`], [`nodeipam`], [`nodelifecycle`], [`gc`] (garbage
//! collection through ownerReferences) and [`namespace`] (Namespace deletion).

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
pub mod runtime;
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
        name: &'static str,
        #[source]
        source: Option<tokio::task::JoinError>,
    },
    /// The configuration cannot be used.
    #[error("invalid controller configuration: {0}")]
    Config(String),
}

/// Runs every controller until one fails: one informer per watched kind shared by all
/// controllers, one work queue and worker per controller. Only a controller or watch that stops
/// is fatal; API errors (409 conflicts included) are retried per object.
pub async fn run_all(client: kube::Client, cfg: ControllersConfig) -> Result<(), ControllerError> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::Api;
    use kube::runtime::watcher;
    use runtime::{Informer, Touch, WorkQueue, key_of, run_worker};

    let pool = nodeipam::Pool::new(&cfg.cluster_cidr, cfg.node_cidr_mask)?;
    let mut deployments =
        Informer::<Deployment>::new(Api::all(client.clone()), watcher::Config::default());
    let mut replicasets =
        Informer::<ReplicaSet>::new(Api::all(client.clone()), watcher::Config::default());
    let mut pods = Informer::<Pod>::new(Api::all(client.clone()), watcher::Config::default());
    let mut services =
        Informer::<Service>::new(Api::all(client.clone()), watcher::Config::default());
    let mut slices =
        Informer::<EndpointSlice>::new(Api::all(client.clone()), watcher::Config::default());
    let mut nodes = Informer::<Node>::new(Api::all(client.clone()), watcher::Config::default());
    let mut leases = Informer::<Lease>::new(
        Api::namespaced(client.clone(), nodelifecycle::LEASE_NAMESPACE),
        watcher::Config::default(),
    );

    let mut namespaces =
        Informer::<Namespace>::new(Api::all(client.clone()), watcher::Config::default());
    let mut daemonsets =
        Informer::<DaemonSet>::new(Api::all(client.clone()), watcher::Config::default());
    let ds_q = WorkQueue::default();
    let deploy_q = WorkQueue::default();
    let ns_q = WorkQueue::default();
    let rs_q = WorkQueue::default();
    let eps_q = WorkQueue::default();
    let ipam_q = WorkQueue::default();
    let lifecycle_q = WorkQueue::default();
    let gc_q = WorkQueue::default();

    // Enqueue the controller owning `meta` (of `kind`) under `queue`.
    fn owner_key(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        kind: &str,
    ) -> Option<String> {
        let r = objects::controller_ref(meta).filter(|r| r.kind == kind)?;
        Some(format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            r.name
        ))
    }

    {
        let (dq, gq) = (deploy_q.clone(), gc_q.clone());
        deployments.on(move |t| match t {
            Touch::Changed(d) => {
                dq.add(key_of(d));
                if gc::has_propagation_finalizer(&d.metadata) {
                    gq.add(gc::owner_key(d));
                }
            }
            Touch::Deleted(d) => {
                dq.add(key_of(d));
                gq.add("all");
            }
            Touch::Relisted(all) => {
                all.iter().for_each(|d| dq.add(key_of(&**d)));
                all.iter()
                    .filter(|d| gc::has_propagation_finalizer(&d.metadata))
                    .for_each(|d| gq.add(gc::owner_key(&**d)));
                gq.add("all");
            }
        });
    }
    {
        let (rq, dq, gq) = (rs_q.clone(), deploy_q.clone(), gc_q.clone());
        replicasets.on(move |t| {
            let touch = |rs: &ReplicaSet| {
                rq.add(key_of(rs));
                if let Some(k) = owner_key(&rs.metadata, "Deployment") {
                    dq.add(k);
                }
                gc::owner_keys_of(&rs.metadata)
                    .into_iter()
                    .for_each(|k| gq.add(k));
                if gc::has_propagation_finalizer(&rs.metadata) {
                    gq.add(gc::owner_key(rs));
                }
            };
            match t {
                Touch::Changed(rs) => {
                    touch(rs);
                    gq.add(gc::gc_key(rs));
                }
                Touch::Deleted(rs) => {
                    touch(rs);
                    gq.add("all");
                }
                Touch::Relisted(all) => {
                    all.iter().for_each(|rs| touch(rs));
                    gq.add("all");
                }
            }
        });
    }
    {
        let (rq, eq, gq, dsq) = (rs_q.clone(), eps_q.clone(), gc_q.clone(), ds_q.clone());
        let svc_store = services.store();
        pods.on(move |t| {
            // A Pod's labels may have changed, so every selecting Service of its namespace is
            // a candidate (the old labels are not in the event).
            let touch = |p: &Pod| {
                if let Some(k) = owner_key(&p.metadata, "ReplicaSet") {
                    rq.add(k);
                }
                if let Some(k) = owner_key(&p.metadata, "DaemonSet") {
                    dsq.add(k);
                }
                gc::owner_keys_of(&p.metadata)
                    .into_iter()
                    .for_each(|k| gq.add(k));
                let ns = p.metadata.namespace.as_deref();
                for svc in svc_store.state() {
                    if svc.metadata.namespace.as_deref() == ns
                        && endpointslice::managed_selector(&svc).is_some()
                    {
                        eq.add(key_of(&*svc));
                    }
                }
            };
            match t {
                Touch::Changed(p) => {
                    touch(p);
                    gq.add(gc::gc_key(p));
                }
                Touch::Deleted(p) => touch(p),
                Touch::Relisted(all) => {
                    all.iter()
                        .filter_map(|p| owner_key(&p.metadata, "ReplicaSet"))
                        .for_each(|k| rq.add(k));
                    all.iter()
                        .filter_map(|p| owner_key(&p.metadata, "DaemonSet"))
                        .for_each(|k| dsq.add(k));
                    svc_store.state().iter().for_each(|s| eq.add(key_of(&**s)));
                    gq.add("all");
                }
            }
        });
    }
    {
        let (eq, gq) = (eps_q.clone(), gc_q.clone());
        services.on(move |t| match t {
            Touch::Changed(s) => {
                eq.add(key_of(s));
                if gc::has_propagation_finalizer(&s.metadata) {
                    gq.add(gc::owner_key(s));
                }
            }
            Touch::Deleted(s) => {
                eq.add(key_of(s));
                gq.add("all");
            }
            Touch::Relisted(all) => {
                all.iter().for_each(|s| eq.add(key_of(&**s)));
                all.iter()
                    .filter(|s| gc::has_propagation_finalizer(&s.metadata))
                    .for_each(|s| gq.add(gc::owner_key(&**s)));
                gq.add("all");
            }
        });
    }
    {
        let (eq, gq) = (eps_q.clone(), gc_q.clone());
        slices.on(move |t| {
            let touch = |s: &EndpointSlice| {
                gc::owner_keys_of(&s.metadata)
                    .into_iter()
                    .for_each(|k| gq.add(k));
                let labels = s.metadata.labels.as_ref();
                let managed = labels
                    .and_then(|l| l.get(endpointslice::MANAGED_BY_LABEL))
                    .map(String::as_str)
                    == Some(endpointslice::MANAGED_BY);
                if let (true, Some(svc)) = (
                    managed,
                    labels.and_then(|l| l.get(endpointslice::SERVICE_NAME_LABEL)),
                ) {
                    eq.add(format!(
                        "{}/{svc}",
                        s.metadata.namespace.as_deref().unwrap_or_default()
                    ));
                }
            };
            match t {
                Touch::Changed(s) => {
                    touch(s);
                    gq.add(gc::gc_key(s));
                }
                Touch::Deleted(s) => touch(s),
                Touch::Relisted(all) => {
                    all.iter().for_each(|s| touch(s));
                    gq.add("all");
                }
            }
        });
    }
    {
        let (iq, lq, dsq, gq) = (
            ipam_q.clone(),
            lifecycle_q.clone(),
            ds_q.clone(),
            gc_q.clone(),
        );
        let node_store = nodes.store();
        let ds_store = daemonsets.store();
        nodes.on(move |t| {
            // Every DaemonSet may want a Pod on a new or changed Node, or none on a gone one.
            ds_store.state().iter().for_each(|d| dsq.add(key_of(&**d)));
            match t {
                Touch::Changed(n) => {
                    iq.add(key_of(n));
                    lq.add(key_of(n));
                }
                // A freed block may let a Node that found the pool exhausted get one now.
                Touch::Deleted(_) => {
                    node_store.state().iter().for_each(|n| iq.add(key_of(&**n)));
                    // Its Pods are left to the garbage collector.
                    gq.add("all");
                }
                Touch::Relisted(all) => all.iter().for_each(|n| {
                    iq.add(key_of(&**n));
                    lq.add(key_of(&**n));
                }),
            }
        });
    }
    {
        let (q, gq) = (ds_q.clone(), gc_q.clone());
        daemonsets.on(move |t| match t {
            Touch::Changed(d) => {
                q.add(key_of(d));
                if gc::has_propagation_finalizer(&d.metadata) {
                    gq.add(gc::owner_key(d));
                }
            }
            Touch::Deleted(d) => {
                q.add(key_of(d));
                gq.add("all");
            }
            Touch::Relisted(all) => {
                all.iter().for_each(|d| q.add(key_of(&**d)));
                gq.add("all");
            }
        });
    }
    {
        let lq = lifecycle_q.clone();
        leases.on(move |t| match t {
            Touch::Changed(l) | Touch::Deleted(l) => {
                lq.add(l.metadata.name.clone().unwrap_or_default())
            }
            Touch::Relisted(all) => all
                .iter()
                .for_each(|l| lq.add(l.metadata.name.clone().unwrap_or_default())),
        });
    }

    {
        let q = ns_q.clone();
        namespaces.on(move |t| match t {
            Touch::Changed(n) => q.add(key_of(n)),
            Touch::Deleted(_) => {}
            Touch::Relisted(all) => all.iter().for_each(|n| q.add(key_of(&**n))),
        });
    }
    let namespace_store = namespaces.store();
    let daemonset_store = daemonsets.store();
    let (ds, rss, ps, ss, es, ns, ls) = (
        deployments.store(),
        replicasets.store(),
        pods.store(),
        services.store(),
        slices.store(),
        nodes.store(),
        leases.store(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(lb_pool) = cfg
        .lb_pool
        .as_deref()
        .map(lbipam::LbPool::parse)
        .transpose()?
    {
        let c = client.clone();
        tasks.spawn(async move { ("lbipam controller", lbipam::run(c, lb_pool).await) });
    }
    tasks.spawn(async move { ("deployment informer", deployments.run().await) });
    tasks.spawn(async move { ("replicaset informer", replicasets.run().await) });
    tasks.spawn(async move { ("pod informer", pods.run().await) });
    tasks.spawn(async move { ("service informer", services.run().await) });
    tasks.spawn(async move { ("endpointslice informer", slices.run().await) });
    tasks.spawn(async move { ("node informer", nodes.run().await) });
    tasks.spawn(async move { ("lease informer", leases.run().await) });
    tasks.spawn(async move { ("namespace informer", namespaces.run().await) });
    tasks.spawn(async move { ("daemonset informer", daemonsets.run().await) });

    // Workers start once every store they read has listed, so no plan runs on a partial view
    // (the garbage collector above all). One task waits for the stores and tells the workers:
    // a store's readiness wakes only one waiter at a time (it is a oneshot underneath).
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    {
        let stores = (
            ds.clone(),
            rss.clone(),
            ps.clone(),
            ss.clone(),
            es.clone(),
            ns.clone(),
            ls.clone(),
            namespace_store.clone(),
            daemonset_store.clone(),
        );
        tokio::spawn(async move {
            let ok = stores.0.wait_until_ready().await.is_ok()
                && stores.1.wait_until_ready().await.is_ok()
                && stores.2.wait_until_ready().await.is_ok()
                && stores.3.wait_until_ready().await.is_ok()
                && stores.4.wait_until_ready().await.is_ok()
                && stores.5.wait_until_ready().await.is_ok()
                && stores.6.wait_until_ready().await.is_ok()
                && stores.7.wait_until_ready().await.is_ok()
                && stores.8.wait_until_ready().await.is_ok();
            if ok {
                let _ = ready_tx.send(true);
            }
        });
    }
    let ready = move || {
        let mut rx = ready_rx.clone();
        async move {
            let _ = rx.wait_for(|ready| *ready).await;
        }
    };
    {
        let w = deployment::DeploymentLoop {
            client: client.clone(),
            deployments: ds.clone(),
            replicasets: rss.clone(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "deployment controller",
                run_worker("deployment", deploy_q, w).await,
            )
        });
    }
    {
        let w = replicaset::ReplicaSetLoop {
            client: client.clone(),
            replicasets: rss.clone(),
            pods: ps.clone(),
            expectations: Default::default(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "replicaset controller",
                run_worker("replicaset", rs_q, w).await,
            )
        });
    }
    {
        let w = endpointslice::EndpointSliceLoop {
            client: client.clone(),
            services: ss.clone(),
            pods: ps.clone(),
            slices: es.clone(),
            nodes: ns.clone(),
            expectations: Default::default(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "endpointslice controller",
                run_worker("endpointslice", eps_q, w).await,
            )
        });
    }
    {
        let w = nodeipam::NodeIpamLoop {
            client: client.clone(),
            nodes: ns.clone(),
            pool,
            pending: Default::default(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "nodeipam controller",
                run_worker("nodeipam", ipam_q, w).await,
            )
        });
    }
    {
        let w = nodelifecycle::NodeLifecycleLoop {
            client: client.clone(),
            nodes: ns.clone(),
            leases: ls.clone(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "nodelifecycle controller",
                run_worker("nodelifecycle", lifecycle_q, w).await,
            )
        });
    }
    {
        let w = gc::GcLoop {
            client: client.clone(),
            daemonsets: daemonset_store.clone(),
            deployments: ds,
            replicasets: rss,
            services: ss,
            pods: ps.clone(),
            slices: es,
            nodes: ns.clone(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            ("garbage collector", run_worker("gc", gc_q, w).await)
        });
    }
    {
        let w = daemonset::DaemonSetLoop {
            client: client.clone(),
            daemonsets: daemonset_store.clone(),
            pods: ps.clone(),
            nodes: ns.clone(),
            expectations: Default::default(),
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "daemonset controller",
                run_worker("daemonset", ds_q, w).await,
            )
        });
    }
    {
        let w = namespace::NamespaceLoop {
            client: client.clone(),
            namespaces: namespace_store,
            resources: None,
        };
        let r = ready();
        tasks.spawn(async move {
            r.await;
            (
                "namespace controller",
                run_worker("namespace", ns_q, w).await,
            )
        });
    }
    tracing::info!(cluster_cidr = %pool.cluster, node_cidr_mask = pool.mask, "controllers started");

    match tasks.join_next().await {
        Some(Ok((name, Err(e)))) => {
            tracing::error!(task = name, error = %e, "controller task failed");
            Err(e)
        }
        Some(Ok((name, Ok(())))) => Err(ControllerError::Stopped { name, source: None }),
        Some(Err(e)) => Err(ControllerError::Stopped {
            name: "controller task",
            source: Some(e),
        }),
        None => Err(ControllerError::Stopped {
            name: "controllers",
            source: None,
        }),
    }
}
