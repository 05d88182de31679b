//! The request body decoder: a create or update body arrives as JSON, YAML or Kubernetes
//! protobuf (the media types kube-apiserver serves for writes) and leaves as the JSON object
//! every handler works on.

use axum::{
    body::Bytes,
    http::{HeaderMap, header},
};
use serde_json::Value;

use crate::{api::error::ApiError, registry::ResourceInfo};

/// What a write body may be, as kube-apiserver's 415 lists them.
const SUPPORTED: &str = "application/json, application/yaml, application/vnd.kubernetes.protobuf";

/// The body of a POST or PUT as JSON, by its Content-Type.
pub(super) fn to_json(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/json" | "" | "*/*" => Ok(body),
        "application/yaml" => {
            let obj = yaml_to_json(&body)?;
            Ok(Bytes::from(obj.to_string()))
        }
        "application/vnd.kubernetes.protobuf" => {
            let obj = crate::api::protobuf::decode(&body)?;
            Ok(Bytes::from(obj.to_string()))
        }
        _ => Err(ApiError::UnsupportedMediaType(SUPPORTED.into())),
    }
}

/// One YAML document as JSON (kube-apiserver's yaml.YAMLToJSON, then its JSON decoder).
pub(super) fn yaml_to_json(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "error converting YAML to JSON: yaml: invalid UTF-8: {e}"
        ))
    })?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::BadRequest(format!("error converting YAML to JSON: yaml: {e}")))
}

/// An apply configuration (`application/apply-patch+yaml`): YAML, of which JSON is a subset.
pub(super) fn apply_body(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(_) => yaml_to_json(body),
    }
}

/// Parses a request body into a JSON object (400 BadRequest otherwise).
pub fn decode_body(info: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: expected an object",
            info.kind, info.version, info.kind
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn api_body_yaml_becomes_json() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        );
        let yaml =
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n  b: two\n";
        let out = to_json(&headers, Bytes::from(yaml)).expect("decodes");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "two"}})
        );
        assert!(matches!(
            to_json(&headers, Bytes::from("a: [1, 2")),
            Err(ApiError::BadRequest(_))
        ));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            to_json(&headers, Bytes::from("x")),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
