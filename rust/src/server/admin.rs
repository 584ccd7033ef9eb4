//! The admin API: `POST /v1/admin/models/{name}/{sleep,wake,load,unload}`, for a full API key
//! (one bound to no traffic class; open when the server has no key), and never from a browser
//! (a request with an `Origin` header is refused: cross-site form posts need no preflight).
//!
//! `sleep` frees the model's memory: on CUDA its engine stays (weights in pinned host memory,
//! the KV pool and prefix cache dropped, kernels and graphs kept), on the CPU the engine stops
//! (weights, KV pool and prefix cache freed); `unload` stops the engine everywhere. Requests
//! still running end with an error saying so. A sleeping model wakes on its next request, an
//! unloaded one only by `load` (or on a request, when it is `on_demand`); a `failed` one (its
//! engine died) only by `load`. `wake` and `load` make the model ready now, putting least
//! recently used idle models to sleep when it does not fit, and answer once it is ready. Each
//! answer gives the model's state, the seconds the action took and the model's memory status
//! (a CUDA sleep's and wake's bytes and seconds included).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Path, State};
use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;

use super::node::ModelState;
use super::traffic::Caller;
use super::{ApiError, AppState};

pub(super) async fn admin(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Browsers send Origin with every cross-site POST, and a form POST needs no CORS preflight:
    // without this, a page could unload a model of a server that has no API key. The server
    // has no page of its own, so no browser request is the admin's.
    if headers.contains_key(ORIGIN) {
        return Err(ApiError::with_status(
            StatusCode::FORBIDDEN,
            "the admin API does not take requests from browsers (they carry an Origin header)",
        ));
    }
    if !caller.admin {
        return Err(ApiError::with_status(
            StatusCode::FORBIDDEN,
            "the admin API needs a full API key (one bound to no traffic class)",
        ));
    }
    let slot = state
        .node
        .find(&name)
        .ok_or_else(|| ApiError::unknown_model(&name, &state.node.names()))?
        .clone();
    let node = state.node.clone();
    let started = Instant::now();
    let model = slot.spec.name.clone();
    match action.as_str() {
        "sleep" | "unload" => {
            let (to, done) = if action == "sleep" {
                (ModelState::Sleeping, "put to sleep")
            } else {
                (ModelState::Unloaded, "unloaded")
            };
            let reason = format!("model {model} was {done} by an admin request");
            let slot = slot.clone();
            let put = tokio::task::spawn_blocking(move || node.put_down(&slot, to, &reason))
                .await
                .map_err(|e| {
                    ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?;
            if !put {
                return Err(ApiError::with_status(
                    StatusCode::CONFLICT,
                    format!("model {model} is loading; {action} it once it is ready"),
                ));
            }
        }
        "wake" | "load" => {
            let slot = slot.clone();
            tokio::task::spawn_blocking(move || node.load(&slot))
                .await
                .map_err(|e| {
                    ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?
                .map_err(|e| {
                    ApiError::with_status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("model {model} could not be loaded: {e}"),
                    )
                })?;
        }
        other => {
            return Err(ApiError::with_status(
                StatusCode::NOT_FOUND,
                format!("unknown admin action {other:?}: sleep, wake, load or unload"),
            ))
        }
    }
    Ok(Json(json!({
        "id": model,
        "action": action,
        "state": slot.state().as_str(),
        "seconds": started.elapsed().as_secs_f64(),
        "memory": slot.status(),
    })))
}
