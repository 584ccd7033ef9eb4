//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status that fits.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::Error;

/// Seconds a 503 asks the client to wait (`Retry-After`) while the server drains or is dead.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An error answered to a client. Built by the handlers; rendered as OpenAI's error JSON.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// OpenAI's machine-readable code (`model_not_found`, `invalid_api_key`, ...).
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

/// Request fields that validation messages may start with, so a 400 can name its `param`.
const KNOWN_PARAMS: &[&str] = &[
    "n",
    "max_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "prompt_logprobs",
    "stop",
    "seed",
    "prompt",
    "messages",
];

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 for a bad request field.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            param: param.map(str::to_string),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or invalid API key: send `Authorization: Bearer <key>`",
            )
        }
    }

    /// 404 for a model this server does not serve.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!("the model `{asked}` does not exist; this server serves `{served}`"),
            )
        }
    }

    /// 404 for an unknown route.
    pub fn not_found(path: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
    }

    /// 405 for a route that exists with another method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed on {path}"),
        )
    }

    /// 429 when the waiting queue is full.
    pub fn overloaded(waiting: usize, max_waiting: usize) -> Self {
        ApiError {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server is overloaded: {waiting} requests are waiting (limit \
                     {max_waiting}); retry later"
                ),
            )
        }
    }

    /// 503 once the server is shutting down, with a `Retry-After` (another replica, or this
    /// one restarted, will take the retry).
    pub fn shutting_down() -> Self {
        ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        }
    }

    /// 503 once the engine has failed (see `EngineHandle::failure`); nothing this process
    /// serves will work again.
    pub fn engine_failed(reason: &str) -> Self {
        ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the engine failed and serves no more requests: {reason}"),
            )
        }
    }

    /// Any other status, with its message.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::new(status, message)
    }

    /// OpenAI's `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The error's JSON body (also sent as the last event of a failed stream).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest(msg) => {
                let first = msg.split([' ', ':']).next();
                let param = first.filter(|w| KNOWN_PARAMS.contains(w));
                ApiError::bad_request(msg.clone(), param)
            }
            Error::Tokenizer(msg) => ApiError::bad_request(msg, None),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), "{}", self.message);
        } else {
            tracing::warn!(
                status = self.status.as_u16(),
                param = self.param.as_deref(),
                "{}",
                self.message
            );
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
