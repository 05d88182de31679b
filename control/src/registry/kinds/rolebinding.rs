//! RoleBinding (rbac.authorization.k8s.io/v1): pkg/registry/rbac/rolebinding/strategy.go and
//! pkg/apis/rbac/validation `ValidateRoleBinding`: a `roleRef` to a Role or ClusterRole that
//! never changes, and subjects that are Users, Groups or ServiceAccounts. Shared with
//! ClusterRoleBinding ([`super::clusterrolebinding`]).

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::api::{
    error::Cause,
    protobuf::{Field, Msg, OBJECT_META, Str, f, r},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, age, name},
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "RoleBinding",
    plural: "rolebindings",
    singular: "rolebinding",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &RoleBindings,
};

struct RoleBindings;

/// The API group of RBAC, the only one a `roleRef` may name.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

const SUBJECT: &[Field] = &[
    f(1, "kind", Str),
    f(2, "apiGroup", Str),
    f(3, "name", Str),
    f(4, "namespace", Str),
];
const ROLE_REF: &[Field] = &[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)];

/// RoleBinding and ClusterRoleBinding (generated.proto).
pub const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    r(2, "subjects", Msg(SUBJECT)),
    f(3, "roleRef", Msg(ROLE_REF)),
];

/// `ValidateRoleBinding`/`ValidateClusterRoleBinding`: `kinds` are what `roleRef.kind` may be;
/// a ServiceAccount subject needs a namespace when the binding has none to lend it.
pub fn validate_binding(
    obj: &Value,
    old: Option<&Value>,
    kinds: &[&str],
    namespaced: bool,
    causes: &mut Vec<Cause>,
) {
    let role_ref = &obj["roleRef"];
    if role_ref["apiGroup"].as_str() != Some(RBAC_GROUP) {
        causes.push(Cause::not_supported(
            "roleRef.apiGroup",
            &role_ref["apiGroup"],
            &[RBAC_GROUP],
        ));
    }
    if !role_ref["kind"].as_str().is_some_and(|k| kinds.contains(&k)) {
        causes.push(Cause::not_supported("roleRef.kind", &role_ref["kind"], kinds));
    }
    if role_ref["name"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("roleRef.name", ""));
    }
    if let Some(old) = old
        && old["roleRef"] != obj["roleRef"]
    {
        causes.push(Cause::invalid(
            "roleRef",
            role_ref,
            "cannot change roleRef",
        ));
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        if s["name"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(at("name"), ""));
        }
        match s["kind"].as_str() {
            Some("ServiceAccount") => {
                if !namespaced && s["namespace"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(at("namespace"), ""));
                }
            }
            Some("User" | "Group") => {
                if s["apiGroup"].as_str() != Some(RBAC_GROUP) {
                    causes.push(Cause::not_supported(at("apiGroup"), &s["apiGroup"], &[RBAC_GROUP]));
                }
            }
            _ => causes.push(Cause::not_supported(
                at("kind"),
                &s["kind"],
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// `Kind/name` of the bound role, kubectl's ROLE column.
fn role_of(o: &Value) -> String {
    format!(
        "{}/{}",
        o["roleRef"]["kind"].as_str().unwrap_or_default(),
        o["roleRef"]["name"].as_str().unwrap_or_default()
    )
}

/// Subject names of `kind`, comma-separated (kubectl's wide columns).
fn subjects_of(o: &Value, kind: &str) -> String {
    o["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .map(|s| match s["namespace"].as_str().filter(|n| !n.is_empty()) {
            Some(ns) if kind == "ServiceAccount" => format!("{ns}/{}", s["name"].as_str().unwrap_or_default()),
            _ => s["name"].as_str().unwrap_or_default().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// printRoleBinding / printClusterRoleBinding.
pub fn binding_columns() -> Vec<Column> {
    vec![
        ("Name", "string", 0),
        ("Role", "string", 0),
        ("Age", "string", 0),
        ("Users", "string", 1),
        ("Groups", "string", 1),
        ("ServiceAccounts", "string", 1),
    ]
}

pub fn binding_cells(o: &Value) -> Vec<Value> {
    vec![
        name(o),
        json!(role_of(o)),
        json!(age(o)),
        json!(subjects_of(o, "User")),
        json!(subjects_of(o, "Group")),
        json!(subjects_of(o, "ServiceAccount")),
    ]
}

impl Strategy for RoleBindings {
    /// Escalation prevention ([`crate::api::authz::escalation`]).
    fn admit<'a>(
        &'a self,
        ctx: &'a dyn crate::registry::strategy::AdmissionContext,
        obj: &'a mut serde_json::Value,
        old: Option<&'a serde_json::Value>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<crate::api::error::Cause>, crate::api::error::ApiError>> {
        Box::pin(async move {
            crate::api::authz::escalation::admit_binding(ctx, obj, old, "rolebindings").await?;
            Ok(Vec::new())
        })
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::rbac::v1::RoleBinding>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_binding(obj, old, &["Role", "ClusterRole"], true, causes);
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        binding_columns()
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        binding_cells(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_check_their_role_and_subjects() {
        let ok = json!({
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "apiGroup": RBAC_GROUP, "name": "jane"},
                         {"kind": "ServiceAccount", "name": "default"}],
        });
        let mut causes = Vec::new();
        validate_binding(&ok, None, &["Role", "ClusterRole"], true, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut changed = ok.clone();
        changed["roleRef"]["name"] = json!("edit");
        validate_binding(&changed, Some(&ok), &["Role", "ClusterRole"], true, &mut causes);
        assert_eq!(causes[0].field, "roleRef");
        causes.clear();
        validate_binding(&ok, None, &["ClusterRole"], false, &mut causes);
        assert_eq!(causes[0].field, "subjects[1].namespace");
        assert_eq!(binding_cells(&ok)[1], json!("ClusterRole/view"));
    }
}
