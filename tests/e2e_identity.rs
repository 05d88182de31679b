//! Identities inside a `keelson up --nodes 2` cluster, with the real kubectl and the real
//! Python `kubernetes` client: a Pod's projected ServiceAccount volume (token, ca.crt,
//! namespace) at /var/run/secrets/kubernetes.io/serviceaccount, used by the client's
//! in-cluster config to read its namespace's ConfigMaps through the `kubernetes` Service, and
//! refused on Secrets, which its Role does not grant; and each node agent's own credential
//! (`system:node:<name>`), which reads what its Pods use and writes only its own Node and
//! Pods: another node, a Pod bound elsewhere, an unrelated ConfigMap are 403.

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

    // The agents' credentials: no admin token, one certificate per node.
    let client_node = c.kubectl_ok(&["get", "pod", "client", "-o", "jsonpath={.spec.nodeName}"]);
    let other_node = [c.node(1), c.node(2)]
        .into_iter()
        .find(|n| *n != client_node)
        .expect("another node");
    let as_node = |node: &str, args: &[&str]| {
        let kc = c
            .data_dir
            .path()
            .join("nodes")
            .join(node)
            .join("kubeconfig");
        let out = std::process::Command::new(support::kubectl())
            .arg("--kubeconfig")
            .arg(&kc)
            .args(args)
            .output()
            .expect("kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = as_node(
        &client_node,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(
        ok && out == format!("system:node:{client_node}"),
        "{out}{err}"
    );
    let (ok, _, err) = as_node(&other_node, &["label", "node", &client_node, "evil=1"]);
    assert!(
        !ok && err.contains(&format!(
            "node \"{other_node}\" is not allowed to modify node \"{client_node}\""
        )),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &client_node,
        &["label", "node", &client_node, "e2e-identity=1"],
    );
    assert!(ok, "a node may label itself: {err}");
    let (ok, _, err) = as_node(&other_node, &["delete", "pod", "client"]);
    assert!(
        !ok && err.contains("can only delete pods with spec.nodeName set to itself"),
        "{err}"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "pod", "client", "-o", "jsonpath={.metadata.name}"]),
        "client"
    );
    // What the client Pod uses is readable by its node, not by the other one.
    let (ok, _, err) = as_node(&client_node, &["get", "configmap", "kube-root-ca.crt"]);
    assert!(ok, "{err}");
    for (node, args) in [
        (&other_node, vec!["get", "configmap", "kube-root-ca.crt"]),
        (&client_node, vec!["get", "configmap", "settings"]),
        (&client_node, vec!["get", "secrets"]),
    ] {
        let (ok, _, err) = as_node(node, &args);
        assert!(
            !ok && err.contains("Forbidden") || err.contains("forbidden"),
            "{node} {args:?}: {err}"
        );
    }
    // Tokens: only for its own Pods' ServiceAccounts, and bound to such a Pod.
    let bound = [
        "create",
        "token",
        "reader",
        "--bound-object-kind=Pod",
        "--bound-object-name=client",
    ];
    let (ok, _, err) = as_node(&client_node, &bound);
    assert!(
        ok,
        "a node may ask for its Pods' ServiceAccount tokens: {err}"
    );
    let (ok, _, err) = as_node(&client_node, &["create", "token", "reader"]);
    assert!(
        !ok && err.contains("node requested token not bound to a pod"),
        "{err}"
    );
    let (ok, _, err) = as_node(&other_node, &bound);
    assert!(!ok && err.contains("no relationship found"), "{err}");
}
