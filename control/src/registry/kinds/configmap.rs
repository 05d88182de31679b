//! ConfigMap (core/v1): pkg/registry/core/configmap/strategy.go and ValidateConfigMap: keys are
//! config keys, `data` and `binaryData` together hold at most 1 MiB.

use base64::Engine as _;
use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::api::{
    error::Cause,
    protobuf::{BYTES, Bool, Field, Kind, Msg, OBJECT_META, STR, f},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    printers::{Column, age, entries, name},
    strategy::{Strategy, schema_of},
    validation::{MAX_DATA_SIZE, config_keys, too_long},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &ConfigMaps,
};

struct ConfigMaps;

const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", Kind::Map(&STR)),
    f(3, "binaryData", Kind::Map(&BYTES)),
    f(4, "immutable", Bool),
];

/// The bytes a ConfigMap holds: its `data` strings plus its decoded `binaryData`.
fn data_size(obj: &Value) -> usize {
    let text: usize = obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, v)| v.as_str().map_or(0, str::len))
        .sum();
    let binary: usize = obj["binaryData"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str())
        .map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_or(b64.len() / 4 * 3, |b| b.len())
        })
        .sum();
    text + binary
}

impl Strategy for ConfigMaps {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::ConfigMap>(generator)
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        config_keys(obj, &["data", "binaryData"], causes);
        // The error names the whole object (field path ""), as ValidateConfigMap words it.
        if data_size(obj) > MAX_DATA_SIZE {
            causes.push(too_long("", MAX_DATA_SIZE));
        }
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let count = entries(&o["data"]) + entries(&o["binaryData"]);
        vec![name(o), json!(count), json!(age(o))]
    }
}
