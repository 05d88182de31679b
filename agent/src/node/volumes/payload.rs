//! The files of `configMap`, `secret`, `downwardAPI` and `projected` volumes (with their
//! ServiceAccount tokens), computed from the Pod and its sources without I/O, as the kubelet's volume plugins make their payloads
//! (pkg/volume/{configmap,secret,downwardapi,projected}: `MakePayload`, `CollectData`).

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod};

use super::VolumeError;
use crate::node::{env, sources::PodSources, tokens::TokenKey};

/// The mode files get when neither the item nor the volume sets one (0644, the API's
/// `defaultMode` default for configMap, secret, downwardAPI and projected volumes).
pub const DEFAULT_MODE: u32 = 0o644;

/// One file of a payload: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileData>;

/// What the downward API reads besides the Pod object.
#[derive(Debug, Clone, Copy)]
pub struct Downward {
    pub pod_ip: Option<Ipv4Addr>,
    pub node_ip: Ipv4Addr,
}

fn mode_of(m: Option<i32>) -> Option<u32> {
    m.and_then(|m| u32::try_from(m).ok()).map(|m| m & 0o7777)
}

/// A payload path must stay inside the volume: relative, no `..` element (the API's
/// `validateLocalDescendingPath`).
pub fn check_path(volume: &str, path: &str) -> Result<(), VolumeError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|p| p == "..")
        || path.split('/').next().is_some_and(|p| p.starts_with(".."));
    if bad {
        Err(VolumeError::BadPath {
            volume: volume.to_owned(),
            path: path.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// The data of a ConfigMap or Secret `name` (of kind `kind`, worded as the kubelet: "configmap",
/// "secret"), through `items` or every key, into `out`.
#[allow(clippy::too_many_arguments, reason = "the fields of one volume source")]
fn keyed(
    out: &mut Payload,
    volume: &str,
    kind: &'static str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: u32,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        return if optional {
            Ok(())
        } else {
            Err(VolumeError::Missing {
                volume: volume.to_owned(),
                kind,
                name: name.to_owned(),
            })
        };
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                check_path(volume, k)?;
                out.insert(
                    k.clone(),
                    FileData {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                check_path(volume, &item.path)?;
                match data.get(&item.key) {
                    Some(v) => {
                        out.insert(
                            item.path.clone(),
                            FileData {
                                data: v.clone(),
                                mode: mode_of(item.mode).unwrap_or(default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            volume: volume.to_owned(),
                            kind,
                            key: item.key.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward_items(
    out: &mut Payload,
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    d: Downward,
) -> Result<(), VolumeError> {
    let first = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    for item in items {
        check_path(volume, &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            env::downward_field(pod, &f.field_path, d.pod_ip, d.node_ip)
        } else if let Some(r) = &item.resource_field_ref {
            env::resource_field(pod, &first, r)
        } else {
            None
        };
        let value = value.ok_or_else(|| VolumeError::Unsupported {
            volume: volume.to_owned(),
            what: format!("downward API item {:?}", item.path),
        })?;
        out.insert(
            item.path.clone(),
            FileData {
                data: value.into_bytes(),
                mode: mode_of(item.mode).unwrap_or(default_mode),
            },
        );
    }
    Ok(())
}

/// The payload of a volume that has one (`configMap`, `secret`, `downwardAPI`, `projected`);
/// `None` for the other kinds.
pub fn payload(
    pod: &Pod,
    volume: &k8s_openapi::api::core::v1::Volume,
    sources: &PodSources,
    d: Downward,
) -> Option<Result<Payload, VolumeError>> {
    let name = volume.name.as_str();
    let mut out = Payload::new();
    let r = if let Some(cm) = &volume.config_map {
        keyed(
            &mut out,
            name,
            "configmap",
            &cm.name,
            sources.config_maps.get(&cm.name),
            cm.items.as_deref(),
            cm.optional.unwrap_or(false),
            mode_of(cm.default_mode).unwrap_or(DEFAULT_MODE),
        )
    } else if let Some(s) = &volume.secret {
        let secret = s.secret_name.clone().unwrap_or_default();
        keyed(
            &mut out,
            name,
            "secret",
            &secret,
            sources.secrets.get(&secret),
            s.items.as_deref(),
            s.optional.unwrap_or(false),
            mode_of(s.default_mode).unwrap_or(DEFAULT_MODE),
        )
    } else if let Some(da) = &volume.downward_api {
        downward_items(
            &mut out,
            name,
            pod,
            da.items.as_deref().unwrap_or_default(),
            mode_of(da.default_mode).unwrap_or(DEFAULT_MODE),
            d,
        )
    } else if let Some(p) = &volume.projected {
        let mode = mode_of(p.default_mode).unwrap_or(DEFAULT_MODE);
        p.sources.iter().flatten().try_for_each(|src| {
            if let Some(cm) = &src.config_map {
                keyed(
                    &mut out,
                    name,
                    "configmap",
                    &cm.name,
                    sources.config_maps.get(&cm.name),
                    cm.items.as_deref(),
                    cm.optional.unwrap_or(false),
                    mode,
                )
            } else if let Some(s) = &src.secret {
                keyed(
                    &mut out,
                    name,
                    "secret",
                    &s.name,
                    sources.secrets.get(&s.name),
                    s.items.as_deref(),
                    s.optional.unwrap_or(false),
                    mode,
                )
            } else if let Some(da) = &src.downward_api {
                downward_items(
                    &mut out,
                    name,
                    pod,
                    da.items.as_deref().unwrap_or_default(),
                    mode,
                    d,
                )
            } else if let Some(t) = &src.service_account_token {
                check_path(name, &t.path)?;
                let key = TokenKey::of(t.audience.as_deref(), t.expiration_seconds);
                let token = sources
                    .tokens
                    .get(&key)
                    .ok_or_else(|| VolumeError::Missing {
                        volume: name.to_owned(),
                        kind: "serviceaccount token",
                        name: key.audience.clone(),
                    })?;
                out.insert(
                    t.path.clone(),
                    FileData {
                        data: token.clone().into_bytes(),
                        mode,
                    },
                );
                Ok(())
            } else {
                // clusterTrustBundle and podCertificate are beta and alpha sources.
                Err(VolumeError::Unsupported {
                    volume: name.to_owned(),
                    what: "projected source other than configMap, secret, downwardAPI and \
                           serviceAccountToken"
                        .into(),
                })
            }
        })
    } else {
        return None;
    };
    Some(r.map(|()| out))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Volume;
    use serde_json::json;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                "labels": {"app": "web", "tier": "front"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}]},
        }))
        .expect("pod")
    }

    fn sources() -> PodSources {
        PodSources {
            config_maps: [(
                "cfg".to_owned(),
                [
                    ("a.conf".to_owned(), b"A".to_vec()),
                    ("b.conf".to_owned(), b"B".to_vec()),
                ]
                .into(),
            )]
            .into(),
            secrets: [(
                "creds".to_owned(),
                [("password".to_owned(), b"s3cr3t".to_vec())].into(),
            )]
            .into(),
            tokens: [(TokenKey::of(None, Some(3607)), "eyJ.token".to_owned())].into(),
            ..Default::default()
        }
    }

    fn vol(v: serde_json::Value) -> Volume {
        serde_json::from_value(v).expect("volume")
    }

    const D: Downward = Downward {
        pod_ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
        node_ip: Ipv4Addr::new(10, 250, 0, 11),
    };

    fn run(v: serde_json::Value) -> Result<Payload, VolumeError> {
        payload(&pod(), &vol(v), &sources(), D).expect("a payload volume")
    }

    #[test]
    fn config_map_all_keys_or_items_with_modes() {
        let all = run(json!({"name": "v", "configMap": {"name": "cfg", "defaultMode": 0o600}}))
            .expect("payload");
        assert_eq!(all.len(), 2);
        assert_eq!(
            all["a.conf"],
            FileData {
                data: b"A".to_vec(),
                mode: 0o600
            }
        );
        let items = run(json!({"name": "v", "configMap": {"name": "cfg",
            "items": [{"key": "b.conf", "path": "sub/b", "mode": 0o400}]}}))
        .expect("payload");
        assert_eq!(items.keys().collect::<Vec<_>>(), ["sub/b"]);
        assert_eq!(items["sub/b"].mode, 0o400);
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let e = run(json!({"name": "v", "configMap": {"name": "nope"}})).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "MountVolume.SetUp failed for volume \"v\" : configmap \"nope\" not found"
        );
        assert!(
            run(json!({"name": "v", "configMap": {"name": "nope", "optional": true}}))
                .expect("optional")
                .is_empty()
        );
        let e = run(json!({"name": "v", "secret": {"secretName": "creds",
            "items": [{"key": "user", "path": "u"}]}}))
        .expect_err("missing key");
        assert!(
            e.to_string()
                .contains("secret references non-existent secret key: user"),
            "{e}"
        );
    }

    #[test]
    fn paths_must_stay_inside_the_volume() {
        for bad in ["../x", "/etc/x", "a/../../x", "..data"] {
            let e = run(json!({"name": "v", "configMap": {"name": "cfg",
                "items": [{"key": "a.conf", "path": bad}]}}))
            .expect_err(bad);
            assert!(matches!(e, VolumeError::BadPath { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn downward_api_and_projected() {
        let p = run(json!({"name": "v", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "mem", "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        ]}}))
        .expect("payload");
        assert_eq!(p["labels"].data, b"app=\"web\"\ntier=\"front\"\n");
        assert_eq!(p["name"].data, b"p");
        assert_eq!(p["mem"].data, b"64");
        let p = run(json!({"name": "v", "projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "a"}]}},
            {"secret": {"name": "creds"}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}}))
        .expect("payload");
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "ns", "password"]);
        assert_eq!(
            p["password"],
            FileData {
                data: b"s3cr3t".to_vec(),
                mode: 0o440
            }
        );
        // The ServiceAccount volume admission adds.
        let p = run(
            json!({"name": "kube-api-access-x", "projected": {"defaultMode": 0o644, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "ca.crt"}]}},
            ]}}),
        )
        .expect("payload");
        assert_eq!(p["token"].data, b"eyJ.token");
        assert_eq!(p["token"].mode, 0o644);
        // A token the agent could not get leaves the volume waiting.
        let e = run(json!({"name": "v", "projected": {"sources": [
            {"serviceAccountToken": {"path": "t", "audience": "vault"}},
        ]}}))
        .expect_err("no token");
        assert!(matches!(e, VolumeError::Missing { .. }), "{e}");
        assert!(
            payload(
                &pod(),
                &vol(json!({"name": "e", "emptyDir": {}})),
                &sources(),
                D
            )
            .is_none()
        );
    }
}
