//! What the request handlers share: parsing a request body against the fields an endpoint
//! knows, and the small pieces of OpenAI's response shape (`created`, vLLM's `stop_reason`).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{openai_types, ApiError, AppState};
use crate::sampling::StopReason;

/// Parses a JSON request body whose top-level fields must be among `known` (see
/// `openai_types`): a body over the size limit gets 413, malformed JSON 400, and fields this
/// server does not know 400 naming them, as OpenAI answers (with
/// [`ServerConfig::allow_unknown_fields`](super::ServerConfig::allow_unknown_fields), they are logged and ignored). `priority` (vLLM's
/// field) is known to both endpoints.
pub(super) fn parse_request<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    known: &[&str],
) -> Result<T, ApiError> {
    let body = body.map_err(|r| ApiError::with_status(r.status(), r.body_text()))?;
    let bad_body =
        |e: serde_json::Error| ApiError::bad_request(format!("invalid request body: {e}"), None);
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(bad_body)?;
    if let Some(object) = value.as_object() {
        let unknown = openai_types::unknown_fields(object, known);
        if !unknown.is_empty() && !state.config.allow_unknown_fields {
            return Err(ApiError::bad_request(
                format!(
                    "Unrecognized request argument{} supplied: {} (start the server with \
                     --allow-unknown-fields to ignore such fields)",
                    if unknown.len() == 1 { "" } else { "s" },
                    unknown.join(", ")
                ),
                Some(unknown[0]),
            ));
        }
        if !unknown.is_empty() {
            tracing::warn!(fields = %unknown.join(", "), "ignoring unknown request fields");
        }
    }
    serde_json::from_value(value).map_err(bad_body)
}

/// vLLM's `stop_reason` of a choice: the stop string, the stop token id, or null.
pub(super) fn stop_reason_json(r: Option<&StopReason>) -> serde_json::Value {
    match r {
        None => serde_json::Value::Null,
        Some(StopReason::Token(t)) => json!(t),
        Some(StopReason::Text(s)) => json!(s),
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub(super) fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// vLLM's check: `stream_options` belongs to streamed requests only.
pub(super) fn check_stream_options(
    stream: bool,
    options: Option<&openai_types::StreamOptions>,
) -> Result<(), ApiError> {
    if options.is_some() && !stream {
        return Err(ApiError::bad_request(
            "stream_options can only be set when stream is true",
            Some("stream_options"),
        ));
    }
    Ok(())
}

/// A response id: `prefix` and 32 random hex digits (as vLLM's random UUIDs), so that ids do
/// not repeat across restarts and replicas (the engine's request ids count from 0 in each
/// process).
pub(super) fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}
