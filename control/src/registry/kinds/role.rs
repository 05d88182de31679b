//! Role (rbac.authorization.k8s.io/v1): pkg/registry/rbac/role/strategy.go and
//! pkg/apis/rbac/validation `ValidatePolicyRule`. The rule shape and its checks are shared
//! with ClusterRole ([`super::clusterrole`]).

use schemars::SchemaGenerator;
use serde_json::Value;

use crate::api::{
    error::Cause,
    protobuf::{Field, Msg, OBJECT_META, Str, r},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, name},
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "Role",
    plural: "roles",
    singular: "role",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &Roles,
};

struct Roles;

/// `PolicyRule` (generated.proto).
pub const POLICY_RULE: &[Field] = &[
    r(1, "verbs", Str),
    r(2, "apiGroups", Str),
    r(3, "resources", Str),
    r(4, "resourceNames", Str),
    r(5, "nonResourceURLs", Str),
];

const MESSAGE: &[Field] = &[
    crate::api::protobuf::f(1, "metadata", Msg(OBJECT_META)),
    r(2, "rules", Msg(POLICY_RULE)),
];

fn strings(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

/// `ValidatePolicyRule` for each of `obj.rules`; `namespaced` rules cannot name
/// non-resource URLs.
pub fn validate_rules(obj: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if strings(&rule["verbs"]) == 0 {
            causes.push(Cause::required(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        if strings(&rule["nonResourceURLs"]) > 0 {
            if namespaced {
                causes.push(Cause::invalid(
                    at("nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if strings(&rule["apiGroups"]) > 0 || strings(&rule["resources"]) > 0 {
                causes.push(Cause::invalid(
                    at("nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if strings(&rule["apiGroups"]) == 0 {
            causes.push(Cause::required(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if strings(&rule["resources"]) == 0 {
            causes.push(Cause::required(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// NAME and CREATED AT, as kubectl prints Roles and ClusterRoles.
pub fn role_columns() -> Vec<Column> {
    vec![("Name", "string", 0), ("Created At", "date", 0)]
}

pub fn role_cells(o: &Value) -> Vec<Value> {
    vec![name(o), o["metadata"]["creationTimestamp"].clone()]
}

impl Strategy for Roles {
    /// Escalation prevention ([`crate::api::authz::escalation`]).
    fn admit<'a>(
        &'a self,
        ctx: &'a dyn crate::registry::strategy::AdmissionContext,
        obj: &'a mut serde_json::Value,
        old: Option<&'a serde_json::Value>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<crate::api::error::Cause>, crate::api::error::ApiError>> {
        Box::pin(async move {
            crate::api::authz::escalation::admit_role(ctx, obj, old, "roles").await?;
            Ok(Vec::new())
        })
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::rbac::v1::Role>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_rules(obj, true, causes);
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        role_columns()
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        role_cells(o)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_need_verbs_groups_and_resources() {
        let mut causes = Vec::new();
        validate_rules(
            &json!({"rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
            true,
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
        validate_rules(&json!({"rules": [{"resources": ["pods"]}]}), true, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["rules[0].verbs", "rules[0].apiGroups"]);
        causes.clear();
        validate_rules(
            &json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]}),
            true,
            &mut causes,
        );
        assert_eq!(causes.len(), 1, "namespaced rules have no URLs");
        causes.clear();
        validate_rules(
            &json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]}),
            false,
            &mut causes,
        );
        assert!(causes.is_empty());
    }
}
