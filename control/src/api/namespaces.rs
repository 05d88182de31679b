//! Finishing the deletion of Terminating namespaces, as kube-controller-manager's namespace
//! controller does: every object in the namespace is deleted (Pods gracefully, through their
//! nodes), then the `kubernetes` finalizer is removed and the Namespace goes. It runs inside the
//! server against the store, so `kubectl delete namespace` completes without another component.
//! Also the start-up pass that gives stored Namespaces their `kubernetes.io/metadata.name` label.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{
    ApiState,
    error::ApiError,
    handlers::{delete_internal, load},
};
use crate::{
    registry::{self, RESOURCES, defaults::NAMESPACE_NAME_LABEL},
    store::{Store, StoreError},
};

/// How often Terminating namespaces are looked at.
const PERIOD: Duration = Duration::from_secs(2);

/// The finalizer kube-apiserver puts in `spec.finalizers` of every Namespace.
pub const FINALIZER: &str = "kubernetes";

/// One pass: advances every Terminating namespace. Returns the namespaces removed.
pub async fn finalize_once<S: Store>(state: &Arc<ApiState<S>>) -> Result<Vec<String>, ApiError> {
    let ns_info = registry::lookup("", "v1", "namespaces").ok_or(ApiError::NoSuchResource)?;
    let listed = state.store.list(&ns_info.prefix(), None, 0).await?;
    let mut removed = Vec::new();
    for kv in &listed.items {
        let ns = load(kv)?;
        if !ns["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let name = ns["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut remaining = 0usize;
        for info in RESOURCES
            .iter()
            .filter(|r| r.namespaced && !r.stored_elsewhere())
        {
            let objects = state
                .store
                .list(&info.list_prefix(Some(&name)), None, 0)
                .await?;
            for okv in &objects.items {
                remaining += 1;
                let obj = load(okv)?;
                if obj["metadata"]["deletionTimestamp"].is_string() {
                    continue;
                }
                let oname = obj["metadata"]["name"].as_str().unwrap_or_default();
                match delete_internal(state, info, Some(&name), oname).await {
                    Ok(()) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(namespace = %name, object = %oname, error = %e, "namespace cleanup")
                    }
                }
            }
        }
        if remaining > 0 {
            continue;
        }
        // Empty: drop our finalizer; the Namespace goes when no other finalizer holds it.
        let mut done = ns.clone();
        let spec_finalizers: Vec<Value> = ns["spec"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f.as_str() != Some(FINALIZER))
            .cloned()
            .collect();
        done["spec"]["finalizers"] = json!(spec_finalizers);
        let others = !spec_finalizers.is_empty()
            || ns["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
        let result = if others {
            if let Some(meta) = done.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            let bytes = serde_json::to_vec(&done).map_err(|e| ApiError::Internal(e.to_string()))?;
            state
                .store
                .update(&kv.key, bytes, kv.mod_revision)
                .await
                .map(|_| ())
        } else {
            state
                .store
                .delete(&kv.key, Some(kv.mod_revision))
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                if !others {
                    removed.push(name);
                }
            }
            // Changed meanwhile: the next pass looks again.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}

/// Writes the `kubernetes.io/metadata.name` label into every stored Namespace that lacks it or
/// carries another value (stored before the label was set on every write). kube-apiserver
/// applies it as a default each time it reads a Namespace from etcd (SetDefaults_Namespace), so
/// its clients never see one without it; keelson serves objects as stored, so it fixes them once
/// at start. Returns the namespaces relabelled.
pub async fn label_stored_namespaces<S: Store>(
    state: &Arc<ApiState<S>>,
) -> Result<Vec<String>, ApiError> {
    let ns_info = registry::lookup("", "v1", "namespaces").ok_or(ApiError::NoSuchResource)?;
    let listed = state.store.list(&ns_info.prefix(), None, 0).await?;
    let mut relabelled = Vec::new();
    for kv in &listed.items {
        let mut ns = load(kv)?;
        let name = ns["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() || ns["metadata"]["labels"][NAMESPACE_NAME_LABEL] == json!(name) {
            continue;
        }
        let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) else {
            continue;
        };
        meta.remove("resourceVersion");
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        labels[NAMESPACE_NAME_LABEL] = json!(name);
        let bytes = serde_json::to_vec(&ns).map_err(|e| ApiError::Internal(e.to_string()))?;
        match state.store.update(&kv.key, bytes, kv.mod_revision).await {
            Ok(_) => relabelled.push(name),
            // Written meanwhile, through the API, which sets the label.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(relabelled)
}

/// Runs [`finalize_once`] forever.
pub async fn finalize_loop<S: Store>(state: Arc<ApiState<S>>) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if let Err(e) = finalize_once(&state).await {
            tracing::warn!(error = %e, "namespace finalization pass failed");
        }
    }
}
