//! Secret (core/v1): pkg/registry/core/secret/strategy.go, SetDefaults_Secret and
//! ValidateSecret. `stringData` is write-only: every write folds it into `data` (base64), as the
//! v1-to-internal conversion does (Convert_v1_Secret_To_core_Secret), so it is never stored nor
//! returned; `data` holds at most 1 MiB.

use base64::Engine as _;
use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::{
    error::Cause,
    protobuf::{BYTES, Bool, Field, Kind, Msg, OBJECT_META, STR, Str, f},
};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    defaults::{child, set_default},
    printers::{Column, age, entries, name, s},
    strategy::{Strategy, schema_of},
    validation::{MAX_DATA_SIZE, config_keys, too_long},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &Secrets,
};

struct Secrets;

const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", Kind::Map(&BYTES)),
    f(3, "type", Str),
    f(4, "stringData", Kind::Map(&STR)),
    f(5, "immutable", Bool),
];

/// The bytes of a Secret's decoded `data`.
fn data_size(obj: &Value) -> usize {
    obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str())
        .map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_or(b64.len() / 4 * 3, |b| b.len())
        })
        .sum()
}

impl Strategy for Secrets {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::Secret>(generator)
    }

    /// `stringData` entries overwrite `data` entries of the same key (the field's contract:
    /// "stringData field is never output when reading from the API").
    fn normalize(&self, root: &mut Map<String, Value>) {
        let Some(string_data) = root.remove("stringData") else {
            return;
        };
        let Value::Object(entries) = string_data else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        if let Some(data) = child(root, "data") {
            for (key, value) in entries {
                let text = match value {
                    Value::String(text) => text,
                    other => s(&other),
                };
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                data.insert(key, json!(encoded));
            }
        }
    }

    fn defaults(&self, root: &mut Map<String, Value>) {
        set_default(root, "type", json!("Opaque"));
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        config_keys(obj, &["data", "stringData"], causes);
        if data_size(obj) > MAX_DATA_SIZE {
            causes.push(too_long("data", MAX_DATA_SIZE));
        }
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![
            name(o),
            json!(s(&o["type"])),
            json!(entries(&o["data"])),
            json!(age(o)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_secret_string_data_folds_into_data() {
        let mut obj = json!({"metadata": {"name": "s"}, "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "b": "two"}});
        let root = obj.as_object_mut().expect("object");
        Secrets.normalize(root);
        assert_eq!(
            obj,
            json!({"metadata": {"name": "s"}, "data": {"a": "bmV3", "keep": "eA==", "b": "dHdv"}})
        );
        let mut empty = json!({"metadata": {"name": "s"}, "stringData": {}});
        Secrets.normalize(empty.as_object_mut().expect("object"));
        assert_eq!(empty, json!({"metadata": {"name": "s"}}));
    }
}
