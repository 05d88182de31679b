//! ClusterRole (rbac.authorization.k8s.io/v1): pkg/registry/rbac/clusterrole/strategy.go; the
//! rules of a Role ([`super::role`]) plus non-resource URLs and an `aggregationRule`.

use schemars::SchemaGenerator;
use serde_json::Value;

use super::role::{POLICY_RULE, role_cells, role_columns, validate_rules};
use crate::api::{
    error::Cause,
    protobuf::{Field, LABEL_SELECTOR, Msg, OBJECT_META, f, r},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::Column,
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
    singular: "clusterrole",
    namespaced: false,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &ClusterRoles,
};

struct ClusterRoles;

const AGGREGATION_RULE: &[Field] = &[r(1, "clusterRoleSelectors", Msg(LABEL_SELECTOR))];

const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    r(2, "rules", Msg(POLICY_RULE)),
    f(3, "aggregationRule", Msg(AGGREGATION_RULE)),
];

impl Strategy for ClusterRoles {
    /// Escalation prevention ([`crate::api::authz::escalation`]).
    fn admit<'a>(
        &'a self,
        ctx: &'a dyn crate::registry::strategy::AdmissionContext,
        obj: &'a mut serde_json::Value,
        old: Option<&'a serde_json::Value>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<crate::api::error::Cause>, crate::api::error::ApiError>> {
        Box::pin(async move {
            crate::api::authz::escalation::admit_role(ctx, obj, old, "clusterroles").await?;
            Ok(Vec::new())
        })
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::rbac::v1::ClusterRole>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_rules(obj, false, causes);
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
