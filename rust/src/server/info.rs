//! The routes that describe the server: `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`
//! and `GET /metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{unix_time, ApiError, AppState};

/// The served model as OpenAI's `Model` object.
fn model_card(state: &AppState) -> serde_json::Value {
    json!({
        "id": state.config.served_model_name,
        "object": "model",
        "created": unix_time(),
        "owned_by": "infire",
        "max_model_len": state.handle.limits().max_model_len,
    })
}

pub(super) async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [model_card(&state)]}))
}

/// `GET /v1/models/{id}`: the served model, or 404 for any other id (which may hold slashes,
/// as hub ids do).
pub(super) async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.check_model(&id)?;
    Ok(Json(model_card(&state)))
}

/// 200 while the server serves; [`admission::admit`] answers 503 for it while draining or
/// once the engine has failed.
pub(super) async fn health() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

pub(super) async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let name = &state.config.served_model_name;
    let text = state.metrics.render(&state.handle.stats(), name);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
