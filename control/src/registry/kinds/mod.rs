//! The table of served kinds: one row per kind, naming the file that holds it. Each file
//! declares its kind's identity (`INFO`: group, version, kind, plural, scope, short names,
//! subresources) and its [`Strategy`](super::Strategy) (what kube-apiserver's
//! `pkg/registry/<group>/<kind>/strategy.go` holds). Adding a kind is one new file here plus its
//! row below; docs/adding-a-kind.md walks through it.

/// Declares each kind's module and lists its `INFO` in [`RESOURCES`], in the order given
/// (discovery and `kubectl api-resources` show them in this order).
macro_rules! served_kinds {
    ($($(#[$doc:meta])* $kind:ident,)*) => {
        $($(#[$doc])* pub mod $kind;)*

        /// Every kind the server serves.
        pub const RESOURCES: &[super::ResourceInfo] = &[$($kind::INFO),*];
    };
}

served_kinds! {
    /// core/v1 Namespace
    namespace,
    /// core/v1 Node
    node,
    /// core/v1 Pod
    pod,
    /// core/v1 Service
    service,
    /// core/v1 Event
    event,
    /// core/v1 ConfigMap
    configmap,
    /// core/v1 Secret
    secret,
    /// core/v1 ServiceAccount
    serviceaccount,
    /// discovery.k8s.io/v1 EndpointSlice
    endpointslice,
    /// apps/v1 Deployment
    deployment,
    /// apps/v1 ReplicaSet
    replicaset,
    /// apps/v1 DaemonSet
    daemonset,
    /// networking.k8s.io/v1 NetworkPolicy
    networkpolicy,
    /// events.k8s.io/v1 Event (stored as core/v1 Events)
    events_event,
    /// coordination.k8s.io/v1 Lease
    lease,
    /// rbac.authorization.k8s.io/v1 Role
    role,
    /// rbac.authorization.k8s.io/v1 ClusterRole
    clusterrole,
    /// rbac.authorization.k8s.io/v1 RoleBinding
    rolebinding,
    /// rbac.authorization.k8s.io/v1 ClusterRoleBinding
    clusterrolebinding,
}
