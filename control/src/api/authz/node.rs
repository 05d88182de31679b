//! The Node authorizer and NodeRestriction, for node agents (`system:node:<name>` in
//! `system:nodes`), as kube-apiserver's plugin/pkg/auth/authorizer/node and
//! plugin/pkg/admission/noderestriction decide them: a node reads the Secrets, ConfigMaps and
//! ServiceAccount tokens of the Pods bound to it and no others; it writes only its own Node,
//! its own Lease, and the status of (and deletions of) Pods bound to it. What is not a node's
//! business here (Services, EndpointSlices, policies) has no opinion and goes on to RBAC. The
//! graph kube-apiserver keeps is read here from the store, one namespace's Pods at a time.
//! NodeRestriction's checks that need only the request's target are made here, before the
//! handler, so a refusal is the same 403 either way.

use serde_json::Value;

use super::request_info::RequestInfo;
use crate::{
    api::{ApiState, UserInfo, error::ApiError, handlers::load},
    registry,
    store::Store,
};

/// The group every node is in, and its users' prefix.
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
/// Where nodes' Leases live.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, with kube-apiserver's reason.
    Deny(String),
    /// Not a node request, or not one the node authorizer decides: RBAC does.
    NoOpinion,
}

/// The node a user is, when it is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// Decides `r` for `node`, reading the Pods it needs from the store.
pub async fn decide<S: Store>(
    state: &ApiState<S>,
    node: &str,
    r: &RequestInfo,
) -> Result<Decision, ApiError> {
    if !r.resource_request {
        return Ok(Decision::NoOpinion);
    }
    let deny = |why: String| Ok(Decision::Deny(why));
    match (r.api_group.as_str(), r.resource.as_str()) {
        ("", "secrets" | "configmaps") => {
            // Only by name (a node lists no Secrets), and only those its Pods use.
            if r.verb != "get" || r.name.is_empty() {
                return deny(format!(
                    "node '{node}' cannot {} {}: only get by name is allowed",
                    r.verb, r.resource
                ));
            }
            let kind = if r.resource == "secrets" {
                Ref::Secret
            } else {
                Ref::ConfigMap
            };
            if node_pods_use(state, node, &r.namespace, |p| references(p, kind, &r.name)).await? {
                Ok(Decision::Allow)
            } else {
                deny(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        }
        ("", "serviceaccounts") if r.subresource == "token" => {
            if r.verb != "create" {
                return deny(format!("node '{node}' can only create tokens"));
            }
            if node_pods_use(state, node, &r.namespace, |p| {
                p["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    == r.name
            })
            .await?
            {
                Ok(Decision::Allow)
            } else {
                deny(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        }
        ("", "nodes") => {
            // Creating its Node names it in the body, which admission sees; the API server
            // answers 409 for a Node that exists.
            if is_read(&r.verb) || r.verb == "create" || r.name == node {
                Ok(Decision::Allow)
            } else {
                deny(format!(
                    "node \"{node}\" is not allowed to modify node \"{}\"",
                    r.name
                ))
            }
        }
        ("", "pods") => match (r.verb.as_str(), r.subresource.as_str()) {
            (v, "") if is_read(v) => Ok(Decision::Allow),
            ("update" | "patch", "status") | ("delete", "") => {
                match bound_node(state, &r.namespace, &r.name).await? {
                    Some(n) if n != node => deny(format!(
                        "node \"{node}\" can only {} pods with spec.nodeName set to itself",
                        if r.verb == "delete" {
                            "delete"
                        } else {
                            "update"
                        }
                    )),
                    _ => Ok(Decision::Allow),
                }
            }
            _ => deny(format!(
                "node \"{node}\" cannot {} pods{}",
                r.verb,
                if r.subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{}", r.subresource)
                }
            )),
        },
        ("coordination.k8s.io", "leases") => {
            if r.namespace != LEASE_NAMESPACE {
                deny(format!(
                    "can only access leases in the \"{LEASE_NAMESPACE}\" namespace"
                ))
            } else if r.name.is_empty() && r.verb != "create" {
                deny("can only access node lease with the same name".to_owned())
            } else if !r.name.is_empty() && r.name != node {
                deny(format!(
                    "can only access node lease with the same name as the requesting node \"{node}\""
                ))
            } else {
                Ok(Decision::Allow)
            }
        }
        _ => Ok(Decision::NoOpinion),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref {
    Secret,
    ConfigMap,
}

/// Whether the Pod `pod` refers to the Secret or ConfigMap `name`: volumes (also projected),
/// env, envFrom, and image pull Secrets.
fn references(pod: &Value, kind: Ref, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    let (volume_key, volume_name, env_key) = match kind {
        Ref::Secret => ("secret", "secretName", "secretKeyRef"),
        Ref::ConfigMap => ("configMap", "name", "configMapKeyRef"),
    };
    let env_from_key = match kind {
        Ref::Secret => "secretRef",
        Ref::ConfigMap => "configMapRef",
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for v in list(&spec["volumes"]) {
        if is(&v[volume_key][volume_name]) {
            return true;
        }
        for src in list(&v["projected"]["sources"]) {
            if is(&src[volume_key]["name"]) {
                return true;
            }
        }
    }
    if kind == Ref::Secret
        && list(&spec["imagePullSecrets"])
            .iter()
            .any(|s| is(&s["name"]))
    {
        return true;
    }
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| list(&spec[*k]))
        .any(|c| {
            list(&c["env"])
                .iter()
                .any(|e| is(&e["valueFrom"][env_key]["name"]))
                || list(&c["envFrom"])
                    .iter()
                    .any(|e| is(&e[env_from_key]["name"]))
        })
}

/// Whether a Pod bound to `node` in `namespace` satisfies `uses`.
async fn node_pods_use<S: Store>(
    state: &ApiState<S>,
    node: &str,
    namespace: &str,
    uses: impl Fn(&Value) -> bool,
) -> Result<bool, ApiError> {
    let info = registry::lookup("", "v1", "pods").ok_or(ApiError::NoSuchResource)?;
    let list = state
        .store
        .list(&info.list_prefix(Some(namespace)), None, 0)
        .await?;
    for kv in &list.items {
        let pod = load(kv)?;
        if pod["spec"]["nodeName"].as_str() == Some(node) && uses(&pod) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The node the Pod `namespace/name` is bound to (`None`: not found or not bound).
async fn bound_node<S: Store>(
    state: &ApiState<S>,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let info = registry::lookup("", "v1", "pods").ok_or(ApiError::NoSuchResource)?;
    let Some(kv) = state.store.get(&info.key(Some(namespace), name)).await? else {
        return Ok(None);
    };
    Ok(load(&kv)?["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nodes_are_named_users_in_the_nodes_group() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        assert_eq!(node_of(&user("system:node:n1", &[NODES_GROUP])), Some("n1"));
        assert_eq!(node_of(&user("system:node:n1", &["dev"])), None);
        assert_eq!(node_of(&user("system:node:", &[NODES_GROUP])), None);
        assert_eq!(node_of(&user("jane", &[NODES_GROUP])), None);
    }

    #[test]
    fn a_pod_refers_to_what_its_volumes_env_and_pull_secrets_name() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "a", "secret": {"secretName": "s1"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "c1"}}, {"secret": {"name": "s2"}}]}},
            ],
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "x",
                "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "c2", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "s3"}}]}],
        }});
        for s in ["s1", "s2", "s3", "pull"] {
            assert!(references(&pod, Ref::Secret, s), "{s}");
        }
        for c in ["c1", "c2"] {
            assert!(references(&pod, Ref::ConfigMap, c), "{c}");
        }
        assert!(!references(&pod, Ref::Secret, "c1"));
        assert!(!references(&pod, Ref::ConfigMap, "s1"));
        assert!(!references(&pod, Ref::Secret, "other"));
    }
}
