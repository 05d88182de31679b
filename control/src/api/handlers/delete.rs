//! DELETE of one object and of a collection. A delete removes the object at once unless
//! something must happen first: finalizers (the request's propagation policy adds
//! `foregroundDeletion` or `orphan`), the kind's own finalizers (a Namespace's), or a graceful
//! period the kind asks for (a bound Pod, which its node's agent stops first). Then the object
//! is only marked (deletionTimestamp) and whoever finishes it removes it
//! (k8s.io/apiserver pkg/registry/generic/registry/store.go Delete, BeforeDelete).

use axum::{http::HeaderMap, http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{Req, Target, encode, list_objects, load, meta_mut, options::DeleteOptions, respond};
use crate::{
    api::error::ApiError,
    store::{Store, StoreError},
};

/// How often a delete re-reads the object after losing a race to another writer.
const DELETE_ATTEMPTS: usize = 5;

impl<S: Store> Req<'_, S> {
    pub(super) async fn delete(&self) -> Result<Response, ApiError> {
        let opts = DeleteOptions::parse(&self.params, &self.body)?;
        let info = self.t.info;
        let strategy = info.strategy;
        let name = self.t.name.clone().unwrap_or_default();
        for _ in 0..DELETE_ATTEMPTS {
            let kv = self.fetch().await?;
            let mut obj = load(&kv)?;
            if let Some(uid) = &opts.uid
                && obj["metadata"]["uid"].as_str() != Some(uid.as_str())
            {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    obj["metadata"]["uid"].as_str().unwrap_or_default()
                )));
            }
            if let Some(rv) = &opts.resource_version
                && *rv != kv.mod_revision.to_string()
            {
                return Err(self.conflict(&name));
            }
            let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(f) = opts.propagation.finalizer()
                && !finalizers.contains(&json!(f))
            {
                finalizers.push(json!(f));
            }
            let grace = strategy.graceful_delete(&obj, opts.grace_period_seconds);
            let needs_wait =
                !finalizers.is_empty() || grace.is_some() || strategy.pending_finalizers(&obj);
            if !needs_wait {
                if opts.dry_run {
                    return Ok(self.answer(StatusCode::OK, obj));
                }
                match self
                    .state
                    .store
                    .delete(&kv.key, Some(kv.mod_revision))
                    .await
                {
                    Ok((_, rev)) => {
                        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                        return Ok(self.answer(StatusCode::OK, obj));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => return Err(self.t.not_found()),
                    Err(e) => return Err(e.into()),
                }
            }
            // Mark for deletion; finalizers (GC, namespace controller) or the agent finish it.
            let meta = meta_mut(&mut obj);
            let already = meta.get("deletionTimestamp").is_some();
            let grace = grace.unwrap_or(0);
            let shorter = meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_none_or(|g| grace < g);
            if !already || shorter {
                let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            meta.insert("finalizers".into(), Value::Array(finalizers));
            meta.remove("resourceVersion");
            strategy.mark_deleting(&mut obj);
            if opts.dry_run {
                return Ok(self.answer(StatusCode::OK, obj));
            }
            match self
                .state
                .store
                .update(&kv.key, encode(&obj)?, kv.mod_revision)
                .await
            {
                Ok(rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(self.answer(StatusCode::ACCEPTED, obj));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.conflict(&name))
    }

    fn answer(&self, code: StatusCode, obj: Value) -> Response {
        respond(code, self.t.info, obj, &self.headers, &self.params, &[])
    }

    /// DELETE of a collection: every object the list options select, each as its own delete
    /// with the request's options; the answer is the list as it was.
    pub(super) async fn delete_collection(&self) -> Result<Response, ApiError> {
        let mut params = self.params.clone();
        params.remove("limit");
        params.remove("continue");
        let list = list_objects(self.state.store.as_ref(), &self.t, &params).await?;
        for item in list["items"].as_array().into_iter().flatten() {
            let t = Target {
                info: self.t.info,
                namespace: item["metadata"]["namespace"].as_str().map(str::to_string),
                name: item["metadata"]["name"].as_str().map(str::to_string),
                sub: None,
            };
            let req = Req {
                state: self.state,
                t,
                params: self.params.clone(),
                user: self.user.clone(),
                headers: HeaderMap::new(),
                body: self.body.clone(),
            };
            match req.delete().await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.answer(StatusCode::OK, list))
    }
}
