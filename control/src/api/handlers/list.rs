//! GET of a collection: list with label and field selectors, limit/continue paging read at the
//! first page's revision (KEP-365 API chunking), and resourceVersion/resourceVersionMatch as
//! kube-apiserver resolves them; and the Scale view the `scale` subresource serves. Watches are
//! `api::watch`, which lists through [`list_objects`].

use std::time::Duration;

use axum::{http::StatusCode, response::Response};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{Params, Req, Target, load, options::ListOptions, respond};
use crate::{
    api::{
        error::{ApiError, Cause},
        selectors::label_selector_string,
    },
    store::{Store, StoreError},
};

impl<S: Store> Req<'_, S> {
    pub(super) async fn list(&self) -> Result<Response, ApiError> {
        let list = list_consistent(self.state.store.as_ref(), &self.t, &self.params).await?;
        Ok(respond(
            StatusCode::OK,
            self.t.info,
            list,
            &self.headers,
            &self.params,
            &[],
        ))
    }
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": label_selector_string(&obj["spec"]["selector"]),
        },
    })
}

/// How long a list waits for the store to reach a resourceVersion it has not seen yet before
/// answering 504 "Too large resource version" (the watch cache's `blockTimeout`).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The apiVersion field of continue tokens (apiserver's storage.EncodeContinue format).
const CONTINUE_VERSION: &str = "meta.k8s.io/v1";

/// kube-apiserver's message when an exact list revision is compacted.
const EXPIRED_LIST: &str = "The resourceVersion for the provided list is too old.";

/// The continue token: `{"v":"meta.k8s.io/v1","rv":<revision of the first page>,"start":<key>}`
/// in unpadded URL-safe base64, as kube-apiserver encodes it. `start` is the key to resume at,
/// relative to the list prefix: the last returned key followed by NUL, the smallest key after it.
fn encode_continue(rev: i64, prefix: &str, last_key: &str) -> String {
    let start = format!("{}\0", last_key.strip_prefix(prefix).unwrap_or(last_key));
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": CONTINUE_VERSION, "rv": rev, "start": start}).to_string())
}

/// Decodes a continue token of the list under `prefix` into the revision of its first page (-1:
/// the latest) and the key the next page starts after.
fn decode_continue(token: &str, prefix: &str) -> Result<(i64, String), ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("invalid continue token: {why}"));
    const INVALID: &str = "continue key is not valid";
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| bad(&format!("{INVALID}: {e}")))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(&format!("{INVALID}: {e}")))?;
    if v["v"].as_str() != Some(CONTINUE_VERSION) {
        return Err(bad(&format!(
            "{INVALID}: server does not recognize this encoded version {}",
            v["v"].as_str().unwrap_or_default()
        )));
    }
    let rev = v["rv"].as_i64().unwrap_or(0);
    if rev == 0 {
        return Err(bad(&format!(
            "{INVALID}: incorrect encoded start resourceVersion (version {CONTINUE_VERSION})"
        )));
    }
    let start = v["start"].as_str().unwrap_or_default();
    if start.is_empty() {
        return Err(bad(&format!(
            "{INVALID}: encoded start key empty (version {CONTINUE_VERSION})"
        )));
    }
    // The key must not climb out of the prefix (the apiserver requires path.Clean(key) == key),
    // and this server's tokens always resume right after a key (the trailing NUL).
    let rel = start.strip_prefix('/').unwrap_or(start);
    let clean = !rel.is_empty()
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    match rel.strip_suffix('\0') {
        Some(after) if clean && !after.is_empty() => Ok((rev, format!("{prefix}{after}"))),
        _ => Err(bad(&format!("{INVALID}: {start}"))),
    }
}

/// Which revision a list reads, from its query (the apiserver's ListOptions rules).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadAt {
    /// The current revision (resourceVersion unset or "0").
    Latest,
    /// At least this revision: the current one once the store has reached it.
    NotOlderThan(i64),
    /// Exactly this revision.
    Exact(i64),
}

/// The `ListOptions.meta.k8s.io "" is invalid` error of malformed list options.
fn invalid_list_options(causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        kind: "ListOptions".into(),
        group: "meta.k8s.io".into(),
        name: String::new(),
        causes,
    }
}

/// Validates resourceVersion / resourceVersionMatch / continue as kube-apiserver does
/// (apimachinery ValidateListOptions, storage ValidateListOptions) and resolves what to read.
/// See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions.
fn read_at(opts: &ListOptions) -> Result<ReadAt, ApiError> {
    let (limit, continuing) = (opts.limit, opts.continue_token.is_some());
    let rv = opts.resource_version.as_str();
    let matching = opts.resource_version_match.as_str();
    let field = "resourceVersionMatch";
    let mut causes = Vec::new();
    if !matching.is_empty() {
        if rv.is_empty() {
            causes.push(Cause::forbidden(
                field,
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if continuing {
            causes.push(Cause::forbidden(
                field,
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if matching != "Exact" && matching != "NotOlderThan" {
            causes.push(Cause::not_supported(
                field,
                &json!(matching),
                &["Exact", "NotOlderThan", ""],
            ));
        }
        if matching == "Exact" && rv == "0" {
            causes.push(Cause::forbidden(
                field,
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid_list_options(causes));
    }
    if continuing {
        if !rv.is_empty() && rv != "0" {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        // The token's revision decides.
        return Ok(ReadAt::Latest);
    }
    if rv.is_empty() {
        return Ok(ReadAt::Latest);
    }
    let parsed = rv.parse::<u64>().ok().and_then(|r| i64::try_from(r).ok());
    let Some(rev) = parsed else {
        return Err(ApiError::BadRequest(format!(
            "invalid resource version: resourceVersion: Invalid value: \"{rv}\": must be a non-negative integer"
        )));
    };
    Ok(match matching {
        "Exact" => ReadAt::Exact(rev),
        // Unset match with a limit reads exactly that revision (the legacy paging rule).
        "" if limit > 0 && rev > 0 => ReadAt::Exact(rev),
        _ if rev == 0 => ReadAt::Latest,
        _ => ReadAt::NotOlderThan(rev),
    })
}

/// Waits up to [`FRESHNESS_WAIT`] for the store to reach `rev`; TooLarge when it does not.
async fn wait_for_revision<S: Store>(store: &S, rev: i64) -> Result<(), ApiError> {
    let current = store.current_revision().await?;
    if current >= rev {
        return Ok(());
    }
    // Any write anywhere moves the revision: watch every key from the current revision.
    let mut changes = store.watch("", current).await?;
    let reached = tokio::time::timeout(FRESHNESS_WAIT, async {
        while let Some(change) = changes.next().await {
            if change?.revision() >= rev {
                return Ok(true);
            }
        }
        Ok::<_, StoreError>(false)
    })
    .await;
    match reached {
        Ok(Ok(true)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(false)) | Err(_) => Err(ApiError::TooLargeResourceVersion {
            requested: rev,
            current: store.current_revision().await?,
        }),
    }
}

/// Lists objects of `t` (one namespace or all) with selectors and paging applied, as a `<Kind>List`.
pub async fn list_objects<S: Store>(
    store: &S,
    t: &Target,
    params: &Params,
) -> Result<Value, ApiError> {
    list_consistent(store, t, params).await
}

/// Reads the list at the revision its query asks for. Every page of a paginated list is read at
/// the revision of the first page, which the continue token carries, so objects created,
/// changed or deleted between pages do not show up (KEP-365 API chunking).
async fn list_consistent<S: Store>(
    store: &S,
    t: &Target,
    params: &Params,
) -> Result<Value, ApiError> {
    let opts = ListOptions::parse(params)?;
    let limit = opts.limit;
    let prefix = t.info.list_prefix(t.namespace.as_deref());
    let token = opts.continue_token.as_deref();
    let at = read_at(&opts)?;
    let listed = match token {
        Some(token) => {
            let (rev, start) = decode_continue(token, &prefix)?;
            let listed = if rev < 0 {
                store.list(&prefix, Some(&start), limit).await
            } else {
                store.list_at(&prefix, Some(&start), limit, rev).await
            };
            match listed {
                Err(StoreError::Compacted { .. }) => {
                    let resume = json!({"v": CONTINUE_VERSION, "rv": -1, "start": format!(
                        "{}\0",
                        start.strip_prefix(&prefix).unwrap_or(&start)
                    )});
                    return Err(ApiError::ContinueExpired {
                        resume: base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(resume.to_string()),
                    });
                }
                Err(StoreError::FutureRevision { requested, current }) => {
                    return Err(ApiError::TooLargeResourceVersion { requested, current });
                }
                other => other?,
            }
        }
        None => match at {
            ReadAt::Latest => store.list(&prefix, None, limit).await?,
            ReadAt::NotOlderThan(rev) => {
                wait_for_revision(store, rev).await?;
                store.list(&prefix, None, limit).await?
            }
            ReadAt::Exact(rev) => {
                wait_for_revision(store, rev).await?;
                match store.list_at(&prefix, None, limit, rev).await {
                    Err(StoreError::Compacted { .. }) => {
                        return Err(ApiError::Gone(EXPIRED_LIST.into()));
                    }
                    other => other?,
                }
            }
        },
    };
    let mut items = Vec::new();
    for kv in &listed.items {
        let obj = load(kv)?;
        if opts.label_selector.matches(&obj["metadata"]["labels"])
            && opts.field_selector.matches(&obj)
        {
            items.push(obj);
        }
    }
    let mut meta = json!({"resourceVersion": listed.revision.to_string()});
    if listed.more
        && let Some(last) = listed.items.last()
    {
        meta["continue"] = json!(encode_continue(listed.revision, &prefix, &last.key));
    }
    Ok(json!({
        "kind": t.info.list_kind(),
        "apiVersion": t.info.api_version(),
        "metadata": meta,
        "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_continue_token_roundtrip() {
        let prefix = "/registry/core/pods/default/";
        let tok = encode_continue(42, prefix, "/registry/core/pods/default/p");
        assert_eq!(
            decode_continue(&tok, prefix).expect("decodes"),
            (42, "/registry/core/pods/default/p".to_string())
        );
        // The apiserver's encoding of the same position.
        let raw = r#"{"v":"meta.k8s.io/v1","rv":42,"start":"p\u0000"}"#;
        let theirs = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            decode_continue(&theirs, prefix).expect("decodes").1,
            format!("{prefix}p")
        );
        assert!(decode_continue("!!", prefix).is_err());
        for bad in [
            r#"{"v":"meta.k8s.io/v1","rv":0,"start":"p\u0000"}"#,
            r#"{"v":"meta.k8s.io/v1","rv":4,"start":""}"#,
            r#"{"v":"meta.k8s.io/v1","rv":4,"start":"../kube-system/p\u0000"}"#,
            r#"{"v":"meta.k8s.io/v2","rv":4,"start":"p\u0000"}"#,
        ] {
            let tok = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bad);
            assert!(
                matches!(decode_continue(&tok, prefix), Err(ApiError::BadRequest(_))),
                "{bad} must be refused"
            );
        }
    }
}
