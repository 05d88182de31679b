//! Limits enforced at the door, before a request reaches a handler: a request body larger than
//! kube-apiserver's 3 MiB gets its 413 Status ("Request entity too large: limit is 3145728",
//! `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go` `limitedReadBody`) instead of
//! a dropped connection.

use std::time::Duration;

use axum::{
    body::Body,
    extract::Request,
    http::{Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;

use super::error::ApiError;

/// kube-apiserver's `MaxRequestBodyBytes` (3 MiB): etcd's 1.5 MiB value limit, doubled for
/// patches and lists of operations, plus slack.
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How much of a refused body is read and thrown away before the answer is sent. A client
/// that is still writing when the server closes its socket with unread data gets a TCP reset,
/// and the reset discards the 413 before the client reads it; reading what the client sends
/// (as Go's net/http does before closing) lets the answer arrive. Past this bound, or after
/// [`DRAIN_FOR`], the connection is simply closed.
const DRAIN_AT_MOST: usize = 256 * 1024 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(30);

/// The middleware: refuses a body over the limit, whether its length is declared
/// (`Content-Length`) or found while reading it (chunked transfer, HTTP/2 without a length).
pub async fn body_limit(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_REQUEST_BODY_BYTES as u64 => {
            return too_large(req.into_body(), usize::try_from(n).unwrap_or(usize::MAX)).await;
        }
        Some(_) => return next.run(req).await,
        None => {}
    }
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    // No declared length: read the body here, within the limit, and hand the handler the
    // bytes (every handler of a body reads it whole anyway).
    let (parts, body) = req.into_parts();
    let mut body = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return ApiError::BadRequest("error reading the request body".into()).into_response();
        };
        if buf.len() + chunk.len() > MAX_REQUEST_BODY_BYTES {
            return too_large(Body::from_stream(body), 0).await;
        }
        buf.extend_from_slice(&chunk);
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

/// Reads and discards what remains of a refused body (see [`DRAIN_AT_MOST`]), then answers.
async fn too_large(body: Body, declared: usize) -> Response {
    if declared <= DRAIN_AT_MOST {
        let drain = async {
            let mut body = body;
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > DRAIN_AT_MOST {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    }
    let mut resp = ApiError::RequestEntityTooLarge(MAX_REQUEST_BODY_BYTES).into_response();
    // The client may still be writing; say the connection ends here.
    resp.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use axum::{Router, http::StatusCode, routing::post};
    use tower::ServiceExt as _;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route(
                "/",
                post(|body: axum::body::Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
            .layer(axum::middleware::from_fn(body_limit))
    }

    async fn call(req: Request) -> (StatusCode, serde_json::Value, String) {
        let resp = app().oneshot(req).await.expect("answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or_default(),
            text,
        )
    }

    #[tokio::test]
    async fn api_body_over_3mib_is_413_status() {
        let big = vec![b'x'; MAX_REQUEST_BODY_BYTES + 1];
        let req = Request::post("/")
            .header(header::CONTENT_LENGTH, big.len())
            .body(Body::from(big.clone()))
            .expect("request");
        let (status, body, _) = call(req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "RequestEntityTooLarge");
        assert_eq!(body["code"], 413);
        assert_eq!(
            body["message"],
            "Request entity too large: limit is 3145728"
        );
        // Without a declared length (chunked), found while reading.
        let chunks = futures::stream::iter(
            big.chunks(64 * 1024)
                .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let req = Request::post("/")
            .body(Body::from_stream(chunks))
            .expect("request");
        let (status, body, _) = call(req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["reason"], "RequestEntityTooLarge");
    }

    #[tokio::test]
    async fn api_body_at_the_limit_passes() {
        let ok = vec![b'x'; MAX_REQUEST_BODY_BYTES];
        let chunks = futures::stream::iter(
            ok.chunks(64 * 1024)
                .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let req = Request::post("/")
            .body(Body::from_stream(chunks))
            .expect("request");
        let (status, _, text) = call(req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, MAX_REQUEST_BODY_BYTES.to_string());
    }
}
