//! ServiceAccount (core/v1): pkg/registry/core/serviceaccount/strategy.go; nothing beyond the
//! generic rules, and protobuf bodies (`kubectl create serviceaccount` sends them). Its `token`
//! subresource (`api::handlers::token`) takes TokenRequests, whose protobuf message is here.

use schemars::SchemaGenerator;

use crate::api::protobuf::{Bool, Field, Ignore, Int, Msg, OBJECT_META, Str, f, r};
use crate::registry::{
    ALL_VERBS, ResourceInfo,
    strategy::{Strategy, schema_of},
};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    subresources: &["token"],
    verbs: ALL_VERBS,
    categories: &[],
    strategy: &ServiceAccounts,
};

struct ServiceAccounts;

const OBJECT_REF: &[Field] = &[
    f(1, "kind", Str),
    f(2, "namespace", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "resourceVersion", Str),
    f(7, "fieldPath", Str),
];
const LOCAL_REF: &[Field] = &[f(1, "name", Str)];
const MESSAGE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    r(2, "secrets", Msg(OBJECT_REF)),
    r(3, "imagePullSecrets", Msg(LOCAL_REF)),
    f(4, "automountServiceAccountToken", Bool),
];

const BOUND_OBJECT_REF: &[Field] = &[
    f(1, "kind", Str),
    f(2, "apiVersion", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
];
const TOKEN_REQUEST_SPEC: &[Field] = &[
    r(1, "audiences", Str),
    f(3, "boundObjectRef", Msg(BOUND_OBJECT_REF)),
    f(4, "expirationSeconds", Int),
];
/// authentication/v1 `TokenRequest` (its status is the server's to fill in).
pub const TOKEN_REQUEST: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(TOKEN_REQUEST_SPEC)),
    f(3, "status", Ignore),
];

impl Strategy for ServiceAccounts {
    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        schema_of::<k8s_openapi::api::core::v1::ServiceAccount>(generator)
    }

    fn protobuf(&self) -> Option<&'static [Field]> {
        Some(MESSAGE)
    }
}
