//! The text exposition of a node's metrics (Prometheus text format): every family once, with
//! one sample per model (`model="NAME"`) and per class where it is by class.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::metrics::{ClassMetrics, Histogram, Metrics};
use super::traffic::Class;
use crate::engine::EngineStats;

/// One model's part of the exposition.
pub struct ModelSeries<'a> {
    pub name: &'a str,
    pub metrics: &'a Metrics,
    /// Its engine's gauges (zeros while it is not loaded).
    pub stats: EngineStats,
    pub state: &'static str,
    /// Requests of each class waiting for their first token.
    pub waiting: [usize; 2],
}

/// The text exposition of a node: responses by status from `server`, then every series of
/// every model labelled `model="NAME"` (and `class="..."` for the per-class ones), and the
/// gauges under vLLM's names ([`render_vllm_gauges`]).
pub fn render_node(server: &Metrics, models: &[ModelSeries]) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "infire_requests_total",
        "HTTP responses by status code.",
        "counter",
    );
    if let Ok(m) = server.requests_by_status.lock() {
        for (status, n) in m.iter() {
            let _ = writeln!(out, "infire_requests_total{{status=\"{status}\"}} {n}");
        }
    }
    type Value = fn(&ModelSeries) -> f64;
    let per_model: [(&str, &str, &str, Value); 15] = [
        (
            "infire_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            "counter",
            |m| m.metrics.prompt_tokens.load(Ordering::Relaxed) as f64,
        ),
        (
            "infire_generation_tokens_total",
            "Generated tokens.",
            "counter",
            |m| m.metrics.generation_tokens.load(Ordering::Relaxed) as f64,
        ),
        (
            "infire_preemptions_total",
            "Sequences preempted (recomputed later) for lack of KV blocks.",
            "counter",
            |m| m.stats.num_preemptions as f64,
        ),
        (
            "infire_batch_preemptions_total",
            "Batch sequences preempted (recomputed later) for interactive ones.",
            "counter",
            |m| m.stats.num_batch_preemptions as f64,
        ),
        (
            "infire_structured_forced_tokens_total",
            "Structured-output tokens forced by their grammar and appended without a step.",
            "counter",
            |m| m.stats.structured_forced_tokens as f64,
        ),
        (
            "infire_structured_steps_saved_total",
            "Forward steps that jump-forward saved sequences.",
            "counter",
            |m| m.stats.structured_steps_saved as f64,
        ),
        (
            "infire_num_requests_running",
            "Sequences running in the engine.",
            "gauge",
            |m| m.stats.num_running as f64,
        ),
        (
            "infire_num_requests_waiting",
            "Sequences waiting to be scheduled.",
            "gauge",
            |m| m.stats.num_waiting as f64,
        ),
        (
            "infire_kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use (1 = full).",
            "gauge",
            |m| kv_usage(&m.stats),
        ),
        (
            "infire_kv_cache_blocks_used",
            "KV-cache blocks in use.",
            "gauge",
            |m| m.stats.kv_blocks_used as f64,
        ),
        (
            "infire_prefix_cache_hit_rate",
            "Fraction of prompt tokens served from the prefix cache.",
            "gauge",
            |m| m.stats.prefix_cache_hit_rate,
        ),
        (
            "infire_model_ready",
            "1 while the model's engine is loaded and ready.",
            "gauge",
            |m| f64::from(u8::from(m.state == "ready")),
        ),
        (
            "infire_model_sleeping",
            "1 while the model sleeps.",
            "gauge",
            |m| f64::from(u8::from(m.state == "sleeping")),
        ),
        (
            "infire_model_loading",
            "1 while the model loads or wakes.",
            "gauge",
            |m| f64::from(u8::from(m.state == "loading")),
        ),
        (
            "infire_model_failed",
            "1 while the model's engine has failed (until a load starts it again).",
            "gauge",
            |m| f64::from(u8::from(m.state == "failed")),
        ),
    ];
    for (name, help, kind, value) in per_model {
        family(&mut out, name, help, kind);
        for m in models {
            let _ = writeln!(out, "{name}{{{}}} {}", model_label(m.name), value(m));
        }
    }
    type Hist = fn(&Metrics) -> &Histogram;
    let histograms: [(&str, &str, Hist); 3] = [
        (
            "infire_time_to_first_token_seconds",
            "Time from arrival to the first token.",
            |m| &m.ttft,
        ),
        (
            "infire_inter_token_latency_seconds",
            "Time between successive token deliveries.",
            |m| &m.inter_token,
        ),
        (
            "infire_e2e_request_latency_seconds",
            "Time from arrival to the last token.",
            |m| &m.e2e,
        ),
    ];
    for (name, help, hist) in histograms {
        family(&mut out, name, help, "histogram");
        for m in models {
            hist(m.metrics).render(&mut out, name, &model_label(m.name));
        }
    }
    render_kv_capacity(&mut out, models);
    render_classes(&mut out, models);
    for m in models {
        render_vllm_gauges(&mut out, &m.stats, m.name);
    }
    out
}

/// `infire_kv_cache_capacity_tokens{model,dtype}` of every loaded model: the KV cache's size in
/// tokens, labelled with its element type (an FP8 cache holds twice the tokens of a bf16 one).
fn render_kv_capacity(out: &mut String, models: &[ModelSeries]) {
    let name = "infire_kv_cache_capacity_tokens";
    family(
        out,
        name,
        "KV-cache capacity in tokens, by element type.",
        "gauge",
    );
    for m in models.iter().filter(|m| !m.stats.kv_cache_dtype.is_empty()) {
        let _ = writeln!(
            out,
            "{name}{{{},dtype=\"{}\"}} {}",
            model_label(m.name),
            m.stats.kv_cache_dtype,
            m.stats.kv_blocks_total * m.stats.kv_block_size
        );
    }
}

/// The per-class series of every model.
fn render_classes(out: &mut String, models: &[ModelSeries]) {
    let labels =
        |m: &ModelSeries, c: Class| format!("{},class=\"{}\"", model_label(m.name), c.as_str());
    type Hist = fn(&ClassMetrics) -> &Histogram;
    let histograms: [(&str, &str, Hist); 2] = [
        (
            "infire_class_time_to_first_token_seconds",
            "Time from arrival to the first token, by traffic class.",
            |c| &c.ttft,
        ),
        (
            "infire_class_queue_time_seconds",
            "Time from arrival at the engine to the first admission, by traffic class.",
            |c| &c.queue,
        ),
    ];
    for (name, help, hist) in histograms {
        family(out, name, help, "histogram");
        for m in models {
            for c in Class::ALL {
                hist(m.metrics.class(c)).render(out, name, &labels(m, c));
            }
        }
    }
    type Count = fn(&ClassMetrics) -> u64;
    let counters: [(&str, &str, Count); 3] = [
        (
            "infire_class_prompt_tokens_total",
            "Prompt tokens of finished requests, by class.",
            |c| c.prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "infire_class_generation_tokens_total",
            "Generated tokens, by class.",
            |c| c.generation_tokens.load(Ordering::Relaxed),
        ),
        (
            "infire_class_rejected_total",
            "Requests refused with 429, by class.",
            |c| c.rejected.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, count) in counters {
        family(out, name, help, "counter");
        for m in models {
            for c in Class::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {}",
                    labels(m, c),
                    count(m.metrics.class(c))
                );
            }
        }
    }
    family(
        out,
        "infire_class_waiting",
        "Requests waiting for their first token, by class.",
        "gauge",
    );
    for m in models {
        for c in Class::ALL {
            let _ = writeln!(
                out,
                "infire_class_waiting{{{}}} {}",
                labels(m, c),
                m.waiting[c.index()]
            );
        }
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn model_label(name: &str) -> String {
    format!("model=\"{}\"", escape_label(name))
}

fn kv_usage(stats: &EngineStats) -> f64 {
    if stats.kv_blocks_total == 0 {
        0.0
    } else {
        stats.kv_blocks_used as f64 / stats.kv_blocks_total as f64
    }
}

/// The engine's gauges under vLLM's names and labels, so that what scrapes a vLLM server
/// (llm-d's endpoint picker, KServe, existing dashboards) reads this one unchanged:
/// `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (a
/// fraction, as vLLM reports it) with a `model_name` label, and `vllm:cache_config_info` (with
/// vLLM's `cache_dtype` label, the element type's name, empty while not loaded). The
/// request counts are sequences, as the engine schedules them (the same for `n` = 1).
fn render_vllm_gauges(out: &mut String, stats: &EngineStats, model_name: &str) {
    let label = format!("model_name=\"{}\"", escape_label(model_name));
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
            kv_usage(stats),
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
         vllm:cache_config_info{{{label},block_size=\"{}\",cache_dtype=\"{}\",\
         num_gpu_blocks=\"{}\"}} 1",
        stats.kv_block_size, stats.kv_cache_dtype, stats.kv_blocks_total
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
    use std::time::Duration;

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
            kv_cache_dtype: "fp8_e4m3",
            ..EngineStats::default()
        };
        m.class(Class::Batch).count_rejected();
        let series = |name, metrics| ModelSeries {
            name,
            metrics,
            stats,
            state: "ready",
            waiting: [0, 2],
        };
        let other = Metrics::default();
        let text = render_node(&m, &[series("m\"x", &m), series("b", &other)]);
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\\\"x\"} 3\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"x\"} 0.25\n"));
        assert!(text.contains(
            "vllm:cache_config_info{model_name=\"b\",block_size=\"16\",cache_dtype=\"fp8_e4m3\",\
             num_gpu_blocks=\"8\"} 1"
        ));
        assert!(
            text.contains("infire_kv_cache_capacity_tokens{model=\"b\",dtype=\"fp8_e4m3\"} 128\n")
        );
        let unloaded = ModelSeries {
            name: "z",
            metrics: &other,
            stats: EngineStats::default(),
            state: "sleeping",
            waiting: [0, 0],
        };
        let idle = render_node(&m, &[unloaded]);
        assert!(!idle.contains("infire_kv_cache_capacity_tokens{"), "{idle}");
        let ttft = "infire_time_to_first_token_seconds_bucket{model=\"m\\\"x\",le=";
        assert!(text.contains(&format!("{ttft}\"0.005\"}} 1")));
        assert!(text.contains(&format!("{ttft}\"80\"}} 1")));
        assert!(text.contains(&format!("{ttft}\"+Inf\"}} 2")));
        assert!(text.contains("infire_time_to_first_token_seconds_count{model=\"b\"} 0"));
        assert!(text.contains("infire_requests_total{status=\"200\"} 1"));
        assert!(text.contains("infire_class_rejected_total{model=\"m\\\"x\",class=\"batch\"} 1"));
        assert!(text.contains("infire_class_waiting{model=\"b\",class=\"batch\"} 2"));
        assert_eq!(
            text.matches("# TYPE infire_generation_tokens_total")
                .count(),
            1
        );
    }
}
