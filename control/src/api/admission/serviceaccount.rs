//! The ServiceAccount admission plugin (plugin/pkg/admission/serviceaccount/admission.go): a
//! Pod created without a ServiceAccount runs as its namespace's `default`; the ServiceAccount
//! must exist (the `default` one is waited for a moment, since its controller may not have
//! made it yet in a new namespace); unless the Pod or its ServiceAccount opts out
//! (`automountServiceAccountToken: false`), every container mounts a projected
//! `kube-api-access-<suffix>` volume at `/var/run/secrets/kubernetes.io/serviceaccount`
//! holding a bound token, the cluster CA (`kube-root-ca.crt`) and the namespace (KEP-1205).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    api::{
        ApiState,
        error::ApiError,
        handlers::{generate_name, load},
    },
    registry::{self, ResourceInfo},
    store::Store,
};

/// The ServiceAccount a Pod without one runs as.
pub const DEFAULT_ACCOUNT: &str = "default";
/// Where containers find their credentials (`DefaultAPITokenMountPath`).
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The projected volume's name prefix (`ServiceAccountVolumeName`).
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The token's requested lifetime: an hour and seven seconds, kube-apiserver's marker of a
/// token the kubelet refreshes (`serviceaccount.WarnOnlyBoundTokenExpirationSeconds`).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// How often, and how far apart, the `default` ServiceAccount is looked for before a Pod is
/// refused (the plugin's live lookup: 10 attempts, 100–200 ms apart).
const DEFAULT_ATTEMPTS: usize = 10;

/// Pods only.
pub fn handles(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "pods"
}

/// The projected volume source every container's credentials come from (`TokenVolumeSource`).
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    })
}

/// Admits a Pod being created: names its ServiceAccount, checks it exists, mounts its token.
pub async fn admit_create<S: Store>(state: &ApiState<S>, pod: &mut Value) -> Result<(), ApiError> {
    // Mirror Pods (a kubelet's static Pods) may not use ServiceAccounts at all.
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Ok(());
    }
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let spec = match pod.get_mut("spec") {
        Some(s) if s.is_object() => s,
        _ => return Ok(()),
    };
    let account = match spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        Some(a) => a.to_owned(),
        None => {
            spec["serviceAccountName"] = json!(DEFAULT_ACCOUNT);
            DEFAULT_ACCOUNT.to_owned()
        }
    };
    let sa = lookup(state, &namespace, &account)
        .await?
        .ok_or_else(|| ApiError::Forbidden {
            group: String::new(),
            kind: "pods".into(),
            name: name.clone(),
            message: format!(
                "pods \"{name}\" is forbidden: error looking up service account \
                 {namespace}/{account}: serviceaccount \"{account}\" not found"
            ),
        })?;
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        mount_token(spec);
    }
    Ok(())
}

/// Reads the ServiceAccount; `default` is looked for again for a moment when missing.
async fn lookup<S: Store>(
    state: &ApiState<S>,
    namespace: &str,
    account: &str,
) -> Result<Option<Value>, ApiError> {
    let info = registry::lookup("", "v1", "serviceaccounts").ok_or(ApiError::NoSuchResource)?;
    let key = info.key(Some(namespace), account);
    let attempts = if account == DEFAULT_ACCOUNT {
        DEFAULT_ATTEMPTS
    } else {
        1
    };
    for i in 0..attempts {
        if i > 0 {
            let jitter: u64 = rand::random_range(0..100);
            tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
        }
        if let Some(kv) = state.store.get(&key).await? {
            return Ok(Some(load(&kv)?));
        }
    }
    Ok(None)
}

/// Adds the token volume (unless one is there) and its mount to every container without
/// something at [`MOUNT_PATH`] already.
fn mount_token(spec: &mut Value) {
    let existing = spec["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(VOLUME_PREFIX))
            .map(str::to_owned)
    });
    let volume = existing
        .clone()
        .unwrap_or_else(|| generate_name(VOLUME_PREFIX));
    let mut needed = false;
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let mounts = &mut c["volumeMounts"];
            if !mounts.is_array() {
                *mounts = json!([]);
            }
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if mounts.iter().any(|m| m["mountPath"] == MOUNT_PATH) {
                continue;
            }
            mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
            needed = true;
        }
    }
    if needed && existing.is_none() {
        if !spec["volumes"].is_array() {
            spec["volumes"] = json!([]);
        }
        if let Some(vs) = spec["volumes"].as_array_mut() {
            vs.push(json!({"name": volume, "projected": token_volume_source()}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_one_token_volume() {
        let mut spec = json!({
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]},
            ],
            "volumes": [{"name": "own", "emptyDir": {}}],
        });
        mount_token(&mut spec);
        let volumes = spec["volumes"].as_array().expect("test value");
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().expect("test value");
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(
            volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        assert_eq!(spec["initContainers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["readOnly"], true);
        // A container that mounts its own credentials keeps them.
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .expect("test value")
                .len(),
            1
        );
        // Admitting again adds nothing.
        let before = spec.clone();
        mount_token(&mut spec);
        assert_eq!(spec, before);
    }

    #[test]
    fn no_volume_when_no_container_needs_it() {
        let mut spec = json!({
            "containers": [{"name": "a", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}],
            "volumes": [{"name": "own", "emptyDir": {}}],
        });
        mount_token(&mut spec);
        assert_eq!(spec["volumes"].as_array().expect("test value").len(), 1);
    }
}
