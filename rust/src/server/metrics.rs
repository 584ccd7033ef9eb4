//! Prometheus metrics, hand-written: counters and histograms on atomics, rendered in the text
//! exposition format. Engine gauges (running, waiting, KV usage...) are read from
//! [`EngineStats`] when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::EngineStats;

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

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The server's metrics. One instance, shared by every handler.
pub struct Metrics {
    /// Responses by HTTP status code.
    requests_by_status: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Time from a request's arrival at the server to its first token.
    pub ttft: Histogram,
    /// Time between successive token deliveries of a request.
    pub inter_token: Histogram,
    /// Time from a request's arrival to its last token.
    pub e2e: Histogram,
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

    /// The text exposition of every metric, engine gauges from `stats`, and the same gauges
    /// under vLLM's names for `model_name` ([`render_vllm_gauges`]).
    pub fn render(&self, stats: &EngineStats, model_name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP infire_requests_total HTTP responses by status code.\n\
             # TYPE infire_requests_total counter"
        );
        if let Ok(m) = self.requests_by_status.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(out, "infire_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "infire_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "infire_generation_tokens_total",
            "Generated tokens.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "infire_preemptions_total",
            "Sequences preempted (recomputed later) for lack of KV blocks.",
            stats.num_preemptions,
        );
        self.ttft.render(
            &mut out,
            "infire_time_to_first_token_seconds",
            "Time from arrival to the first token.",
        );
        self.inter_token.render(
            &mut out,
            "infire_inter_token_latency_seconds",
            "Time between successive token deliveries.",
        );
        self.e2e.render(
            &mut out,
            "infire_e2e_request_latency_seconds",
            "Time from arrival to the last token.",
        );
        gauge(
            &mut out,
            "infire_num_requests_running",
            "Sequences running in the engine.",
            stats.num_running as f64,
        );
        gauge(
            &mut out,
            "infire_num_requests_waiting",
            "Sequences waiting to be scheduled.",
            stats.num_waiting as f64,
        );
        let kv_usage = if stats.kv_blocks_total == 0 {
            0.0
        } else {
            stats.kv_blocks_used as f64 / stats.kv_blocks_total as f64
        };
        gauge(
            &mut out,
            "infire_kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use (1 = full).",
            kv_usage,
        );
        gauge(
            &mut out,
            "infire_kv_cache_blocks_used",
            "KV-cache blocks in use.",
            stats.kv_blocks_used as f64,
        );
        gauge(
            &mut out,
            "infire_prefix_cache_hit_rate",
            "Fraction of prompt tokens served from the prefix cache.",
            stats.prefix_cache_hit_rate,
        );
        render_vllm_gauges(&mut out, stats, model_name);
        out
    }
}

/// The engine's gauges under vLLM's names and labels, so that what scrapes a vLLM server
/// (llm-d's endpoint picker, KServe, existing dashboards) reads this one unchanged:
/// `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (a
/// fraction, as vLLM reports it) with a `model_name` label, and `vllm:cache_config_info`. The
/// request counts are sequences, as the engine schedules them (the same for `n` = 1).
fn render_vllm_gauges(out: &mut String, stats: &EngineStats, model_name: &str) {
    let label = format!("model_name=\"{}\"", escape_label(model_name));
    let kv_usage = if stats.kv_blocks_total == 0 {
        0.0
    } else {
        stats.kv_blocks_used as f64 / stats.kv_blocks_total as f64
    };
    for (name, help, v) in [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            stats.num_running as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            stats.num_waiting as f64,
        ),
        (
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            kv_usage,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}}} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig.\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{{block_size=\"{}\",num_gpu_blocks=\"{}\"}} 1",
        stats.kv_block_size, stats.kv_blocks_total
    );
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.ttft.observe(Duration::from_millis(3));
        m.ttft.observe(Duration::from_secs(100));
        m.count_response(200);
        let stats = EngineStats {
            num_waiting: 3,
            kv_blocks_total: 8,
            kv_blocks_used: 2,
            kv_block_size: 16,
            ..EngineStats::default()
        };
        let text = m.render(&stats, "m\"x");
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\\\"x\"} 3\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"x\"} 0.25\n"));
        assert!(text.contains("vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"8\"} 1"));
        assert!(text.contains("infire_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("infire_time_to_first_token_seconds_bucket{le=\"80\"} 1"));
        assert!(text.contains("infire_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("infire_requests_total{status=\"200\"} 1"));
    }
}
