//! The agent side of CNI: serves `keelson cni` on a Unix socket and does the work — a veth per
//! attachment (host side `kls<8 hex>` in the node namespace, the Pod side moved into the Pod's
//! namespace), an address from the node's podCIDR, the Pod's routes and gateway neighbour, the
//! node's route to the Pod, and the endpoint in the eBPF datapath.
//!
//! Topology of one attachment (the same scheme as Cilium and Calico: no bridge, the node routes):
//! Pod: `<podIP>/32 dev eth0`, `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1`, and a
//! permanent neighbour 169.254.1.1 -> host veth MAC, so the Pod never ARPs for its gateway.
//! Node: `<podIP>/32 dev kls<hash> scope link`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ipnetwork::Ipv4Network;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
};

use super::protocol::{
    AgentRequest, AgentResponse, CniError, CniResult, Command, ResultInterface, ResultIp,
    ResultRoute, code,
};
use crate::{
    ipam::{Ipam, IpamError},
    links::{LinkError, NetOps, Route, format_mac},
    loader::{Datapath, Endpoint, LoaderError},
};

/// The Pods' gateway address: link-local, never on the wire, answered by the permanent
/// neighbour entry.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Where the endpoints of the node go once their veth is up: the eBPF datapath in the agent,
/// a recording fake in tests.
pub trait EndpointSink: Send + Sync {
    fn add_endpoint(&self, ep: &Endpoint) -> Result<(), LoaderError>;
    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), LoaderError>;
}

impl EndpointSink for Datapath {
    fn add_endpoint(&self, ep: &Endpoint) -> Result<(), LoaderError> {
        Datapath::add_endpoint(self, ep)
    }
    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), LoaderError> {
        Datapath::remove_endpoint(self, ip)
    }
}

/// Errors of serving the socket (request errors go back to the plugin as CNI error objects).
#[derive(Debug, thiserror::Error)]
pub enum CniServerError {
    #[error("binding the CNI socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the address allocator")]
    Ipam(#[source] IpamError),
}

/// Host-side veth name of an attachment: `kls` + 8 hex digits of a hash of the container id
/// and interface name (FNV-1a: stable across agent versions and restarts, unlike std's hasher).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("kls{h:08x}")
}

/// Serves CNI requests for one node.
pub struct CniServer {
    node_netns: Option<PathBuf>,
    net: Arc<dyn NetOps>,
    sink: Arc<dyn EndpointSink>,
    ipam: Mutex<Ipam>,
}

impl std::fmt::Debug for CniServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniServer")
            .field("node_netns", &self.node_netns)
            .finish_non_exhaustive()
    }
}

fn link_err(what: &str) -> impl Fn(LinkError) -> CniError + '_ {
    move |e| CniError::new(code::INTERFACE_FAILURE, what.to_owned(), error_chain(&e))
}

fn ipam_err(e: IpamError) -> CniError {
    CniError::new(
        code::IPAM_FAILURE,
        "address allocation failed",
        error_chain(&e),
    )
}

/// `e: cause: cause`, so the plugin's error object carries the root cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

impl CniServer {
    /// A server for the node whose namespace is `node_netns`, allocating from `pod_cidr` with
    /// its state in `ipam_path`.
    pub fn new(
        node_netns: Option<PathBuf>,
        pod_cidr: Ipv4Network,
        ipam_path: &Path,
        net: Arc<dyn NetOps>,
        sink: Arc<dyn EndpointSink>,
    ) -> Result<Self, CniServerError> {
        let ipam = Ipam::open(ipam_path, pod_cidr).map_err(CniServerError::Ipam)?;
        Ok(Self {
            node_netns,
            net,
            sink,
            ipam: Mutex::new(ipam),
        })
    }

    /// Accepts plugin connections on `socket` until the task is dropped.
    pub async fn serve(self: Arc<Self>, socket: &Path) -> Result<(), CniServerError> {
        let bind_err = |source| CniServerError::Bind {
            path: socket.to_owned(),
            source,
        };
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        // A socket file left by a previous agent would make bind fail with EADDRINUSE.
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(bind_err)?;
        loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a CNI connection");
                    continue;
                }
            };
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                let mut body = Vec::new();
                let response = match stream.read_to_end(&mut body).await {
                    Err(e) => AgentResponse::Err(CniError::new(
                        code::IO_FAILURE,
                        "reading the request",
                        e.to_string(),
                    )),
                    Ok(_) => match serde_json::from_slice::<AgentRequest>(&body) {
                        Err(e) => AgentResponse::Err(CniError::new(
                            code::DECODE_FAILURE,
                            "bad request",
                            e.to_string(),
                        )),
                        Ok(req) => {
                            let this = Arc::clone(&this);
                            match tokio::task::spawn_blocking(move || this.handle(&req)).await {
                                Ok(Ok(v)) => AgentResponse::Ok(v),
                                Ok(Err(e)) => AgentResponse::Err(e),
                                Err(e) => AgentResponse::Err(CniError::new(
                                    code::IO_FAILURE,
                                    "handler failed",
                                    e.to_string(),
                                )),
                            }
                        }
                    },
                };
                if let Ok(bytes) = serde_json::to_vec(&response) {
                    let _ = stream.write_all(&bytes).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    }

    /// Handles one request (blocking: it runs `ip` and writes the allocation file).
    pub fn handle(&self, req: &AgentRequest) -> Result<Option<serde_json::Value>, CniError> {
        let version = req
            .config
            .get("cniVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("1.1.0")
            .to_owned();
        let stamp = |mut e: CniError| {
            e.cni_version = version.clone();
            e
        };
        let env = &req.env;
        let out = match env.command {
            Command::Add => {
                let netns = env
                    .netns
                    .as_deref()
                    .ok_or_else(|| CniError::new(code::INVALID_ENV, "ADD needs CNI_NETNS", ""));
                let result =
                    netns.and_then(|ns| self.add(&env.container_id, &env.ifname, ns, &version));
                result.and_then(|r| {
                    serde_json::to_value(r).map(Some).map_err(|e| {
                        CniError::new(code::IO_FAILURE, "encoding the result", e.to_string())
                    })
                })
            }
            Command::Del => self.del(&env.container_id, &env.ifname).map(|()| None),
            Command::Check => self
                .check(&env.container_id, &env.ifname, env.netns.as_deref())
                .map(|()| None),
            Command::Status => self.status().map(|()| None),
            Command::Gc => self
                .gc(&super::protocol::NetConf::valid_attachments_of(&req.config))
                .map(|()| None),
            Command::Version => Ok(Some(super::protocol::version_result(&version))),
        };
        out.map_err(stamp)
    }

    fn node_ns(&self) -> Option<&Path> {
        self.node_netns.as_deref()
    }

    /// ADD: idempotent for the same attachment (a repeated ADD rebuilds the veth and keeps the
    /// address). Anything done is undone when a later step fails.
    pub fn add(
        &self,
        container_id: &str,
        ifname: &str,
        pod_ns: &Path,
        version: &str,
    ) -> Result<CniResult, CniError> {
        if !pod_ns.exists() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_NETNS does not exist",
                pod_ns.display().to_string(),
            ));
        }
        let ip = self
            .ipam
            .lock()
            .map_err(|_| poisoned())?
            .allocate(container_id, ifname)
            .map_err(ipam_err)?;
        let host = host_ifname(container_id, ifname);
        match self.wire(&host, ifname, pod_ns, ip) {
            Ok((host_link, pod_link)) => Ok(CniResult {
                cni_version: version.to_owned(),
                interfaces: vec![
                    ResultInterface {
                        name: host,
                        mac: format_mac(host_link.mac),
                        sandbox: None,
                    },
                    ResultInterface {
                        name: ifname.to_owned(),
                        mac: format_mac(pod_link.mac),
                        sandbox: Some(pod_ns.display().to_string()),
                    },
                ],
                ips: vec![ResultIp {
                    address: format!("{ip}/32"),
                    gateway: Some(GATEWAY.to_string()),
                    interface: 1,
                }],
                routes: vec![ResultRoute {
                    dst: "0.0.0.0/0".into(),
                    gw: Some(GATEWAY.to_string()),
                }],
            }),
            Err(e) => {
                let _ = self.net.delete_link(self.node_ns(), &host);
                let _ = self.net.delete_route(self.node_ns(), host_route(ip));
                if let Ok(mut ipam) = self.ipam.lock() {
                    let _ = ipam.release(container_id, ifname);
                }
                Err(e)
            }
        }
    }

    fn wire(
        &self,
        host: &str,
        ifname: &str,
        pod_ns: &Path,
        ip: Ipv4Addr,
    ) -> Result<(crate::links::LinkInfo, crate::links::LinkInfo), CniError> {
        let node = self.node_ns();
        let pod = Some(pod_ns);
        let net = &*self.net;
        net.delete_link(node, host)
            .map_err(link_err("removing a stale host veth"))?;
        // A Pod-side interface left over from an earlier attempt would make the veth creation
        // fail with "File exists".
        net.delete_link(pod, ifname)
            .map_err(link_err("removing a stale pod interface"))?;
        net.create_veth(node, host, ifname, pod_ns)
            .map_err(link_err("creating the veth pair"))?;
        let missing = |what: &str| {
            CniError::new(
                code::INTERFACE_FAILURE,
                format!("{what} vanished after creation"),
                "",
            )
        };
        let host_link = net
            .link(node, host)
            .map_err(link_err("reading the host veth"))?
            .ok_or_else(|| missing("host veth"))?;
        let pod_addr = Ipv4Network::new(ip, 32)
            .map_err(|e| CniError::new(code::IPAM_FAILURE, "bad address", e.to_string()))?;
        let gw = Route {
            dst: host_route(GATEWAY),
            via: None,
            dev: Some(ifname.to_owned()),
            scope_link: true,
        };
        let default = Route {
            dst: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)
                .map_err(|e| CniError::new(code::INTERFACE_FAILURE, "route", e.to_string()))?,
            via: Some(GATEWAY),
            dev: Some(ifname.to_owned()),
            scope_link: false,
        };
        // The Pod side in one entry of its namespace; `stage` names the step that failed.
        let mut pod_link = None;
        let mut stage = "entering the pod namespace";
        net.in_namespace(pod, &mut |pod_net| {
            stage = "reading the pod interface";
            pod_link = pod_net.link(pod, ifname)?;
            if pod_link.is_none() {
                return Ok(());
            }
            stage = "bringing up the pod loopback";
            pod_net.set_up(pod, "lo")?;
            stage = "adding the pod address";
            pod_net.add_addr(pod, ifname, pod_addr)?;
            stage = "bringing up the pod interface";
            pod_net.set_up(pod, ifname)?;
            stage = "adding the pod's gateway route";
            pod_net.replace_route(pod, &gw)?;
            stage = "adding the pod's default route";
            pod_net.replace_route(pod, &default)?;
            stage = "adding the gateway neighbour";
            pod_net.replace_neigh(pod, GATEWAY, host_link.mac, ifname)
        })
        .map_err(|e| link_err(stage)(e))?;
        let pod_link = pod_link.ok_or_else(|| missing("pod interface"))?;
        net.set_up(node, host)
            .map_err(link_err("bringing up the host veth"))?;
        let to_pod = Route {
            dst: pod_addr,
            via: None,
            dev: Some(host.to_owned()),
            scope_link: true,
        };
        net.replace_route(node, &to_pod)
            .map_err(link_err("adding the node's route to the pod"))?;
        self.sink
            .add_endpoint(&Endpoint {
                ip,
                host_ifindex: host_link.ifindex,
                host_ifname: host.to_owned(),
                pod_mac: pod_link.mac,
                host_mac: host_link.mac,
            })
            .map_err(|e| {
                CniError::new(
                    code::DATAPATH_FAILURE,
                    "the datapath refused the endpoint",
                    error_chain(&e),
                )
            })?;
        Ok((host_link, pod_link))
    }

    /// DEL: removes what ADD made; deleting what is already gone succeeds (spec: DEL must be
    /// idempotent).
    pub fn del(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let host = host_ifname(container_id, ifname);
        // The veth's peer, and so the Pod's routes, go with the host side.
        self.net
            .delete_link(self.node_ns(), &host)
            .map_err(link_err("deleting the host veth"))?;
        let ip = self
            .ipam
            .lock()
            .map_err(|_| poisoned())?
            .lookup(container_id, ifname);
        if let Some(ip) = ip {
            self.net
                .delete_route(self.node_ns(), host_route(ip))
                .map_err(link_err("deleting the pod route"))?;
            if let Err(e) = self.sink.remove_endpoint(ip) {
                // The datapath entry of a vanished veth is harmless: it is overwritten when the
                // address is handed out again.
                tracing::warn!(%ip, error = %error_chain(&e), "removing the endpoint from the datapath");
            }
            self.ipam
                .lock()
                .map_err(|_| poisoned())?
                .release(container_id, ifname)
                .map_err(ipam_err)?;
        }
        Ok(())
    }

    /// CHECK: the attachment holds an address and both ends of its veth exist.
    pub fn check(
        &self,
        container_id: &str,
        ifname: &str,
        pod_ns: Option<&Path>,
    ) -> Result<(), CniError> {
        let Some(_ip) = self
            .ipam
            .lock()
            .map_err(|_| poisoned())?
            .lookup(container_id, ifname)
        else {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                "no address is allocated to this attachment",
                container_id,
            ));
        };
        let host = host_ifname(container_id, ifname);
        if self
            .net
            .link(self.node_ns(), &host)
            .map_err(link_err("reading the host veth"))?
            .is_none()
        {
            return Err(CniError::new(
                code::INTERFACE_FAILURE,
                "the host veth is missing",
                host,
            ));
        }
        if let Some(ns) = pod_ns
            && self
                .net
                .link(Some(ns), ifname)
                .map_err(link_err("reading the pod interface"))?
                .is_none()
        {
            return Err(CniError::new(
                code::INTERFACE_FAILURE,
                "the pod interface is missing",
                ifname.to_owned(),
            ));
        }
        Ok(())
    }

    /// STATUS: ready when the allocator still has a free address.
    pub fn status(&self) -> Result<(), CniError> {
        let ipam = self.ipam.lock().map_err(|_| poisoned())?;
        let cidr = ipam.cidr();
        // Network, `.1` and broadcast are never handed out.
        let usable = (1u64 << (32 - u32::from(cidr.prefix()))).saturating_sub(3);
        if ipam.allocations().count() as u64 >= usable {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "no free pod address left",
                cidr.to_string(),
            ));
        }
        Ok(())
    }

    /// GC: removes every attachment not in `valid`.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), CniError> {
        let stale: Vec<(String, String)> = self
            .ipam
            .lock()
            .map_err(|_| poisoned())?
            .allocations()
            .filter(|(_, a)| {
                !valid
                    .iter()
                    .any(|(id, ifn)| *id == a.container_id && *ifn == a.ifname)
            })
            .map(|(_, a)| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        for (id, ifname) in stale {
            self.del(&id, &ifname)?;
        }
        Ok(())
    }
}

fn host_route(ip: Ipv4Addr) -> Ipv4Network {
    Ipv4Network::from(ip)
}

fn poisoned() -> CniError {
    CniError::new(code::IO_FAILURE, "address allocator lock poisoned", "")
}
