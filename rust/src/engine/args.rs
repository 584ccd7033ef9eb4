//! Every engine option in one place: its name, type, default, documentation and check.
//!
//! [`EngineArgs`] is what a user sets (`infire.Engine(**kwargs)`, `infire.serve(**kwargs)`,
//! the flags of `infire generate` / `infire serve`, all built from [`EngineArgs::schema`]);
//! options arrive as JSON and are parsed with serde, so an unknown name or a value of the wrong
//! type is an [`Error::InvalidConfig`] naming it. Options whose best value depends on the
//! device (`max_num_seqs`, `max_num_batched_tokens`, `async_scheduling`) default to `None` and
//! are settled by [`EngineArgs::engine_config`] once the device is known, as vLLM does.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::{declare_options, parse_options};

pub use crate::options::{OptionSchema, OptionType};

/// The kind of device an engine runs on, for the defaults that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Sequences running at once by default on a GPU: the offline workload of
/// `bench/cuda_bench.py throughput` (256 requests) runs at its best with all of them in one
/// batch, and decode graphs are captured up to this batch size.
pub const CUDA_MAX_NUM_SEQS: usize = 256;
/// Token rows of one step by default on a GPU: enough for a 256-row decode step beside prompt
/// chunks, and long prompts in few steps.
pub const CUDA_MAX_NUM_BATCHED_TOKENS: usize = 8192;
/// The CPU's defaults: a step there costs its rows' FLOPs at a few hundred GFLOP/s, so small
/// steps keep the latency of running sequences low.
pub const CPU_MAX_NUM_SEQS: usize = 64;
pub const CPU_MAX_NUM_BATCHED_TOKENS: usize = 2048;

/// Most token rows one step may be given.
pub const MAX_BATCHED_TOKENS: usize = 1 << 20;
/// Most sequences that may run at once.
pub const MAX_NUM_SEQS: usize = 1 << 16;
/// Most tokens per KV-cache block.
pub const MAX_BLOCK_SIZE: usize = 1024;
/// Most threads of the engine's pool.
pub const MAX_NUM_THREADS: usize = 4096;

declare_options! {
    /// The options of an engine. See the module documentation.
    EngineArgs {
        /// Where the model runs: "auto" (CUDA when a GPU is present, else the CPU), "cpu",
        /// "cuda" or "cuda:N".
        device: String = "auto".into(),
        /// Weights and activations: "auto" (bfloat16 on CUDA; on the CPU, f32 activations with
        /// GGUF Q4_0/Q4_1/Q8_0 weights kept quantized and the rest in float32), "bfloat16" or
        /// "float16" (CUDA), "float32" (CPU: every weight dequantized to f32, the reference).
        dtype: String = "auto".into(),
        /// Weights quantized at load: "fp8" (CUDA: every projection of a bf16/f16 checkpoint to
        /// e4m3 with one scale per output row; embeddings, norms and the LM head stay as they
        /// are), "q8_0" or "q4_0" (CPU: every projection of a bf16/f16/f32 checkpoint to ggml's
        /// blocks, rounded as llama.cpp's reference quantizer rounds, and the LM head to Q8_0;
        /// embeddings and norms stay f32; GGUF blocks stay as stored). An FP8 checkpoint needs
        /// no option: its `quantization_config` says so.
        quantization: Option<String> = None,
        /// KV-cache element type: "auto" (the activations') or "fp8" / "fp8_e4m3" (CUDA: e4m3
        /// codes, a per-tensor scale for each layer's keys and values, from the checkpoint
        /// where it has them, else 1.0; the cache holds twice the tokens).
        kv_cache_dtype: String = "auto".into(),
        /// Share of the GPU's memory the engine may hold in all (weights, activations, KV cache);
        /// the KV cache gets what the rest leaves.
        gpu_memory_utilization: f64 = 0.9,
        /// Longest prompt + output in tokens (default: the model's context length).
        max_model_len: Option<usize> = None,
        /// Seed of requests that set none (the request that arrives i-th uses seed + i).
        seed: u64 = 0,
        /// KV-cache capacity in tokens (default: sized from memory).
        kv_cache_tokens: Option<usize> = None,
        /// Most token rows in one forward step (default: 8192 on CUDA, 2048 on the CPU).
        max_num_batched_tokens: Option<usize> = None,
        /// Most sequences running at once (default: 256 on CUDA, 64 on the CPU).
        max_num_seqs: Option<usize> = None,
        /// Tokens per KV-cache block.
        block_size: usize = 16,
        /// Reuse the KV blocks of prompt prefixes seen before.
        enable_prefix_caching: bool = true,
        /// Launch each step before the previous one's outputs are processed, so that this host
        /// work overlaps the device's (default: on for CUDA, off for the CPU, which computes a step
        /// as it is launched).
        async_scheduling: Option<bool> = None,
        /// Share of each step's token rows that interactive requests leave to batch requests
        /// while there are any (batch work is never starved; see `--api-key KEY=batch`).
        batch_min_share: f64 = 0.1,
        /// Worker threads of the engine's thread pool (the CPU backend's matrix products; default
        /// on the CPU: the physical cores, or RAYON_NUM_THREADS where set; on CUDA the pool does
        /// only per-sequence host work and keeps rayon's default size).
        num_threads: Option<usize> = None,
        /// Jump-forward for structured outputs: where a grammar allows one continuation, its
        /// tokens are appended without a forward step each (computed with the next token's).
        /// They are llguidance's canonical tokenization of the forced text, which may differ
        /// from the tokens the model would have picked one by one (greedy outputs can change,
        /// still valid); off: every token is sampled. Off for requests that want logprobs.
        structured_jump_forward: bool = true,
    }
}

/// The values of `quantization`, as the stats report them.
pub const QUANTIZATIONS: [&str; 3] = ["fp8", "q8_0", "q4_0"];

impl EngineArgs {
    /// Whether the KV cache holds FP8 codes (`kv_cache_dtype` "fp8" or "fp8_e4m3").
    pub fn fp8_kv_cache(&self) -> bool {
        self.kv_cache_dtype != "auto"
    }

    /// Parses options given as a JSON object (unknown names and wrong types are errors that
    /// name the option).
    pub fn from_json(json: &str) -> Result<EngineArgs> {
        let args: EngineArgs = parse_options(json, "engine", &EngineArgs::schema())?;
        args.validate()?;
        Ok(args)
    }

    /// Checks every value that does not depend on the model or the device.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if !(0.05..=1.0).contains(&self.gpu_memory_utilization) {
            return bad(format!(
                "gpu_memory_utilization must be in [0.05, 1], got {}",
                self.gpu_memory_utilization
            ));
        }
        if !(0.0..1.0).contains(&self.batch_min_share) {
            return bad(format!(
                "batch_min_share must be in [0, 1), got {}",
                self.batch_min_share
            ));
        }
        if let Some(q) = self.quantization.as_deref() {
            if !QUANTIZATIONS.contains(&q) {
                return bad(format!(
                    "quantization must be \"fp8\" (CUDA), \"q8_0\" or \"q4_0\" (CPU), or unset; \
                     got {q:?}"
                ));
            }
        }
        if !matches!(self.kv_cache_dtype.as_str(), "auto" | "fp8" | "fp8_e4m3") {
            return bad(format!(
                "kv_cache_dtype must be \"auto\", \"fp8\" or \"fp8_e4m3\", got {:?}",
                self.kv_cache_dtype
            ));
        }
        // Ceilings far above any real use, so that a typo cannot ask for buffers the machine
        // cannot hold (each step's activations scale with the batch).
        for (name, value, most) in [
            (
                "max_num_batched_tokens",
                self.max_num_batched_tokens,
                MAX_BATCHED_TOKENS,
            ),
            ("max_num_seqs", self.max_num_seqs, MAX_NUM_SEQS),
            ("block_size", Some(self.block_size), MAX_BLOCK_SIZE),
            ("num_threads", self.num_threads, MAX_NUM_THREADS),
        ] {
            if let Some(v) = value.filter(|&v| v > most) {
                return bad(format!("{name} must be at most {most}, got {v}"));
            }
        }
        for (name, value) in [
            ("max_model_len", self.max_model_len),
            ("kv_cache_tokens", self.kv_cache_tokens),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("block_size", Some(self.block_size)),
            ("num_threads", self.num_threads),
        ] {
            if value == Some(0) {
                return bad(format!("{name} must be at least 1, got 0"));
            }
        }
        Ok(())
    }

    /// The engine's configuration on a device of `kind`, defaults settled.
    pub fn engine_config(&self, kind: DeviceKind) -> EngineConfig {
        let (seqs, tokens) = match kind {
            DeviceKind::Cuda => (CUDA_MAX_NUM_SEQS, CUDA_MAX_NUM_BATCHED_TOKENS),
            DeviceKind::Cpu => (CPU_MAX_NUM_SEQS, CPU_MAX_NUM_BATCHED_TOKENS),
        };
        EngineConfig {
            max_model_len: self.max_model_len,
            block_size: self.block_size,
            kv_cache_tokens: self.kv_cache_tokens,
            max_num_batched_tokens: self.max_num_batched_tokens.unwrap_or(tokens),
            max_num_seqs: self.max_num_seqs.unwrap_or(seqs),
            enable_prefix_caching: self.enable_prefix_caching,
            seed: self.seed,
            async_scheduling: self.async_scheduling,
            batch_min_share: self.batch_min_share,
            num_threads: self.num_threads,
            structured_jump_forward: self.structured_jump_forward,
            step_trace: None,
            quantization: self.quantization.clone(),
        }
    }
}

/// The engine's settled options ([`EngineArgs::engine_config`] makes them from what the user
/// set, for the device the engine runs on; the defaults and their docs live there).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Longest prompt + output; `None`: the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV-cache capacity in tokens; `None`: what the backend's memory budget allows, or
    /// `DEFAULT_CPU_KV_BYTES / bytes per token` without one (a budget, not the model's whole
    /// context: a request longer than the pool is refused, naming `kv_cache_tokens`).
    pub kv_cache_tokens: Option<usize>,
    /// Most token rows in one forward step.
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Reuse KV blocks of equal prompt prefixes.
    pub enable_prefix_caching: bool,
    /// Seed of sequences whose request names none; each sequence gets `seed + arrival`.
    pub seed: u64,
    /// Launch each step before turning the previous step's tokens into text and deltas, so
    /// that this host work overlaps the device's (vLLM's `async_scheduling`). `None`: on where
    /// the backend's launches only enqueue work (`Backend::launches_ahead`: CUDA), off on the
    /// CPU, which computes a step as it is launched (there it would only delay each output).
    pub async_scheduling: Option<bool>,
    /// Share of a step's rows kept for batch work while there is any.
    pub batch_min_share: f64,
    /// Threads of the engine's pool; `None`: settled by `Engine::new` (the CPU backend:
    /// `RAYON_NUM_THREADS` where set, else the physical cores; CUDA: rayon's default).
    pub num_threads: Option<usize>,
    /// Append the tokens a grammar forces without a forward step each
    /// ([`EngineArgs::structured_jump_forward`]).
    pub structured_jump_forward: bool,
    /// Where the step trace goes, if anywhere (a diagnostic: `Tuning::step_trace`).
    pub step_trace: Option<std::path::PathBuf>,
    /// Weights quantized at load ([`EngineArgs::quantization`]), reported by the stats.
    pub quantization: Option<String>,
}

impl Default for EngineConfig {
    /// The CPU's defaults.
    fn default() -> Self {
        EngineArgs::default().engine_config(DeviceKind::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_options_are_checked_by_name_and_type() {
        let a = EngineArgs::from_json(r#"{"device": "cpu", "max_num_seqs": 8}"#).unwrap();
        assert_eq!((a.device.as_str(), a.max_num_seqs), ("cpu", Some(8)));
        assert_eq!(a.block_size, 16);
        for (json, names) in [
            (r#"{"max_num_seq": 8}"#, "max_num_seq"),
            (r#"{"max_num_seqs": -1}"#, "-1"),
            (r#"{"max_num_seqs": 2.5}"#, "2.5"),
            (r#"{"max_num_seqs": true}"#, "boolean"),
            (r#"{"max_num_seqs": 0}"#, "max_num_seqs"),
            (r#"{"seed": 18446744073709551616}"#, "seed"),
            (r#"{"gpu_memory_utilization": 2}"#, "gpu_memory_utilization"),
            (
                r#"{"max_num_batched_tokens": 4611686018427387904}"#,
                "at most",
            ),
            (r#"{"max_num_seqs": 10000000}"#, "max_num_seqs"),
            (r#"{"num_threads": 0}"#, "num_threads"),
            (r#"{"num_threads": 100000}"#, "num_threads"),
        ] {
            let e = EngineArgs::from_json(json).unwrap_err();
            assert!(matches!(e, Error::InvalidConfig(_)), "{json}: {e:?}");
            assert!(e.to_string().contains(names), "{json}: {e}");
        }
    }

    #[test]
    fn device_defaults_are_settled_by_the_device() {
        let a = EngineArgs::default();
        let cuda = a.engine_config(DeviceKind::Cuda);
        assert_eq!(
            (cuda.max_num_seqs, cuda.max_num_batched_tokens),
            (CUDA_MAX_NUM_SEQS, CUDA_MAX_NUM_BATCHED_TOKENS)
        );
        let cpu = a.engine_config(DeviceKind::Cpu);
        assert_eq!(
            (cpu.max_num_seqs, cpu.max_num_batched_tokens),
            (CPU_MAX_NUM_SEQS, CPU_MAX_NUM_BATCHED_TOKENS)
        );
        let set = EngineArgs {
            max_num_seqs: Some(3),
            ..EngineArgs::default()
        };
        assert_eq!(set.engine_config(DeviceKind::Cuda).max_num_seqs, 3);
    }

    #[test]
    fn the_schema_lists_every_option_with_its_default_and_help() {
        let schema = EngineArgs::schema();
        let names: Vec<_> = schema.iter().map(|o| o.name).collect();
        let json = serde_json::to_value(EngineArgs::default()).unwrap();
        let fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(names.len(), fields.len());
        for o in &schema {
            assert_eq!(json[o.name], o.default, "{}", o.name);
            assert!(o.help.len() > 10 && !o.help.contains("  "), "{}", o.name);
        }
        let seqs = schema.iter().find(|o| o.name == "max_num_seqs").unwrap();
        assert_eq!(seqs.ty, OptionType::OptionalInt);
        assert!(seqs.help.contains(&format!(
            "{CUDA_MAX_NUM_SEQS} on CUDA, {CPU_MAX_NUM_SEQS} on the CPU"
        )));
        let tokens = schema
            .iter()
            .find(|o| o.name == "max_num_batched_tokens")
            .unwrap();
        assert!(tokens.help.contains(&format!(
            "{CUDA_MAX_NUM_BATCHED_TOKENS} on CUDA, {CPU_MAX_NUM_BATCHED_TOKENS} on the CPU"
        )));
    }
}
