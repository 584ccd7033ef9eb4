//! The OpenAI-compatible HTTP server: axum on a tokio runtime, in the same process as the
//! engine loop. Handlers tokenize, submit to the [`EngineHandle`] and stream the engine's
//! deltas back; nothing but conversion happens here.
//!
//! Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (bearer auth
//! when an API key is set), `GET /health`, `GET /metrics`. On SIGTERM or SIGINT the server
//! answers new requests 503, lets running requests finish up to
//! [`ServerConfig::shutdown_grace`], cuts the streams still open with an error event, then
//! returns (see `connections`). `/health` answers 503 while draining and once the engine loop
//! has died.

mod admission;
mod auth;
mod chat;
mod completions;
mod connections;
mod errors;
mod generation;
mod logprobs;
mod metrics;
mod openai_types;
mod request_params;
mod sse;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::json;

pub use errors::ApiError;
pub use metrics::Metrics;

use crate::engine::engine_loop::EngineHandle;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Server options. [`ServerConfig::new`] gives the defaults documented on each field.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default 127.0.0.1).
    pub host: String,
    /// Port to listen on (default 8000; 0 picks a free one).
    pub port: u16,
    /// When set, `/v1` routes need `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// The model name requests must give; others get 404.
    pub served_model_name: String,
    /// Sequences waiting in the engine at which new requests get 429 (default 256).
    pub max_waiting: usize,
    /// Largest request body in bytes (default 8 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    /// How long running requests may take to finish after SIGTERM (default 30 s); streams
    /// still open then end with an error event.
    pub shutdown_grace: Duration,
    /// How long a connection may take to send a request's head, counted from when it is ready
    /// for one: slow headers and idle keep-alive connections are closed after this (default
    /// 10 s).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its head has; slower ones get 408
    /// (default 30 s).
    pub body_timeout: Duration,
    /// Most connections served at once; one more gets a 503 and is closed (default 512).
    pub max_connections: usize,
}

impl ServerConfig {
    /// Defaults for serving `served_model_name`.
    pub fn new(served_model_name: impl Into<String>) -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            served_model_name: served_model_name.into(),
            max_waiting: 256,
            max_body_bytes: 8 << 20,
            shutdown_grace: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub handle: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The model's sampling defaults, for fields a request leaves out.
    pub defaults: SamplingParams,
    pub config: ServerConfig,
    pub metrics: Metrics,
    /// Set once a shutdown signal arrived: health says 503 and new requests are refused.
    pub shutting_down: AtomicBool,
    /// Requests in flight (their responses not yet fully sent); the drain waits for zero.
    pub busy: AtomicUsize,
    /// Turns true when the grace period after a shutdown signal is over: open streams end
    /// with an error event.
    pub cut: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// The state of a server of `handle` with `config`, before any request.
    pub fn new(
        handle: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        defaults: SamplingParams,
        config: ServerConfig,
    ) -> Self {
        AppState {
            handle,
            tokenizer,
            defaults,
            config,
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            cut: tokio::sync::watch::channel(false).0,
        }
    }

    /// 404 unless `model` is the served model's name.
    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.config.served_model_name {
            Ok(())
        } else {
            Err(ApiError::unknown_model(
                model,
                &self.config.served_model_name,
            ))
        }
    }
}

/// The router of every endpoint over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            admission::read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            reject_oversized,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves until a shutdown signal, then drains (see the module docs). `on_listening` gets the
/// bound address once the socket accepts connections.
pub async fn serve(state: Arc<AppState>, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    // Signal handlers go in before the socket opens, so a signal sent as soon as the server
    // says it is listening is never missed.
    let signal = shutdown_signal()?;
    let addr = format!("{}:{}", state.config.host, state.config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::InvalidConfig(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::InvalidConfig(format!("cannot listen on {addr}: {e}")))?;
    on_listening(local);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    tokio::spawn(async move {
        signal.await;
        signal_state.shutting_down.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        // Keep the sender alive: a dropped sender would end the waits on it early.
        std::future::pending::<()>().await;
    });
    connections::serve_connections(listener, router(state.clone()), state, stop_rx).await;
    Ok(())
}

/// Builds a tokio runtime and serves `handle` on it until shutdown; then stops the engine.
/// Blocks the calling thread.
pub fn run(
    handle: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    defaults: SamplingParams,
    config: ServerConfig,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("infire-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Engine(format!("cannot start the HTTP runtime: {e}")))?;
    let state = Arc::new(AppState::new(handle.clone(), tokenizer, defaults, config));
    let name = state.config.served_model_name.clone();
    let result = runtime.block_on(serve(state, |addr| {
        eprintln!("infire: serving {name} on http://{addr}");
    }));
    runtime.shutdown_timeout(Duration::from_secs(1));
    handle.shutdown();
    result
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on either signal.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind| {
        signal(kind).map_err(|e| Error::Engine(format!("cannot handle shutdown signals: {e}")))
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Parses a JSON body; a body over the size limit gets 413, malformed JSON 400.
fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|r| ApiError::with_status(r.status(), r.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
}

/// Seconds since the Unix epoch (OpenAI's `created`).
fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.served_model_name,
            "object": "model",
            "created": unix_time(),
            "owned_by": "infire",
            "max_model_len": state.handle.limits().max_model_len,
        }],
    }))
}

/// 200 while the server serves; [`admission::admit`] answers 503 for it while draining or
/// once the engine has failed.
async fn health() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.handle.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Counts every response by status for `/metrics`.
/// Bytes of an over-long body [`reject_oversized`] reads and drops, in multiples of the limit.
const DRAIN_LIMITS: usize = 4;

/// Answers 413 to a request whose Content-Length exceeds the body limit, after reading and
/// dropping what the client sends (up to [`DRAIN_LIMITS`] times the limit). Answering first
/// and closing with the body unread makes the client's TCP stack receive a reset, which can
/// discard the answer before the client reads it: it would see a broken pipe, not the error.
/// (A body without Content-Length is cut at the limit by the extractor, with a 413 too.)
async fn reject_oversized(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limit as u64) else {
        return next.run(request).await;
    };
    let mut body = request.into_body().into_data_stream();
    let mut read = 0;
    while let Some(Ok(chunk)) = body.next().await {
        read += chunk.len();
        if read > DRAIN_LIMITS * limit {
            break;
        }
    }
    ApiError::with_status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body of {declared} bytes exceeds the limit of {limit} bytes"),
    )
    .into_response()
}

async fn count_status(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.metrics.count_response(response.status().as_u16());
    response
}
