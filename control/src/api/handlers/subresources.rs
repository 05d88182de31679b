//! The `scale` and `binding` subresources. `scale` is the autoscaling/v1 Scale view of any kind
//! with `spec.replicas` that lists it; `binding` is served by the kind's strategy (a Pod's
//! assignment to a node). `status` and `finalize` are parts of an update (see `update`).

use axum::{
    http::{StatusCode, header},
    response::Response,
};
use serde_json::json;

use super::{Part, Req, decode_body, encode, json_response, load, meta_mut, scale_of};
use crate::{
    api::{
        error::{ApiError, Cause},
        patch,
    },
    store::{Store, StoreError},
};

/// How often a scale patch or a binding re-reads after losing a race to another writer.
const ATTEMPTS: usize = 5;

impl<S: Store> Req<'_, S> {
    pub(super) async fn get_scale(&self) -> Result<Response, ApiError> {
        let obj = load(&self.fetch().await?)?;
        Ok(json_response(StatusCode::OK, &scale_of(&obj)))
    }

    pub(super) async fn update_scale(&self) -> Result<Response, ApiError> {
        let name = self.t.name.clone().unwrap_or_default();
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let is_patch = ct.contains("patch");
        for _ in 0..ATTEMPTS {
            let kv = self.fetch().await?;
            let obj = load(&kv)?;
            let mut scale = scale_of(&obj);
            if is_patch {
                patch::apply(
                    patch::PatchType::from_content_type(&ct)?,
                    &mut scale,
                    &self.body,
                )?;
            } else {
                scale = decode_body(self.t.info, &self.body)?;
                if let Some(rv) = scale["metadata"]["resourceVersion"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    && rv != kv.mod_revision.to_string()
                {
                    return Err(self.conflict(&name));
                }
            }
            let replicas = &scale["spec"]["replicas"];
            if replicas.as_i64().is_none_or(|r| r < 0) && !replicas.is_null() {
                return Err(ApiError::Invalid {
                    kind: "Scale".into(),
                    group: "autoscaling".into(),
                    name,
                    causes: vec![Cause::invalid(
                        "spec.replicas",
                        replicas,
                        "must be greater than or equal to 0",
                    )],
                });
            }
            let mut updated = obj.clone();
            updated["spec"]["replicas"] = json!(replicas.as_i64().unwrap_or(0));
            meta_mut(&mut updated).remove("resourceVersion");
            match self
                .write_update(updated, &kv, Part::Main, Vec::new(), false)
                .await
            {
                Ok(_) => {
                    let fresh = load(&self.fetch().await?)?;
                    return Ok(json_response(StatusCode::OK, &scale_of(&fresh)));
                }
                Err(ApiError::Conflict(_)) if is_patch => continue,
                Err(e) => return Err(e),
            }
        }
        Err(self.conflict(&name))
    }

    /// `binding`: the kind's strategy assigns the object (409 when it cannot: bound already,
    /// being deleted, or the Binding's UID precondition fails).
    pub(super) async fn bind(&self) -> Result<Response, ApiError> {
        let binding = decode_body(self.t.info, &self.body)?;
        let node = binding["target"]["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Invalid {
                kind: "Binding".into(),
                group: String::new(),
                name: self.t.name.clone().unwrap_or_default(),
                causes: vec![Cause::required("target.name", "")],
            })?;
        let name = self.t.name.clone().unwrap_or_default();
        for _ in 0..ATTEMPTS {
            let kv = self.fetch().await?;
            let mut obj = load(&kv)?;
            if let Some(uid) = binding["metadata"]["uid"].as_str()
                && obj["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}"
                )));
            }
            self.t.info.strategy.bind(&mut obj, node)?;
            meta_mut(&mut obj).remove("resourceVersion");
            match self
                .state
                .store
                .update(&kv.key, encode(&obj)?, kv.mod_revision)
                .await
            {
                Ok(_) => {
                    return Ok(json_response(
                        StatusCode::CREATED,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    ));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.conflict(&name))
    }
}
