//! Prometheus metrics, hand-written: counters and histograms on atomics, per model and per
//! traffic class, rendered in the text exposition format by `metrics_text` (engine gauges —
//! running, waiting, KV usage... — are read from the engines when scraped).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::traffic::Class;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    20.0, 40.0, 80.0,
];

/// A latency histogram: counts per bucket, the count and the sum in microseconds.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The family's samples for one label set (`model="m"`, ...).
    pub(super) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}"
        );
    }
}

/// One traffic class's metrics on one model.
pub struct ClassMetrics {
    /// Time from arrival at the server to the first token.
    pub ttft: Histogram,
    /// Time from arrival at the engine to the first admission by its scheduler.
    pub queue: Histogram,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Requests refused with 429.
    pub(super) rejected: AtomicU64,
}

impl ClassMetrics {
    fn new() -> Self {
        ClassMetrics {
            ttft: Histogram::new(),
            queue: Histogram::new(),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// The server's metrics. One instance, shared by every handler.
pub struct Metrics {
    /// Responses by HTTP status code.
    pub(super) requests_by_status: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Time from a request's arrival at the server to its first token.
    pub ttft: Histogram,
    /// Time between successive token deliveries of a request.
    pub inter_token: Histogram,
    /// Time from a request's arrival to its last token.
    pub e2e: Histogram,
    /// By traffic class (`Class::index`).
    classes: [ClassMetrics; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_by_status: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            ttft: Histogram::new(),
            inter_token: Histogram::new(),
            e2e: Histogram::new(),
            classes: [ClassMetrics::new(), ClassMetrics::new()],
        }
    }
}

impl Metrics {
    /// Counts one response with `status`.
    pub fn count_response(&self, status: u16) {
        if let Ok(mut m) = self.requests_by_status.lock() {
            *m.entry(status).or_insert(0) += 1;
        }
    }

    /// The metrics of traffic class `c`.
    pub fn class(&self, c: Class) -> &ClassMetrics {
        &self.classes[c.index()]
    }
}
