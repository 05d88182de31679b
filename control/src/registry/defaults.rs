//! Defaulting: the values kube-apiserver fills in on create and update (pkg/apis/*/v1/defaults.go),
//! applied to the JSON form of an object before validation and storage. What a kind defaults is
//! its strategy's; this module runs it and holds the helpers kinds share (Pod templates).

use serde_json::{Map, Value, json};

use super::ResourceInfo;
pub use super::kinds::namespace::NAMESPACE_NAME_LABEL;

/// Sets `obj[key]` to `value` when it is absent or null.
pub fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

/// The object at `obj[key]`, created empty when absent.
pub fn child<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), Value::Object(Map::new()));
    }
    obj.get_mut(key).and_then(Value::as_object_mut)
}

/// Runs `info`'s write-time conversion and then its defaults on `obj`.
pub fn apply(info: &ResourceInfo, obj: &mut Value) {
    if let Some(root) = obj.as_object_mut() {
        info.strategy.normalize(root);
        info.strategy.defaults(root);
    }
}

/// Defaults of a workload's `spec.template.spec`.
pub fn template_defaults(spec: &mut Map<String, Value>) {
    if let Some(tpl) = child(spec, "template")
        && let Some(pod) = child(tpl, "spec")
    {
        pod_spec_defaults(pod);
    }
}

/// Pod spec defaults (pkg/apis/core/v1/defaults.go SetDefaults_PodSpec and friends).
pub fn pod_spec_defaults(spec: &mut Map<String, Value>) {
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
