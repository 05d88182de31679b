//! Discovery: /version, /api, /apis and the per group-version resource lists (legacy discovery),
//! plus aggregated discovery (`apidiscovery.k8s.io/v2`, KEP-3352) when the client asks for it.

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::registry::{self, ResourceInfo};

/// The version this server reports (kubectl prints it in `kubectl version`).
pub const GIT_VERSION: &str = "v1.36.0+keelson";

const AGGREGATED_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn json_response(body: Value) -> Response {
    let mut resp = body.to_string().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2;"))
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.split(',').any(|p| p.trim() == AGGREGATED_CT))
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn version() -> Response {
    json_response(json!({
        "major": "1",
        "minor": "36",
        "gitVersion": GIT_VERSION,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    }))
}

pub async fn api_versions(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated(true);
    }
    json_response(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
}

fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> = registry::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

fn named_groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for (g, _) in registry::group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

pub async fn api_groups(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated(false);
    }
    let groups: Vec<Value> = named_groups().into_iter().map(group_entry).collect();
    json_response(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

pub async fn api_group(Path(group): Path<String>) -> Result<Response, ApiError> {
    if !named_groups().contains(&group.as_str()) {
        return Err(ApiError::NoSuchResource);
    }
    let mut entry = group_entry(&group);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Ok(json_response(entry))
}

/// The subresources of a kind as (name, kind, group, version, verbs).
fn subresources(
    info: &ResourceInfo,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Vec<&'static str>,
)> {
    info.subresources
        .iter()
        .map(|s| match *s {
            "scale" => (
                "scale",
                "Scale",
                "autoscaling",
                "v1",
                vec!["get", "patch", "update"],
            ),
            "binding" => ("binding", "Binding", "", "v1", vec!["create"]),
            "token" => (
                "token",
                "TokenRequest",
                "authentication.k8s.io",
                "v1",
                vec!["create"],
            ),
            "log" => ("log", "Pod", "", "v1", vec!["get"]),
            "exec" => ("exec", "PodExecOptions", "", "v1", vec!["create", "get"]),
            "attach" => (
                "attach",
                "PodAttachOptions",
                "",
                "v1",
                vec!["create", "get"],
            ),
            "portforward" => (
                "portforward",
                "PodPortForwardOptions",
                "",
                "v1",
                vec!["create", "get"],
            ),
            other => (
                other,
                info.kind,
                info.group,
                info.version,
                vec!["get", "patch", "update"],
            ),
        })
        .collect()
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for info in registry::resources_of(group, version) {
        resources.push(json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": info.verbs,
            "shortNames": info.short_names,
            "categories": info.categories,
        }));
        for (sub, kind, g, v, verbs) in subresources(info) {
            let mut entry = json!({
                "name": format!("{}/{sub}", info.plural),
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if g != info.group || v != info.version {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    if group.is_empty() {
        resources.push(json!({
            "name": "bindings",
            "singularName": "binding",
            "namespaced": true,
            "kind": "Binding",
            "verbs": ["create"],
        }));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

pub async fn core_resources() -> Response {
    json_response(resource_list("", "v1"))
}

pub async fn group_resources(
    Path((group, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !registry::group_versions()
        .iter()
        .any(|(g, v)| *g == group && *v == version)
    {
        return Err(ApiError::NoSuchResource);
    }
    Ok(json_response(resource_list(&group, &version)))
}

/// Aggregated discovery document for the core group (`core`) or the named groups.
fn aggregated(core: bool) -> Response {
    let mut items = Vec::new();
    let groups: Vec<&str> = if core { vec![""] } else { named_groups() };
    for group in groups {
        let versions: Vec<Value> = registry::group_versions()
            .into_iter()
            .filter(|(g, _)| *g == group)
            .map(|(g, v)| {
                let resources: Vec<Value> = registry::resources_of(g, v)
                    .map(|info| {
                        let subs: Vec<Value> = subresources(info)
                            .into_iter()
                            .map(|(sub, kind, sg, sv, verbs)| {
                                json!({"subresource": sub, "responseKind": {"group": sg, "version": sv, "kind": kind}, "verbs": verbs})
                            })
                            .collect();
                        json!({
                            "resource": info.plural,
                            "responseKind": {"group": info.group, "version": info.version, "kind": info.kind},
                            "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": info.singular,
                            "verbs": info.verbs,
                            "shortNames": info.short_names,
                            "categories": info.categories,
                            "subresources": subs,
                        })
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions}),
        );
    }
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    let mut resp = body.to_string().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(AGGREGATED_CT),
    );
    resp
}
