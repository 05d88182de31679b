//! The registry: the one table of kinds `keelson server` serves ([`kinds`]), each kind's
//! identity (group, version, kind, plural, scope, short names, subresources, verbs) and its
//! [`Strategy`] in its own file, as kube-apiserver's `pkg/registry/<group>/<kind>/`; and the
//! machinery kinds share: defaulting, validation, OpenAPI schemas from k8s-openapi's types,
//! Table printing helpers.

use std::fmt;

pub mod defaults;
pub mod kinds;
pub mod labels;
pub mod printers;
pub mod schema;
pub mod strategy;
pub mod validation;

pub use kinds::RESOURCES;

/// The Namespace kind, which namespaced objects live in (NamespaceLifecycle admission, the
/// namespace finalizer).
pub const NAMESPACES: &ResourceInfo = &kinds::namespace::INFO;
pub use strategy::Strategy;

/// Verbs every served kind supports.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One served kind: its identity and the strategy of everything that varies by kind.
#[derive(Clone, Copy)]
pub struct ResourceInfo {
    /// API group; "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources: "status", "scale", "binding", "log", and Pods' streaming "exec", "attach",
    /// "portforward" (served by `api::stream`).
    pub subresources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Categories kubectl uses for `kubectl get all`.
    pub categories: &'static [&'static str],
    pub strategy: &'static dyn Strategy,
}

impl fmt::Debug for ResourceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceInfo")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("plural", &self.plural)
            .finish_non_exhaustive()
    }
}

/// A kind is identified by its group, version and plural.
impl PartialEq for ResourceInfo {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.plural) == (other.group, other.version, other.plural)
    }
}

impl Eq for ResourceInfo {}

impl ResourceInfo {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name used in error messages: `deployments.apps`, `pods`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store group segment: the group, or `core`; for a kind stored as another kind's
    /// objects ([`strategy::StoredAs`]), that kind's.
    pub fn storage_group(&self) -> &'static str {
        let group = self.strategy.stored_as().map_or(self.group, |s| s.group);
        if group.is_empty() { "core" } else { group }
    }

    /// `/registry/<group>/<plural>/` — every object of the kind lives under it.
    pub fn prefix(&self) -> String {
        let plural = self.strategy.stored_as().map_or(self.plural, |s| s.plural);
        format!("/registry/{}/{plural}/", self.storage_group())
    }

    /// The prefix of one namespace's objects (or of all objects when `namespace` is None).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// Whether this kind is another version of a kind stored under the same keys (its
    /// objects are listed once, through the stored version).
    pub fn stored_elsewhere(&self) -> bool {
        self.strategy.stored_as().is_some()
    }

    /// `<Kind>List`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `sub` is served: listed in discovery, or hidden (`namespaces/finalize`).
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// Whether the subresource `sub` is served, listed or not.
    pub fn serves_subresource(&self, sub: &str) -> bool {
        self.has_subresource(sub) || self.strategy.hidden_subresource(sub)
    }
}

/// The kind served at `group/version/plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind with this group and Kind name.
pub fn lookup_kind(group: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The kind an object's `apiVersion` and `kind` name (`apps/v1`, `Deployment`).
pub fn lookup_type(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The (group, version) pairs served, core first, in a stable order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The kinds of one group/version.
pub fn resources_of(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    let (group, version) = (group.to_string(), version.to_string());
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keys_follow_the_layout() {
        let deploy = lookup("apps", "v1", "deployments").expect("deployments served");
        assert_eq!(
            deploy.key(Some("default"), "web"),
            "/registry/apps/deployments/default/web"
        );
        assert_eq!(
            deploy.list_prefix(Some("default")),
            "/registry/apps/deployments/default/"
        );
        assert_eq!(deploy.list_prefix(None), "/registry/apps/deployments/");
        let node = lookup("", "v1", "nodes").expect("nodes served");
        assert_eq!(node.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        assert_eq!(node.qualified_plural(), "nodes");
        assert_eq!(deploy.qualified_plural(), "deployments.apps");
    }

    #[test]
    fn registry_group_versions_are_unique() {
        let gvs = group_versions();
        assert_eq!(gvs[0], ("", "v1"));
        assert!(gvs.contains(&("apps", "v1")));
        let mut dedup = gvs.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), gvs.len());
    }
}
