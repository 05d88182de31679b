//! Lease (coordination.k8s.io/v1): pkg/registry/coordination/lease/strategy.go. Node Leases are
//! named after their Node, so any path segment is a valid name.

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, age, name, or_none, s},
    strategy::{NameRule, Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &Leases,
};

struct Leases;

impl Strategy for Leases {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::coordination::v1::Lease>(generator)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![
            name(o),
            json!(or_none(s(&o["spec"]["holderIdentity"]))),
            json!(age(o)),
        ]
    }
}
