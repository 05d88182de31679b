//! Identities inside a `keelson up --nodes 2` cluster, with the real kubectl and the real
//! Python `kubernetes` client: a Pod's projected ServiceAccount volume (token, ca.crt,
//! namespace) at /var/run/secrets/kubernetes.io/serviceaccount, used by the client's
//! in-cluster config to read its namespace's ConfigMaps through the `kubernetes` Service, and
//! refused on Secrets, which its Role does not grant.

mod support;

use std::{path::PathBuf, time::Duration};

use support::{LocalCluster, wait_for};

/// The venv's Python, next to the kubectl `cargo xtask setup` installs there.
fn python() -> PathBuf {
    support::kubectl().with_file_name("python3")
}

const RBAC: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-reader}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cm-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}
subjects:
  - {kind: ServiceAccount, name: reader, namespace: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {color: blue}
"#;

/// In-cluster config, as any Pod's client would use it.
const SCRIPT: &str = r#"
import os
from kubernetes import client, config
from kubernetes.client.rest import ApiException
base = '/var/run/secrets/kubernetes.io/serviceaccount'
print('files', sorted(f for f in os.listdir(base) if not f.startswith('..')))
config.load_incluster_config()
ns = open(base + '/namespace').read()
v1 = client.CoreV1Api()
print('configmaps', ','.join(sorted(c.metadata.name for c in v1.list_namespaced_config_map(ns).items)))
print('color', v1.read_namespaced_config_map('settings', ns).data['color'])
try:
    v1.list_namespaced_secret(ns)
    print('secrets allowed')
except ApiException as e:
    print('secrets', e.status)
review = client.AuthenticationV1Api().create_self_subject_review(client.V1SelfSubjectReview())
print('user', review.status.user_info.username)
"#;

#[test]
fn a_pod_uses_its_service_account_token_with_the_python_client() {
    let python = python();
    assert!(
        python.exists(),
        "{} missing: cargo xtask setup installs it",
        python.display()
    );
    let name = format!("ident{}", std::process::id());
    let c = LocalCluster::up(&name, 2);
    c.apply_ok("rbac.yaml", RBAC);
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
    - name: client
      image: example.invalid/client:1
      command: ["{python}", "-c", "{script}"]
"#,
        python = support::yaml_quoted(&python.display().to_string()),
        script = support::yaml_quoted(SCRIPT),
    );
    c.apply_ok("client.yaml", &pod);
    let logs = wait_for("the client Pod to finish", Duration::from_secs(90), || {
        let phase = c.kubectl_ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
        matches!(phase.as_str(), "Succeeded" | "Failed").then(|| c.kubectl_ok(&["logs", "client"]))
    });
    for want in [
        "files ['ca.crt', 'namespace', 'token']",
        "configmaps kube-root-ca.crt,settings",
        "color blue",
        "secrets 403",
        "user system:serviceaccount:default:reader",
    ] {
        assert!(logs.contains(want), "missing {want:?} in:\n{logs}");
    }
}
