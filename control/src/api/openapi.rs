//! OpenAPI v3: the `/openapi/v3` index and one document per group-version with the component
//! schemas of k8s-openapi (`io.k8s.api.core.v1.Pod`, with `x-kubernetes-group-version-kind`) and
//! the paths and operations of the served kinds.
//!
//! kubectl reads these documents to decide whether the server validates fields itself: its
//! QueryParamVerifierV3 looks for the PATCH operation tagged with the kind's
//! `x-kubernetes-group-version-kind` and a `fieldValidation` query parameter. PATCH operations
//! list only JSON and merge patch bodies: for strategic merge patches kubectl then uses the patch
//! metadata compiled into it (k8s.io/api struct tags) rather than schema extensions we would have
//! to reproduce.

use std::{collections::BTreeMap, sync::OnceLock};

use axum::{
    extract::Path,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use crate::registry::{self, ResourceInfo, schema};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}, "uniqueItems": true})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "uniqueItems": true})
}

fn body_ref(schema_name: Option<&str>) -> Value {
    match schema_name {
        Some(n) => json!({"$ref": format!("#/components/schemas/{n}")}),
        None => json!({"type": "object"}),
    }
}

fn ok_response(schema: &Value) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}, "401": {"description": "Unauthorized"}})
}

fn operation(
    info: &ResourceInfo,
    action: &str,
    verb: &str,
    sub: Option<&str>,
    schema: &Value,
    params: Vec<Value>,
) -> Value {
    let (group, version, kind) = match sub {
        Some("scale") => ("autoscaling", "v1", "Scale"),
        _ => (info.group, info.version, info.kind),
    };
    let mut op = json!({
        "operationId": format!("{verb}{}{}", info.kind, sub.map(|s| format!("_{s}")).unwrap_or_default()),
        "parameters": params,
        "responses": ok_response(schema),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
    });
    match action {
        "post" | "put" => {
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": schema}}, "required": true});
        }
        "patch" => {
            op["requestBody"] = json!({"content": {
                "application/json-patch+json": {"schema": {"type": "object"}},
                "application/merge-patch+json": {"schema": {"type": "object"}},
            }, "required": true});
        }
        _ => {}
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_param(
            "fieldManager",
            "a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    [
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
    ]
    .iter()
    .map(|p| query_param(p, p))
    .collect()
}

fn paths_for(info: &ResourceInfo, paths: &mut Map<String, Value>) {
    let base = format!("/{}", gv_path(info.group, info.version));
    let collection = if info.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", info.plural)
    } else {
        format!("{base}/{}", info.plural)
    };
    let scope: Vec<Value> = if info.namespaced {
        vec![path_param("namespace")]
    } else {
        vec![]
    };
    let obj_schema = body_ref(schema::schema_name(info));
    let list_schema = json!({"type": "object"});
    let with = |mut a: Vec<Value>, b: Vec<Value>| {
        a.extend(b);
        a
    };
    paths.insert(
        collection.clone(),
        json!({
            "get": operation(info, "list", "list", None, &list_schema, with(scope.clone(), list_params())),
            "post": operation(info, "post", "create", None, &obj_schema, with(scope.clone(), write_params())),
            "delete": operation(info, "deletecollection", "deletecollection", None, &list_schema, with(scope.clone(), list_params())),
        }),
    );
    if info.namespaced {
        paths.insert(
            format!("{base}/{}", info.plural),
            json!({"get": operation(info, "list", "listAllNamespaces", None, &list_schema, list_params())}),
        );
    }
    let item_scope = with(scope.clone(), vec![path_param("name")]);
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": operation(info, "get", "read", None, &obj_schema, item_scope.clone()),
            "put": operation(info, "put", "replace", None, &obj_schema, with(item_scope.clone(), write_params())),
            "patch": operation(info, "patch", "patch", None, &obj_schema, with(item_scope.clone(), with(write_params(), vec![query_param("force", "force")]))),
            "delete": operation(info, "delete", "delete", None, &obj_schema, with(item_scope.clone(), vec![query_param("gracePeriodSeconds", "grace"), query_param("propagationPolicy", "propagation")])),
        }),
    );
    for sub in info.subresources {
        let path = format!("{collection}/{{name}}/{sub}");
        let value = match *sub {
            "status" => json!({
                "get": operation(info, "get", "read", Some(sub), &obj_schema, item_scope.clone()),
                "put": operation(info, "put", "replace", Some(sub), &obj_schema, with(item_scope.clone(), write_params())),
                "patch": operation(info, "patch", "patch", Some(sub), &obj_schema, with(item_scope.clone(), write_params())),
            }),
            "scale" => {
                let scale = json!({"$ref": "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"});
                json!({
                    "get": operation(info, "get", "read", Some(sub), &scale, item_scope.clone()),
                    "put": operation(info, "put", "replace", Some(sub), &scale, with(item_scope.clone(), write_params())),
                    "patch": operation(info, "patch", "patch", Some(sub), &scale, with(item_scope.clone(), write_params())),
                })
            }
            "binding" => {
                let binding = json!({"$ref": "#/components/schemas/io.k8s.api.core.v1.Binding"});
                json!({"post": operation(info, "post", "create", Some(sub), &binding, with(item_scope.clone(), write_params()))})
            }
            "log" => {
                json!({"get": operation(info, "get", "read", Some(sub), &json!({"type": "string"}), item_scope.clone())})
            }
            _ => continue,
        };
        paths.insert(path, value);
    }
}

/// FNV-1a, enough to give each document a stable cache-busting hash.
fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The rendered documents by group-version path (`api/v1`, `apis/apps/v1`), built once.
fn documents() -> &'static BTreeMap<String, String> {
    static DOCS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let schemas = schema::schemas();
        let mut docs = BTreeMap::new();
        for (group, version) in registry::group_versions() {
            let mut paths = Map::new();
            for info in registry::resources_of(group, version) {
                paths_for(info, &mut paths);
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": super::discovery::GIT_VERSION},
                "paths": paths,
                "components": {"schemas": schemas.components},
            });
            docs.insert(gv_path(group, version), doc.to_string());
        }
        docs
    })
}

fn json_response(body: String) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `/openapi/v3`
pub async fn index() -> Response {
    let paths: Map<String, Value> = documents()
        .iter()
        .map(|(p, doc)| {
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", fingerprint(doc))}),
            )
        })
        .collect();
    json_response(json!({"paths": paths}).to_string())
}

/// `/openapi/v3/<api/v1|apis/<group>/<version>>`
pub async fn document(Path(path): Path<String>) -> Result<Response, ApiError> {
    documents()
        .get(path.trim_matches('/'))
        .map(|d| json_response(d.clone()))
        .ok_or(ApiError::NoSuchResource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_openapi_patch_operations_offer_field_validation() {
        let doc: Value = serde_json::from_str(&documents()["apis/apps/v1"]).expect("json");
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        let params = op["parameters"].as_array().expect("params");
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
    }
}
