//! Defaulting: the values kube-apiserver fills in on create and update (pkg/apis/*/v1/defaults.go),
//! applied to the JSON form of an object before validation and storage.

use serde_json::{Map, Value, json};

use super::{ResourceInfo, networkpolicy};

/// The label kube-apiserver gives every Namespace, its name (k8s.io/api core/v1
/// LabelMetadataName); NetworkPolicy namespaceSelectors match namespaces by it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Sets `obj[key]` to `value` when it is absent or null.
pub(super) fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

/// The object at `obj[key]`, created empty when absent.
pub(super) fn child<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), Value::Object(Map::new()));
    }
    obj.get_mut(key).and_then(Value::as_object_mut)
}

/// Applies the defaults of `info`'s kind to `obj`.
pub fn apply(info: &ResourceInfo, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (info.group, info.kind) {
        ("", "Pod") => {
            if let Some(spec) = child(root, "spec") {
                pod_spec(spec);
            }
            if let Some(status) = child(root, "status") {
                set_default(status, "phase", json!("Pending"));
            }
        }
        ("", "Service") => {
            if let Some(spec) = child(root, "spec") {
                service_spec(spec);
            }
        }
        ("", "Namespace") => {
            namespace_name_label(root);
            if let Some(spec) = child(root, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = child(root, "status") {
                set_default(status, "phase", json!("Active"));
            }
        }
        ("", "Secret") => set_default(root, "type", json!("Opaque")),
        ("apps", "Deployment") => {
            if let Some(spec) = child(root, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
                if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                    set_default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type") == Some(&json!("RollingUpdate"))
                        && let Some(ru) = child(strategy, "rollingUpdate")
                    {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = child(root, "spec") {
                set_default(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = child(root, "spec") {
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                set_default(spec, "revisionHistoryLimit", json!(10));
                template(spec);
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => networkpolicy::apply_defaults(root),
        _ => {}
    }
}

/// Sets the Namespace's [`NAMESPACE_NAME_LABEL`] to its name, replacing whatever the request
/// had: SetDefaults_Namespace (pkg/apis/core/v1/defaults.go) on every decode, and the namespace
/// strategy's Canonicalize (pkg/registry/core/namespace/strategy.go) on every create and update,
/// so the label cannot be removed or changed. Defaulting here runs after generateName is
/// resolved, which is why kube-apiserver needs the second hook and keelson does not.
fn namespace_name_label(root: &mut Map<String, Value>) {
    let Some(name) = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        return;
    };
    if let Some(meta) = child(root, "metadata")
        && let Some(labels) = child(meta, "labels")
    {
        labels.insert(NAMESPACE_NAME_LABEL.into(), json!(name));
    }
}

/// Defaults of a workload's `spec.template.spec`.
fn template(spec: &mut Map<String, Value>) {
    if let Some(tpl) = child(spec, "template")
        && let Some(pod) = child(tpl, "spec")
    {
        pod_spec(pod);
    }
}

/// Pod spec defaults (pkg/apis/core/v1/defaults.go SetDefaults_PodSpec and friends).
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    // kube-apiserver: Always for `:latest` or untagged images, IfNotPresent otherwise.
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let last = image.rsplit('/').next().unwrap_or_default();
    let policy = if image.contains('@') {
        "IfNotPresent"
    } else if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// Service spec defaults (type ClusterIP, sessionAffinity None, TCP, targetPort = port, IPv4
/// single stack, internalTrafficPolicy Cluster, externalTrafficPolicy Cluster for externally
/// reachable Services). ClusterIP/NodePort allocation happens elsewhere.
fn service_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    // SetDefaults_Service defaults externalTrafficPolicy for every externally-accessible
    // Service, which includes a ClusterIP Service with externalIPs; an empty string is unset
    // there (the field is a plain string in the Go type).
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    if spec.get("externalTrafficPolicy") == Some(&json!("")) {
        spec.remove("externalTrafficPolicy");
    }
    if ty == "NodePort" || ty == "LoadBalancer" || (ty == "ClusterIP" && has_external_ips) {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn registry_defaults_pod() {
        let info = lookup("", "v1", "pods").expect("pods");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        apply(info, &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][0]["terminationMessagePolicy"],
            "File"
        );
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn registry_defaults_service_and_deployment() {
        let svc = lookup("", "v1", "services").expect("services");
        let mut s = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        apply(svc, &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(s["spec"].get("externalTrafficPolicy").is_none());

        let dep = lookup("apps", "v1", "deployments").expect("deployments");
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}}});
        apply(dep, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn registry_defaults_service_traffic_policies() {
        let info = lookup("", "v1", "services").expect("services");
        let defaulted = |spec: Value| {
            let mut s = json!({"metadata": {"name": "s"}, "spec": spec});
            apply(info, &mut s);
            s["spec"].clone()
        };
        for ty in ["NodePort", "LoadBalancer"] {
            let spec = defaulted(json!({"type": ty, "ports": [{"port": 80}]}));
            assert_eq!(spec["externalTrafficPolicy"], "Cluster", "{ty}");
            assert_eq!(spec["internalTrafficPolicy"], "Cluster", "{ty}");
        }
        let spec = defaulted(json!({"externalIPs": ["192.0.2.10"], "ports": [{"port": 80}]}));
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        let spec = defaulted(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "", "ports": [{"port": 80}]}),
        );
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        let spec = defaulted(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        );
        assert_eq!(spec["externalTrafficPolicy"], "Local");
        assert_eq!(spec["internalTrafficPolicy"], "Local");
        let spec = defaulted(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert!(spec.get("internalTrafficPolicy").is_none());
        assert!(spec.get("externalTrafficPolicy").is_none());
    }
}
