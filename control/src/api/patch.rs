//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes strategic merge
//! patch. Strategic merge knows the merge keys of the list fields `kubectl apply` touches
//! (k8s.io/api `patchMergeKey` tags) and the `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives (apimachinery/pkg/util/strategicpatch).

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch formats the server accepts, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    /// Server-side apply (`application/apply-patch+yaml`, YAML or JSON bodies). Without field ownership
    /// tracking it is served as a strategic merge of the applied configuration, creating the
    /// object when it does not exist: fields a manager stops applying are not removed.
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                    .into(),
            )),
        }
    }
}

/// Applies `patch` (raw body) of type `ty` to `target`.
pub fn apply(ty: PatchType, target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    let parsed = serde_json::from_slice::<Value>(patch);
    let patch: Value = match (parsed, ty) {
        (Ok(v), _) => v,
        // An apply configuration is YAML (`application/apply-patch+yaml`), of which JSON is a
        // subset.
        (Err(_), PatchType::Apply) => std::str::from_utf8(patch)
            .ok()
            .and_then(|text| serde_saphyr::from_str::<Value>(text).ok())
            .ok_or_else(|| {
                ApiError::BadRequest("error decoding YAML apply configuration".into())
            })?,
        (Err(e), _) => return Err(ApiError::BadRequest(format!("error decoding patch: {e}"))),
    };
    match ty {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(target, &patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::BadRequest(format!("error decoding json patch: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| ApiError::Invalid {
                kind: String::new(),
                group: String::new(),
                name: String::new(),
                causes: vec![super::error::Cause {
                    reason: "FieldValueInvalid",
                    field: String::new(),
                    message: format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ),
                }],
            })?;
        }
        PatchType::Strategic | PatchType::Apply => {
            let Value::Object(p) = patch else {
                return Err(ApiError::BadRequest(
                    "strategic merge patch must be a JSON object".into(),
                ));
            };
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                merge_map(t, p, &mut Vec::new())?;
            }
        }
    }
    Ok(())
}

/// How a list field merges, from its parent path (field names only).
fn merge_key(path: &[String], field: &str) -> Option<&'static str> {
    let parent = path.last().map(String::as_str).unwrap_or_default();
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" => "name",
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            "containerPort"
        }
        "ports" if parent == "spec" => "port",
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "addresses" if parent == "status" => "type",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        _ => return None,
    })
}

/// Primitive lists merged as sets (`patchStrategy:"merge"` on a []string).
fn is_merged_primitive_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn merge_map(
    target: &mut Map<String, Value>,
    mut patch: Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), ApiError> {
    match patch.remove("$patch").as_ref().and_then(Value::as_str) {
        Some("replace") => {
            strip_directives(&mut patch);
            *target = patch;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some(other) => return Err(ApiError::BadRequest(format!("unknown patch type: {other}"))),
        None => {}
    }
    let retain = patch.remove("$retainKeys");
    let mut orders = Vec::new();
    let mut deletions = Vec::new();
    let keys: Vec<String> = patch.keys().cloned().collect();
    for k in keys {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let Some(v) = patch.remove(&k)
        {
            orders.push((field.to_string(), v));
        } else if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let Some(v) = patch.remove(&k)
        {
            deletions.push((field.to_string(), v));
        }
    }
    for (field, value) in patch {
        if value.is_null() {
            target.remove(&field);
            continue;
        }
        match value {
            Value::Object(pm) => {
                // `$patch: delete` on a map removes the field altogether.
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(&field);
                    continue;
                }
                let existing = target
                    .entry(field.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !existing.is_object() {
                    *existing = Value::Object(Map::new());
                }
                if let Value::Object(tm) = existing {
                    path.push(field.clone());
                    let r = merge_map(tm, pm, path);
                    path.pop();
                    r?;
                }
            }
            Value::Array(items) => {
                let merged = merge_list(target.remove(&field), items, path, &field)?;
                target.insert(field, merged);
            }
            other => {
                target.insert(field, other);
            }
        }
    }
    for (field, values) in deletions {
        if let (Some(Value::Array(list)), Some(del)) = (target.get_mut(&field), values.as_array()) {
            list.retain(|v| !del.contains(v));
        }
    }
    for (field, order) in orders {
        let key = merge_key(path, &field);
        if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(&field), order.as_array())
        {
            reorder(list, order, key);
        }
    }
    if let Some(Value::Array(keep)) = retain {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn strip_directives(m: &mut Map<String, Value>) {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        match v {
            Value::Object(inner) => strip_directives(inner),
            Value::Array(items) => {
                for i in items.iter_mut() {
                    if let Value::Object(inner) = i {
                        strip_directives(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Orders `list` like `order` (the full list of merge keys, or values for primitive lists); items
/// not named in `order` keep their relative order after the named ones.
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let pos = |item: &Value| -> usize {
        let probe = match key {
            Some(k) => order
                .iter()
                .position(|o| o.get(k).is_some() && o.get(k) == item.get(k)),
            None => order.iter().position(|o| o == item),
        };
        probe.unwrap_or(usize::MAX)
    };
    list.sort_by_key(|item| pos(item));
}

fn merge_list(
    existing: Option<Value>,
    items: Vec<Value>,
    path: &mut Vec<String>,
    field: &str,
) -> Result<Value, ApiError> {
    // `{"$patch": "replace"}` inside a list replaces the list with the other items.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let mut rest: Vec<Value> = items
            .into_iter()
            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace"))
            .collect();
        for i in &mut rest {
            if let Value::Object(m) = i {
                strip_directives(m);
            }
        }
        return Ok(Value::Array(rest));
    }
    let existing = match existing {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    if let Some(key) = merge_key(path, field) {
        let mut out = existing;
        for item in items {
            let Value::Object(mut pm) = item else {
                continue;
            };
            let id = pm.get(key).cloned();
            let pos = id
                .as_ref()
                .and_then(|id| out.iter().position(|o| o.get(key) == Some(id)));
            if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                if let Some(p) = pos {
                    out.remove(p);
                }
                continue;
            }
            match pos {
                Some(p) => {
                    if let Value::Object(tm) = &mut out[p] {
                        path.push(field.to_string());
                        let r = merge_map(tm, pm, path);
                        path.pop();
                        r?;
                    }
                }
                None => {
                    strip_directives(&mut pm);
                    out.push(Value::Object(pm));
                }
            }
        }
        Ok(Value::Array(out))
    } else if is_merged_primitive_list(field) {
        let mut out = existing;
        for item in items {
            if !out.contains(&item) {
                out.push(item);
            }
        }
        Ok(Value::Array(out))
    } else {
        let mut items = items;
        for i in &mut items {
            if let Value::Object(m) = i {
                strip_directives(m);
            }
        }
        Ok(Value::Array(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        let mut t = target;
        apply(PatchType::Strategic, &mut t, patch.to_string().as_bytes()).expect("patch applies");
        t
    }

    #[test]
    fn api_patch_strategic_containers_by_name() {
        let dep = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}], "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "b", "image": "b:1"}]}}}});
        let out = smp(
            dep,
            json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}],
                            "ports": [{"containerPort": 81}]}]}}}}),
        );
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "b");
        assert_eq!(cs[1]["image"], "a:2");
        assert_eq!(
            cs[1]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
        );
        assert_eq!(
            cs[1]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}])
        );
        assert!(
            out["spec"]["template"]["spec"]
                .get("$setElementOrder/containers")
                .is_none()
        );
    }

    #[test]
    fn api_patch_strategic_directives() {
        let svc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
                         "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
                                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            svc,
            json!({"metadata": {"labels": {"a": null}, "finalizers": ["y"]},
            "spec": {"ports": [{"port": 443, "$patch": "delete"}],
                     "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["spec"]["ports"], json!([{"port": 80, "name": "http"}]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

        let out = smp(
            out,
            json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 8080}]},
                                  "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out["spec"]["ports"], json!([{"port": 8080}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        let out = smp(
            out,
            json!({"spec": {"$patch": "replace", "type": "ClusterIP"}}),
        );
        assert_eq!(out["spec"], json!({"type": "ClusterIP"}));
    }

    #[test]
    fn api_patch_merge_and_json() {
        let mut v = json!({"a": {"b": 1, "c": [1, 2]}});
        apply(PatchType::Merge, &mut v, br#"{"a": {"b": null, "c": [3]}}"#).expect("merge");
        assert_eq!(v, json!({"a": {"c": [3]}}));
        apply(
            PatchType::Json,
            &mut v,
            br#"[{"op": "add", "path": "/a/d", "value": 4}]"#,
        )
        .expect("json patch");
        assert_eq!(v, json!({"a": {"c": [3], "d": 4}}));
        assert!(apply(PatchType::Merge, &mut v, b"{not json").is_err());
    }
}
