//! PUT and PATCH: an update merges the requested object with the stored one per the part the
//! request may change (main resource, status, finalize), runs the kind's conversion, defaults
//! and validation, and writes with compare-and-swap on the read revision. A patch is applied to
//! the object as read and retried on a conflicting write, as kube-apiserver's GuaranteedUpdate
//! does (k8s.io/apiserver pkg/storage/etcd3/store.go), unless the patch itself pins a
//! resourceVersion.

use axum::{
    http::{StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};

use super::{
    Part, Req, body, decode_body, encode, load, meta_mut,
    options::{PatchOptions, UpdateOptions},
    respond,
};
use crate::{
    api::{
        error::{ApiError, Cause},
        patch,
    },
    registry::{self, strategy::StoredAs},
    store::{KeyValue, Store, StoreError},
};

/// How often a patch is re-applied to a fresher read after losing a race to another writer.
/// kube-apiserver loops until it wins; a bound keeps a livelock from holding a request forever.
const PATCH_ATTEMPTS: usize = 16;

/// Identity and system metadata an update keeps from the stored object.
const KEPT_METADATA: [&str; 6] = [
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "namespace",
];

fn body_pins_version(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|v| v["metadata"]["resourceVersion"].is_string())
}

impl<S: Store> Req<'_, S> {
    pub(super) async fn update(&self, part: Part) -> Result<Response, ApiError> {
        let opts = UpdateOptions::parse(&self.params, "UpdateOptions")?;
        let mut obj = decode_body(self.t.info, &self.body)?;
        self.check_type(&mut obj)?;
        self.check_namespace(&mut obj)?;
        let warnings = self.field_validation(&mut obj, &opts)?;
        let old_kv = self.fetch().await?;
        self.write_update(obj, &old_kv, part, warnings, opts.dry_run)
            .await
    }

    /// Merges a requested new version of an object with the stored one per `part`, runs
    /// conversion, defaulting, admission and validation, and writes it with compare-and-swap.
    pub(super) async fn write_update(
        &self,
        mut obj: Value,
        old_kv: &KeyValue,
        part: Part,
        warnings: Vec<String>,
        dry_run: bool,
    ) -> Result<Response, ApiError> {
        let info = self.t.info;
        let strategy = info.strategy;
        let old = load(old_kv)?;
        let name = self.t.name.clone().unwrap_or_default();
        if let Some(rv) = obj["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && rv != old_kv.mod_revision.to_string()
        {
            return Err(self.conflict(&name));
        }
        obj = match part {
            // PrepareForUpdate of a kind with a status subresource: the main resource cannot
            // change status.
            Part::Main => {
                if info.has_subresource("status") {
                    match old.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            if let Some(m) = obj.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                obj
            }
            Part::Status => {
                let mut merged = old.clone();
                merged["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                merged
            }
            Part::Finalize => {
                let mut merged = old.clone();
                merged["spec"]["finalizers"] = obj["spec"]
                    .get("finalizers")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                merged
            }
        };
        // Identity and system fields are the server's.
        {
            let old_meta = old["metadata"].clone();
            let meta = meta_mut(&mut obj);
            if let Some(body_name) = meta.get("name").and_then(Value::as_str)
                && body_name != name
            {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            meta.insert("name".into(), json!(name));
            for f in KEPT_METADATA {
                match old_meta.get(f) {
                    Some(v) => meta.insert(f.into(), v.clone()),
                    None => meta.remove(f),
                };
            }
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        obj["apiVersion"] = json!(info.api_version());
        obj["kind"] = json!(info.kind);
        registry::defaults::apply(info, &mut obj);
        if strategy.tracks_generation() && obj.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut obj).insert("generation".into(), json!(g));
        }
        let _guard = self.admission_guard().await;
        self.admit(&mut obj, Some(&old)).await?;
        if dry_run {
            return Ok(respond(
                StatusCode::OK,
                info,
                obj,
                &self.headers,
                &self.params,
                &warnings,
            ));
        }
        let key = self.t.key();
        // An object being deleted whose finalizers are all gone is removed now.
        let finalizers_done = obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
            && !strategy.pending_finalizers(&obj);
        let graceful = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|g| g > 0);
        if obj["metadata"]["deletionTimestamp"].is_string() && finalizers_done && !graceful {
            let (_, rev) = self
                .state
                .store
                .delete(&key, Some(old_kv.mod_revision))
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => self.conflict(&name),
                    other => other.into(),
                })?;
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
            return Ok(respond(
                StatusCode::OK,
                info,
                obj,
                &self.headers,
                &self.params,
                &warnings,
            ));
        }
        let rev = self
            .state
            .store
            .update(&key, encode(&obj)?, old_kv.mod_revision)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => self.conflict(&name),
                StoreError::NotFound(_) => self.t.not_found(),
                other => other.into(),
            })?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        Ok(respond(
            StatusCode::OK,
            info,
            obj,
            &self.headers,
            &self.params,
            &warnings,
        ))
    }

    fn patch_type(&self) -> Result<patch::PatchType, ApiError> {
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        patch::PatchType::from_content_type(ct)
    }

    pub(super) async fn patch(&self, part: Part) -> Result<Response, ApiError> {
        let ty = self.patch_type()?;
        let opts = PatchOptions::parse(&self.params)?;
        if ty == patch::PatchType::Apply {
            if opts.write.field_manager.is_none() {
                return Err(ApiError::Invalid {
                    kind: "PatchOptions".into(),
                    group: "meta.k8s.io".into(),
                    name: String::new(),
                    causes: vec![Cause::required(
                        "fieldManager",
                        "is required for apply patch",
                    )],
                });
            }
            if part == Part::Main && self.state.store.get(&self.t.key()).await?.is_none() {
                return self.apply_create().await;
            }
        }
        self.guaranteed_patch(ty, part, &opts, None).await
    }

    /// Server-side apply of an object that does not exist yet creates it from the applied
    /// configuration.
    async fn apply_create(&self) -> Result<Response, ApiError> {
        let applied = body::apply_body(&self.body)?;
        let name = self.t.name.as_deref().unwrap_or_default();
        if applied["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                applied["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let req = Req {
            state: self.state,
            t: self.t.clone(),
            params: self.params.clone(),
            user: self.user.clone(),
            headers: self.headers.clone(),
            body: axum::body::Bytes::from(applied.to_string()),
        };
        req.create().await
    }

    /// Applies the patch to the object as read and writes it, again on a fresher read when
    /// another writer won the race. With `view`, the patch applies to the object as that kind
    /// serves it and is written back in stored form.
    async fn guaranteed_patch(
        &self,
        ty: patch::PatchType,
        part: Part,
        opts: &PatchOptions,
        view: Option<&StoredAs>,
    ) -> Result<Response, ApiError> {
        let pinned_by_body = body_pins_version(&self.body);
        for _ in 0..PATCH_ATTEMPTS {
            let old_kv = self.fetch().await?;
            let stored = load(&old_kv)?;
            let mut obj = match view {
                Some(v) => (v.from_stored)(stored),
                None => stored,
            };
            let pinned = obj["metadata"]["resourceVersion"].clone();
            patch::apply(ty, &mut obj, &self.body)?;
            if let Some(v) = view {
                obj = (v.to_stored)(obj);
            }
            if obj["metadata"]["resourceVersion"] == pinned {
                meta_mut(&mut obj).remove("resourceVersion");
            }
            if view.is_none() {
                self.check_type(&mut obj)?;
            }
            let warnings = self.field_validation(&mut obj, &opts.write)?;
            match self
                .write_update(obj, &old_kv, part, warnings, opts.write.dry_run)
                .await
            {
                Err(ApiError::Conflict(msg)) if !msg.is_empty() && !pinned_by_body => continue,
                other => return other,
            }
        }
        Err(self.conflict(self.t.name.as_deref().unwrap_or_default()))
    }

    /// PATCH of a kind stored as another's objects: the patch applies to the served view of the
    /// stored object.
    pub(super) async fn patch_converted(&self, view: &StoredAs) -> Result<Response, ApiError> {
        let ty = self.patch_type()?;
        let opts = PatchOptions::parse(&self.params)?;
        self.guaranteed_patch(ty, Part::Main, &opts, Some(view))
            .await
    }
}
