//! Pod templates of the workload controllers (Deployment, ReplicaSet, DaemonSet): the template
//! hash that names a template in a label, and the Pod a controller creates from its template.
//!
//! The template hash follows Kubernetes' `ComputeHash`: FNV-32a over the template (Kubernetes
//! feeds it a spew dump of the Go struct; we feed the template's JSON, which is just as stable
//! for our purpose: equal templates hash equal), then the collision count as 4 little-endian
//! bytes when set, rendered as the decimal number's digits mapped through the safe-encode
//! alphabet `bcdfghjklmnpqrstvwxz2456789` (`rand.SafeEncodeString`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::objects::controller_ref_to;

/// FNV-1a, 32 bits (the hash behind Kubernetes' `ComputeHash`).
pub fn fnv32a(state: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ u32::from(*b)).wrapping_mul(16_777_619))
}

/// The FNV-32 offset basis.
pub const FNV32_OFFSET: u32 = 2_166_136_261;

/// Kubernetes' `rand.SafeEncodeString`: each byte mapped into an alphabet without vowels or
/// look-alike digits, so a hash never spells a word and is a valid label value.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The hash of `template` (see the module documentation).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut h = fnv32a(FNV32_OFFSET, &json);
    if let Some(c) = collision_count {
        h = fnv32a(h, &(c as u32).to_le_bytes());
    }
    safe_encode(&h.to_string())
}

/// Sets label `label` to `hash` in `labels`, creating the map when there is none.
pub fn put_hash(labels: &mut Option<BTreeMap<String, String>>, label: &str, hash: &str) {
    labels
        .get_or_insert_with(BTreeMap::new)
        .insert(label.into(), hash.into());
}

/// Whether `meta` carries label `label` with value `hash`: the object belongs to the template
/// of that hash.
pub fn has_hash(meta: &ObjectMeta, label: &str, hash: &str) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(label))
        .is_some_and(|v| v == hash)
}

/// A new Pod of `owner` from `template` (Kubernetes' `GetPodFromTemplate`): the template's
/// labels, annotations, finalizers and spec, named `<owner>-<random>` by the API server
/// (generateName), in the owner's namespace and controlled by it.
pub fn pod_from_template<K: Resource<DynamicType = ()>>(
    owner: &K,
    template: PodTemplateSpec,
) -> Pod {
    let meta = owner.meta();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", meta.name.as_deref().unwrap_or_default())),
            namespace: meta.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref_to(owner)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::testutil::{labels, template};
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;

    #[test]
    fn hash_is_fnv32a_safe_encoded() {
        // FNV-1a test vectors.
        assert_eq!(fnv32a(FNV32_OFFSET, b""), 0x811c9dc5);
        assert_eq!(fnv32a(FNV32_OFFSET, b"a"), 0xe40c292c);
        assert_eq!(fnv32a(FNV32_OFFSET, b"foobar"), 0xbf9cf968);
        // Digits are bytes 48..57: 48 % 27 = 21 -> '4', 57 % 27 = 3 -> 'f'.
        assert_eq!(safe_encode("0129"), "456f");
        let t = template(&[("app", "web")], "a");
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None), "stable");
        assert_ne!(h, template_hash(&t, Some(1)), "collision count changes it");
        assert_ne!(h, template_hash(&template(&[("app", "web")], "b"), None));
        assert!(
            h.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }

    #[test]
    fn hash_labels_are_put_and_matched() {
        let mut meta = ObjectMeta::default();
        assert!(!has_hash(&meta, "pod-template-hash", "abc"));
        put_hash(&mut meta.labels, "pod-template-hash", "abc");
        assert!(has_hash(&meta, "pod-template-hash", "abc"));
        assert!(!has_hash(&meta, "pod-template-hash", "abd"));
        assert!(!has_hash(&meta, "controller-revision-hash", "abc"));
    }

    #[test]
    fn pod_from_template_copies_metadata_and_spec_with_owner() {
        let owner = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("default".into()),
                uid: Some("rs-uid".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut t = template(&[("app", "web")], "img");
        let tmeta = t.metadata.as_mut().expect("metadata");
        tmeta.annotations = Some(labels(&[("a", "1")]));
        tmeta.finalizers = Some(vec!["example.com/keep".into()]);
        tmeta.name = Some("ignored".into());
        let p = pod_from_template(&owner, t.clone());
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.name, None);
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.metadata.labels, Some(labels(&[("app", "web")])));
        assert_eq!(p.metadata.annotations, Some(labels(&[("a", "1")])));
        assert_eq!(
            p.metadata.finalizers,
            Some(vec!["example.com/keep".to_string()])
        );
        let owners = p.metadata.owner_references.expect("owner");
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("ReplicaSet", "rs-uid")
        );
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(p.spec, t.spec);
        assert!(p.status.is_none());
    }
}
