//! One log line per request (target `infire::access`): method, path, status, model, prompt and
//! output tokens, time to first token and total time. A streamed response is logged when its
//! body has been sent (or dropped by a client that went away), so its counts are final.
//! `/health` and `/metrics` are logged at debug level, other routes at info.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

/// What the handler learns about a request, for its access-log line. Cloned into the request's
/// extensions by [`access_log`]; handlers and their [`Generation`](super::generation::Generation)s
/// fill it in.
#[derive(Clone, Default)]
pub struct RequestLog(Arc<Mutex<LogFields>>);

#[derive(Default)]
struct LogFields {
    model: Option<String>,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft: Option<Duration>,
}

impl RequestLog {
    fn with<R>(&self, f: impl FnOnce(&mut LogFields) -> R) -> R {
        let mut fields = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut fields)
    }

    /// The model the request named.
    pub fn set_model(&self, model: &str) {
        self.with(|f| f.model = Some(model.to_string()));
    }

    /// Counts one submitted prompt of `tokens` tokens.
    pub fn add_prompt(&self, tokens: usize) {
        self.with(|f| f.prompt_tokens += tokens);
    }

    /// Counts `tokens` generated tokens that arrived `since_arrival` after the request.
    pub fn add_output(&self, tokens: usize, since_arrival: Duration) {
        self.with(|f| {
            f.output_tokens += tokens;
            if tokens > 0 {
                f.ttft = Some(f.ttft.map_or(since_arrival, |t| t.min(since_arrival)));
            }
        });
    }
}

/// The request's line, written once when dropped.
struct LogLine {
    log: RequestLog,
    method: String,
    path: String,
    status: u16,
    start: Instant,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let total_ms = (self.start.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        // Probes (load balancers, Kubernetes, Prometheus) would drown the requests: their
        // lines are debug-level.
        let probe = matches!(
            self.path.as_str(),
            "/health" | "/health/live" | "/health/ready" | "/metrics"
        );
        self.log.with(|f| {
            let ttft_ms = f.ttft.map(|t| (t.as_secs_f64() * 1e4).round() / 10.0);
            let model = f.model.as_deref().unwrap_or("-");
            macro_rules! line {
                ($level:ident) => {
                    tracing::$level!(
                        target: "infire::access",
                        method = %self.method,
                        path = %self.path,
                        status = self.status,
                        model,
                        prompt_tokens = f.prompt_tokens,
                        output_tokens = f.output_tokens,
                        ttft_ms,
                        total_ms,
                        "request"
                    )
                };
            }
            if probe {
                line!(debug);
            } else {
                line!(info);
            }
        });
    }
}

/// Logs every request (see the module docs).
pub(super) async fn access_log(mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let log = RequestLog::default();
    request.extensions_mut().insert(log.clone());
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let line = LogLine {
        log,
        method,
        path,
        status: response.status().as_u16(),
        start,
    };
    if response.body().size_hint().exact().is_some() {
        return response; // `line` logs now
    }
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _line = &line;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
