//! Request traces through OpenTelemetry, as vLLM writes them: off unless an OTLP endpoint is
//! given (`--otlp-traces-endpoint`, else `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the service is
//! named by `$OTEL_SERVICE_NAME` (default `infire`).
//!
//! Each generation request (`POST /v1/completions`, `POST /v1/chat/completions`) is one SERVER
//! span, a child of the client's W3C `traceparent` when it sends one (and not recorded when
//! that parent is not sampled), named and attributed after OpenTelemetry's GenAI conventions
//! (`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...) with
//! vLLM's `gen_ai.latency.*` times from the engine's own clock; each engine request under it
//! adds three INTERNAL spans, `queue`, `prefill` and `decode`, built from those times. Nothing
//! happens per token: the engine records its times anyway, and the spans are built once, when
//! the response has been sent, then handed to the exporter (`otel_export`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use super::otel_export::{Endpoint, Exporter, SpanKind, SpanRecord, Value};
use super::traceparent::TraceParent;
use crate::engine::{RequestMetrics, RequestOutput};
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// The process's exporter, once tracing is on.
static TRACER: OnceLock<Exporter> = OnceLock::new();

/// Turns tracing on when `endpoint` or `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names a collector;
/// a URL that is not `http://...` is an [`Error::InvalidConfig`]. Once on (a second server in
/// one process), later calls change nothing.
pub fn init(endpoint: Option<&str>) -> Result<()> {
    let from_env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok();
    let Some(url) = endpoint.or(from_env.as_deref()).filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let endpoint = Endpoint::parse(url).map_err(Error::InvalidConfig)?;
    if TRACER.get().is_some() {
        return Ok(());
    }
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "infire".into());
    let exporter = Exporter::start(endpoint, service)
        .map_err(|e| Error::Engine(format!("cannot start the OTLP exporter: {e}")))?;
    let _ = TRACER.set(exporter);
    tracing::info!(target: "infire::otel", url, "request traces go to OTLP/HTTP");
    Ok(())
}

/// Sends the spans still queued (at shutdown), waiting up to `timeout`.
pub fn flush(timeout: Duration) {
    if let Some(t) = TRACER.get() {
        t.flush(timeout);
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A request's span and the engine's spans under it, until it ends.
struct Trace {
    root: SpanRecord,
    children: Vec<SpanRecord>,
}

/// The span of one HTTP request, filled in by its handler and its generations; a disabled one
/// (tracing off, or a parent that is not sampled) records nothing.
#[derive(Clone, Default)]
pub struct RequestSpan(Option<Arc<Mutex<Trace>>>);

/// Sets `key` on `s`, replacing an earlier value.
fn set(s: &mut SpanRecord, key: &'static str, value: Value) {
    match s.attributes.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => *v = value,
        None => s.attributes.push((key, value)),
    }
}

/// Adds `n` to the integer attribute `key`.
fn add(s: &mut SpanRecord, key: &'static str, n: usize) {
    let before = match s.attributes.iter().find(|(k, _)| *k == key) {
        Some((_, Value::Int(v))) => *v,
        _ => 0,
    };
    set(s, key, Value::Int(before + n as i64));
}

impl RequestSpan {
    /// A SERVER span for `operation` (GenAI's `chat`, `text_completion`), under `parent`.
    fn start(operation: &'static str, parent: Option<TraceParent>, trace_state: String) -> Self {
        let trace_id = match &parent {
            Some(p) => p.trace_id,
            None => loop {
                let id = rand::random::<u128>();
                if id != 0 {
                    break id.to_be_bytes();
                }
            },
        };
        let root = SpanRecord {
            trace_id,
            span_id: new_span_id(),
            parent: parent.map(|p| p.span_id),
            trace_state,
            name: operation.into(),
            kind: SpanKind::Server,
            start_ns: now_ns(),
            end_ns: 0,
            attributes: vec![("gen_ai.operation.name", Value::Str(operation.into()))],
            error: None,
        };
        let trace = Trace {
            root,
            children: Vec::new(),
        };
        RequestSpan(Some(Arc::new(Mutex::new(trace))))
    }

    fn with(&self, f: impl FnOnce(&mut Trace)) {
        if let Some(t) = &self.0 {
            f(&mut t.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// The model the request named.
    pub fn set_model(&self, model: &str) {
        self.with(|t| {
            set(
                &mut t.root,
                "gen_ai.request.model",
                Value::Str(model.into()),
            )
        });
    }

    /// What the request asks of the engine, and the model that serves it.
    pub fn set_request(&self, params: &SamplingParams, served_by: &str) {
        self.with(|t| {
            let s = &mut t.root;
            let max = params.max_tokens.map_or(-1, |m| m as i64);
            set(s, "gen_ai.request.max_tokens", Value::Int(max));
            set(
                s,
                "gen_ai.request.temperature",
                Value::Double(params.temperature as f64),
            );
            set(
                s,
                "gen_ai.request.top_p",
                Value::Double(params.top_p as f64),
            );
            set(
                s,
                "gen_ai.request.choice.count",
                Value::Int(params.n as i64),
            );
            set(s, "gen_ai.response.model", Value::Str(served_by.into()));
        });
    }

    /// One engine request's end: its usage (added up over the request's prompts), its times
    /// (the first prompt's, on the request's span) and its `queue`, `prefill`, `decode` spans.
    pub fn record_engine(&self, o: &RequestOutput) {
        let m = &o.metrics;
        let Some(arrival) = Some(m.arrival_time).filter(|&t| t > 0.0) else {
            return;
        };
        self.with(|t| {
            let s = &mut t.root;
            let output: usize = o.outputs.iter().map(|c| c.token_ids.len()).sum();
            add(s, "gen_ai.usage.input_tokens", o.prompt_token_ids.len());
            add(s, "gen_ai.usage.output_tokens", output);
            add(
                s,
                "gen_ai.usage.cache_read.input_tokens",
                o.num_cached_tokens,
            );
            set(
                s,
                "gen_ai.response.id",
                Value::Str(o.request_id.to_string()),
            );
            let reasons = o.outputs.iter().filter_map(|c| c.finish_reason);
            let reasons = reasons.map(|r| r.as_str().to_string()).collect();
            set(s, "gen_ai.response.finish_reasons", Value::Strs(reasons));
            if !s
                .attributes
                .iter()
                .any(|(k, _)| k.starts_with("gen_ai.latency"))
            {
                latencies(s, arrival, m);
            }
            let phases = [
                ("queue", Some(arrival), m.scheduled_time),
                ("prefill", m.scheduled_time, m.first_token_time),
                ("decode", m.first_token_time, m.finished_time),
            ];
            for (name, start, end) in phases {
                let (Some(start), Some(end)) = (start, end) else {
                    continue;
                };
                t.children.push(SpanRecord {
                    trace_id: t.root.trace_id,
                    span_id: new_span_id(),
                    parent: Some(t.root.span_id),
                    trace_state: t.root.trace_state.clone(),
                    name: name.into(),
                    kind: SpanKind::Internal,
                    start_ns: secs_to_ns(start),
                    end_ns: secs_to_ns(end.max(start)),
                    attributes: vec![("infire.request_id", Value::Int(o.request_id as i64))],
                    error: None,
                });
            }
        });
    }

    /// Ends the span with the response's `status` and hands it to the exporter.
    fn end(&self, status: u16) {
        let (Some(trace), Some(exporter)) = (&self.0, TRACER.get()) else {
            return;
        };
        let mut t = trace.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut t.root;
        s.end_ns = now_ns().max(s.start_ns);
        set(s, "http.response.status_code", Value::Int(status as i64));
        if status >= 500 {
            s.error = Some(format!("HTTP {status}"));
        }
        // GenAI's span name: "{operation} {model}".
        if let Some((_, Value::Str(model))) = s
            .attributes
            .iter()
            .find(|(k, _)| *k == "gen_ai.request.model")
        {
            s.name = format!("{} {model}", s.name);
        }
        let spans = std::iter::once(t.root.clone()).chain(t.children.drain(..));
        let dropped = spans.filter(|s| !exporter.send(s.clone())).count();
        if dropped > 0 {
            tracing::warn!(target: "infire::otel", dropped, "the span queue is full: spans dropped");
        }
    }
}

/// vLLM's latency attributes, in seconds, from the engine's times.
fn latencies(s: &mut SpanRecord, arrival: f64, m: &RequestMetrics) {
    let mut put = |key: &'static str, from: Option<f64>, to: Option<f64>| {
        if let (Some(a), Some(b)) = (from, to) {
            set(s, key, Value::Double((b - a).max(0.0)));
        }
    };
    put(
        "gen_ai.latency.time_in_queue",
        Some(arrival),
        m.scheduled_time,
    );
    put(
        "gen_ai.latency.time_to_first_token",
        Some(arrival),
        m.first_token_time,
    );
    put(
        "gen_ai.latency.time_in_model_prefill",
        m.scheduled_time,
        m.first_token_time,
    );
    put(
        "gen_ai.latency.time_in_model_decode",
        m.first_token_time,
        m.finished_time,
    );
    put(
        "gen_ai.latency.time_in_model_inference",
        m.scheduled_time,
        m.finished_time,
    );
    put("gen_ai.latency.e2e", Some(arrival), m.finished_time);
}

/// The GenAI operation of a generation route, `None` for the other routes (not traced).
fn operation(request: &Request) -> Option<&'static str> {
    if request.method() != Method::POST {
        return None;
    }
    match request.uri().path() {
        "/v1/chat/completions" => Some("chat"),
        "/v1/completions" => Some("text_completion"),
        _ => None,
    }
}

/// Gives every request its [`RequestSpan`] (disabled unless tracing is on and it is a
/// generation), and ends a recorded span once its response's body has been sent.
pub(super) async fn trace_request(mut request: Request, next: Next) -> Response {
    let span = match (TRACER.get(), operation(&request)) {
        (Some(_), Some(op)) => {
            let header = |name: &str| {
                let v = request.headers().get(name)?;
                v.to_str().ok().map(str::to_string)
            };
            let parent = header("traceparent").and_then(|h| TraceParent::parse(&h));
            match parent {
                Some(p) if !p.sampled => RequestSpan::default(),
                p => RequestSpan::start(op, p, header("tracestate").unwrap_or_default()),
            }
        }
        _ => RequestSpan::default(),
    };
    request.extensions_mut().insert(span.clone());
    let response = next.run(request).await;
    if span.0.is_none() {
        return response;
    }
    let end = SpanEnd(span, response.status().as_u16());
    if response.body().size_hint().exact().is_some() {
        return response; // `end` ends the span now
    }
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _end = &end;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Ends its span when dropped: after the last chunk of a streamed body went out, or at once.
struct SpanEnd(RequestSpan, u16);

impl Drop for SpanEnd {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}
