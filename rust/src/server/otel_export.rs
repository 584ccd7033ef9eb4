//! The OTLP/HTTP trace exporter: finished spans encoded as an `ExportTraceServiceRequest`
//! (protobuf, written by hand: the handful of messages below, with the field numbers of
//! `opentelemetry/proto/trace/v1/trace.proto`) and POSTed to the collector from a thread of its
//! own, in batches. A request only hands its spans over a bounded channel when it ends; a full
//! channel drops them (counted and logged), so a slow or dead collector never slows serving.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Spans queued for export at most; more are dropped until the exporter catches up.
const QUEUE_SPANS: usize = 4096;
/// Spans sent in one request at most.
const BATCH_SPANS: usize = 512;
/// How long a span may wait for its batch (the SDKs' batch processors wait up to 5 s).
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// Connect, write and read limit of one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
}

/// An attribute's value (`AnyValue`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Double(f64),
    Strs(Vec<String>),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a trace's root.
    pub parent: Option<[u8; 8]>,
    /// The W3C `tracestate` that came with the parent, passed on unchanged.
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span ended in error (`Status.code = ERROR`).
    pub error: Option<String>,
}

/// Where spans go: `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    /// Parses an `http://` URL; a URL with no path gets OTLP's `/v1/traces`. `https` needs a
    /// TLS client this exporter does not have: an error that says so.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "OTLP traces endpoint {url:?} must be an http:// URL (OTLP/HTTP; for https, \
                 send to a local collector that forwards)"
            )
        })?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("OTLP traces endpoint {url:?}: bad port {p:?}"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("OTLP traces endpoint {url:?} names no host"));
        }
        let path = if path.is_empty() || path == "/" {
            "/v1/traces"
        } else {
            path
        };
        Ok(Endpoint {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            path: path.into(),
        })
    }
}

/// What the exporter thread is sent.
pub enum Message {
    Span(SpanRecord),
    /// Export what is queued now, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The sending side, held by the process's tracer.
pub struct Exporter {
    tx: SyncSender<Message>,
}

impl Exporter {
    /// Starts the exporter thread for `endpoint`, naming the service `service_name`.
    pub fn start(endpoint: Endpoint, service_name: String) -> std::io::Result<Exporter> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_SPANS);
        std::thread::Builder::new()
            .name("infire-otlp".into())
            .spawn(move || export_loop(rx, &endpoint, &service_name))?;
        Ok(Exporter { tx })
    }

    /// Queues `span`; `false` when the queue is full and it was dropped.
    pub fn send(&self, span: SpanRecord) -> bool {
        !matches!(
            self.tx.try_send(Message::Span(span)),
            Err(TrySendError::Full(_))
        )
    }

    /// Exports what is queued, waiting up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

fn export_loop(rx: Receiver<Message>, endpoint: &Endpoint, service: &str) {
    let mut batch = Vec::new();
    let mut deadline = None::<Instant>;
    loop {
        let wait = deadline.map_or(Duration::from_secs(3600), |d: Instant| {
            d.saturating_duration_since(Instant::now())
        });
        let mut flushed = None;
        match rx.recv_timeout(wait) {
            Ok(Message::Span(s)) => {
                batch.push(s);
                deadline.get_or_insert_with(|| Instant::now() + EXPORT_DELAY);
                if batch.len() < BATCH_SPANS {
                    continue;
                }
            }
            Ok(Message::Flush(done)) => flushed = Some(done),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !batch.is_empty() {
            let body = encode_request(service, &batch);
            match post(endpoint, &body) {
                Ok(200..=299) => {}
                Ok(status) => tracing::warn!(target: "infire::otel", status, spans = batch.len(),
                    "the OTLP collector refused a batch of spans"),
                Err(e) => tracing::warn!(target: "infire::otel", error = %e, spans = batch.len(),
                    "cannot send spans to the OTLP collector"),
            }
            batch.clear();
        }
        deadline = None;
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// POSTs `body` as `application/x-protobuf`; the response's status code.
fn post(endpoint: &Endpoint, body: &[u8]) -> std::io::Result<u16> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad("the collector's host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, EXPORT_TIMEOUT)?;
    stream.set_read_timeout(Some(EXPORT_TIMEOUT))?;
    stream.set_write_timeout(Some(EXPORT_TIMEOUT))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.host,
        endpoint.port,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.take(64 << 10).read_to_end(&mut answer)?;
    // "HTTP/1.1 200 OK\r\n..."
    let status = answer.split(|&b| b == b' ').nth(1);
    status
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .ok_or_else(|| bad("the collector's answer has no HTTP status line"))
}

/// A protobuf message being written.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }
    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn message(&mut self, field: u64, write: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        write(&mut inner);
        self.bytes(field, &inner.0);
    }
    fn uint(&mut self, field: u64, v: u64) {
        self.tag(field, 0);
        self.varint(v);
    }
    fn fixed64(&mut self, field: u64, v: u64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// A `KeyValue { key = 1; AnyValue value = 2 }` as field `field`, with `AnyValue { string = 1;
/// int = 3; double = 4; ArrayValue array = 5 }` and `ArrayValue { repeated AnyValue values = 1 }`.
fn key_value(pb: &mut Pb, field: u64, key: &str, value: &Value) {
    pb.message(field, |kv| {
        kv.bytes(1, key.as_bytes());
        kv.message(2, |any| match value {
            Value::Str(s) => any.bytes(1, s.as_bytes()),
            Value::Int(i) => any.uint(3, *i as u64),
            Value::Double(d) => {
                any.tag(4, 1);
                any.0.extend_from_slice(&d.to_le_bytes());
            }
            Value::Strs(v) => any.message(5, |array| {
                for s in v {
                    array.message(1, |any| any.bytes(1, s.as_bytes()));
                }
            }),
        });
    });
}

/// `Span`: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6,
/// start 7, end 8, attributes 9, status 15 (`Status { message = 2; code = 3 }`).
fn span(pb: &mut Pb, s: &SpanRecord) {
    pb.message(2, |m| {
        m.bytes(1, &s.trace_id);
        m.bytes(2, &s.span_id);
        if !s.trace_state.is_empty() {
            m.bytes(3, s.trace_state.as_bytes());
        }
        if let Some(parent) = &s.parent {
            m.bytes(4, parent);
        }
        m.bytes(5, s.name.as_bytes());
        m.uint(6, s.kind as u64);
        m.fixed64(7, s.start_ns);
        m.fixed64(8, s.end_ns);
        for (k, v) in &s.attributes {
            key_value(m, 9, k, v);
        }
        if let Some(message) = &s.error {
            m.message(15, |st| {
                st.bytes(2, message.as_bytes());
                st.uint(3, 2);
            });
        }
    });
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }`, with
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }`,
/// `Resource { repeated KeyValue attributes = 1 }` and
/// `ScopeSpans { InstrumentationScope scope = 1 (name 1, version 2); repeated Span spans = 2 }`.
pub fn encode_request(service: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let mut pb = Pb::default();
    pb.message(1, |rs| {
        rs.message(1, |resource| {
            key_value(resource, 1, "service.name", &Value::Str(service.into()));
            key_value(
                resource,
                1,
                "telemetry.sdk.name",
                &Value::Str("infire".into()),
            );
            key_value(
                resource,
                1,
                "telemetry.sdk.language",
                &Value::Str("rust".into()),
            );
        });
        rs.message(2, |ss| {
            ss.message(1, |scope| {
                scope.bytes(1, b"infire.server");
                scope.bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                span(ss, s);
            }
        });
    });
    pb.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_as_protobuf_writes_them() {
        let mut pb = Pb::default();
        pb.uint(3, 300);
        assert_eq!(pb.0, [0x18, 0xac, 0x02]);
        let mut pb = Pb::default();
        key_value(&mut pb, 1, "k", &Value::Int(-1));
        // KeyValue{key="k", value=AnyValue{int_value=-1}} under field 1.
        let mut expected = vec![0x0a, 16, 0x0a, 1, b'k', 0x12, 11, 0x18];
        expected.extend([0xff; 9]);
        expected.push(0x01);
        assert_eq!(pb.0, expected);
    }

    #[test]
    fn endpoints_are_http_urls_with_the_otlp_path_by_default() {
        let e = Endpoint::parse("http://collector:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let e = Endpoint::parse("http://[::1]:9/x/traces").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 9, "/x/traces")
        );
        assert_eq!(Endpoint::parse("http://h/").unwrap().port, 80);
        for bad in ["https://h:4318", "h:4318", "http://:4318", "http://h:99999"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
