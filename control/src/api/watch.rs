//! `?watch=true`: a chunked stream of `{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": ...}`
//! lines from the store's watch, filtered by label and field selectors. An object that stops
//! matching a selector is reported DELETED, one that starts matching ADDED, as kube-apiserver's
//! watch cache does. A compacted start revision is 410 Gone (reason Expired).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{
    ApiState,
    error::ApiError,
    handlers::{Params, Target, list_objects, load},
    selectors::{FieldSelector, LabelSelector},
    table,
};
use crate::{
    registry::ResourceInfo,
    store::{Store, WatchEvent},
};

/// How often an idle watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// Watches end after this long unless `timeoutSeconds` says otherwise (kube-apiserver: 30-60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&obj["metadata"]["labels"]) && self.fields.matches(obj)
    }
}

/// Serialises one watch event line.
fn line(ty: &str, obj: Value, as_table: Option<(&ResourceInfo, &HeaderMap, &str)>) -> Bytes {
    let obj = match as_table {
        Some((info, headers, include)) if ty != "BOOKMARK" => {
            table::to_table(info, &obj, include, headers)
        }
        _ => obj,
    };
    let mut s = json!({"type": ty, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(info: &ResourceInfo, rev: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta})
}

/// Turns a store event into the watch event a client with `filter` sees, if any.
fn translate(ev: &WatchEvent, filter: &Filter) -> Result<Option<(&'static str, Value)>, ApiError> {
    Ok(match ev {
        WatchEvent::Put { kv, prev } => {
            let obj = load(kv)?;
            let now = filter.matches(&obj);
            let before = match prev {
                Some(p) => Some(filter.matches(&load(p)?)),
                None => None,
            };
            match (before, now) {
                (Some(true), true) => Some(("MODIFIED", obj)),
                (Some(true), false) => Some(("DELETED", obj)),
                (_, true) => Some(("ADDED", obj)),
                (_, false) => None,
            }
        }
        WatchEvent::Delete { prev, revision } => {
            let mut obj = load(prev)?;
            if !filter.matches(&obj) {
                return Ok(None);
            }
            obj["metadata"]["resourceVersion"] = json!(revision.to_string());
            Some(("DELETED", obj))
        }
    })
}

/// Serves a watch request.
pub async fn serve<S: Store>(
    state: Arc<ApiState<S>>,
    t: &Target,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    serve_converted(state, t, params, headers, None).await
}

/// Serves a watch request whose objects are shown in another version of the stored kind
/// (`convert` maps each stored object to it).
pub async fn serve_converted<S: Store>(
    state: Arc<ApiState<S>>,
    t: &Target,
    params: &Params,
    headers: &HeaderMap,
    convert: Option<fn(Value) -> Value>,
) -> Result<Response, ApiError> {
    let filter = Filter {
        labels: LabelSelector::parse(
            params
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )?,
        fields: FieldSelector::parse(
            params
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )?,
    };
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let send_initial = params
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let rv = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let start_rv = rv.parse::<i64>().ok().filter(|r| *r > 0);

    // "" and "0" mean: start from the current state, sent as ADDED events.
    let mut initial = Vec::new();
    let start = match start_rv {
        Some(r) if !send_initial => r,
        _ => {
            let mut list_params = params.clone();
            for p in [
                "limit",
                "continue",
                "resourceVersion",
                "resourceVersionMatch",
                "watch",
            ] {
                list_params.remove(p);
            }
            let list = list_objects(state.store.as_ref(), t, &list_params).await?;
            initial = list["items"].as_array().cloned().unwrap_or_default();
            list["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        }
    };
    let mut stream = state
        .store
        .watch(&t.info.list_prefix(t.namespace.as_deref()), start)
        .await?;

    let info = t.info;
    let headers = headers.clone();
    let include = params
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    let wants_table = table::wants_table(&headers);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let as_table = wants_table.then_some((info, &headers, include.as_str()));
        for obj in initial {
            if tx
                .send(line(
                    "ADDED",
                    match convert {
                        Some(c) => c(obj),
                        None => obj,
                    },
                    as_table,
                ))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut last = start;
        if send_initial
            && bookmarks
            && tx
                .send(line("BOOKMARK", bookmark(info, last, true), None))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                // The client went away: stop watching the store now, not at the next event.
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(line("BOOKMARK", bookmark(info, last, false), None)).await.is_err() {
                        return;
                    }
                }
                ev = stream.next() => {
                    let ev = match ev {
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => {
                            let status = ApiError::from(e).to_status();
                            let _ = tx.send(line("ERROR", status, None)).await;
                            return;
                        }
                        None => return,
                    };
                    last = ev.revision();
                    match translate(&ev, &filter) {
                        Ok(Some((ty, obj))) => {
                            if tx.send(line(ty, match convert { Some(c) => c(obj), None => obj }, as_table)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.send(line("ERROR", e.to_status(), None)).await;
                            return;
                        }
                    }
                }
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}
