//! The keelson node agent: loads the eBPF datapath, programs Services into it, wires Pods to
//! it through `keelson cni`, and in a standalone cluster is also the Node's kubelet.
//!
//! The agent never links the control plane: it speaks the Kubernetes API through kube-rs, so an
//! agent that works against `keelson server` works against a real kube-apiserver.

pub mod bpf;
pub mod cni;
pub mod config;
pub mod dns;
pub mod flows;
pub mod ipam;
pub mod links;
pub mod loader;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod policy;
pub mod privileges;
pub mod routing;
pub mod services;
pub mod watch;

pub use config::AgentConfig;

use std::{path::Path, sync::Arc};

use keelson_common::DropReason;

use crate::{
    cni::server::{CniServer, CniServerError, EndpointSink},
    links::{NetOps as _, Netlink},
    loader::{Datapath, DatapathConfig, LoaderError},
    node::{
        api::ApiError,
        pods::{self, PodRuntimeConfig},
        registration::{self, MachineInfo, NodeFacts, RegistrationError},
    },
    policy::PolicyError,
    privileges::PrivilegeError,
    routing::RoutingError,
    services::ServicesError,
};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("insufficient privileges")]
    Privileges(#[source] PrivilegeError),
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding a kubeconfig (none given, no in-cluster config, no $KUBECONFIG)")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("creating the data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF datapath")]
    Datapath(#[source] LoaderError),
    #[error("registering the Node")]
    Registration(#[source] RegistrationError),
    #[error("CNI server")]
    Cni(#[source] CniServerError),
    #[error("agent API")]
    Api(#[source] ApiError),
    #[error("the node API's TLS")]
    Tls(#[source] node::tls::TlsError),
    #[error("routing")]
    Routing(#[source] RoutingError),
    #[error("service load balancing")]
    Services(#[source] ServicesError),
    #[error("network policy")]
    Policy(#[source] PolicyError),
    #[error("finding the uplink")]
    Uplink(#[source] links::LinkError),
    #[error("no interface of the node holds its address {0}")]
    NoUplink(std::net::Ipv4Addr),
    #[error("flows")]
    Flows(#[source] flows::reader::FlowsError),
    #[error("the {0} task ended unexpectedly")]
    TaskEnded(&'static str),
}

/// A Kubernetes client from `kubeconfig`, or the in-cluster config or `$KUBECONFIG`.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, AgentError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc_err = |source| AgentError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kc_err)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kc_err)?
        }
        None => kube::Config::infer()
            .await
            .map_err(AgentError::InferConfig)?,
    };
    kube::Client::try_from(config).map_err(AgentError::Client)
}

/// How often idle conntrack entries are removed.
const CT_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the agent until the process is told to stop (SIGINT or SIGTERM) or a part of it fails.
///
/// Order matters: privileges first (fail fast with the missing capability), then the datapath
/// and Service programming, then (as kubelet) the Node registration, then — once the control
/// plane assigned `spec.podCIDR` — the CNI server, inter-node routes and the Pods.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    privileges::check().map_err(AgentError::Privileges)?;
    let client = kube_client(cfg.kubeconfig.as_deref()).await?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let dp = Arc::new(
        Datapath::load(DatapathConfig {
            pin_dir: cfg.pin_dir.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
            node_netns: cfg.node_netns.clone(),
        })
        .map_err(AgentError::Datapath)?,
    );
    // NodePorts and LoadBalancer IPs are served on the interface that holds the node's
    // address.
    let (uplink, uplink_ifindex) = Netlink::default()
        .link_with_addr(cfg.node_netns.as_deref(), cfg.node_ip)
        .map_err(AgentError::Uplink)?
        .ok_or(AgentError::NoUplink(cfg.node_ip))?;
    dp.attach_uplink(&uplink, uplink_ifindex, cfg.node_ip)
        .map_err(AgentError::Datapath)?;
    tracing::info!(%uplink, "uplink program attached");
    let mut tasks: tokio::task::JoinSet<(&'static str, Result<(), AgentError>)> =
        tokio::task::JoinSet::new();
    {
        let dp = Arc::clone(&dp);
        tasks.spawn(async move {
            let mut refused_before = 0;
            loop {
                tokio::time::sleep(CT_GC_INTERVAL).await;
                let pass = dp
                    .maps()
                    .run(|m| {
                        let removed = m.gc_ct(loader::sys::monotonic_ns())?;
                        let refused = m.metric(DropReason::CtFull as u32)?;
                        Ok::<_, loader::MapsError>((removed, refused.packets))
                    })
                    .await;
                match pass {
                    Ok((removed, refused)) => {
                        if removed > 0 {
                            tracing::debug!(removed, "conntrack GC");
                        }
                        // A full table refuses new flows: say so loudly, like netfilter's
                        // "table full, dropping packet".
                        if refused > refused_before {
                            tracing::error!(
                                refused = refused - refused_before,
                                "conntrack map {} full: new flows refused",
                                keelson_common::names::CT
                            );
                        }
                        refused_before = refused;
                    }
                    Err(e) => tracing::warn!(error = %e, "conntrack GC"),
                }
            }
        });
    }
    let (services_synced, services_synced_rx) = tokio::sync::watch::channel(false);
    {
        let (client, dp) = (client.clone(), Arc::clone(&dp));
        let node = services::plan::NodeContext {
            node_name: cfg.node_name.clone(),
            node_ips: vec![cfg.node_ip.into()],
            maglev_default: cfg.maglev_default,
        };
        tasks.spawn(async move {
            (
                "services",
                services::run(client, dp, node, services_synced)
                    .await
                    .map_err(AgentError::Services),
            )
        });
    }
    dp.set_flow_events(cfg.all_flow_events)
        .map_err(|e| AgentError::Datapath(LoaderError::Maps(e)))?;
    let flow_store = Arc::new(flows::FlowStore::new(flows::KEPT_FLOWS));
    {
        let namer = Arc::new(flows::names::Namer::default());
        let (dp, store, node) = (
            Arc::clone(&dp),
            Arc::clone(&flow_store),
            cfg.node_name.clone(),
        );
        let watcher = Arc::clone(&namer);
        let client = client.clone();
        tasks.spawn(async move {
            watcher.watch_pods(client).await;
            ("flow names", Ok(()))
        });
        tasks.spawn(async move {
            (
                "flows",
                flows::reader::run(dp, store, namer, node)
                    .await
                    .map_err(AgentError::Flows),
            )
        });
    }
    {
        let (client, dp) = (client.clone(), Arc::clone(&dp));
        let node = policy::NodeContext {
            node_name: cfg.node_name.clone(),
            node_ip: cfg.node_ip,
        };
        tasks.spawn(async move {
            (
                "network policy",
                policy::run(client, dp, node)
                    .await
                    .map_err(AgentError::Policy),
            )
        });
    }
    {
        let addr = cfg.metrics_listen;
        let api = node::api::DatapathApi {
            dp: Arc::clone(&dp),
            flows: Arc::clone(&flow_store),
        };
        tasks.spawn(async move {
            (
                "metrics API",
                node::api::serve_metrics(addr, Some(api))
                    .await
                    .map_err(AgentError::Api),
            )
        });
    }
    if cfg.kubelet {
        let tls = match &cfg.node_tls {
            Some(files) => {
                let names = vec![
                    cfg.node_name.clone(),
                    cfg.node_ip.to_string(),
                    cfg.api_listen.ip().to_string(),
                ];
                Some(node::tls::load(files, &cfg.data_dir, &names).map_err(AgentError::Tls)?)
            }
            None => {
                tracing::warn!(
                    "no --client-ca-file: the node API (logs, exec, port-forward) serves plain \
                     HTTP to any caller"
                );
                None
            }
        };
        let (addr, dir) = (cfg.api_listen, cfg.data_dir.clone());
        let server_tls = tls.as_ref().map(|t| Arc::clone(&t.config));
        tasks.spawn(async move {
            (
                "node API",
                node::api::serve_node(addr, dir, server_tls)
                    .await
                    .map_err(AgentError::Api),
            )
        });
        let facts = NodeFacts {
            name: cfg.node_name.clone(),
            ip: cfg.node_ip,
            api_listen: cfg.api_listen,
            api_cert_sha256: tls.map(|t| t.cert_sha256),
            metrics_listen: cfg.metrics_listen,
            machine: MachineInfo::probe(),
        };
        let uid = registration::register(&client, &facts)
            .await
            .map_err(AgentError::Registration)?;
        tracing::info!(node = %cfg.node_name, "node registered");
        let client = client.clone();
        tasks.spawn(async move {
            registration::heartbeat_loop(client, facts, uid).await;
            ("heartbeat", Ok(()))
        });
    }

    let setup = async {
        let cidr = registration::wait_pod_cidr(&client, &cfg.node_name)
            .await
            .map_err(AgentError::Registration)?;
        tracing::info!(%cidr, "node podCIDR assigned");
        let sink: Arc<dyn EndpointSink> = dp.clone();
        let server = CniServer::new(
            cfg.node_netns.clone(),
            cidr,
            &cfg.data_dir.join("ipam.json"),
            Arc::new(Netlink::for_namespace(cfg.node_netns.clone())),
            sink,
        )
        .map_err(AgentError::Cni)?;
        Ok::<_, AgentError>(Arc::new(server))
    };
    let server = tokio::select! {
        r = setup => r?,
        Some(done) = tasks.join_next() => return Err(task_ended(done)),
        () = shutdown_signal() => return Ok(()),
    };
    let socket = cfg.data_dir.join("cni.sock");
    tasks.spawn(async move {
        (
            "CNI server",
            server.serve(&socket).await.map_err(AgentError::Cni),
        )
    });
    {
        let (client, name, ns) = (
            client.clone(),
            cfg.node_name.clone(),
            cfg.node_netns.clone(),
        );
        tasks.spawn(async move {
            (
                "routing",
                routing::run(
                    client,
                    name,
                    ns.clone(),
                    Arc::new(Netlink::for_namespace(ns)),
                )
                .await
                .map_err(AgentError::Routing),
            )
        });
    }
    if cfg.kubelet {
        let pods_cfg = PodRuntimeConfig {
            node_name: cfg.node_name.clone(),
            node_ip: cfg.node_ip,
            node_netns: cfg.node_netns.clone(),
            data_dir: cfg.data_dir.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
            cni_bin: cfg.cni_bin.clone(),
            logger_bin: Some(cfg.cni_bin.clone()),
            cni_socket: cfg.data_dir.join("cni.sock"),
            cluster_dns: node::podfiles::ClusterDns {
                server: cfg.cluster_dns,
                domain: cfg.cluster_domain.clone(),
            },
        };
        let client = client.clone();
        tasks.spawn(async move {
            pods::run(client, pods_cfg, services_synced_rx).await;
            ("pods", Ok(()))
        });
    }
    tokio::select! {
        Some(done) = tasks.join_next() => Err(task_ended(done)),
        () = shutdown_signal() => {
            tracing::info!("agent stopping; pods keep running and are re-adopted on restart");
            Ok(())
        }
    }
}

fn task_ended(
    done: Result<(&'static str, Result<(), AgentError>), tokio::task::JoinError>,
) -> AgentError {
    match done {
        Ok((_, Err(e))) => e,
        Ok((name, Ok(()))) => AgentError::TaskEnded(name),
        Err(_) => AgentError::TaskEnded("a panicked"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
