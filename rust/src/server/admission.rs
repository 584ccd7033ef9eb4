//! What every request passes before a handler sees it: its body read within
//! [`ServerConfig::body_timeout`](super::ServerConfig::body_timeout), a 503 with `Retry-After`
//! while the server drains or after the engine died, and a count of the requests in flight that
//! draining waits for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{ApiError, AppState};

/// Reads the whole request body (at most the body limit) before the handler runs, and answers
/// 408 when the client takes longer than the body timeout to send it: a client trickling its
/// body one byte at a time holds a connection for that long, no longer. Bodies are JSON
/// documents that the handlers buffer anyway, so nothing streams through here.
pub(super) async fn read_body_in_time(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .into_response(),
        Err(_) => {
            let mut response = ApiError::with_status(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    state.config.body_timeout
                ),
            )
            .into_response();
            close_after(&mut response);
            response
        }
    }
}

/// Answers 503 (with `Retry-After`, closing the connection) while the server drains or once an
/// engine of the node has failed, `/health` included; otherwise runs the request and counts it in
/// [`AppState::busy`] until its response body, a stream included, has been sent or dropped.
pub(super) async fn admit(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = if state.shutting_down.load(Ordering::SeqCst) {
        Some(ApiError::shutting_down())
    } else {
        state
            .node
            .failure()
            .map(|reason| ApiError::engine_failed(&reason))
    };
    if let Some(refusal) = refusal {
        // `/metrics` stays readable: it is how an operator sees why. A draining process is
        // alive: liveness stays 200, or the orchestrator would kill it mid-drain.
        // The admin API stays open on a failed node: a `load` starts a failed model again.
        let path = request.uri().path();
        let failed = state.node.failure().is_some();
        let draining_live = path == "/health/live" && !failed;
        let admin = !state.shutting_down.load(Ordering::SeqCst) && path.starts_with("/v1/admin/");
        if path != "/metrics" && !draining_live && !admin {
            let mut response = refusal.into_response();
            if state.shutting_down.load(Ordering::SeqCst) {
                close_after(&mut response);
            }
            return response;
        }
    }
    let guard = BusyGuard::new(state.clone());
    let response = next.run(request).await;
    if response.body().size_hint().exact().is_some() {
        // A body already whole: the request is done once it is handed to the connection.
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _in_flight = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Asks the client to close the connection after this response (so a draining server is not
/// handed the next request of a keep-alive connection).
fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// One request in flight, counted in [`AppState::busy`] from creation to drop.
struct BusyGuard(Arc<AppState>);

impl BusyGuard {
    fn new(state: Arc<AppState>) -> Self {
        state.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(state)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}
