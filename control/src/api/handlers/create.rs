//! POST: create, with `generateName` retried on a name clash (kube-apiserver's
//! RetryGenerateName: a generated name that is taken gets a new suffix, up to 8 attempts,
//! instead of 409 AlreadyExists), and the checks every write of a body makes (type, namespace,
//! unknown fields).

use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{
    Req, decode_body, encode, load, meta_mut,
    options::{CreateOptions, FieldValidation},
    respond,
};
use crate::{
    api::{
        error::{ApiError, Cause},
        new_uid, now_rfc3339,
    },
    registry::{self, schema},
    store::{Store, StoreError},
};

/// Attempts of a create whose name is generated (k8s.io/apiserver
/// pkg/registry/generic/registry/store.go maxNameGenerationCreateAttempts).
const GENERATE_NAME_ATTEMPTS: usize = 8;

/// The random part of a generated name: 5 characters of kube-apiserver's alphabet for
/// generateName (k8s.io/apimachinery pkg/util/rand: no vowels, no confusable characters).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const SUFFIX_LEN: usize = 5;
/// Names are at most 63 characters; a longer prefix is cut (names.SimpleNameGenerator).
const MAX_GENERATED_NAME_LENGTH: usize = 63 - SUFFIX_LEN;

/// `prefix` plus a random suffix, as names.SimpleNameGenerator makes it.
pub fn generate_name(prefix: &str) -> String {
    let mut cut = prefix.len().min(MAX_GENERATED_NAME_LENGTH);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| SUFFIX_ALPHABET[rand::random_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect();
    format!("{}{suffix}", &prefix[..cut])
}

/// The `generateName` of a body that has no name, if any.
fn name_to_generate(obj: &Value) -> Option<String> {
    let meta = &obj["metadata"];
    if meta["name"].as_str().is_some_and(|n| !n.is_empty()) {
        return None;
    }
    meta["generateName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Server-owned metadata a create ignores.
const SERVER_FIELDS: [&str; 5] = [
    "resourceVersion",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

impl<S: Store> Req<'_, S> {
    pub(super) async fn create(&self) -> Result<Response, ApiError> {
        let opts = CreateOptions::parse(&self.params, "CreateOptions")?;
        let mut obj = decode_body(self.t.info, &self.body)?;
        self.check_type(&mut obj)?;
        self.check_namespace(&mut obj)?;
        let warnings = self.field_validation(&mut obj, &opts)?;
        let generate = name_to_generate(&obj);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut candidate = obj.clone();
            if let Some(prefix) = &generate {
                meta_mut(&mut candidate).insert("name".into(), json!(generate_name(prefix)));
            }
            match self.create_once(candidate, &opts, &warnings).await {
                Err(ApiError::AlreadyExists { .. })
                    if generate.is_some() && attempt < GENERATE_NAME_ATTEMPTS => {}
                other => return other,
            }
        }
    }

    /// One attempt: prepare, default, admit and store `obj` (its name resolved).
    async fn create_once(
        &self,
        mut obj: Value,
        opts: &CreateOptions,
        warnings: &[String],
    ) -> Result<Response, ApiError> {
        let info = self.t.info;
        let strategy = info.strategy;
        let meta = meta_mut(&mut obj);
        for f in SERVER_FIELDS {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if strategy.tracks_generation() {
            meta.insert("generation".into(), json!(1));
        }
        strategy.prepare_for_create(&mut obj);
        registry::defaults::apply(info, &mut obj);
        self.namespace_exists().await?;
        let _guard = self.admission_guard().await;
        crate::api::admission::mutate(self.state, self.user.as_ref(), info, &mut obj, None).await?;
        self.admit(&mut obj, None).await?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if opts.dry_run {
            return Ok(respond(
                StatusCode::CREATED,
                info,
                obj,
                &self.headers,
                &self.params,
                warnings,
            ));
        }
        let key = info.key(self.t.namespace.as_deref(), &name);
        let rev = match self.state.store.create(&key, encode(&obj)?).await {
            Ok(rev) => rev,
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ApiError::AlreadyExists {
                    resource: info.qualified_plural(),
                    name,
                });
            }
            Err(e) => return Err(e.into()),
        };
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        Ok(respond(
            StatusCode::CREATED,
            info,
            obj,
            &self.headers,
            &self.params,
            warnings,
        ))
    }

    /// Unknown-field handling per `fieldValidation` (Strict: 400; Warn, the default: warning;
    /// Ignore). Unknown fields are dropped from the stored object in every mode but Strict.
    pub(super) fn field_validation(
        &self,
        obj: &mut Value,
        opts: &CreateOptions,
    ) -> Result<Vec<String>, ApiError> {
        let unknown = schema::prune_unknown_fields(self.t.info, obj);
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match opts.field_validation {
            FieldValidation::Strict => Err(ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                self.t.info.kind,
                self.t.info.version,
                self.t.info.kind,
                msgs.join(", ")
            ))),
            FieldValidation::Ignore => Ok(Vec::new()),
            FieldValidation::Warn => Ok(msgs),
        }
    }

    /// Checks apiVersion/kind of a body against the endpoint.
    pub(super) fn check_type(&self, obj: &mut Value) -> Result<(), ApiError> {
        let info = self.t.info;
        let (api_version, kind) = (info.api_version(), info.kind);
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && k != kind
        {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({}) does not match the expected API version ({api_version}) or kind {k} does not match {kind}",
                obj["apiVersion"].as_str().unwrap_or_default()
            )));
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
            && av != api_version
        {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({api_version})"
            )));
        }
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        Ok(())
    }

    /// Takes the namespace from the path, refusing a body that names another one.
    pub(super) fn check_namespace(&self, obj: &mut Value) -> Result<(), ApiError> {
        let meta = meta_mut(obj);
        if !self.t.info.namespaced {
            meta.remove("namespace");
            return Ok(());
        }
        let ns = self
            .t
            .namespace
            .clone()
            .ok_or_else(|| ApiError::BadRequest("namespace is required".into()))?;
        if let Some(body_ns) = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            && body_ns != ns
        {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        meta.insert("namespace".into(), json!(ns));
        Ok(())
    }

    /// A namespaced create needs its Namespace to exist and not be terminating (the
    /// NamespaceLifecycle admission plugin).
    async fn namespace_exists(&self) -> Result<(), ApiError> {
        let Some(ns) = self
            .t
            .namespace
            .as_deref()
            .filter(|_| self.t.info.namespaced)
        else {
            return Ok(());
        };
        let ns_info = registry::NAMESPACES;
        match self.state.store.get(&ns_info.key(None, ns)).await? {
            Some(kv) => {
                let nso = load(&kv)?;
                if nso["metadata"]["deletionTimestamp"].is_string() {
                    return Err(ApiError::Invalid {
                        kind: self.t.info.kind.to_string(),
                        group: self.t.info.group.to_string(),
                        name: String::new(),
                        causes: vec![Cause::forbidden(
                            "metadata.namespace",
                            &format!(
                                "unable to create new content in namespace {ns} because it is being terminated"
                            ),
                        )],
                    });
                }
                Ok(())
            }
            None => Err(ApiError::NotFound {
                resource: ns_info.plural.into(),
                name: ns.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_generate_name_suffix_and_length() {
        let name = generate_name("web-");
        assert_eq!(name.len(), 9);
        assert!(name.starts_with("web-"));
        assert!(name[4..].bytes().all(|b| SUFFIX_ALPHABET.contains(&b)));
        let long = "x".repeat(80);
        assert_eq!(generate_name(&long).len(), 63);
    }
}
