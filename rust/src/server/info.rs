//! The routes that describe the server: `GET /v1/models`, `GET /v1/models/{id}`, `GET /metrics`
//! and the probes: `GET /health` (200 once the engine is loaded and while a model serves,
//! naming the failed ones; see `startup` for the 503 while it loads), `GET /health/live` (the process answers: 200 while it
//! drains too) and `GET /health/ready` (the engine serves and makes progress).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::metrics_text::{render_node, ModelSeries};
use super::node::ModelSlot;
use super::request::unix_time;
use super::traffic::Class;
use super::{ApiError, AppState};

/// A model of the node as OpenAI's `Model` object, with its state and memory (`infire`'s
/// fields: `state`, `aliases`, `memory`, and while it is loaded the weights' `quantization`
/// and the `kv_cache_dtype`).
fn model_card(slot: &ModelSlot) -> serde_json::Value {
    let status = slot.status();
    let stats = slot.handle().map(|h| h.stats());
    json!({
        "id": slot.spec.name,
        "object": "model",
        "created": unix_time(),
        "owned_by": "infire",
        "max_model_len": slot.handle().map(|h| h.limits().max_model_len),
        "state": status.state,
        "aliases": slot.spec.aliases,
        "on_demand": slot.spec.on_demand,
        "memory": status,
        "fingerprint": slot.fingerprint(),
        "quantization": stats.and_then(|s| s.quantization),
        "kv_cache_dtype": stats.map(|s| s.kv_cache_dtype),
    })
}

/// `GET /v1/models`: every model of the node, whatever its state.
pub(super) async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<_> = state.node.models.iter().map(|s| model_card(s)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: a model by name or alias, or 404 for any other id (which may hold
/// slashes, as hub ids do).
pub(super) async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = state
        .node
        .find(&id)
        .ok_or_else(|| ApiError::unknown_model(&id, &state.node.names()))?;
    Ok(Json(model_card(slot)))
}

/// 200 while the server serves, naming the models whose engine failed (`failed`: name →
/// reason) while others serve on; [`admission::admit`] answers 503 for it while draining or
/// once no model can serve (see `Node::failure`).
pub(super) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let failed: serde_json::Map<String, serde_json::Value> = state
        .node
        .failed()
        .into_iter()
        .map(|(name, why)| (name, why.into()))
        .collect();
    let body = if failed.is_empty() {
        json!({"status": "ok"})
    } else {
        json!({"status": "ok", "failed": failed})
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// Liveness: 200 while the process answers, draining included ([`admission::admit`] lets it
/// through then); 503 once no model can serve, since only a restart helps.
pub(super) async fn live() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

/// How long the engine may hold requests without a token coming out before readiness fails. A
/// prefill of the longest prompt takes far less; a step that hangs (a wedged device, a
/// deadlock) takes forever.
const STALL: Duration = Duration::from_secs(120);

/// Readiness: 200 while the engines serve and make progress, 503 (naming why) when requests
/// are in an engine and no token came out of any for [`STALL`].
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.progress.stalled_for(&state) {
        None => health(State(state)).await,
        Some(stalled) => ApiError::with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the engine made no progress for {} s with requests in it",
                stalled.as_secs()
            ),
        )
        .into_response(),
    }
}

/// The engine's forward progress as readiness sees it: the tokens out so far, and since when
/// that count has not changed while requests were in the engine.
pub struct Progress(Mutex<(u64, Instant, bool)>);

impl Default for Progress {
    fn default() -> Self {
        Progress(Mutex::new((0, Instant::now(), false)))
    }
}

impl Progress {
    /// `Some(how long)` when requests are in the engine and no token came out for [`STALL`].
    fn stalled_for(&self, state: &AppState) -> Option<Duration> {
        let (mut busy, mut tokens) = (false, 0);
        for slot in &state.node.models {
            if let Some(handle) = slot.handle() {
                let stats = handle.stats();
                busy |= stats.num_running + stats.num_waiting > 0;
            }
            tokens += slot.metrics.generation_tokens.load(Ordering::Relaxed)
                + slot.metrics.prompt_tokens.load(Ordering::Relaxed);
        }
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (count, since, was_busy) = *seen;
        if !busy || !was_busy || tokens != count {
            *seen = (tokens, Instant::now(), busy);
            return None;
        }
        let stalled = since.elapsed();
        (stalled > STALL).then_some(stalled)
    }
}

pub(super) async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let series: Vec<ModelSeries> = state
        .node
        .models
        .iter()
        .map(|s| ModelSeries {
            name: &s.spec.name,
            metrics: &s.metrics,
            stats: s.handle().map(|h| h.stats()).unwrap_or_default(),
            state: s.state().as_str(),
            waiting: Class::ALL.map(|c| s.queues.waiting(c)),
        })
        .collect();
    let text = render_node(&state.metrics, &series);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
