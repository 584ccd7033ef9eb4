//! The engine core: owns the model, the KV cache and the sequences, and advances them one
//! forward step at a time. [`engine_loop`] runs it on its own thread behind channels.
//!
//! A step: the [`Scheduler`] picks rows within the token budget → one flat [`ForwardBatch`]
//! → forward → sampling for sequences whose last token was computed → stop checks and
//! detokenization → a [`SeqDelta`] per sequence that changed.

pub mod args;
mod batch;
pub mod engine_loop;
pub mod launch;
mod output;
mod scheduler;
mod sequence;
pub mod trace;

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

pub use args::{DeviceKind, EngineArgs};
pub use output::{CompletionOutput, RequestMetrics, RequestOutput};
pub use scheduler::{Scheduled, Scheduler, SchedulerConfig, StepOutput, UpdateContext};
pub use sequence::{now_s, FinishReason, SeqDelta, Sequence};

use self::batch::{build_batch, pad_decode_batch};
use self::trace::{LaunchRecord, StepTrace};
use crate::backend::{Backend, ForwardBatch};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::loader::ModelFiles;
use crate::model::{LlamaModel, StepBuffers};
use crate::sampling::{RowSampling, SamplingParams, StepSampling};
use crate::tokenizer::Tokenizer;

/// The engine's settled options ([`EngineArgs::engine_config`] makes them from what the user
/// set, for the device the engine runs on; the defaults and their docs live there).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Longest prompt + output; `None`: the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV-cache capacity in tokens; `None`: what the backend's memory budget allows, or
    /// `max(max_model_len, DEFAULT_CPU_KV_BYTES / bytes per token)` without one.
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
    /// the backend's launches only enqueue work ([`Backend::launches_ahead`]: CUDA), off on the
    /// CPU, which computes a step as it is launched (there it would only delay each output).
    pub async_scheduling: Option<bool>,
    /// Where the step trace goes, if anywhere (a diagnostic: `Tuning::step_trace`).
    pub step_trace: Option<std::path::PathBuf>,
}

impl Default for EngineConfig {
    /// The CPU's defaults.
    fn default() -> Self {
        EngineArgs::default().engine_config(DeviceKind::Cpu)
    }
}

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
    pub kv_blocks_used: usize,
    pub prefix_cache_hit_rate: f64,
    pub num_preemptions: u64,
}

/// What a request may ask for; checked before it reaches the engine, so a bad request fails
/// alone and changes nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// Tokens the whole KV cache holds.
    pub kv_capacity_tokens: usize,
}

impl RequestLimits {
    /// Validates a request; returns the most tokens each of its sequences may generate.
    pub fn check(&self, prompt: &[u32], params: &SamplingParams) -> Result<usize> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest(
                "prompt must contain at least one token".into(),
            ));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "prompt token id {bad} is outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        if prompt.len() >= self.max_model_len {
            return Err(Error::InvalidRequest(format!(
                "prompt has {} tokens, but max_model_len is {}: at most {} prompt tokens fit",
                prompt.len(),
                self.max_model_len,
                self.max_model_len - 1
            )));
        }
        let room = self.max_model_len - prompt.len();
        // As vLLM: a request that cannot get what it asked for fails, rather than running until
        // the context is full and ending with a length it did not ask for.
        if let Some(m) = params.max_tokens.filter(|&m| m > room) {
            return Err(Error::InvalidRequest(format!(
                "max_tokens {m} is more than the context leaves: the prompt has {} tokens and \
                 max_model_len is {}, so at most {room} new tokens fit",
                prompt.len(),
                self.max_model_len
            )));
        }
        let max_new = params.max_tokens.unwrap_or(room);
        if prompt.len() + max_new > self.kv_capacity_tokens {
            return Err(Error::InvalidRequest(format!(
                "request needs {} tokens of KV cache (prompt {} + max_tokens {}), but the cache \
                 holds {}; lower max_tokens or raise kv_cache_tokens",
                prompt.len() + max_new,
                prompt.len(),
                max_new,
                self.kv_capacity_tokens
            )));
        }
        Ok(max_new)
    }
}

/// The inference engine over backend `B`.
pub struct Engine<B: Backend> {
    backend: B,
    model: LlamaModel<B>,
    tokenizer: Tokenizer,
    eos_token_ids: Vec<u32>,
    default_sampling: SamplingParams,
    cache: B::KvCache,
    bufs: StepBuffers<B>,
    kv: BlockManager,
    scheduler: Scheduler,
    config: EngineConfig,
    limits: RequestLimits,
    next_arrival: u64,
    /// Whether steps overlap (see [`EngineConfig::async_scheduling`]).
    async_scheduling: bool,
    /// The step launched and not yet collected (async scheduling only).
    in_flight: Option<Launched>,
    /// The step trace, when the environment asks for one (see [`trace`]).
    trace: Option<StepTrace>,
}

impl<B: Backend> Engine<B> {
    /// Loads the model's weights into `backend` and sizes the KV cache.
    pub fn new(mut backend: B, files: ModelFiles, mut config: EngineConfig) -> Result<Self> {
        let mc = files.config.clone();
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
        if config.block_size == 0 || config.max_num_batched_tokens == 0 || config.max_num_seqs == 0
        {
            return Err(Error::InvalidConfig(
                "block_size, max_num_batched_tokens and max_num_seqs must be at least 1".into(),
            ));
        }
        let model = LlamaModel::load(&backend, mc.clone(), files.weights.as_ref())?;
        drop(files.weights);
        // Logits rows: one per running sequence, plus the prompt-logprob rows.
        let bufs = StepBuffers::new(
            &backend,
            &mc,
            config.max_num_batched_tokens,
            config.max_num_seqs + PROMPT_LOGPROB_ROWS,
        )?;
        // The KV cache takes what the backend can spare once weights and buffers are in place.
        let kv_bytes_per_token = 2
            * mc.num_hidden_layers
            * mc.num_key_value_heads
            * mc.head_dim
            * backend.kv_element_bytes();
        let budget = backend.kv_cache_budget_bytes();
        let kv_tokens = config.kv_cache_tokens.unwrap_or_else(|| match budget {
            Some(bytes) => bytes / kv_bytes_per_token,
            None => max_model_len.max(DEFAULT_CPU_KV_BYTES / kv_bytes_per_token),
        });
        let num_blocks = kv_tokens / config.block_size;
        if let (None, Some(bytes), 0) = (config.kv_cache_tokens, budget, num_blocks) {
            return Err(Error::InvalidConfig(format!(
                "no GPU memory is left for the KV cache ({} MiB for {} tokens of {} KiB): \
                 raise gpu_memory_utilization or lower max_num_batched_tokens / max_num_seqs",
                bytes >> 20,
                config.block_size,
                kv_bytes_per_token >> 10
            )));
        }
        if num_blocks == 0 {
            return Err(Error::InvalidConfig(format!(
                "kv_cache_tokens {kv_tokens} is less than one block of {} tokens",
                config.block_size
            )));
        }
        config.kv_cache_tokens = Some(num_blocks * config.block_size);
        let shape = model.attention_shape();
        let cache = backend.kv_cache(mc.num_hidden_layers, num_blocks, config.block_size, shape)?;
        backend.finish_loading()?;
        let max_blocks_per_seq = max_model_len.div_ceil(config.block_size);
        backend.reserve_steps(
            config.max_num_batched_tokens,
            config.max_num_seqs + PROMPT_LOGPROB_ROWS,
            max_blocks_per_seq,
        )?;
        let async_scheduling = config
            .async_scheduling
            .unwrap_or_else(|| backend.launches_ahead());
        let trace = config.step_trace.as_deref().and_then(StepTrace::create);
        let mut engine = Engine {
            backend,
            model,
            tokenizer: files.tokenizer,
            eos_token_ids: files.eos_token_ids,
            default_sampling: files.default_sampling,
            cache,
            bufs,
            kv: BlockManager::new(num_blocks, config.block_size, config.enable_prefix_caching),
            scheduler: Scheduler::new(SchedulerConfig {
                max_num_seqs: config.max_num_seqs,
                max_num_batched_tokens: config.max_num_batched_tokens,
                max_prompt_logprob_rows: PROMPT_LOGPROB_ROWS,
            }),
            limits: RequestLimits {
                max_model_len,
                vocab_size: mc.vocab_size,
                kv_capacity_tokens: num_blocks * config.block_size,
            },
            config,
            next_arrival: 0,
            async_scheduling,
            in_flight: None,
            trace,
        };
        engine.capture_decode_graphs(max_blocks_per_seq)?;
        if engine.trace.is_some() {
            engine.backend.time_steps();
        }
        Ok(engine)
    }

    /// Runs every decode step shape the backend replays as a graph (up to the largest decode
    /// step the engine can run) twice on padding rows: the first run creates what a step needs,
    /// the second is captured. So the first requests find their graphs in place. The padding
    /// rows attend to nothing; the first one's block table (of block 0) only sets the width.
    fn capture_decode_graphs(&mut self, max_blocks_per_seq: usize) -> Result<()> {
        let most = self.config.max_num_seqs;
        let largest = self.backend.decode_graph_rows(most).unwrap_or(most);
        let largest = largest.min(self.bufs.max_tokens).min(self.bufs.max_logits);
        for (rows, width) in self.backend.decode_graph_shapes(max_blocks_per_seq) {
            if rows > largest {
                continue;
            }
            let mut batch = ForwardBatch::default();
            pad_decode_batch(&mut batch, rows);
            batch.seqs[0].block_table = vec![0; width];
            let sampling = StepSampling {
                rows: vec![RowSampling::GREEDY; rows],
                penalty_tokens: Vec::new(),
            };
            for _ in 0..2 {
                let n = self.enqueue_step(&batch, Some(&sampling));
                self.model
                    .collect(&self.backend, &self.bufs, n, Some(&sampling))?;
            }
        }
        Ok(())
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model.config
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
            kv_blocks_used: self.kv.num_blocks() - self.kv.num_free_blocks(),
            prefix_cache_hit_rate: self.kv.hit_rate(),
            num_preemptions: self.scheduler.num_preemptions,
        }
    }

    /// Queues request `request_id` with `params.n` sequences. Fails, changing nothing, if the
    /// prompt or the parameters cannot be served (see [`RequestLimits::check`]).
    pub fn add_request(
        &mut self,
        request_id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<()> {
        let max_new = self.limits.check(&prompt, &params)?;
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
        let mut deltas = Vec::new();
        let in_flight = self.in_flight.is_some();
        if in_flight {
            let mine = |s: &&mut Sequence| s.request_id == request_id && !s.is_finished();
            let aborted = self.scheduler.running.iter_mut().filter(mine);
            deltas.extend(aborted.filter_map(|s| abort_delta(s, &self.tokenizer)));
        }
        let mut seqs = self
            .scheduler
            .remove_request(request_id, &mut self.kv, in_flight);
        deltas.extend(
            seqs.iter_mut()
                .filter_map(|s| abort_delta(s, &self.tokenizer)),
        );
        deltas
    }

    /// Runs one step and returns what changed, one delta per sequence that produced tokens or
    /// finished. A sequence that fails (e.g. its detokenization) is finished alone with its
    /// error in the second list. The three parts, [`collect_step`](Self::collect_step),
    /// [`launch_next`](Self::launch_next) and [`emit`](Self::emit), are public so that the
    /// engine loop can take in new requests between collecting a step and launching the next.
    ///
    /// With async scheduling (see [`EngineConfig::async_scheduling`]) a step is launched
    /// before the previous one's tokens are turned into text and deltas, so that this host work
    /// overlaps the device's. At most one step is in flight; sequences aborted meanwhile keep
    /// their KV blocks until it has been collected.
    pub fn step(&mut self) -> (Vec<SeqDelta>, Vec<(u64, Error)>) {
        let (mut deltas, mut errors) = self.collect_step();
        self.launch_next();
        let (more, failed) = self.emit();
        deltas.extend(more);
        errors.extend(failed);
        (deltas, errors)
    }

    /// Finishes the step in flight, or runs one now, and applies its tokens (see
    /// [`apply_step`](Self::apply_step)). Sequences that finished leave, freeing their blocks;
    /// returns their last deltas and the sequences that failed.
    pub fn collect_step(&mut self) -> (Vec<SeqDelta>, Vec<(u64, Error)>) {
        let launched = match self.in_flight.take() {
            Some(launched) => launched,
            None => match self.launch_step() {
                Some(launched) => launched,
                None => return (Vec::new(), Vec::new()),
            },
        };
        let t_collect = Instant::now();
        let (model, backend, bufs) = (&self.model, &self.backend, &self.bufs);
        let sampling = launched.sampling.as_ref();
        let collected = model.collect(backend, bufs, launched.rows, sampling);
        let collect_time = t_collect.elapsed();
        let (logits, tokens) = match collected {
            Ok(out) => out,
            Err(e) => {
                let failed = self.fail_step(&launched.plan, e);
                // Sequences aborted while the step was in flight but not in its plan leave too
                // (their final deltas went out with the abort).
                self.scheduler.take_finished(&mut self.kv);
                return (Vec::new(), failed);
            }
        };
        let out = StepOutput {
            plan: &launched.plan,
            logits: &logits,
            tokens: launched.sampling.is_some().then_some(&tokens[..]),
            vocab: self.model.config.vocab_size,
        };
        let ctx = UpdateContext {
            tokenizer: &self.tokenizer,
            eos_token_ids: &self.eos_token_ids,
            defer_text: self.async_scheduling,
        };
        let mut errors = self.scheduler.update(&mut self.kv, out, &ctx);
        let mut deltas = Vec::new();
        for mut seq in self.scheduler.take_finished(&mut self.kv) {
            match emit_delta(&mut seq, &self.tokenizer) {
                Ok(delta) => deltas.extend(delta),
                Err(e) => errors.push(e),
            }
        }
        if let Some(record) = &launched.trace {
            let apply = t_collect.elapsed() - collect_time;
            let (timing, last) = (self.backend.step_timing(), !self.has_work());
            if let Some(trace) = &mut self.trace {
                trace.write(record, t_collect, collect_time, apply, timing, last);
            }
        }
        (deltas, errors)
    }

    /// With async scheduling, plans and launches the next step (if there is work) without
    /// waiting for it; otherwise does nothing (the next [`collect_step`](Self::collect_step)
    /// runs it).
    pub fn launch_next(&mut self) {
        if self.async_scheduling && self.in_flight.is_none() {
            self.in_flight = self.launch_step();
        }
    }

    /// Text and deltas of every sequence with news since the last call: in parallel over the
    /// engine's threads in chunks of 64 sequences (waking workers for fewer costs more CPU
    /// than it saves). With async scheduling this runs while the device computes the step
    /// [`launch_next`](Self::launch_next) started.
    pub fn emit(&mut self) -> (Vec<SeqDelta>, Vec<(u64, Error)>) {
        let tokenizer = &self.tokenizer;
        let emit = |seq: &mut Sequence| emit_delta(seq, tokenizer);
        let running: Vec<_> = self
            .scheduler
            .running
            .par_iter_mut()
            .with_min_len(64)
            .map(emit)
            .collect();
        let waiting: Vec<_> = self.scheduler.waiting.iter_mut().map(emit).collect();
        let (mut deltas, mut errors) = (Vec::new(), Vec::new());
        for outcome in running.into_iter().chain(waiting) {
            match outcome {
                Ok(delta) => deltas.extend(delta),
                Err(e) => errors.push(e),
            }
        }
        (deltas, errors)
    }

    /// Plans the next step and launches it on the backend without waiting; `None` when there
    /// is nothing to run.
    fn launch_step(&mut self) -> Option<Launched> {
        let t_launch = Instant::now();
        let plan = self.scheduler.schedule(&mut self.kv);
        if plan.is_empty() {
            return None;
        }
        let mut batch = build_batch(&self.scheduler.running, &plan, self.kv.block_size());
        let rows = batch.num_tokens();
        // A backend that replays decode steps as graphs wants them at fixed sizes.
        let decode_only = batch.seqs.len() == rows && batch.logits_rows.len() == rows;
        let fits = |n: &usize| *n <= self.bufs.max_tokens && *n <= self.bufs.max_logits;
        let padded = self.backend.decode_graph_rows(rows).filter(fits);
        if let Some(padded) = padded.filter(|_| decode_only) {
            pad_decode_batch(&mut batch, padded);
        }
        // Tokens are picked on the backend, so that only their ids leave it, unless a request
        // of the step wants log-probabilities (computed on the host from the logits).
        let on_backend = plan.iter().all(|s| {
            let p = &self.scheduler.running[s.seq].params;
            p.logprobs.is_none() && p.prompt_logprobs.is_none()
        });
        let sampling = on_backend.then(|| {
            let mut step = StepSampling::default();
            for s in &plan {
                let seq = &mut self.scheduler.running[s.seq];
                if seq.num_computed + s.num_tokens == seq.num_tokens() {
                    let row = seq.sampler.row(&seq.params, &mut step.penalty_tokens);
                    step.rows.push(row);
                }
            }
            // Padding rows of a decode graph take their (unused) argmax.
            step.rows
                .resize(batch.logits_rows.len(), RowSampling::GREEDY);
            step
        });
        let rows = self.enqueue_step(&batch, sampling.as_ref());
        let trace = self
            .trace
            .is_some()
            .then(|| LaunchRecord::new(&batch, plan.len(), t_launch));
        Some(Launched {
            plan,
            rows,
            sampling,
            trace,
        })
    }

    /// Hands `batch` to the backend and enqueues its forward pass and, with `sampling`, the
    /// choice of its tokens; returns its logits rows ([`LlamaModel::launch`]).
    fn enqueue_step(&mut self, batch: &ForwardBatch, sampling: Option<&StepSampling>) -> usize {
        self.backend.prepare_step(batch);
        let (cache, bufs) = (&mut self.cache, &mut self.bufs);
        self.model
            .launch(&self.backend, batch, cache, bufs, sampling)
    }
}

impl<B: Backend> Drop for Engine<B> {
    /// Waits for a step still in flight: the device must be done with the buffers before they
    /// are freed.
    fn drop(&mut self) {
        if let Some(l) = self.in_flight.take() {
            let _ = self
                .model
                .collect(&self.backend, &self.bufs, l.rows, l.sampling.as_ref());
        }
    }
}

/// Brings `seq`'s text up to its tokens and takes its delta; a failed detokenization finishes
/// it (Abort) and comes back with its request id.
fn emit_delta(
    seq: &mut Sequence,
    tokenizer: &Tokenizer,
) -> std::result::Result<Option<SeqDelta>, (u64, Error)> {
    match seq.detokenize(tokenizer) {
        Ok(()) => Ok(seq.take_delta()),
        Err(e) => {
            seq.finish(Some(FinishReason::Abort));
            Err((seq.request_id, e))
        }
    }
}

/// Finishes `seq` as aborted and returns its final delta, with the text of every token first
/// (with async scheduling the last collected token has none yet).
fn abort_delta(seq: &mut Sequence, tokenizer: &Tokenizer) -> Option<SeqDelta> {
    let _ = seq.detokenize(tokenizer);
    seq.finish(Some(FinishReason::Abort));
    seq.take_delta()
}

/// A step launched on the backend and not yet collected.
struct Launched {
    plan: Vec<Scheduled>,
    /// Logits rows of the step.
    rows: usize,
    /// How the backend picks the step's tokens; `None`: it returns the logits instead.
    sampling: Option<StepSampling>,
    /// The step's shape and launch time, when the engine writes a step trace.
    trace: Option<LaunchRecord>,
}

impl<B: Backend> Engine<B> {
    /// A forward step failed on the backend: its requests end with the error (their blocks are
    /// freed); requests that were not in the step go on.
    fn fail_step(&mut self, plan: &[Scheduled], e: Error) -> Vec<(u64, Error)> {
        let mut ids: Vec<u64> = plan
            .iter()
            .map(|s| self.scheduler.running[s.seq].request_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                self.abort(id);
                (id, Error::Engine(format!("forward step failed: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "async_tests.rs"]
mod async_tests;
