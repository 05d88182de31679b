//! The registry: the one table of kinds `keelson server` serves (group, version, kind, plural,
//! scope, short names, subresources, verbs), with per-kind defaulting and validation and the
//! OpenAPI schemas taken from k8s-openapi's types.

pub mod convert;
pub mod defaults;
pub mod labels;
pub mod networkpolicy;
pub mod schema;
pub mod validation;

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

/// One served kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources: "status", "scale", "binding", "log".
    pub subresources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Categories kubectl uses for `kubectl get all`.
    pub categories: &'static [&'static str],
}

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

    /// The store group segment: the group, or `core`.
    /// The store group segment: the group, or `core`. events.k8s.io Events are stored with
    /// the core Events (see [`convert`]).
    pub fn storage_group(&self) -> &'static str {
        if self.group.is_empty() || self.group == "events.k8s.io" {
            "core"
        } else {
            self.group
        }
    }

    /// `/registry/<group>/<plural>/` — every object of the kind lives under it.
    pub fn prefix(&self) -> String {
        format!("/registry/{}/{}/", self.storage_group(), self.plural)
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
        self.group == "events.k8s.io"
    }

    /// `<Kind>List`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one row of the RESOURCES table, positional for readability"
)]
const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
    categories: &'static [&'static str],
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        subresources,
        verbs: ALL_VERBS,
        categories,
    }
}

/// Every kind the server serves.
pub const RESOURCES: &[ResourceInfo] = &[
    kind(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &["status"],
        &[],
    ),
    kind(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        &["status"],
        &[],
    ),
    kind(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        &["status", "binding", "log"],
        &["all"],
    ),
    kind(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        &["status"],
        &["all"],
    ),
    kind(
        "",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        &[],
    ),
    kind(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
        &[],
    ),
    kind("", "v1", "Secret", "secrets", "secret", true, &[], &[], &[]),
    kind(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        &[],
        &[],
    ),
    kind(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        &[],
        &[],
    ),
    kind(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        &["status", "scale"],
        &["all"],
    ),
    kind(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        &["status", "scale"],
        &["all"],
    ),
    kind(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        &["status"],
        &["all"],
    ),
    kind(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        &[],
        &[],
    ),
    kind(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &[],
        &[],
        &[],
    ),
    kind(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
        &[],
    ),
];

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
