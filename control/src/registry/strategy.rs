//! The strategy of a kind: everything about reading and writing its objects that differs from
//! one kind to another, behind one trait, as kube-apiserver's per-kind
//! `pkg/registry/<group>/<kind>/strategy.go` (RESTCreateStrategy, RESTUpdateStrategy,
//! RESTGracefulDeleteStrategy, TableConvertor) plus the kind's REST storage extras (Service IP
//! allocation, `pods/binding`). The generic handlers in `api::handlers` call these hooks and
//! know no kind by name; every method has a default that fits a plain kind (a ConfigMap-like
//! object with no status and no admission), so a kind's file states only what is particular to
//! it.

use std::net::Ipv4Addr;

use futures::future::BoxFuture;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use super::printers::{Column, age, s};
use crate::api::{ApiConfig, alloc::InUse, error::ApiError, error::Cause};

/// The rule a kind's `metadata.name` follows (pkg/api/validation NameIsDNSSubdomain and
/// friends, chosen per kind by each ValidateXxx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// An RFC 1123 subdomain (most kinds).
    Subdomain,
    /// An RFC 1123 label (Namespaces).
    Label,
    /// An RFC 1035 label (Services: the name is a DNS label under the namespace).
    Dns1035,
    /// Any path segment: no `/` or `%`, not `.` or `..` (ValidatePathSegmentName; Nodes,
    /// Events and Leases are named after other objects).
    PathSegment,
}

/// What admission may consult besides the object: the server's configuration and what other
/// stored objects hold. Implemented by the handlers over the store, so a strategy stays free of
/// the store's type.
pub trait AdmissionContext: Send + Sync {
    fn config(&self) -> &ApiConfig;

    /// Who writes (`None`: the server itself).
    fn user(&self) -> Option<&crate::api::UserInfo>;

    /// The RBAC policy requests are decided on (for escalation checks).
    fn policy(
        &self,
    ) -> BoxFuture<'_, Result<std::sync::Arc<crate::api::authz::rbac::Policy>, ApiError>>;

    /// What the Services stored under `prefix`, other than `skip` (namespace, name), hold: their
    /// ClusterIPs and node ports.
    fn allocations<'a>(
        &'a self,
        prefix: &'a str,
        skip: (&'a str, &'a str),
    ) -> BoxFuture<'a, Result<Box<dyn InUse + Send + 'a>, ApiError>>;
}

/// An [`InUse`] behind a trait object, for [`crate::api::alloc::admit_service`]'s `&impl InUse`.
#[derive(Clone, Copy)]
pub struct DynInUse<'a>(pub &'a (dyn InUse + Send + 'a));

impl std::fmt::Debug for DynInUse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynInUse").finish_non_exhaustive()
    }
}

/// Every method is forwarded, the provided ones too: the allocation index overrides the
/// scans and `hold` (its reservation), which the defaults would silently skip.
impl InUse for DynInUse<'_> {
    fn ip_in_use(&self, ip: &Ipv4Addr) -> bool {
        self.0.ip_in_use(ip)
    }

    fn node_port_in_use(&self, port: u16, proto: &str) -> bool {
        self.0.node_port_in_use(port, proto)
    }

    fn free_ip(&self, cfg: &crate::api::ApiConfig) -> Option<Ipv4Addr> {
        self.0.free_ip(cfg)
    }

    fn free_node_port(
        &self,
        cfg: &crate::api::ApiConfig,
        proto: &str,
        also_free: &dyn Fn(u16) -> bool,
    ) -> Option<u16> {
        self.0.free_node_port(cfg, proto, also_free)
    }

    fn hold(&self, svc: &Value) {
        self.0.hold(svc);
    }
}

/// How a kind served under one group is stored as another kind's objects (events.k8s.io/v1
/// Events are core/v1 Events in the store, as in kube-apiserver).
#[derive(Debug, Clone, Copy)]
pub struct StoredAs {
    /// The (group, version, plural) of the stored kind.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    /// A served object (or a request body) as the stored kind.
    pub to_stored: fn(Value) -> Value,
    /// A stored object as the served kind shows it.
    pub from_stored: fn(Value) -> Value,
}

/// Registers `T`'s OpenAPI schema with `generator` and returns its component name.
pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

/// Sets `obj.status` to `status`, dropping whatever the request carried: a new object's status
/// is the server's (each strategy's PrepareForCreate: `pod.Status = api.PodStatus{...}`).
pub fn reset_status(obj: &mut Value, status: Value) {
    if let Some(root) = obj.as_object_mut() {
        root.insert("status".into(), status);
    }
}

/// What varies by kind. See the module doc; `obj` is always the JSON form of one object.
pub trait Strategy: Send + Sync + 'static {
    /// Registers the kind's OpenAPI schema (from its k8s-openapi type) and returns its name,
    /// e.g. `io.k8s.api.core.v1.ConfigMap`.
    fn schema(&self, generator: &mut SchemaGenerator) -> String;

    /// The rule `metadata.name` follows.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether `metadata.generation` is kept: 1 on create, +1 on every change of `spec`.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// The conversion every write of the kind goes through before defaulting, as
    /// kube-apiserver's v1-to-internal conversion (e.g. a Secret's `stringData` folded into
    /// `data`). Runs on create, update and patch results.
    fn normalize(&self, _root: &mut Map<String, Value>) {}

    /// PrepareForCreate: clear what a client may not set on create (status, for most kinds).
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// The defaults kube-apiserver fills in (pkg/apis/<group>/v1/defaults.go), on every write.
    fn defaults(&self, _root: &mut Map<String, Value>) {}

    /// Validate / ValidateUpdate beyond the generic metadata checks; `old` is the stored object
    /// on update.
    fn validate(&self, _obj: &Value, _old: Option<&Value>, _causes: &mut Vec<Cause>) {}

    /// Whether creates and updates of this kind are admitted one at a time (an allocation must
    /// see every earlier one).
    fn serial_admission(&self) -> bool {
        false
    }

    /// Admission that needs more than the object (allocations), after validation passed.
    /// Returns the causes of a refusal.
    fn admit<'a>(
        &'a self,
        _ctx: &'a dyn AdmissionContext,
        _obj: &'a mut Value,
        _old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<Vec<Cause>, ApiError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// CheckGracefulDelete: the grace period (seconds) a delete of `obj` waits for the object's
    /// owner to finish with it, or None to delete now. `requested` is the request's
    /// `gracePeriodSeconds`.
    fn graceful_delete(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether `obj` still has kind-specific finalizers to run (a Namespace's
    /// `spec.finalizers`): a delete then only marks it, and an update that clears the last of
    /// them with the object marked removes it.
    fn pending_finalizers(&self, _obj: &Value) -> bool {
        false
    }

    /// What a delete that only marks `obj` changes besides the deletion timestamp (a
    /// Namespace's phase becomes Terminating).
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Subresources served without being listed in discovery (`namespaces/finalize`).
    fn hidden_subresource(&self, _sub: &str) -> bool {
        false
    }

    /// The `binding` subresource: assign `obj` to `node` (pkg/registry/core/pod/storage
    /// BindingREST). Kinds without it never get here (the table gates subresources).
    fn bind(&self, _obj: &mut Value, _node: &str) -> Result<(), ApiError> {
        Err(ApiError::MethodNotAllowed)
    }

    /// Set for a kind stored as another kind's objects.
    fn stored_as(&self) -> Option<&'static StoredAs> {
        None
    }

    /// The top-level message of the kind in Kubernetes protobuf (field numbers of its
    /// k8s.io/api type), when protobuf request bodies of the kind are accepted.
    fn protobuf(&self) -> Option<&'static [crate::api::protobuf::Field]> {
        None
    }

    /// The Table columns kubectl shows (pkg/printers/internalversion/printers.go); priority 1
    /// columns show with `-o wide`.
    fn columns(&self) -> Vec<Column> {
        vec![("Name", "string", 0), ("Age", "string", 0)]
    }

    /// One Table row, one cell per column of [`Strategy::columns`].
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            Value::String(s(&obj["metadata"]["name"])),
            Value::String(age(obj)),
        ]
    }
}
