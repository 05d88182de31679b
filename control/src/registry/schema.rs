//! OpenAPI schemas of the served kinds, generated from k8s-openapi's `JsonSchema` impls (each
//! kind's strategy names its type; schema names like `io.k8s.api.core.v1.Pod`), and the unknown-field check that server-side field
//! validation (`?fieldValidation=Strict|Warn`) runs against them.

use std::sync::OnceLock;

use k8s_openapi::api::core;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use super::{RESOURCES, ResourceInfo};

/// All component schemas (OpenAPI 3 form, refs `#/components/schemas/<name>`) and, per served
/// kind, the name of its schema.
#[derive(Debug)]
pub struct Schemas {
    pub components: Map<String, Value>,
    /// `(group, kind) -> schema name`.
    pub kinds: Vec<(&'static str, &'static str, String)>,
}

/// The schemas, built once.
pub fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        let mut kinds = Vec::new();
        for info in RESOURCES {
            let name = info.strategy.schema(&mut generator);
            kinds.push((info.group, info.kind, name));
        }
        // Binding and Scale are request bodies of subresources.
        generator.subschema_for::<core::v1::Binding>();
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        let mut components = generator.take_definitions(true);
        for (group, kind, name) in &kinds {
            if let Some(Value::Object(schema)) = components.get_mut(name) {
                let version = RESOURCES
                    .iter()
                    .find(|r| r.group == *group && r.kind == *kind)
                    .map_or("v1", |r| r.version);
                schema.insert(
                    "x-kubernetes-group-version-kind".into(),
                    serde_json::json!([{"group": group, "kind": kind, "version": version}]),
                );
            }
        }
        Schemas { components, kinds }
    })
}

/// The schema name of a served kind, e.g. `io.k8s.api.apps.v1.Deployment`.
pub fn schema_name(info: &ResourceInfo) -> Option<&'static str> {
    schemas()
        .kinds
        .iter()
        .find(|(g, k, _)| *g == info.group && *k == info.kind)
        .map(|(_, _, n)| n.as_str())
}

fn resolve<'a>(schema: &'a Value, components: &'a Map<String, Value>) -> &'a Value {
    let mut s = schema;
    for _ in 0..8 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.rsplit('/').next().and_then(|n| components.get(n)) {
                Some(next) => s = next,
                None => return s,
            }
        } else if let Some(first) = s
            .get("allOf")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            s = first;
        } else {
            return s;
        }
    }
    s
}

fn walk(
    schema: &Value,
    components: &Map<String, Value>,
    value: &mut Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let schema = resolve(schema, components);
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let mut unknown = Vec::new();
                for (k, v) in map.iter_mut() {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(s) => walk(s, components, v, &child, out),
                        None => {
                            out.push(child);
                            unknown.push(k.clone());
                        }
                    }
                }
                for k in unknown {
                    map.remove(&k);
                }
            } else if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, v) in map.iter_mut() {
                    walk(add, components, v, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    walk(item_schema, components, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Removes the fields of `obj` that the kind's schema does not know and returns their paths,
/// e.g. `spec.foo` (kube-apiserver drops them when it decodes into its types).
pub fn prune_unknown_fields(info: &ResourceInfo, obj: &mut Value) -> Vec<String> {
    let all = schemas();
    let Some(name) = schema_name(info) else {
        return Vec::new();
    };
    let Some(schema) = all.components.get(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(schema, &all.components, obj, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn registry_schema_names_and_unknown_fields() {
        let info = lookup("apps", "v1", "deployments").expect("deployments");
        assert_eq!(schema_name(info), Some("io.k8s.api.apps.v1.Deployment"));
        let mut d = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"replicaz": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i", "bogus": 1,
                "resources": {"limits": {"cpu": "1"}}}]}}}});
        assert_eq!(
            prune_unknown_fields(info, &mut d),
            vec!["spec.replicaz", "spec.template.spec.containers[0].bogus"]
        );
        assert!(d["spec"].get("replicaz").is_none());
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        let gvk = &schemas().components["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"];
        assert_eq!(gvk[0]["kind"], "Deployment");
    }
}
