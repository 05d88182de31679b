//! The cluster DNS of a local cluster: the `kube-dns` Service at the service CIDR's tenth
//! address (as kubeadm places it), the `keelson-dns` Deployment running `keelson dns` as Pods
//! (so DNS keeps answering while an agent restarts), and the Secret holding its credentials in
//! the service-account layout `kube::Config::infer()` reads.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Secret, Service},
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Resource,
    api::{ListParams, LogParams, Patch, PatchParams},
};
use serde_json::json;

use crate::Error;

/// The namespace of the DNS objects.
pub const NAMESPACE: &str = "kube-system";
/// The Service every Pod's resolv.conf names (kubeadm's and CoreDNS's name).
pub const SERVICE: &str = "kube-dns";
/// The Deployment serving it.
pub const DEPLOYMENT: &str = "keelson-dns";
/// The Secret with the API credentials of the DNS Pods.
pub const CREDENTIALS: &str = "keelson-dns-credentials";
/// The label the Service selects (CoreDNS's, so tools that look for it find it).
pub const APP_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// Where the kubelet mounts a service account's token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The DNS Pods' health, readiness and metrics port (CoreDNS exports metrics on 9153).
pub const METRICS_PORT: u16 = 9153;
const FIELD_MANAGER: &str = "keelson-up";
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The address kubeadm gives the DNS Service: the tenth of the service CIDR
/// (`10.96.0.0/12` → `10.96.0.10`).
pub fn dns_service_ip(service_cidr: &str) -> Option<IpAddr> {
    let (base, len) = service_cidr.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    match base.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => {
            let host_bits = 32u32.checked_sub(len)?;
            if host_bits < 4 {
                return None;
            }
            let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            Some(IpAddr::V4(Ipv4Addr::from((u32::from(v4) & mask) + 10)))
        }
        IpAddr::V6(v6) => {
            let host_bits = 128u32.checked_sub(len)?;
            if host_bits < 4 {
                return None;
            }
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            Some(IpAddr::V6(Ipv6Addr::from((u128::from(v6) & mask) + 10)))
        }
    }
}

/// The bearer token and CA certificate (PEM) of a kubeconfig's first user and cluster.
pub fn credentials(kubeconfig: &Path) -> Result<(String, String), Error> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let token = kc
        .auth_infos
        .iter()
        .find_map(|a| a.auth_info.as_ref()?.token.clone())
        .ok_or_else(|| Error::Kubeconfig("no user with a token".into()))?;
    let ca = kc
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.certificate_authority_data.clone())
        .ok_or_else(|| Error::Kubeconfig("no cluster with certificate-authority-data".into()))?;
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca.trim())
        .map_err(|e| Error::Kubeconfig(format!("certificate-authority-data: {e}")))?;
    let ca = String::from_utf8(ca)
        .map_err(|e| Error::Kubeconfig(format!("certificate-authority-data: {e}")))?;
    use secrecy::ExposeSecret as _;
    Ok((token.expose_secret().to_owned(), ca))
}

/// The three objects, as JSON (what `keelson up` applies).
pub fn manifests(
    keelson_bin: &Path,
    service_ip: IpAddr,
    replicas: i32,
    token: &str,
    ca_pem: &str,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let (k, v) = APP_LABEL;
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {"token": token, "ca.crt": ca_pem, "namespace": NAMESPACE},
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE,
            "namespace": NAMESPACE,
            "labels": {k: v, "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "clusterIP": service_ip.to_string(),
            "selector": {k: v},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": METRICS_PORT, "protocol": "TCP",
                 "targetPort": METRICS_PORT},
            ],
        },
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "labels": {k: v}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {k: v}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": {k: v}},
                "spec": {
                    // The node's resolvers are the upstream, not the cluster DNS itself.
                    "dnsPolicy": "Default",
                    "affinity": {"podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchLabels": {k: v}},
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }],
                    }},
                    "containers": [{
                        "name": "dns",
                        // The API requires an image; the process runtime runs the command on
                        // the host's root (no image is pulled): the keelson binary itself.
                        "image": "keelson.invalid/keelson:host",
                        "command": [keelson_bin.to_string_lossy(), "dns",
                                    "--listen", "0.0.0.0:53",
                                    "--health-listen", format!("0.0.0.0:{METRICS_PORT}")],
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": METRICS_PORT},
                            "periodSeconds": 1,
                            "timeoutSeconds": 1,
                        },
                        "volumeMounts": [{
                            "name": "credentials",
                            "mountPath": SERVICE_ACCOUNT_DIR,
                            "readOnly": true,
                        }],
                    }],
                    "volumes": [{"name": "credentials", "secret": {"secretName": CREDENTIALS}}],
                },
            },
        },
    });
    (secret, service, deployment)
}

async fn apply<K>(client: &kube::Client, obj: &serde_json::Value, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), NAMESPACE);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(drop)
    .map_err(Error::Kube)
}

/// Creates (or updates) the Secret, Service and Deployment and waits until the Deployment is
/// Available.
pub async fn install(
    client: &kube::Client,
    kubeconfig: &Path,
    keelson_bin: &Path,
    service_cidr: &str,
    nodes: usize,
) -> Result<(), Error> {
    let ip = dns_service_ip(service_cidr)
        .ok_or_else(|| Error::InvalidName(format!("service CIDR {service_cidr} too small")))?;
    let (token, ca) = credentials(kubeconfig)?;
    let replicas = if nodes >= 2 { 2 } else { 1 };
    let (secret, service, deployment) = manifests(keelson_bin, ip, replicas, &token, &ca);
    apply::<Secret>(client, &secret, CREDENTIALS).await?;
    apply::<Service>(client, &service, SERVICE).await?;
    apply::<Deployment>(client, &deployment, DEPLOYMENT).await?;
    wait_available(client).await
}

async fn wait_available(client: &kube::Client) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    let mut last = String::from("not created");
    while start.elapsed() < AVAILABLE_TIMEOUT {
        if let Ok(d) = api.get(DEPLOYMENT).await {
            let status = d.status.unwrap_or_default();
            let available = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True");
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = status.ready_replicas.unwrap_or(0);
            if available && ready >= want {
                return Ok(());
            }
            last = format!("{ready} of {want} replicas ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Timeout {
        what: format!("Deployment {NAMESPACE}/{DEPLOYMENT} to be Available ({last})"),
        secs: AVAILABLE_TIMEOUT.as_secs(),
        logs: pods_report(client).await,
    })
}

/// Each DNS Pod's node, phase, readiness and container state with the tail of its log: what
/// a user would read with `kubectl get pods -o wide`, `describe` and `logs` after a timeout.
async fn pods_report(client: &kube::Client) -> String {
    let (k, v) = APP_LABEL;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pods = match api
        .list(&ListParams::default().labels(&format!("{k}={v}")))
        .await
    {
        Ok(list) => list.items,
        Err(e) => return format!("--- listing the DNS Pods failed: {e} ---"),
    };
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let status = pod.status.clone().unwrap_or_default();
        let conditions: Vec<String> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| format!("{}={}", c.type_, c.status))
            .collect();
        let containers: Vec<String> = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} ready={} restarts={} state={}",
                    c.name,
                    c.ready,
                    c.restart_count,
                    serde_json::to_string(&c.state).unwrap_or_default()
                )
            })
            .collect();
        let log = api
            .logs(
                &name,
                &LogParams {
                    tail_lines: Some(15),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap_or_else(|e| format!("(logs: {e})"));
        out.push(format!(
            "--- Pod {NAMESPACE}/{name} on {} phase={} ip={} [{}] {} ---\n{}",
            node.as_deref().unwrap_or("<unscheduled>"),
            status.phase.as_deref().unwrap_or("?"),
            status.pod_ip.as_deref().unwrap_or("-"),
            conditions.join(" "),
            containers.join("; "),
            log.trim_end()
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenth_address_of_the_service_cidr() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(dns_service_ip("10.96.0.0/12"), ip("10.96.0.10"));
        assert_eq!(dns_service_ip("10.96.0.0/16"), ip("10.96.0.10"));
        // The network address, not the address written.
        assert_eq!(dns_service_ip("10.100.7.9/16"), ip("10.100.0.10"));
        assert_eq!(dns_service_ip("fd00:10:96::/112"), ip("fd00:10:96::a"));
        assert_eq!(dns_service_ip("10.96.0.0/30"), None);
        assert_eq!(dns_service_ip("10.96.0.0"), None);
        assert_eq!(dns_service_ip("nonsense/16"), None);
    }

    #[test]
    fn the_agents_cluster_dns_is_the_services_address() {
        assert_eq!(
            dns_service_ip(crate::names::SERVICE_CIDR).map(|ip| ip.to_string()),
            Some(crate::names::CLUSTER_DNS.to_owned())
        );
    }

    #[test]
    fn manifests_select_what_they_label() {
        let (secret, svc, dep) = manifests(
            Path::new("/usr/bin/keelson"),
            "10.96.0.10".parse().expect("ip"),
            2,
            "tok",
            "PEM",
        );
        assert_eq!(secret["stringData"]["token"], "tok");
        assert_eq!(secret["stringData"]["namespace"], NAMESPACE);
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(
            svc["spec"]["selector"],
            dep["spec"]["template"]["metadata"]["labels"]
        );
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"][0], "/usr/bin/keelson");
        assert_eq!(c["command"][1], "dns");
        assert_eq!(c["volumeMounts"][0]["mountPath"], SERVICE_ACCOUNT_DIR);
        assert_eq!(dep["spec"]["template"]["spec"]["dnsPolicy"], "Default");
        assert_eq!(dep["spec"]["replicas"], 2);
    }
}
