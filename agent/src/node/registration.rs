//! The Node object of this agent: registration (addresses, capacity, nodeInfo, the agent-API
//! annotation), the Lease in `kube-node-lease` renewed every 10 s and the Ready heartbeat, and
//! waiting for the control plane to assign `spec.podCIDR`.
//!
//! Heartbeats follow KEP-589 (efficient node heartbeats): the Lease is the cheap liveness
//! signal, the Node status is refreshed alongside it.

use std::{net::Ipv4Addr, net::SocketAddr, time::Duration};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// Annotation the server reads to proxy `pods/log`, exec, attach and port-forward to this agent.
pub const AGENT_API_ANNOTATION: &str = "keelson.io/agent-api";
/// Annotation with the SHA-256 (hex) of the node API's serving certificate, which the server
/// pins.
pub const AGENT_CERT_ANNOTATION: &str = "keelson.io/agent-api-cert-sha256";
/// Annotation with the address of the agent's metrics API (`/metrics`, `/flows`).
pub const AGENT_METRICS_ANNOTATION: &str = "keelson.io/agent-metrics";
/// Namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Interval of Lease renewal and status heartbeat (the kubelet's default renew interval).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Lease duration: the kubelet's default (40 s, four missed renewals).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Pods per node, the kubelet's default `maxPods`.
pub const MAX_PODS: u32 = 110;

/// Errors of registration and heartbeats.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("kubernetes API: {what}")]
    Kube {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("building the {what} object")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("node {node} has a podCIDR that is not an IPv4 network: {cidr}")]
    BadPodCidr { node: String, cidr: String },
}

fn kube_err(what: &'static str) -> impl FnOnce(kube::Error) -> RegistrationError {
    move |source| RegistrationError::Kube { what, source }
}

/// Facts about the machine reported in Node.status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub cpus: u32,
    pub memory_kib: u64,
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    /// GOARCH spelling (`amd64`, `arm64`), as Kubernetes reports it.
    pub architecture: String,
}

impl MachineInfo {
    /// Reads the facts from /proc, /etc and uname.
    pub fn probe() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| Some(l.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_owned()))
            .unwrap_or_else(|| "Linux".to_owned());
        let kernel_version = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_kib,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel_version,
            os_image,
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
        }
    }
}

fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What this agent says about its Node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub ip: Ipv4Addr,
    pub api_listen: SocketAddr,
    /// The digest of the node API's certificate, when it serves TLS.
    pub api_cert_sha256: Option<String>,
    pub metrics_listen: SocketAddr,
    pub machine: MachineInfo,
}

/// The Node's metadata as the agent owns it (labels and the agent-API annotations).
pub fn node_metadata(f: &NodeFacts) -> Value {
    let mut annotations = json!({
        AGENT_API_ANNOTATION: f.api_listen.to_string(),
        AGENT_METRICS_ANNOTATION: f.metrics_listen.to_string(),
    });
    if let Some(digest) = &f.api_cert_sha256 {
        annotations[AGENT_CERT_ANNOTATION] = digest.as_str().into();
    }
    json!({
        "name": f.name,
        "labels": {
            "kubernetes.io/hostname": f.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": f.machine.architecture,
        },
        "annotations": annotations,
    })
}

/// [`node_metadata`] as a merge patch: it also removes a certificate digest an earlier run
/// with TLS left.
fn metadata_patch(f: &NodeFacts) -> Value {
    let mut m = node_metadata(f);
    if f.api_cert_sha256.is_none() {
        m["annotations"][AGENT_CERT_ANNOTATION] = Value::Null;
    }
    m
}

/// The Node status the agent reports, with `now` as heartbeat time.
pub fn node_status(f: &NodeFacts, now: jiff::Timestamp, transition: jiff::Timestamp) -> Value {
    let m = &f.machine;
    let resources = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory_kib),
        "pods": MAX_PODS.to_string(),
    });
    json!({
        "addresses": [
            { "type": "InternalIP", "address": f.ip.to_string() },
            { "type": "Hostname", "address": f.name },
        ],
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "keelson agent is posting ready status",
            "lastHeartbeatTime": now.to_string(),
            "lastTransitionTime": transition.to_string(),
        }],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": i32::from(f.api_listen.port()) } },
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.machine_id,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel_version,
            "osImage": m.os_image,
            "containerRuntimeVersion": concat!("keelson-process://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": concat!("v1.36.0-keelson.", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": m.architecture,
        },
    })
}

/// The node's Lease, renewed at `now`.
pub fn lease_object(node: &str, node_uid: Option<&str>, now: jiff::Timestamp) -> Value {
    let micro = now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let owner = node_uid
        .map(|uid| json!([{ "apiVersion": "v1", "kind": "Node", "name": node, "uid": uid }]));
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": node, "namespace": LEASE_NAMESPACE },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro,
        },
    });
    if let Some(owner) = owner {
        lease["metadata"]["ownerReferences"] = owner;
    }
    lease
}

/// Creates the Node if it does not exist and brings its labels, annotation and status up to
/// date. Returns the Node's uid.
pub async fn register(client: &Client, f: &NodeFacts) -> Result<Option<String>, RegistrationError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now();
    if nodes
        .get_opt(&f.name)
        .await
        .map_err(kube_err("reading the Node"))?
        .is_none()
    {
        let obj: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": node_metadata(f),
            "status": node_status(f, now, now),
        }))
        .map_err(|source| RegistrationError::Encode {
            what: "Node",
            source,
        })?;
        match nodes.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            // Another start of this agent won the race; the patches below converge.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_err("creating the Node")(e)),
        }
    }
    let node = nodes
        .patch(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": metadata_patch(f) })),
        )
        .await
        .map_err(kube_err("updating the Node's labels"))?;
    nodes
        .patch_status(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": node_status(f, now, now) })),
        )
        .await
        .map_err(kube_err("updating the Node's status"))?;
    Ok(node.metadata.uid)
}

/// Renews the Lease and the Ready heartbeat once.
pub async fn heartbeat(
    client: &Client,
    f: &NodeFacts,
    node_uid: Option<&str>,
    ready_since: jiff::Timestamp,
) -> Result<(), RegistrationError> {
    let now = jiff::Timestamp::now();
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease: Lease =
        serde_json::from_value(lease_object(&f.name, node_uid, now)).map_err(|source| {
            RegistrationError::Encode {
                what: "Lease",
                source,
            }
        })?;
    match leases
        .get_opt(&f.name)
        .await
        .map_err(kube_err("reading the Lease"))?
    {
        None => {
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map_err(kube_err("creating the Lease"))?;
        }
        Some(_) => {
            let spec =
                serde_json::to_value(&lease.spec).map_err(|source| RegistrationError::Encode {
                    what: "Lease",
                    source,
                })?;
            leases
                .patch(
                    &f.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": spec })),
                )
                .await
                .map_err(kube_err("renewing the Lease"))?;
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": node_status(f, now, ready_since) })),
        )
        .await
        .map_err(kube_err("posting the Node heartbeat"))?;
    Ok(())
}

/// Renews the Lease and heartbeat every [`HEARTBEAT`] forever, logging failures (the next
/// round retries; the control plane marks the node NotReady only after the Lease expires).
pub async fn heartbeat_loop(client: Client, f: NodeFacts, mut node_uid: Option<String>) {
    let ready_since = jiff::Timestamp::now();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        match heartbeat(&client, &f, node_uid.as_deref(), ready_since).await {
            Ok(()) => {}
            // The Node was deleted under us: register it again, as the kubelet does.
            Err(RegistrationError::Kube {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => {
                tracing::warn!(node = %f.name, "Node object is gone; registering again");
                match register(&client, &f).await {
                    Ok(uid) => node_uid = uid,
                    Err(e) => {
                        tracing::warn!(error = %crate::cni::server::error_chain(&e), "re-registering the Node")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::cni::server::error_chain(&e), "node heartbeat failed")
            }
        }
    }
}

/// The Node's `spec.podCIDR`, if set.
pub fn pod_cidr_of(node: &Node) -> Result<Option<Ipv4Network>, RegistrationError> {
    let Some(cidr) = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .filter(|c| !c.is_empty())
    else {
        return Ok(None);
    };
    cidr.parse()
        .map(Some)
        .map_err(|_| RegistrationError::BadPodCidr {
            node: node.metadata.name.clone().unwrap_or_default(),
            cidr: cidr.to_owned(),
        })
}

/// Waits until the control plane's node IPAM controller assigns `spec.podCIDR`.
pub async fn wait_pod_cidr(client: &Client, node: &str) -> Result<Ipv4Network, RegistrationError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut logged = false;
    loop {
        match nodes.get_opt(node).await {
            Ok(Some(n)) => {
                if let Some(cidr) = pod_cidr_of(&n)? {
                    return Ok(cidr);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the Node for its podCIDR"),
        }
        if !logged {
            tracing::info!(node, "waiting for spec.podCIDR");
            logged = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "keelson-n1".into(),
            ip: Ipv4Addr::new(10, 250, 0, 11),
            api_listen: "127.0.0.1:10250".parse().expect("addr"),
            api_cert_sha256: Some("ab".repeat(32)),
            metrics_listen: "127.0.0.1:9962".parse().expect("addr"),
            machine: MachineInfo {
                cpus: 2,
                memory_kib: 4_000_000,
                machine_id: "m".into(),
                boot_id: "b".into(),
                kernel_version: "6.18.0".into(),
                os_image: "Debian".into(),
                architecture: "amd64".into(),
            },
        }
    }

    #[test]
    fn node_object_decodes_and_carries_what_the_cluster_needs() {
        let f = facts();
        let now = jiff::Timestamp::from_second(1_700_000_000).expect("ts");
        let node: Node = serde_json::from_value(json!({
            "metadata": node_metadata(&f),
            "status": node_status(&f, now, now),
        }))
        .expect("valid Node");
        let ann = node.metadata.annotations.expect("annotations");
        assert_eq!(
            ann.get(AGENT_API_ANNOTATION).map(String::as_str),
            Some("127.0.0.1:10250")
        );
        let status = node.status.expect("status");
        let addrs = status.addresses.expect("addresses");
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "10.250.0.11")
        );
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "Hostname" && a.address == "keelson-n1")
        );
        let cap = status.capacity.expect("capacity");
        assert_eq!(cap.get("cpu").map(|q| q.0.as_str()), Some("2"));
        assert_eq!(cap.get("memory").map(|q| q.0.as_str()), Some("4000000Ki"));
        assert_eq!(cap.get("pods").map(|q| q.0.as_str()), Some("110"));
        let ready = status
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        assert_eq!(status.node_info.expect("nodeInfo").architecture, "amd64");
    }

    #[test]
    fn lease_decodes_with_micro_time_and_owner() {
        let now = jiff::Timestamp::from_second(1_700_000_000).expect("ts");
        let lease: Lease =
            serde_json::from_value(lease_object("n1", Some("uid-1"), now)).expect("valid Lease");
        let spec = lease.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time.expect("renewTime").0, now);
        assert_eq!(
            lease.metadata.owner_references.expect("owner")[0].uid,
            "uid-1"
        );
    }

    #[test]
    fn pod_cidr_parsing() {
        let mut node: Node =
            serde_json::from_value(json!({"metadata":{"name":"n"},"spec":{}})).expect("node");
        assert_eq!(pod_cidr_of(&node).expect("ok"), None);
        node.spec.get_or_insert_default().pod_cidr = Some("10.244.1.0/24".into());
        assert_eq!(
            pod_cidr_of(&node).expect("ok"),
            Some("10.244.1.0/24".parse().expect("cidr"))
        );
        node.spec.get_or_insert_default().pod_cidr = Some("fd00::/64".into());
        assert!(pod_cidr_of(&node).is_err());
    }

    #[test]
    fn machine_probe_reads_this_machine() {
        let m = MachineInfo::probe();
        assert!(m.cpus >= 1);
        assert!(m.memory_kib > 0);
        assert!(!m.kernel_version.is_empty());
        assert_eq!(go_arch("x86_64"), "amd64");
    }
}
