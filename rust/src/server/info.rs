//! The routes that describe the server: `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`
//! and `GET /metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::metrics_text::{render_node, ModelSeries};
use super::node::ModelSlot;
use super::traffic::Class;
use super::{unix_time, ApiError, AppState};

/// A model of the node as OpenAI's `Model` object, with its state and memory (`infire`'s
/// fields: `state`, `aliases`, `memory`).
fn model_card(slot: &ModelSlot) -> serde_json::Value {
    let status = slot.status();
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

/// 200 while the server serves; [`admission::admit`] answers 503 for it while draining or
/// once the engine has failed.
pub(super) async fn health() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
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
