//! A container's environment, as the kubelet builds it: its `env` and `envFrom` with the
//! ConfigMap, Secret and downward API values they refer to, and the variables that tell it
//! about Services (`KUBERNETES_SERVICE_HOST` and the Docker-link style `<NAME>_PORT_...`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::{Api, Client};

/// The namespace and name of the Service every Pod is told about, whatever its namespace and
/// `enableServiceLinks` (the kubelet's master services).
const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// Reads the Services a Pod's environment names: those of its namespace unless
/// `enableServiceLinks` is false, and `default/kubernetes`.
async fn fetch_services(client: &Client, namespace: &str, pod: &Pod) -> BTreeMap<String, String> {
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

/// ConfigMap and Secret data a Pod's environment refers to, and the Services it is told
/// about, read once before its containers start (as the kubelet does; later changes reach
/// only restarted Pods).
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    pub secrets: HashMap<String, BTreeMap<String, String>>,
    /// The Services' variables ([`service_env`]).
    pub services: BTreeMap<String, String>,
}

impl EnvSources {
    /// Reads every ConfigMap and Secret named by `env[].valueFrom` or `envFrom` of the Pod's
    /// containers, and the Services of [`service_env`]. Missing ones are left out: the
    /// variables that need them stay unset.
    pub async fn fetch(client: &Client, namespace: &str, pod: &Pod) -> Self {
        let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
        let spec = pod.spec.as_ref();
        let all = spec
            .map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for c in all {
            for e in c.env.iter().flatten() {
                if let Some(from) = &e.value_from {
                    cms.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
                    secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
                }
            }
            for f in c.env_from.iter().flatten() {
                cms.extend(f.config_map_ref.as_ref().map(|r| r.name.clone()));
                secrets.extend(f.secret_ref.as_ref().map(|r| r.name.clone()));
            }
        }
        let mut out = Self {
            services: fetch_services(client, namespace, pod).await,
            ..Self::default()
        };
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in cms {
            match cm_api.get_opt(&name).await {
                Ok(Some(cm)) => {
                    out.config_maps.insert(name, cm.data.unwrap_or_default());
                }
                Ok(None) => {
                    tracing::warn!(%namespace, configmap = %name, "ConfigMap referenced by a pod's environment not found")
                }
                Err(e) => {
                    tracing::warn!(%namespace, configmap = %name, error = %e, "reading a ConfigMap for a pod's environment")
                }
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(sec)) => {
                    let mut data: BTreeMap<String, String> = sec.string_data.unwrap_or_default();
                    for (k, v) in sec.data.unwrap_or_default() {
                        data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                    out.secrets.insert(name, data);
                }
                Ok(None) => {
                    tracing::warn!(%namespace, secret = %name, "Secret referenced by a pod's environment not found")
                }
                Err(e) => {
                    tracing::warn!(%namespace, secret = %name, error = %e, "reading a Secret for a pod's environment")
                }
            }
        }
        out
    }
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
    sources: &EnvSources,
) -> Vec<(String, String)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), name.clone()),
    ];
    let field = |path: &str| -> Option<String> {
        let spec = pod.spec.as_ref();
        let meta = &pod.metadata;
        let keyed = |prefix: &str, map: Option<&std::collections::BTreeMap<String, String>>| {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            map?.get(key).cloned()
        };
        match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "status.podIP" | "status.podIPs" => pod_ip.map(|ip| ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some(node_ip.to_string()),
            p if p.starts_with("metadata.labels['") => {
                keyed("metadata.labels['", meta.labels.as_ref())
            }
            p if p.starts_with("metadata.annotations['") => {
                keyed("metadata.annotations['", meta.annotations.as_ref())
            }
            _ => None,
        }
    };
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
            set(&mut env, format!("{prefix}{k}"), v.clone());
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
                        .cloned()
                } else if let Some(r) = &from.secret_key_ref {
                    sources
                        .secrets
                        .get(&r.name)
                        .and_then(|d| d.get(&r.key))
                        .cloned()
                } else {
                    tracing::warn!(var = %var.name, "resourceFieldRef is not supported; variable left unset");
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

#[cfg(test)]
mod tests {
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
            &EnvSources {
                config_maps: [(
                    "cm".to_owned(),
                    [
                        ("mode".to_owned(), "fast".to_owned()),
                        ("LEVEL".to_owned(), "3".to_owned()),
                    ]
                    .into(),
                )]
                .into(),
                secrets: [(
                    "s".to_owned(),
                    [("k".to_owned(), "hunter2".to_owned())].into(),
                )]
                .into(),
                services: BTreeMap::new(),
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
        let sources = EnvSources {
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
            ..EnvSources::default()
        };
        let env: HashMap<String, String> =
            container_env(&pod, &c, None, Ipv4Addr::new(10, 250, 0, 11), &sources)
                .into_iter()
                .collect();
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "8443");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    }
}
