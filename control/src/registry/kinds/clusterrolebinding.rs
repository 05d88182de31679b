//! ClusterRoleBinding (rbac.authorization.k8s.io/v1):
//! pkg/registry/rbac/clusterrolebinding/strategy.go; a RoleBinding ([`super::rolebinding`])
//! at the cluster scope, which may bind only ClusterRoles.

use schemars::SchemaGenerator;
use serde_json::Value;

use super::rolebinding::{MESSAGE, binding_cells, binding_columns, validate_binding};
use crate::api::{error::Cause, protobuf::Field};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::Column,
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &ClusterRoleBindings,
};

struct ClusterRoleBindings;

impl Strategy for ClusterRoleBindings {
    /// Escalation prevention ([`crate::api::authz::escalation`]).
    fn admit<'a>(
        &'a self,
        ctx: &'a dyn crate::registry::strategy::AdmissionContext,
        obj: &'a mut serde_json::Value,
        old: Option<&'a serde_json::Value>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<crate::api::error::Cause>, crate::api::error::ApiError>> {
        Box::pin(async move {
            crate::api::authz::escalation::admit_binding(ctx, obj, old, "clusterrolebindings").await?;
            Ok(Vec::new())
        })
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_binding(obj, old, &["ClusterRole"], false, causes);
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
