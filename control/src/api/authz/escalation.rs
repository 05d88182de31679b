//! RBAC escalation prevention, as kube-apiserver's RBAC storage checks every write of a role or
//! binding (pkg/registry/rbac/validation `ConfirmNoEscalation`, `BindingAuthorized`,
//! `EscalationAllowed`): a Role or ClusterRole may hold only rules its writer holds itself (in
//! that namespace; cluster-wide for a ClusterRole), unless the writer may `escalate` it; a
//! binding may name only a role whose rules its writer holds where the binding applies, unless
//! the writer may `bind` that role. So whoever may write RBAC objects cannot widen their own
//! rights through them. `system:masters` (and the server's own writes) are not checked.

use super::{
    MASTERS,
    rbac::{Policy, Rule},
    request_info::RequestInfo,
};
use serde_json::Value;

use crate::{
    api::{UserInfo, error::ApiError},
    registry::strategy::AdmissionContext,
};

/// One verb of one resource (or URL) and name of `rule`: what `Covers` compares.
fn atoms(rule: &Rule) -> Vec<Rule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(Rule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Rule::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<Vec<String>> = if rule.resource_names.is_empty() {
                    vec![Vec::new()]
                } else {
                    rule.resource_names.iter().map(one).collect()
                };
                for names in names {
                    out.push(Rule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: names,
                        non_resource_urls: Vec::new(),
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the single-verb, single-resource `atom` (`ruleCovers`).
fn covers(owner: &Rule, atom: &Rule) -> bool {
    let has = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
    let Some(verb) = atom.verbs.first() else {
        return true;
    };
    if !has(&owner.verbs, verb) {
        return false;
    }
    if let Some(url) = atom.non_resource_urls.first() {
        return owner.non_resource_urls.iter().any(|u| {
            u == "*" || u == url || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
        });
    }
    let (Some(group), Some(resource)) = (atom.api_groups.first(), atom.resources.first()) else {
        return true;
    };
    if !has(&owner.api_groups, group) {
        return false;
    }
    // `resourceCoversAll`: exact, `*`, or `*/<subresource>` for a subresource.
    let resource_ok = has(&owner.resources, resource)
        || resource
            .split_once('/')
            .is_some_and(|(_, sub)| owner.resources.iter().any(|r| *r == format!("*/{sub}")));
    if !resource_ok {
        return false;
    }
    owner.resource_names.is_empty()
        || atom
            .resource_names
            .first()
            .is_some_and(|n| owner.resource_names.contains(n))
}

/// The parts of `wanted` that no rule of `held` covers (empty: no escalation).
pub fn uncovered(held: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    wanted
        .iter()
        .flat_map(atoms)
        .filter(|a| !held.iter().any(|h| covers(h, a)))
        .collect()
}

/// A rule as kube-apiserver prints it (`rbacv1helpers.CompactString`).
fn compact(rule: &Rule) -> String {
    let list = |l: &[String]| {
        l.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !rule.api_groups.is_empty() || !rule.resources.is_empty() {
        parts.push(format!("APIGroups:[{}]", list(&rule.api_groups)));
        parts.push(format!("Resources:[{}]", list(&rule.resources)));
    }
    if !rule.resource_names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", list(&rule.resource_names)));
    }
    if !rule.non_resource_urls.is_empty() {
        parts.push(format!(
            "NonResourceURLs:[{}]",
            list(&rule.non_resource_urls)
        ));
    }
    parts.push(format!("Verbs:[{}]", list(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

/// What is being written: the kind (plural), its namespace ("" for cluster-scoped) and name.
#[derive(Debug, Clone, Copy)]
pub struct Written<'a> {
    pub plural: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

fn refused(user: &UserInfo, what: Written<'_>, missing: &[Rule]) -> ApiError {
    let groups = user
        .groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    let rules = missing.iter().map(compact).collect::<Vec<_>>().join("\n");
    ApiError::Forbidden {
        group: super::RBAC_GROUP.into(),
        kind: what.plural.into(),
        name: what.name.into(),
        message: format!(
            "{}.{} {:?} is forbidden: user {:?} (groups=[{groups}]) is attempting to grant RBAC \
             permissions not currently held:\n{rules}",
            what.plural,
            super::RBAC_GROUP,
            what.name,
            user.name
        ),
    }
}

/// Whether `user` may `verb` (escalate, bind) the role `name` of `plural` in `namespace`.
fn may(
    policy: &Policy,
    user: &UserInfo,
    verb: &str,
    plural: &str,
    namespace: &str,
    name: &str,
) -> bool {
    policy
        .allows(
            user,
            &RequestInfo {
                resource_request: true,
                verb: verb.into(),
                api_group: super::RBAC_GROUP.into(),
                namespace: namespace.into(),
                resource: plural.into(),
                name: name.into(),
                ..RequestInfo::default()
            },
        )
        .is_some()
}

/// A write of the role `what` holding `rules` by `user` (`None`: the server itself).
pub fn check_role(
    policy: &Policy,
    user: Option<&UserInfo>,
    what: Written<'_>,
    rules: &[Rule],
) -> Result<(), ApiError> {
    let Some(user) = user.filter(|u| !u.groups.iter().any(|g| g == MASTERS)) else {
        return Ok(());
    };
    if may(
        policy,
        user,
        "escalate",
        what.plural,
        what.namespace,
        what.name,
    ) {
        return Ok(());
    }
    let missing = uncovered(&policy.rules_for(user, what.namespace), rules);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(refused(user, what, &missing))
    }
}

/// A write of the binding `what` to the role `role_kind`/`role_name` by `user`.
pub fn check_binding(
    policy: &Policy,
    user: Option<&UserInfo>,
    what: Written<'_>,
    role_kind: &str,
    role_name: &str,
) -> Result<(), ApiError> {
    let Some(user) = user.filter(|u| !u.groups.iter().any(|g| g == MASTERS)) else {
        return Ok(());
    };
    let role_plural = if role_kind == "ClusterRole" {
        "clusterroles"
    } else {
        "roles"
    };
    if may(policy, user, "bind", role_plural, what.namespace, role_name) {
        return Ok(());
    }
    // A role that does not exist grants nothing (kube-apiserver tolerates NotFound here).
    let rules: &[Rule] = if role_kind == "ClusterRole" {
        policy
            .cluster_roles
            .get(role_name)
            .map_or(&[], Vec::as_slice)
    } else {
        policy
            .roles
            .get(&(what.namespace.to_owned(), role_name.to_owned()))
            .map_or(&[], Vec::as_slice)
    };
    let missing = uncovered(&policy.rules_for(user, what.namespace), rules);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(refused(user, what, &missing))
    }
}

/// The role or binding `obj` of `plural` as admission sees it.
fn written<'a>(obj: &'a Value, plural: &'a str) -> Written<'a> {
    Written {
        plural,
        namespace: obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        name: obj["metadata"]["name"].as_str().unwrap_or_default(),
    }
}

/// Admission of a Role (`namespaced`) or ClusterRole write: its rules must be held, unless
/// they did not change. A ClusterRole with an `aggregationRule` gets its rules from the
/// roles it selects, so writing one takes `escalate` (or `system:masters`).
pub async fn admit_role(
    ctx: &dyn AdmissionContext,
    obj: &Value,
    old: Option<&Value>,
    plural: &str,
) -> Result<(), ApiError> {
    if ctx
        .user()
        .is_none_or(|u| u.groups.iter().any(|g| g == MASTERS))
    {
        return Ok(());
    }
    let rules = Rule::list_of(obj);
    let aggregating = !obj["aggregationRule"].is_null();
    if let Some(old) = old
        && Rule::list_of(old) == rules
        && old["aggregationRule"] == obj["aggregationRule"]
    {
        return Ok(());
    }
    let policy = ctx.policy().await?;
    let what = written(obj, plural);
    if aggregating {
        let user = ctx.user();
        if let Some(user) = user
            && !may(
                &policy,
                user,
                "escalate",
                what.plural,
                what.namespace,
                what.name,
            )
        {
            return Err(ApiError::Forbidden {
                group: super::RBAC_GROUP.into(),
                kind: plural.into(),
                name: what.name.into(),
                message: format!(
                    "{plural}.{} {:?} is forbidden: must have cluster-admin privileges to \
                     write an aggregationRule",
                    super::RBAC_GROUP,
                    what.name
                ),
            });
        }
        return Ok(());
    }
    check_role(&policy, ctx.user(), what, &rules)
}

/// Admission of a RoleBinding or ClusterRoleBinding write: its role's rules must be held
/// where it applies (or the role may be `bind`-ed), unless its roleRef did not change.
pub async fn admit_binding(
    ctx: &dyn AdmissionContext,
    obj: &Value,
    old: Option<&Value>,
    plural: &str,
) -> Result<(), ApiError> {
    if ctx
        .user()
        .is_none_or(|u| u.groups.iter().any(|g| g == MASTERS))
    {
        return Ok(());
    }
    if old.is_some_and(|o| o["roleRef"] == obj["roleRef"]) {
        return Ok(());
    }
    let policy = ctx.policy().await?;
    check_binding(
        &policy,
        ctx.user(),
        written(obj, plural),
        obj["roleRef"]["kind"].as_str().unwrap_or_default(),
        obj["roleRef"]["name"].as_str().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let v = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    #[test]
    fn held_rules_cover_what_they_name_and_no_more() {
        let held = vec![
            rule(&["get", "list"], &[""], &["configmaps", "pods/log"], &[]),
            rule(&["*"], &["apps"], &["deployments"], &[]),
            rule(&["get"], &[""], &["secrets"], &["tls"]),
            rule(&["get"], &[""], &["*/status"], &[]),
        ];
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["configmaps"], &[])]).is_empty());
        assert!(
            uncovered(
                &held,
                &[rule(
                    &["create", "delete"],
                    &["apps"],
                    &["deployments"],
                    &[]
                )]
            )
            .is_empty()
        );
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["secrets"], &["tls"])]).is_empty());
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["pods/status"], &[])]).is_empty());
        // A name held does not cover every name; a verb or group not held is missing.
        let missing = uncovered(&held, &[rule(&["get"], &[""], &["secrets"], &[])]);
        assert_eq!(missing.len(), 1);
        assert_eq!(
            compact(&missing[0]),
            r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#
        );
        let missing = uncovered(
            &held,
            &[rule(&["get", "watch"], &[""], &["configmaps", "pods"], &[])],
        );
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert_eq!(
            uncovered(&held, &[rule(&["*"], &[""], &["configmaps"], &[])]).len(),
            1
        );
        let urls = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/metrics".into()],
            ..Rule::default()
        };
        assert_eq!(
            compact(&urls),
            r#"{NonResourceURLs:["/metrics"], Verbs:["get"]}"#
        );
        assert_eq!(uncovered(&held, std::slice::from_ref(&urls)).len(), 1);
        let all = Rule {
            verbs: vec!["*".into()],
            non_resource_urls: vec!["*".into()],
            ..Rule::default()
        };
        assert!(uncovered(&[all], &[urls]).is_empty());
    }

    #[test]
    fn escalate_and_bind_verbs_and_masters_pass() {
        let mut policy = Policy::default();
        policy.cluster_roles.insert(
            "binder".into(),
            vec![
                rule(
                    &["bind"],
                    &["rbac.authorization.k8s.io"],
                    &["clusterroles"],
                    &["admin"],
                ),
                rule(
                    &["create"],
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings"],
                    &[],
                ),
            ],
        );
        policy
            .cluster_roles
            .insert("admin".into(), vec![rule(&["*"], &["*"], &["*"], &[])]);
        policy
            .cluster_bindings
            .push(super::super::rbac::Binding::of(&serde_json::json!({
                "metadata": {"name": "jane-binder"},
                "roleRef": {"kind": "ClusterRole", "name": "binder"},
                "subjects": [{"kind": "User", "name": "jane"}],
            })));
        let jane = UserInfo {
            name: "jane".into(),
            groups: vec!["system:authenticated".into()],
        };
        let what = Written {
            plural: "rolebindings",
            namespace: "team",
            name: "x",
        };
        assert!(check_binding(&policy, Some(&jane), what, "ClusterRole", "admin").is_ok());
        let e = check_role(
            &policy,
            Some(&jane),
            Written {
                plural: "roles",
                namespace: "team",
                name: "r",
            },
            &[rule(&["get"], &[""], &["secrets"], &[])],
        )
        .expect_err("escalation");
        assert!(
            e.to_string().starts_with(
                "roles.rbac.authorization.k8s.io \"r\" is forbidden: user \"jane\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"
            ),
            "{e}"
        );
        let root = UserInfo {
            name: "root".into(),
            groups: vec![MASTERS.into()],
        };
        assert!(
            check_role(
                &policy,
                Some(&root),
                what,
                &[rule(&["*"], &["*"], &["*"], &[])]
            )
            .is_ok()
        );
        assert!(check_role(&policy, None, what, &[rule(&["*"], &["*"], &["*"], &[])]).is_ok());
    }
}
