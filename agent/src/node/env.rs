//! A container's environment, as the kubelet builds it: its `env` and `envFrom` with the
//! ConfigMap, Secret and downward API values they refer to, and the variables that tell it
//! about Services (`KUBERNETES_SERVICE_HOST` and the Docker-link style `<NAME>_PORT_...`).
//! A required reference that cannot be resolved is the kubelet's `CreateContainerConfigError`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use kube::{Api, Client};

use super::sources::PodSources;

/// The namespace and name of the Service every Pod is told about, whatever its namespace and
/// `enableServiceLinks` (the kubelet's master services).
const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// Reads the Services a Pod's environment names: those of its namespace unless
/// `enableServiceLinks` is false, and `default/kubernetes`.
pub(super) async fn fetch_services(
    client: &Client,
    namespace: &str,
    pod: &Pod,
) -> BTreeMap<String, String> {
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services = Vec::new();
    if links {
        match Api::<Service>::namespaced(client.clone(), namespace)
            .list(&Default::default())
            .await
        {
            Ok(list) => services.extend(list.items),
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "listing Services for a pod's environment")
            }
        }
    }
    if !(links && namespace == API_SERVICE.0) {
        match Api::<Service>::namespaced(client.clone(), API_SERVICE.0)
            .get_opt(API_SERVICE.1)
            .await
        {
            Ok(svc) => services.extend(svc),
            Err(e) => tracing::warn!(error = %e, "reading the kubernetes Service"),
        }
    }
    service_env(namespace, links, &services)
}

/// The Services' variables for a Pod in `namespace` (kubelet `getServiceEnvVarMap` and
/// `envvars.FromServices`): for each Service with a ClusterIP in the Pod's namespace (when
/// `links`) and for `default/kubernetes`, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` (the
/// first port), `<NAME>_SERVICE_PORT_<PORTNAME>` per named port, and the Docker link
/// variables `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`. A Service of the
/// Pod's own namespace named `kubernetes` wins over the API server's.
pub fn service_env(namespace: &str, links: bool, services: &[Service]) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        if matches!(ip, None | Some("" | "None")) {
            continue;
        }
        if (ns, name) == API_SERVICE {
            chosen.entry(name).or_insert(svc);
        } else if links && ns == namespace {
            chosen.insert(name, svc);
        }
    }
    let mut env = BTreeMap::new();
    for (name, svc) in chosen {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let var = env_name(name);
        env.insert(format!("{var}_SERVICE_HOST"), ip.clone());
        if let Some(first) = ports.first() {
            env.insert(format!("{var}_SERVICE_PORT"), first.port.to_string());
        }
        let host_port = |port: i32| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        for (i, p) in ports.iter().enumerate() {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.insert(
                    format!("{var}_SERVICE_PORT_{}", env_name(port_name)),
                    p.port.to_string(),
                );
            }
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{}", proto.to_lowercase(), host_port(p.port));
            if i == 0 {
                env.insert(format!("{var}_PORT"), url.clone());
            }
            let prefix = format!("{var}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.insert(format!("{prefix}_PROTO"), proto.to_lowercase());
            env.insert(format!("{prefix}_PORT"), p.port.to_string());
            env.insert(format!("{prefix}_ADDR"), ip.clone());
            env.insert(prefix, url);
        }
    }
    env
}

/// A Service or port name as a variable name: upper case, `-` as `_`.
fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// The environment of a container: a default PATH, HOSTNAME, then `envFrom`, then `env`
/// (which wins over `envFrom`, as in Kubernetes), with `fieldRef`s resolved from the downward
/// API fields that exist before the container starts and ConfigMap/Secret keys from `sources`,
/// then the Services' variables where the container did not set the name itself (the kubelet's
/// `makeEnvironmentVariables`).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    pod_ip: Option<Ipv4Addr>,
    node_ip: Ipv4Addr,
    sources: &PodSources,
) -> Vec<(String, String)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), name.clone()),
    ];
    let field = |path: &str| downward_field(pod, path, pod_ip, node_ip);
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = from
            .config_map_ref
            .as_ref()
            .and_then(|r| sources.config_maps.get(&r.name))
            .or_else(|| {
                from.secret_ref
                    .as_ref()
                    .and_then(|r| sources.secrets.get(&r.name))
            });
        for (k, v) in data.into_iter().flatten() {
            set(&mut env, format!("{prefix}{k}"), text(v));
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field(&f.field_path)
                } else if let Some(r) = &from.config_map_key_ref {
                    sources
                        .config_maps
                        .get(&r.name)
                        .and_then(|d| d.get(&r.key))
                        .map(|v| text(v))
                } else if let Some(r) = &from.secret_key_ref {
                    sources
                        .secrets
                        .get(&r.name)
                        .and_then(|d| d.get(&r.key))
                        .map(|v| text(v))
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(pod, &container.name, r)
                } else {
                    None
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    for (k, v) in &sources.services {
        if !env.iter().any(|(name, _)| name == k) {
            env.push((k.clone(), v.clone()));
        }
    }
    env
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A downward API field (`fieldRef.fieldPath`) of the Pod, as env and `downwardAPI` volumes
/// read it; `metadata.labels` and `metadata.annotations` as a whole are the volume form
/// (`key="value"` lines, sorted).
pub fn downward_field(
    pod: &Pod,
    path: &str,
    pod_ip: Option<Ipv4Addr>,
    node_ip: Ipv4Addr,
) -> Option<String> {
    let spec = pod.spec.as_ref();
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map?.get(key).cloned()
    };
    let all = |map: Option<&BTreeMap<String, String>>| {
        Some(
            map.into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect::<String>(),
        )
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => all(meta.labels.as_ref()),
        "metadata.annotations" => all(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => pod_ip.map(|ip| ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(node_ip.to_string()),
        p if p.starts_with("metadata.labels['") => keyed("metadata.labels['", meta.labels.as_ref()),
        p if p.starts_with("metadata.annotations['") => {
            keyed("metadata.annotations['", meta.annotations.as_ref())
        }
        _ => None,
    }
}

/// A `resourceFieldRef` (limits/requests of cpu, memory, ephemeral-storage) divided by its
/// divisor and rounded up, as the kubelet's `ExtractContainerResourceValue`; a limit that is
/// not set reads as unset here (the kubelet would use the node's allocatable).
pub fn resource_field(
    pod: &Pod,
    default_container: &str,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Option<String> {
    let name = r.container_name.as_deref().unwrap_or(default_container);
    let c = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)?;
    let res = c.resources.as_ref()?;
    let (kind, key) = r.resource.split_once('.')?;
    let map = match kind {
        "limits" => res.limits.as_ref(),
        "requests" => res.requests.as_ref(),
        _ => None,
    }?;
    let value = quantity(&map.get(key)?.0)?;
    let divisor = r
        .divisor
        .as_ref()
        .and_then(|d| quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Some(format!("{}", (value / divisor).ceil() as u64))
}

/// A Kubernetes quantity (`500m`, `2`, `128Mi`, `1G`, `1e3`) as a number.
pub fn quantity(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let q = q.trim();
    for (suffix, mult) in SUFFIXES {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    q.parse().ok()
}

/// Why the kubelet would refuse to create this container (`CreateContainerConfigError`): a
/// non-optional `configMapKeyRef`/`secretKeyRef`/`envFrom` naming a ConfigMap or Secret that
/// does not exist, or a key it does not hold; worded as the kubelet's `makeEnvironmentVariables`.
pub fn config_error(pod: &Pod, container: &Container, sources: &PodSources) -> Option<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref
            && !r.optional.unwrap_or(false)
            && !sources.config_maps.contains_key(&r.name)
        {
            return Some(format!("configmap {:?} not found", r.name));
        }
        if let Some(r) = &from.secret_ref
            && !r.optional.unwrap_or(false)
            && !sources.secrets.contains_key(&r.name)
        {
            return Some(format!("secret {:?} not found", r.name));
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.config_map_key_ref
            && !r.optional.unwrap_or(false)
        {
            match sources.config_maps.get(&r.name) {
                None => return Some(format!("configmap {:?} not found", r.name)),
                Some(d) if !d.contains_key(&r.key) => {
                    return Some(format!(
                        "couldn't find key {} in ConfigMap {ns}/{}",
                        r.key, r.name
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(r) = &from.secret_key_ref
            && !r.optional.unwrap_or(false)
        {
            match sources.secrets.get(&r.name) {
                None => return Some(format!("secret {:?} not found", r.name)),
                Some(d) if !d.contains_key(&r.key) => {
                    return Some(format!(
                        "couldn't find key {} in Secret {ns}/{}",
                        r.key, r.name
                    ));
                }
                Some(_) => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn env_resolves_field_refs_and_sets_hostname() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "web-1", "namespace": "shop", "uid": "u-1", "labels": { "app": "web" } },
            "spec": { "nodeName": "n1", "containers": [] },
        }))
        .expect("pod");
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "env": [
                { "name": "GREETING", "value": "hi" },
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "POD_NS", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                { "name": "SECRET", "valueFrom": { "secretKeyRef": { "name": "s", "key": "k" } } },
                { "name": "MISSING", "valueFrom": { "secretKeyRef": { "name": "absent", "key": "k" } } },
                { "name": "MODE", "valueFrom": { "configMapKeyRef": { "name": "cm", "key": "mode" } } },
                { "name": "PATH", "value": "/opt/bin" },
                { "name": "FROM_CM_LEVEL", "value": "env wins" },
            ],
            "envFrom": [
                { "configMapRef": { "name": "cm" }, "prefix": "FROM_CM_" },
                { "secretRef": { "name": "s" } },
            ],
        }))
        .expect("container");
        let env: HashMap<String, String> = container_env(
            &pod,
            &c,
            Some(Ipv4Addr::new(10, 244, 1, 2)),
            Ipv4Addr::new(10, 250, 0, 11),
            &PodSources {
                config_maps: [(
                    "cm".to_owned(),
                    [
                        ("mode".to_owned(), b"fast".to_vec()),
                        ("LEVEL".to_owned(), b"3".to_vec()),
                    ]
                    .into(),
                )]
                .into(),
                secrets: [(
                    "s".to_owned(),
                    [("k".to_owned(), b"hunter2".to_vec())].into(),
                )]
                .into(),
                services: BTreeMap::new(),
                tokens: BTreeMap::new(),
            },
        )
        .into_iter()
        .collect();
        assert_eq!(env["HOSTNAME"], "web-1");
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["POD_NAME"], "web-1");
        assert_eq!(env["POD_NS"], "shop");
        assert_eq!(env["POD_IP"], "10.244.1.2");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["SECRET"], "hunter2");
        assert_eq!(env["k"], "hunter2", "envFrom secretRef");
        assert_eq!(env["MODE"], "fast");
        assert_eq!(env["FROM_CM_mode"], "fast", "envFrom with prefix");
        assert_eq!(env["FROM_CM_LEVEL"], "env wins", "env overrides envFrom");
        assert!(!env.contains_key("MISSING"));
    }

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns },
            "spec": { "clusterIP": ip, "ports": ports },
        }))
        .expect("service")
    }

    #[test]
    fn services_become_kubelet_variables() {
        let services = [
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{ "name": "https", "port": 443, "protocol": "TCP" }]),
            ),
            service(
                "shop",
                "web-api",
                "10.96.7.7",
                json!([{ "name": "http", "port": 80, "protocol": "TCP" }, { "name": "dns-udp", "port": 53, "protocol": "UDP" }]),
            ),
            service("shop", "headless", "None", json!([{ "port": 80 }])),
            service("other", "elsewhere", "10.96.9.9", json!([{ "port": 80 }])),
        ];
        let env = service_env("shop", true, &services);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PROTO"], "tcp");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PORT"], "443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
        assert_eq!(env["WEB_API_SERVICE_HOST"], "10.96.7.7");
        assert_eq!(env["WEB_API_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_API_SERVICE_PORT_DNS_UDP"], "53");
        assert_eq!(env["WEB_API_PORT"], "tcp://10.96.7.7:80");
        assert_eq!(env["WEB_API_PORT_53_UDP"], "udp://10.96.7.7:53");
        assert!(
            !env.keys().any(|k| k.starts_with("HEADLESS_")),
            "headless Services have no variables"
        );
        assert!(
            !env.keys().any(|k| k.starts_with("ELSEWHERE_")),
            "other namespaces' Services have none"
        );

        // enableServiceLinks: false keeps only the API server's.
        let env = service_env("shop", false, &services);
        assert!(env.keys().all(|k| k.starts_with("KUBERNETES_")), "{env:?}");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    }

    #[test]
    fn a_container_sets_what_it_names_itself() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "default" },
            "spec": { "containers": [] },
        }))
        .expect("pod");
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "env": [{ "name": "KUBERNETES_SERVICE_PORT", "value": "8443" }],
        }))
        .expect("container");
        let sources = PodSources {
            services: service_env(
                "default",
                true,
                &[service(
                    "default",
                    "kubernetes",
                    "10.96.0.1",
                    json!([{ "name": "https", "port": 443 }]),
                )],
            ),
            ..PodSources::default()
        };
        let env: HashMap<String, String> =
            container_env(&pod, &c, None, Ipv4Addr::new(10, 250, 0, 11), &sources)
                .into_iter()
                .collect();
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "8443");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    }
}
