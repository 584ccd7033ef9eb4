//! The OpenAI-compatible HTTP server: axum on a tokio runtime, in the same process as the
//! engine loop. Handlers tokenize, submit to the [`EngineHandle`] and stream the engine's
//! deltas back; nothing but conversion happens here.
//!
//! A server serves a node of models (`node`): each request goes to the engine of the model it
//! names, waiting for a sleeping model to wake; the admin API (`admin`) puts models to sleep,
//! wakes, loads and unloads them; API keys may bind a traffic class (`traffic`).
//!
//! Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
//! `POST /v1/chat/completions`, `POST /v1/admin/models/{name}/{sleep,wake,load,unload}`
//! (bearer auth when an API key is set), `GET /health`, `GET /health/live`, `GET /health/ready`, `GET /metrics`; another method on a route is a 405 with an error body. Request fields the
//! server does not know are a 400 naming them (see `openai_types`). Every request gets an
//! access-log line (`access_log`); logs go through `tracing` (`logging`); request traces go to
//! an OTLP collector when one is configured (`otel`). On SIGTERM or SIGINT the server
//! answers new requests 503, lets running requests finish up to
//! [`ServerConfig::shutdown_grace`], cuts the streams still open with an error event, then
//! returns (see `connections`). `/health` answers 503 while draining and once the engine loop
//! has died.

mod access_log;
mod admin;
mod admission;
mod args;
mod auth;
mod chat;
mod completions;
mod connections;
mod errors;
mod generation;
mod info;
mod logging;
mod logprobs;
pub(crate) mod memory;
mod metrics;
mod metrics_text;
mod model_state;
mod node;
mod node_spec;
mod openai_types;
mod otel;
mod otel_export;
mod request;
mod request_params;
mod sse;
mod startup;
mod state;
mod structured_request;
mod tool_calls;
mod tools;
mod traceparent;
mod traffic;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;

pub use args::{ServerArgs, ServerConfig};
pub use errors::ApiError;
pub use logging::{init as init_logging, LogFormat};
pub use metrics::Metrics;
pub use node::{ModelState, Node};
pub use node_spec::ModelSpec;
pub use state::{AppState, Routed};
pub use traffic::{ApiKey, Caller, Class};

use crate::error::{Error, Result};

/// The router of every endpoint over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/admin/models/{name}/{action}", post(admin::admin))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(info::health))
        .route("/health/live", get(info::live))
        .route("/health/ready", get(info::ready))
        .route("/metrics", get(info::metrics_text))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::method_not_allowed(method.as_str(), uri.path())
        })
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
        .layer(middleware::from_fn(otel::trace_request))
        .layer(middleware::from_fn(access_log::access_log))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves until a shutdown signal, then drains (see the module docs). `on_listening` gets the
/// bound address once the socket accepts connections.
pub async fn serve(state: Arc<AppState>, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    // Signal handlers go in before the socket opens, so a signal sent as soon as the server
    // says it is listening is never missed.
    let signal = shutdown_signal()?;
    let (listener, local) = startup::bind(&state.config).await?;
    on_listening(local);
    serve_listener(state, listener, signal).await
}

/// Serves `state` on `listener` until `signal` resolves, then drains.
async fn serve_listener(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!(
            grace_s = signal_state.config.shutdown_grace.as_secs_f64(),
            busy = signal_state.busy.load(Ordering::SeqCst),
            "shutdown signal received: draining running requests"
        );
        signal_state.shutting_down.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        // Keep the sender alive: a dropped sender would end the waits on it early.
        std::future::pending::<()>().await;
    });
    connections::serve_connections(listener, router(state.clone()), state, stop_rx).await;
    tracing::info!("server stopped");
    Ok(())
}

/// Builds a tokio runtime, binds the socket, answers probes while `load` starts the node's
/// engines (see `startup`), then serves them until shutdown and stops them. Blocks the calling
/// thread.
pub fn run(
    config: ServerConfig,
    load: impl FnOnce() -> Result<Arc<Node>> + Send + 'static,
) -> Result<()> {
    otel::init(config.otlp_traces_endpoint.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("infire-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Engine(format!("cannot start the HTTP runtime: {e}")))?;
    let result = runtime.block_on(startup::serve_while_loading(config, load, |addr| {
        tracing::info!("listening on http://{addr}; loading the models");
    }));
    runtime.shutdown_timeout(Duration::from_secs(1));
    otel::flush(Duration::from_secs(3));
    match &result {
        Ok(()) => tracing::info!("engines stopped; exiting"),
        Err(e) => tracing::error!("server failed: {e}"),
    }
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
