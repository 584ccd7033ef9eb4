//! Starting a server whose model is still loading: the socket is bound first, so that probes
//! (Kubernetes, load balancers, `infire.cluster`) see the server while it loads. Until the
//! engine is ready, `/health` and `/health/ready` answer 503 (`{"status": "loading"}`),
//! `/health/live` 200, and every other route a 503 with `Retry-After`; each answer closes its
//! connection, so a keep-alive client reconnects to the real server once it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;

use super::errors::RETRY_AFTER_SECS;
use super::{serve_listener, shutdown_signal, ApiError, AppState, Node, ServerConfig};
use crate::error::{Error, Result};

/// Binds `config`'s address; the error names it.
pub(super) async fn bind(config: &ServerConfig) -> Result<(TcpListener, SocketAddr)> {
    let addr = format!("{}:{}", config.host, config.port);
    let cannot = |e: std::io::Error| Error::InvalidConfig(format!("cannot listen on {addr}: {e}"));
    let listener = TcpListener::bind(&addr).await.map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    Ok((listener, local))
}

/// Binds the socket, answers probes while `load` runs on a blocking thread, then serves the
/// node of engines it started until shutdown (see [`super::serve`]) and stops them. A shutdown signal
/// during the load stops the server as soon as the load returns (a load cannot be cut short).
/// `on_listening` gets the bound address before the load starts.
pub async fn serve_while_loading(
    config: ServerConfig,
    load: impl FnOnce() -> Result<Arc<Node>> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let mut signal = Box::pin(shutdown_signal()?);
    let (listener, local) = bind(&config).await?;
    on_listening(local);
    let mut load = tokio::task::spawn_blocking(load);
    let app = loading_router();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(false);
    let mut stop_requested = false;
    let launched = loop {
        tokio::select! {
            done = &mut load => break done,
            accepted = listener.accept() => if let Ok((tcp, _)) = accepted {
                let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                });
            },
            () = &mut signal, if !stop_requested => {
                tracing::info!("shutdown signal received while loading: stopping once loaded");
                stop_requested = true;
            }
        }
    };
    let node = launched.map_err(|e| Error::Engine(format!("the model load panicked: {e}")))??;
    if stop_requested {
        node.shutdown();
        return Ok(());
    }
    tracing::info!("serving `{}`", node.names());
    let state = Arc::new(AppState::new(node.clone(), config));
    let result = serve_listener(state, listener, signal).await;
    node.shutdown();
    result
}

/// The routes served while the model loads.
fn loading_router() -> Router {
    Router::new()
        .route("/health", get(loading))
        .route("/health/ready", get(loading))
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .fallback(|_: Uri| async {
            let mut error = ApiError::with_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading; retry later",
            )
            .into_response();
            error
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            error
        })
}

/// 503 `{"status": "loading"}`, as probes of a server not yet ready expect.
async fn loading() -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "loading"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}
