//! The engine core: owns the model, the KV cache and the sequences, and advances them one
//! forward step at a time. [`engine_loop`] runs it on its own thread behind channels.
//!
//! A step: the [`Scheduler`] picks rows within the token budget → one flat `ForwardBatch`
//! → forward → sampling for sequences whose last token was computed → stop checks and
//! detokenization → a [`SeqDelta`] per sequence that changed.

pub mod args;
mod batch;
pub mod engine_loop;
pub mod launch;
mod limits;
mod output;
pub mod runner;
mod scheduler;
mod sequence;
mod step;
pub mod trace;

use std::collections::HashSet;
use std::sync::Arc;

pub use args::{DeviceKind, EngineArgs, EngineConfig};
pub use limits::RequestLimits;
pub use output::{CompletionOutput, RequestMetrics, RequestOutput};
pub use scheduler::{
    is_batch, Scheduled, Scheduler, SchedulerConfig, StepOutput, UpdateContext, BATCH_PRIORITY,
};
pub use sequence::{now_s, FinishReason, SeqDelta, Sequence};

use self::runner::{LaunchedStep, ModelRunner, RunnerSizes};
use self::trace::LaunchRecord;
use self::trace::StepTrace;
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::loader::ModelFiles;
use crate::sampling::SamplingParams;
use crate::structured::GrammarCompiler;
use crate::tokenizer::Tokenizer;

/// KV memory the CPU backend takes by default. Pages are touched only as the cache fills.
pub const DEFAULT_CPU_KV_BYTES: usize = 1 << 30;

/// Prompt rows per step whose logits are kept for `prompt_logprobs` requests.
pub const PROMPT_LOGPROB_ROWS: usize = 256;

/// A snapshot of the engine's load.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_total: usize,
    /// Tokens per KV-cache block.
    pub kv_block_size: usize,
    pub kv_blocks_used: usize,
    pub prefix_cache_hit_rate: f64,
    pub num_preemptions: u64,
    /// Batch sequences preempted for interactive ones (also in `num_preemptions`).
    pub num_batch_preemptions: u64,
    /// Tokens of structured outputs appended by jump-forward (forced by their grammar).
    pub structured_forced_tokens: u64,
    /// Forward steps jump-forward saved (a sequence's step per forced token, less the steps
    /// that computed output tokens without a sample: forced runs split by the step budget).
    pub structured_steps_saved: u64,
    /// The KV cache's element type ([`crate::backend::KvDtype::name`]; empty in the default
    /// of an engine not loaded).
    pub kv_cache_dtype: &'static str,
    /// The weights' quantization: `Some("fp8")` for an FP8 checkpoint (on the CPU, its weights
    /// dequantized to f32 at load), else the `quantization` option (`"fp8"`, `"q8_0"`,
    /// `"q4_0"`), else `None`.
    pub quantization: Option<&'static str>,
}

/// A step launched on the backend and not yet collected.
struct Launched {
    /// The scheduler's plan of the step.
    plan: Vec<Scheduled>,
    /// The step on the runner (its logits rows and how its tokens are picked).
    step: LaunchedStep,
    /// The step's shape and launch time, when the engine writes a step trace.
    trace: Option<LaunchRecord>,
}

/// The inference engine over backend `B`.
pub struct Engine<B: Backend> {
    /// The model on its backend: runs the steps.
    runner: ModelRunner<B>,
    tokenizer: Tokenizer,
    eos_token_ids: Vec<u32>,
    /// Compiles requests' structured outputs (shared with the engine's handles).
    grammars: Arc<GrammarCompiler>,
    default_sampling: SamplingParams,
    kv: BlockManager,
    scheduler: Scheduler,
    config: EngineConfig,
    limits: RequestLimits,
    next_arrival: u64,
    /// Whether steps overlap (see [`EngineConfig::async_scheduling`]).
    async_scheduling: bool,
    /// What [`EngineStats::quantization`] reports.
    quantization: Option<&'static str>,
    /// The step launched and not yet collected (async scheduling only).
    in_flight: Option<Launched>,
    /// The step trace, when the environment asks for one (see [`trace`]).
    trace: Option<StepTrace>,
}

impl<B: Backend> Engine<B> {
    /// Loads the model's weights into `backend` (whose [`KvLayout`](crate::backend::KvLayout)
    /// sets the block size), sizes the KV cache and captures the backend's decode graphs.
    pub fn new(backend: B, files: ModelFiles, mut config: EngineConfig) -> Result<Self> {
        let mc = files.config.clone();
        let quantization = if mc.quantization.is_some() {
            Some("fp8")
        } else {
            let asked = config.quantization.as_deref();
            args::QUANTIZATIONS.into_iter().find(|&q| Some(q) == asked)
        };
        let max_model_len = match config.max_model_len {
            Some(0) => {
                return Err(Error::InvalidConfig(
                    "max_model_len must be at least 1".into(),
                ))
            }
            Some(n) if n > mc.max_position_embeddings => {
                return Err(Error::InvalidConfig(format!(
                    "max_model_len {n} exceeds the model's context length {}",
                    mc.max_position_embeddings
                )))
            }
            Some(n) => n,
            None => mc.max_position_embeddings,
        };
        config.block_size = backend.kv_layout().block_size;
        if config.block_size == 0 || config.max_num_batched_tokens == 0 || config.max_num_seqs == 0
        {
            return Err(Error::InvalidConfig(
                "block_size, max_num_batched_tokens and max_num_seqs must be at least 1".into(),
            ));
        }
        let max_blocks_per_seq = max_model_len.div_ceil(config.block_size);
        // Logits rows: one per running sequence, plus the prompt-logprob rows.
        let max_logits = config.max_num_seqs + PROMPT_LOGPROB_ROWS;
        let sizes = RunnerSizes {
            max_tokens: config.max_num_batched_tokens,
            max_logits,
            max_blocks_per_seq,
            kv_cache_tokens: config.kv_cache_tokens,
            default_kv_bytes: DEFAULT_CPU_KV_BYTES,
        };
        let mut runner = ModelRunner::load(backend, mc.clone(), files.weights.as_ref(), sizes)?;
        drop(files.weights);
        let num_blocks = runner.num_blocks();
        config.kv_cache_tokens = Some(num_blocks * config.block_size);
        let async_scheduling = config
            .async_scheduling
            .unwrap_or_else(|| runner.backend().launches_ahead());
        if !runner.backend().launches_ahead() {
            // The CPU backend's matrix products run on the pool: one thread per physical core.
            // A device backend's pool does only host work per sequence: rayon's default there.
            config
                .num_threads
                .get_or_insert_with(crate::backend::cpu::default_threads);
        }
        runner.capture_graphs(config.max_num_seqs, max_blocks_per_seq)?;
        let trace = config.step_trace.as_deref().and_then(StepTrace::create);
        if trace.is_some() {
            runner.backend_mut().time_steps();
        }
        Ok(Engine {
            runner,
            grammars: Arc::new(GrammarCompiler::new(
                files.tokenizer.clone(),
                &files.eos_token_ids,
            )),
            tokenizer: files.tokenizer,
            eos_token_ids: files.eos_token_ids,
            default_sampling: files.default_sampling,
            kv: BlockManager::new(num_blocks, config.block_size, config.enable_prefix_caching),
            scheduler: Scheduler::new(SchedulerConfig {
                max_num_seqs: config.max_num_seqs,
                max_num_batched_tokens: config.max_num_batched_tokens,
                max_prompt_logprob_rows: PROMPT_LOGPROB_ROWS,
                batch_min_share: config.batch_min_share,
            }),
            limits: RequestLimits {
                max_model_len,
                vocab_size: mc.vocab_size,
                kv_capacity_tokens: num_blocks * config.block_size,
            },
            config,
            next_arrival: 0,
            async_scheduling,
            quantization,
            in_flight: None,
            trace,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The compiler of structured outputs for this model's vocabulary.
    pub fn grammars(&self) -> &Arc<GrammarCompiler> {
        &self.grammars
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn model_config(&self) -> &ModelConfig {
        self.runner.model_config()
    }

    /// Sampling defaults of the model (`generation_config.json`), for requests that give none.
    pub fn default_sampling_params(&self) -> &SamplingParams {
        &self.default_sampling
    }

    /// End-of-sequence token ids.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether any sequence is waiting or running, or a step is in flight.
    pub fn has_work(&self) -> bool {
        self.in_flight.is_some() || self.scheduler.has_work()
    }

    /// Current load and KV usage.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            num_running: self.scheduler.running.len(),
            num_waiting: self.scheduler.num_waiting(),
            kv_blocks_total: self.kv.num_blocks(),
            kv_block_size: self.kv.block_size(),
            kv_blocks_used: self.kv.num_blocks() - self.kv.num_free_blocks(),
            prefix_cache_hit_rate: self.kv.hit_rate(),
            num_preemptions: self.scheduler.num_preemptions,
            num_batch_preemptions: self.scheduler.num_batch_preemptions,
            structured_forced_tokens: self.scheduler.num_forced_tokens,
            structured_steps_saved: self.scheduler.forced_steps_saved(),
            kv_cache_dtype: self.runner.backend().kv_layout().dtype.name(),
            quantization: self.quantization,
        }
    }

    /// Queues request `request_id` with `params.n` sequences. Fails, changing nothing, if the
    /// prompt or the parameters cannot be served (see [`RequestLimits::check`]).
    pub fn add_request(
        &mut self,
        request_id: u64,
        prompt: Vec<u32>,
        mut params: SamplingParams,
        priority: i32,
    ) -> Result<()> {
        let max_new = self.limits.check(&prompt, &params)?;
        self.grammars.prepare(&mut params)?;
        let n = params.n;
        let params = Arc::new(params);
        let mut seqs = Vec::with_capacity(n);
        for index in 0..n {
            let arrival = self.next_arrival;
            self.next_arrival += 1;
            // Sequences of a seeded request get distinct, reproducible streams.
            let seed = match params.seed {
                Some(s) => s.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                None => self.config.seed.wrapping_add(arrival),
            };
            seqs.push(Sequence::new(
                request_id,
                index,
                priority,
                arrival,
                prompt.clone(),
                params.clone(),
                max_new,
                seed,
            ));
        }
        self.scheduler
            .add_request(seqs, self.config.enable_prefix_caching);
        Ok(())
    }

    /// Aborts every sequence of a request wherever it is, freeing its blocks. Returns the final
    /// deltas (finish reason `Abort`); empty if the request was unknown or already finished.
    /// While a step is in flight its running sequences finish at once but keep their blocks
    /// (the device may still be writing them) until the next [`step`](Self::step) collects it.
    pub fn abort(&mut self, request_id: u64) -> Vec<SeqDelta> {
        self.abort_many(&HashSet::from([request_id]))
    }

    /// [`abort`](Self::abort) of every request in `ids`, in one pass over the queues.
    pub fn abort_many(&mut self, ids: &HashSet<u64>) -> Vec<SeqDelta> {
        let mut deltas = Vec::new();
        let in_flight = self.in_flight.is_some();
        if in_flight {
            let mine = |s: &&mut Sequence| ids.contains(&s.request_id) && !s.is_finished();
            let aborted = self.scheduler.running.iter_mut().filter(mine);
            deltas.extend(aborted.filter_map(|s| s.abort_delta(&self.tokenizer)));
        }
        let mut seqs = self.scheduler.remove_requests(ids, &mut self.kv, in_flight);
        deltas.extend(
            seqs.iter_mut()
                .filter_map(|s| s.abort_delta(&self.tokenizer)),
        );
        deltas
    }
}

#[cfg(test)]
#[path = "async_tests.rs"]
mod async_tests;
