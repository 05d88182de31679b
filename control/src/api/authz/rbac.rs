//! RBAC decisions (plugin/pkg/auth/authorizer/rbac): a request is allowed when a rule of a
//! role bound to the user allows it — ClusterRoleBindings everywhere, RoleBindings in their
//! namespace. Pure: [`Policy`] holds the roles and bindings as read from the store, and
//! [`Policy::allows`] and [`Policy::rules_for`] decide without I/O.

use std::collections::BTreeMap;

use serde_json::Value;

use super::request_info::RequestInfo;
use crate::api::UserInfo;

/// One `PolicyRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

impl Rule {
    /// The rules of an object's `rules` array.
    pub fn list_of(obj: &Value) -> Vec<Rule> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        obj["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Rule {
                verbs: strings(&r["verbs"]),
                api_groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                resource_names: strings(&r["resourceNames"]),
                non_resource_urls: strings(&r["nonResourceURLs"]),
            })
            .collect()
    }

    /// `RuleAllows`: verb, group, resource (`resource/subresource`, `*/subresource`), name.
    pub fn allows(&self, r: &RequestInfo) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        if !any(&self.verbs, &r.verb) {
            return false;
        }
        if !r.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == r.path
                    || u.strip_suffix('*').is_some_and(|p| r.path.starts_with(p))
            });
        }
        if !any(&self.api_groups, &r.api_group) {
            return false;
        }
        let combined = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        let resource = self.resources.iter().any(|x| {
            x == "*"
                || *x == combined
                || (!r.subresource.is_empty() && *x == format!("*/{}", r.subresource))
        });
        resource && (self.resource_names.is_empty() || self.resource_names.contains(&r.name))
    }
}

/// One subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Subject {
    /// Whether `user` is this subject (`binding_ns`: the RoleBinding's namespace, which a
    /// ServiceAccount subject without one of its own is in).
    fn matches(&self, user: &UserInfo, binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }
}

/// One RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    pub role_kind: String,
    pub role_name: String,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn of(obj: &Value) -> Binding {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Binding {
            name: s(&obj["metadata"]["name"]),
            namespace: s(&obj["metadata"]["namespace"]),
            role_kind: s(&obj["roleRef"]["kind"]),
            role_name: s(&obj["roleRef"]["name"]),
            subjects: obj["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| Subject {
                    kind: s(&x["kind"]),
                    name: s(&x["name"]),
                    namespace: s(&x["namespace"]),
                })
                .collect(),
        }
    }
}

/// Every role and binding of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub cluster_roles: BTreeMap<String, Vec<Rule>>,
    /// Roles by (namespace, name).
    pub roles: BTreeMap<(String, String), Vec<Rule>>,
    pub cluster_bindings: Vec<Binding>,
    pub bindings: Vec<Binding>,
}

/// Why a request was allowed: the binding and role whose rule allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub binding: String,
    pub role: String,
}

impl Policy {
    fn role_rules(&self, b: &Binding) -> &[Rule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
            _ => None,
        };
        rules.map_or(&[], Vec::as_slice)
    }

    /// The bindings that apply to `user` for a request in `namespace` ("" for the cluster
    /// scope).
    fn bindings_for<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Binding> + 'a {
        self.cluster_bindings
            .iter()
            .chain(
                self.bindings
                    .iter()
                    .filter(move |b| !namespace.is_empty() && b.namespace == namespace),
            )
            .filter(move |b| b.subjects.iter().any(|s| s.matches(user, &b.namespace)))
    }

    /// Whether `user` may do `request`, and through which binding.
    pub fn allows(&self, user: &UserInfo, request: &RequestInfo) -> Option<Allowed> {
        self.bindings_for(user, &request.namespace).find_map(|b| {
            self.role_rules(b)
                .iter()
                .any(|r| r.allows(request))
                .then(|| Allowed {
                    binding: if b.namespace.is_empty() {
                        format!("ClusterRoleBinding \"{}\"", b.name)
                    } else {
                        format!("RoleBinding \"{}/{}\"", b.namespace, b.name)
                    },
                    role: format!("{} \"{}\"", b.role_kind, b.role_name),
                })
        })
    }

    /// Every rule that applies to `user` in `namespace` (`SelfSubjectRulesReview`).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        self.bindings_for(user, namespace)
            .flat_map(|b| self.role_rules(b).iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn req(
        verb: &str,
        group: &str,
        ns: &str,
        resource: &str,
        sub: &str,
        name: &str,
    ) -> RequestInfo {
        RequestInfo {
            resource_request: true,
            verb: verb.into(),
            api_group: group.into(),
            namespace: ns.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.cluster_roles.insert(
            "pod-reader".into(),
            Rule::list_of(&json!({"rules": [
                {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]},
                {"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]},
            ]})),
        );
        p.roles.insert(
            ("team".into(), "cm-one".into()),
            Rule::list_of(&json!({"rules": [
                {"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"]},
            ]})),
        );
        p.cluster_bindings.push(Binding::of(&json!({
            "metadata": {"name": "readers"},
            "roleRef": {"kind": "ClusterRole", "name": "pod-reader"},
            "subjects": [{"kind": "Group", "name": "readers"}],
        })));
        p.bindings.push(Binding::of(&json!({
            "metadata": {"name": "sa-cm", "namespace": "team"},
            "roleRef": {"kind": "Role", "name": "cm-one"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot"}],
        })));
        p
    }

    #[test]
    fn rules_match_verbs_groups_resources_names_and_urls() {
        let p = policy();
        let reader = UserInfo {
            name: "jane".into(),
            groups: vec!["readers".into()],
        };
        assert!(
            p.allows(&reader, &req("list", "", "default", "pods", "", ""))
                .is_some()
        );
        assert!(
            p.allows(&reader, &req("get", "", "x", "pods", "log", "web"))
                .is_some()
        );
        assert!(
            p.allows(&reader, &req("get", "", "x", "pods", "exec", "web"))
                .is_none()
        );
        assert!(
            p.allows(&reader, &req("delete", "", "x", "pods", "", "web"))
                .is_none()
        );
        assert!(
            p.allows(&reader, &req("get", "apps", "x", "pods", "", ""))
                .is_none()
        );
        let url = |path: &str| RequestInfo {
            verb: "get".into(),
            path: path.into(),
            ..RequestInfo::default()
        };
        assert!(p.allows(&reader, &url("/healthz")).is_some());
        assert!(p.allows(&reader, &url("/apis/apps")).is_some());
        assert!(p.allows(&reader, &url("/metrics")).is_none());

        let bot = UserInfo {
            name: "system:serviceaccount:team:bot".into(),
            groups: vec![],
        };
        let allowed = p
            .allows(&bot, &req("update", "", "team", "configmaps", "", "one"))
            .expect("allowed");
        assert_eq!(allowed.binding, "RoleBinding \"team/sa-cm\"");
        assert!(
            p.allows(&bot, &req("update", "", "team", "configmaps", "", "two"))
                .is_none()
        );
        assert!(
            p.allows(&bot, &req("update", "", "other", "configmaps", "", "one"))
                .is_none()
        );
        assert!(
            p.allows(&bot, &req("update", "", "", "configmaps", "", "one"))
                .is_none()
        );
        assert_eq!(p.rules_for(&bot, "team").len(), 1);
        assert!(p.rules_for(&bot, "other").is_empty());
    }
}
