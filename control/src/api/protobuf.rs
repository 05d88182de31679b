//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`), which client-go's
//! generated clients send (e.g. `kubectl create namespace|configmap|secret|deployment|service`).
//! The envelope is `k8s\0` + runtime.Unknown{typeMeta, raw}; `raw` is decoded with the field
//! numbers of the k8s.io/api messages (their `protobuf:` struct tags) into the JSON the rest of
//! the server works on. Responses stay JSON, which those clients also accept. A field this table
//! does not know is refused (415), never dropped silently. The messages apimachinery and core
//! types share (ObjectMeta, LabelSelector, PodSpec, ...) are here; each kind's top-level message
//! is in its own file under `registry::kinds`, returned by its strategy's `protobuf`.
//!
//! Why not a crate: the one maintained Kubernetes protobuf crate, `k8s-pb` (0.9, prost 0.14,
//! MSRV 1.88, so it would build here), says of itself "WIP. Not yet usable as is" and is not
//! usable from kube; its prost structs have no serde and no conversion to k8s-openapi's types,
//! so turning a decoded message into the JSON every other path of the server works on would
//! need a hand-written converter per message — more code than this table — and prost skips
//! unknown fields silently, where this decoder refuses them. Revisit when k8s-pb converts to
//! k8s-openapi (kube-rs/k8s-pb).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// How a field's value is encoded.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    /// `[]byte`: base64 in JSON.
    Bytes,
    Int,
    Bool,
    Msg(&'static [Field]),
    /// `map<string, T>`: repeated entries {key = 1, value = 2}.
    Map(&'static Kind),
    /// `resource.Quantity`: {string = 1}.
    Quantity,
    /// `intstr.IntOrString`: {type = 1, intVal = 2, strVal = 3}.
    IntOrString,
    /// Read and dropped: server-owned fields (timestamps, status, managedFields).
    Ignore,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    num: u32,
    name: &'static str,
    kind: Kind,
    repeated: bool,
    /// Pointer fields whose zero value is meaningful (`replicas: 0`).
    keep_zero: bool,
}

pub const fn f(num: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: false,
        keep_zero: false,
    }
}

pub const fn r(num: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: true,
        keep_zero: false,
    }
}

pub const fn z(num: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: false,
        keep_zero: true,
    }
}

pub use Kind::{Bool, Bytes, Ignore, Int, IntOrString, Msg, Quantity, Str};

/// A string map's values.
pub const STR: Kind = Str;
/// A bytes map's values.
pub const BYTES: Kind = Bytes;
const QTY: Kind = Quantity;

const OWNER_REF: &[Field] = &[
    f(1, "kind", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "controller", Bool),
    f(7, "blockOwnerDeletion", Bool),
];
pub const OBJECT_META: &[Field] = &[
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(4, "selfLink", Ignore),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", Int),
    f(8, "creationTimestamp", Ignore),
    f(9, "deletionTimestamp", Ignore),
    f(10, "deletionGracePeriodSeconds", Int),
    f(11, "labels", Kind::Map(&STR)),
    f(12, "annotations", Kind::Map(&STR)),
    r(13, "ownerReferences", Msg(OWNER_REF)),
    r(14, "finalizers", Str),
    f(17, "managedFields", Ignore),
];
const SELECTOR_REQ: &[Field] = &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)];
pub const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", Kind::Map(&STR)),
    r(2, "matchExpressions", Msg(SELECTOR_REQ)),
];
const LOCAL_REF: &[Field] = &[f(1, "name", Str)];

const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Str),
    f(2, "hostPort", Int),
    f(3, "containerPort", Int),
    f(4, "protocol", Str),
    f(5, "hostIP", Str),
];
const ENV_VAR: &[Field] = &[f(1, "name", Str), f(2, "value", Str)];
const RESOURCES: &[Field] = &[
    f(1, "limits", Kind::Map(&QTY)),
    f(2, "requests", Kind::Map(&QTY)),
];
const VOLUME_MOUNT: &[Field] = &[
    f(1, "name", Str),
    f(2, "readOnly", Bool),
    f(3, "mountPath", Str),
    f(4, "subPath", Str),
    f(5, "mountPropagation", Str),
    f(6, "subPathExpr", Str),
];
const CONTAINER: &[Field] = &[
    f(1, "name", Str),
    f(2, "image", Str),
    r(3, "command", Str),
    r(4, "args", Str),
    f(5, "workingDir", Str),
    r(6, "ports", Msg(CONTAINER_PORT)),
    r(7, "env", Msg(ENV_VAR)),
    f(8, "resources", Msg(RESOURCES)),
    r(9, "volumeMounts", Msg(VOLUME_MOUNT)),
    f(13, "terminationMessagePath", Str),
    f(14, "imagePullPolicy", Str),
    f(16, "stdin", Bool),
    f(17, "stdinOnce", Bool),
    f(18, "tty", Bool),
    f(20, "terminationMessagePolicy", Str),
    f(24, "restartPolicy", Str),
];
pub const POD_SPEC: &[Field] = &[
    r(2, "containers", Msg(CONTAINER)),
    f(3, "restartPolicy", Str),
    f(4, "terminationGracePeriodSeconds", Int),
    f(5, "activeDeadlineSeconds", Int),
    f(6, "dnsPolicy", Str),
    f(7, "nodeSelector", Kind::Map(&STR)),
    f(8, "serviceAccountName", Str),
    f(9, "serviceAccount", Str),
    f(10, "nodeName", Str),
    f(11, "hostNetwork", Bool),
    f(12, "hostPID", Bool),
    f(13, "hostIPC", Bool),
    f(14, "securityContext", Ignore),
    r(15, "imagePullSecrets", Msg(LOCAL_REF)),
    f(16, "hostname", Str),
    f(17, "subdomain", Str),
    f(19, "schedulerName", Str),
    r(20, "initContainers", Msg(CONTAINER)),
    f(21, "automountServiceAccountToken", Bool),
    f(24, "priorityClassName", Str),
    f(30, "enableServiceLinks", Bool),
];
pub const POD_TEMPLATE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
];
fn unsupported(detail: String) -> ApiError {
    ApiError::UnsupportedMediaType(format!("application/json (protobuf: {detail})"))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| ApiError::BadRequest("truncated protobuf varint".into()))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(ApiError::BadRequest("protobuf varint too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ApiError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| ApiError::BadRequest("protobuf length".into()))?;
        let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| ApiError::BadRequest("truncated protobuf field".into()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Skips a field of `wire` type.
    fn skip(&mut self, wire: u64) -> Result<(), ApiError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => {
                self.pos += 8;
                Ok(())
            }
            2 => self.bytes().map(|_| ()),
            5 => {
                self.pos += 4;
                Ok(())
            }
            other => Err(ApiError::BadRequest(format!(
                "unsupported protobuf wire type {other}"
            ))),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn scalar(kind: Kind, wire: u64, rd: &mut Reader<'_>) -> Result<Value, ApiError> {
    Ok(match (kind, wire) {
        (Str, 2) => json!(String::from_utf8_lossy(rd.bytes()?)),
        (Bytes, 2) => json!(base64::engine::general_purpose::STANDARD.encode(rd.bytes()?)),
        // Varints of negative int32/int64 are their 64-bit two's complement.
        #[expect(
            clippy::cast_possible_wrap,
            reason = "protobuf int32/int64 wire encoding"
        )]
        (Int, 0) => json!(rd.varint()? as i64),
        (Bool, 0) => json!(rd.varint()? != 0),
        (Msg(fields), 2) => decode_message(rd.bytes()?, fields)?,
        (Quantity, 2) => {
            let v = decode_message(rd.bytes()?, &[f(1, "string", Str)])?;
            v.get("string").cloned().unwrap_or_else(|| json!("0"))
        }
        (IntOrString, 2) => {
            let v = decode_message(
                rd.bytes()?,
                &[z(1, "type", Int), z(2, "intVal", Int), f(3, "strVal", Str)],
            )?;
            if v["type"].as_i64() == Some(1) {
                v.get("strVal").cloned().unwrap_or_else(|| json!(""))
            } else {
                json!(v["intVal"].as_i64().unwrap_or(0))
            }
        }
        (Kind::Map(value_kind), 2) => {
            let entry = [
                f(1, "key", Str),
                Field {
                    num: 2,
                    name: "value",
                    kind: *value_kind,
                    repeated: false,
                    keep_zero: true,
                },
            ];
            decode_message(rd.bytes()?, &entry)?
        }
        (_, w) => {
            return Err(ApiError::BadRequest(format!(
                "protobuf wire type {w} does not fit the field"
            )));
        }
    })
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn decode_message(buf: &[u8], fields: &[Field]) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut rd = Reader { buf, pos: 0 };
    while !rd.done() {
        let tag = rd.varint()?;
        let (num, wire) = (u32::try_from(tag >> 3).unwrap_or(u32::MAX), tag & 7);
        let Some(field) = fields.iter().find(|fl| fl.num == num) else {
            return Err(unsupported(format!(
                "field {num} is not supported by this server"
            )));
        };
        if matches!(field.kind, Ignore) {
            rd.skip(wire)?;
            continue;
        }
        let value = scalar(field.kind, wire, &mut rd)?;
        if let Kind::Map(_) = field.kind {
            let map = out
                .entry(field.name)
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Some(m), Some(k)) = (map.as_object_mut(), value["key"].as_str()) {
                m.insert(
                    k.to_string(),
                    value.get("value").cloned().unwrap_or_else(|| json!("")),
                );
            }
        } else if field.repeated {
            let list = out
                .entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(l) = list.as_array_mut() {
                l.push(value);
            }
        } else if field.keep_zero || !is_zero(&value) {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

const TYPE_META: &[Field] = &[f(1, "apiVersion", Str), f(2, "kind", Str)];

/// The protobuf envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\x00";

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    // The kind's own file names its top-level message (its strategy's `protobuf`).
    decode_with(body, |api_version, kind| match (api_version, kind) {
        // Bodies of subresources that are not stored kinds.
        ("authentication.k8s.io/v1", "TokenRequest") => {
            Some(crate::registry::kinds::serviceaccount::TOKEN_REQUEST)
        }
        _ => crate::registry::lookup_type(api_version, kind)
            .and_then(|info| info.strategy.protobuf()),
    })
}

/// [`decode`] with the top-level message of `(apiVersion, kind)` from `schema_of` (for
/// requests that are not stored kinds, such as access reviews).
pub fn decode_with(
    body: &[u8],
    schema_of: impl Fn(&str, &str) -> Option<&'static [Field]>,
) -> Result<Value, ApiError> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::BadRequest("protobuf body lacks the k8s envelope".into()))?;
    let unknown = decode_message(
        inner,
        &[
            f(1, "typeMeta", Msg(TYPE_META)),
            f(2, "raw", Bytes),
            f(3, "contentEncoding", Str),
            f(4, "contentType", Str),
        ],
    )?;
    let api_version = unknown["typeMeta"]["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = unknown["typeMeta"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let schema = schema_of(&api_version, &kind)
        .ok_or_else(|| unsupported(format!("{kind} in {api_version} is not supported")))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(unknown["raw"].as_str().unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("protobuf raw: {e}")))?;
    let mut obj = decode_message(&raw, schema)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(num: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn field_varint(num: u64, v: u64, out: &mut Vec<u8>) {
        varint(num << 3, out);
        varint(v, out);
    }

    #[test]
    fn api_protobuf_decodes_a_deployment() {
        // metadata{name: "d", labels{app: d}, generateName: ""}
        let mut label = Vec::new();
        field_bytes(1, b"app", &mut label);
        field_bytes(2, b"d", &mut label);
        let mut meta = Vec::new();
        field_bytes(1, b"d", &mut meta);
        field_bytes(2, b"", &mut meta);
        field_bytes(11, &label, &mut meta);
        let mut container = Vec::new();
        field_bytes(1, b"web", &mut container);
        field_bytes(2, b"nginx", &mut container);
        let mut pod_spec = Vec::new();
        field_bytes(2, &container, &mut pod_spec);
        let mut template = Vec::new();
        field_bytes(1, &meta, &mut template);
        field_bytes(2, &pod_spec, &mut template);
        let mut selector = Vec::new();
        field_bytes(1, &label, &mut selector);
        let mut spec = Vec::new();
        field_varint(1, 0, &mut spec);
        field_bytes(2, &selector, &mut spec);
        field_bytes(3, &template, &mut spec);
        let mut dep = Vec::new();
        field_bytes(1, &meta, &mut dep);
        field_bytes(2, &spec, &mut dep);
        field_bytes(3, b"", &mut dep);
        let mut type_meta = Vec::new();
        field_bytes(1, b"apps/v1", &mut type_meta);
        field_bytes(2, b"Deployment", &mut type_meta);
        let mut body = MAGIC.to_vec();
        field_bytes(1, &type_meta, &mut body);
        field_bytes(2, &dep, &mut body);

        let obj = decode(&body).expect("decodes");
        assert_eq!(obj["kind"], "Deployment");
        assert_eq!(
            obj["metadata"],
            json!({"name": "d", "labels": {"app": "d"}})
        );
        assert_eq!(obj["spec"]["replicas"], 0, "an explicit zero is kept");
        assert_eq!(obj["spec"]["selector"]["matchLabels"]["app"], "d");
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "web", "image": "nginx"})
        );

        let mut bad = MAGIC.to_vec();
        field_bytes(1, &type_meta, &mut bad);
        let mut unknown_field = Vec::new();
        field_varint(99, 1, &mut unknown_field);
        field_bytes(2, &unknown_field, &mut bad);
        assert!(matches!(
            decode(&bad),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
