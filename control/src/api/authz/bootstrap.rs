//! The default roles and bindings kube-apiserver's RBAC bootstrap makes
//! (plugin/pkg/auth/authorizer/rbac/bootstrappolicy): `cluster-admin` bound to
//! `system:masters`, and what every client needs — discovery, the public health and version
//! paths, and asking about itself (`system:discovery`, `system:public-info-viewer`,
//! `system:basic-user`), and the user-facing `admin`, `edit` and `view`, aggregated (by the
//! clusterrole-aggregation controller) from `system:aggregate-to-*` and from each other
//! (`view` feeds `edit`, `edit` feeds `admin`). Created at start when missing, labelled as
//! kube-apiserver labels them.

use std::sync::Arc;

use serde_json::{Value, json};

use super::super::{ApiState, error::ApiError, handlers::create_internal};
use crate::store::Store;

fn meta(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(name),
        "rules": rules,
    })
}

/// The label a ClusterRole carries to be aggregated into `target`.
fn aggregate_to(target: &str) -> String {
    format!("rbac.authorization.k8s.io/aggregate-to-{target}")
}

/// An aggregated ClusterRole (no rules of its own) selecting `aggregate-to-<name>`, with
/// `labels` of its own.
fn aggregated(name: &str, labels: &[String]) -> Value {
    let mut role = cluster_role(name, json!([]));
    for l in labels {
        role["metadata"]["labels"][l] = json!("true");
    }
    role["aggregationRule"] =
        json!({"clusterRoleSelectors": [{"matchLabels": {aggregate_to(name): "true"}}]});
    role
}

/// A role of rules that aggregates into `target`.
fn aggregating(name: &str, target: &str, rules: Value) -> Value {
    let mut role = cluster_role(name, rules);
    role["metadata"]["labels"][aggregate_to(target)] = json!("true");
    role
}

/// `rule(verbs, group, resources)`.
fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": [group], "resources": resources})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// What `view` may read: every namespaced workload kind and its status, not Secrets.
fn view_rules() -> Value {
    json!([
        rule(
            READ,
            "",
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status"
            ]
        ),
        rule(
            READ,
            "",
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status"
            ]
        ),
        rule(READ, "", &["namespaces"]),
        rule(READ, "discovery.k8s.io", &["endpointslices"]),
        rule(
            READ,
            "apps",
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status"
            ]
        ),
        rule(
            READ,
            "autoscaling",
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status"
            ]
        ),
        rule(
            READ,
            "batch",
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]
        ),
        rule(
            READ,
            "extensions",
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale"
            ]
        ),
        rule(
            READ,
            "policy",
            &["poddisruptionbudgets", "poddisruptionbudgets/status"]
        ),
        rule(
            READ,
            "networking.k8s.io",
            &["ingresses", "ingresses/status", "networkpolicies"]
        ),
    ])
}

/// What `edit` adds: writes of the workload kinds, Secrets, exec/attach/port-forward.
fn edit_rules() -> Value {
    json!([
        rule(&["impersonate"], "", &["serviceaccounts"]),
        rule(
            WRITE,
            "",
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy"
            ]
        ),
        rule(&["create"], "", &["pods/eviction"]),
        rule(
            WRITE,
            "",
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy"
            ]
        ),
        rule(&["create"], "", &["serviceaccounts/token"]),
        rule(
            WRITE,
            "apps",
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale"
            ]
        ),
        rule(WRITE, "autoscaling", &["horizontalpodautoscalers"]),
        rule(WRITE, "batch", &["cronjobs", "jobs"]),
        rule(
            WRITE,
            "extensions",
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale"
            ]
        ),
        rule(WRITE, "policy", &["poddisruptionbudgets"]),
        rule(
            WRITE,
            "networking.k8s.io",
            &["ingresses", "networkpolicies"]
        ),
        rule(ALL, "coordination.k8s.io", &["leases"]),
        rule(
            READ,
            "",
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy"
            ]
        ),
    ])
}

/// What `admin` adds: the namespace's roles and bindings.
fn admin_rules() -> Value {
    json!([
        rule(
            &["create"],
            "authorization.k8s.io",
            &["localsubjectaccessreviews"]
        ),
        rule(ALL, "rbac.authorization.k8s.io", &["rolebindings", "roles"]),
    ])
}

fn binding(role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(role),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let health = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let mut discovery: Vec<&str> = vec![
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/openapi",
        "/openapi/*",
    ];
    discovery.extend(health);
    vec![
        cluster_role(
            "cluster-admin",
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ]),
        ),
        cluster_role(
            "system:discovery",
            json!([{"nonResourceURLs": discovery, "verbs": ["get"]}]),
        ),
        cluster_role(
            "system:public-info-viewer",
            json!([{"nonResourceURLs": health, "verbs": ["get"]}]),
        ),
        cluster_role(
            "system:basic-user",
            json!([
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
            ]),
        ),
        // The ServiceAccount issuer's discovery, for workloads that verify each other's tokens
        // (KEP-1393; kube-apiserver binds it to every ServiceAccount).
        cluster_role(
            "system:service-account-issuer-discovery",
            json!([{"nonResourceURLs": [
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration/",
                "/openid/v1/jwks",
                "/openid/v1/jwks/",
            ], "verbs": ["get"]}]),
        ),
        // What a keelson node agent reads besides its Node authorizer's share: the Service
        // load balancer's, the policy enforcer's and the DNS's inputs (kube-proxy's
        // `system:node-proxier` and a CNI's own role, in one).
        cluster_role(
            "system:keelson-node",
            json!([
                {"apiGroups": [""], "resources": ["services", "endpoints", "namespaces"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ]),
        ),
        aggregated("admin", &[]),
        aggregated("edit", &[aggregate_to("admin")]),
        aggregated("view", &[aggregate_to("edit")]),
        aggregating("system:aggregate-to-admin", "admin", admin_rules()),
        aggregating("system:aggregate-to-edit", "edit", edit_rules()),
        aggregating("system:aggregate-to-view", "view", view_rules()),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", &["system:masters"]),
        binding("system:discovery", &["system:authenticated"]),
        binding(
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("system:basic-user", &["system:authenticated"]),
        binding("system:keelson-node", &["system:nodes"]),
        binding(
            "system:service-account-issuer-discovery",
            &["system:serviceaccounts"],
        ),
    ]
}

/// Creates the default roles and bindings that are missing (an edited one is left as it is).
pub async fn ensure<S: Store>(state: &Arc<ApiState<S>>) -> Result<(), ApiError> {
    let objects = cluster_roles()
        .into_iter()
        .map(|o| ("clusterroles", o))
        .chain(
            cluster_role_bindings()
                .into_iter()
                .map(|o| ("clusterrolebindings", o)),
        );
    for (plural, obj) in objects {
        match create_internal(state, "rbac.authorization.k8s.io", "v1", plural, None, &obj).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
