//! The engine: owns the model, the KV cache and the running sequences, and advances them one
//! forward step at a time.
//!
//! Each [`Engine::step`] batches every running sequence: decoding sequences contribute their
//! last token, sequences still in prefill contribute the next chunk of their prompt, within a
//! budget of `max_num_batched_tokens` rows. A request is admitted (first come, first served)
//! once the KV blocks for its prompt and its whole output are free, so a running sequence never
//! runs out of cache.

mod sequence;

use std::collections::VecDeque;

pub use sequence::{FinishReason, RequestOutput, Sequence};

use crate::backend::{Backend, ForwardBatch, SeqSlice};
use crate::error::{Error, Result};
use crate::kv::BlockPool;
use crate::loader::ModelFiles;
use crate::model::{LlamaModel, StepBuffers};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Engine options. Defaults are documented on each field.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Longest prompt + output; default: the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block (default 16).
    pub block_size: usize,
    /// KV-cache capacity in tokens; default: `max(max_model_len, DEFAULT_CPU_KV_BYTES / bytes
    /// per token)`.
    pub kv_cache_tokens: Option<usize>,
    /// Most token rows in one forward step (default 2048).
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once (default 64).
    pub max_num_seqs: usize,
    /// Seed for requests that name none; request `i` uses `seed + i`.
    pub seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_model_len: None,
            block_size: 16,
            kv_cache_tokens: None,
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            seed: 0,
        }
    }
}

/// KV memory the CPU backend takes by default. Pages are touched only as the cache fills.
pub const DEFAULT_CPU_KV_BYTES: usize = 1 << 30;

/// A snapshot of the engine's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
}

/// What one step changed for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEvent {
    pub request_id: u64,
    pub finished: bool,
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
    pool: BlockPool,
    config: EngineConfig,
    max_model_len: usize,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    /// Finished sequences not yet collected by [`Engine::take`].
    finished: Vec<Sequence>,
    next_request_id: u64,
}

impl<B: Backend> Engine<B> {
    /// Loads the model's weights into `backend` and sizes the KV cache.
    pub fn new(backend: B, files: ModelFiles, mut config: EngineConfig) -> Result<Self> {
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
        let kv_bytes_per_token =
            2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * 4;
        let kv_tokens = config
            .kv_cache_tokens
            .unwrap_or_else(|| max_model_len.max(DEFAULT_CPU_KV_BYTES / kv_bytes_per_token));
        let num_blocks = kv_tokens / config.block_size;
        if num_blocks == 0 {
            return Err(Error::InvalidConfig(format!(
                "kv_cache_tokens {kv_tokens} is less than one block of {} tokens",
                config.block_size
            )));
        }
        config.kv_cache_tokens = Some(num_blocks * config.block_size);
        let model = LlamaModel::load(&backend, mc.clone(), files.weights.as_ref())?;
        drop(files.weights);
        let shape = model.attention_shape();
        let cache = backend.kv_cache(mc.num_hidden_layers, num_blocks, config.block_size, shape)?;
        let bufs = StepBuffers::new(
            &backend,
            &mc,
            config.max_num_batched_tokens,
            config.max_num_seqs,
        )?;
        Ok(Engine {
            backend,
            model,
            tokenizer: files.tokenizer,
            eos_token_ids: files.eos_token_ids,
            default_sampling: files.default_sampling,
            cache,
            bufs,
            pool: BlockPool::new(num_blocks, config.block_size),
            max_model_len,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            finished: Vec::new(),
            next_request_id: 0,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn model_config(&self) -> &crate::config::ModelConfig {
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

    /// Current load and KV usage.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_blocks_total: self.pool.num_blocks(),
            kv_blocks_used: self.pool.num_blocks() - self.pool.num_free(),
        }
    }

    /// Whether any request is waiting or running.
    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Queues a request. Fails, changing nothing, if the prompt or the parameters cannot be
    /// served: empty or over-long prompt, token ids outside the vocabulary, bad parameters, or
    /// more KV memory than the whole cache holds.
    pub fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<u64> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest(
                "prompt must contain at least one token".into(),
            ));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidRequest(format!(
                "prompt token id {bad} is outside the vocabulary (size {vocab})"
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
        let max_new = params.max_tokens.map_or(room, |m| m.min(room));
        let need = self.pool.blocks_for(prompt.len() + max_new);
        if need > self.pool.num_blocks() {
            return Err(Error::InvalidRequest(format!(
                "request needs {} tokens of KV cache (prompt {} + max_tokens {}), but the cache \
                 holds {}; lower max_tokens or raise kv_cache_tokens",
                prompt.len() + max_new,
                prompt.len(),
                max_new,
                self.pool.num_blocks() * self.pool.block_size()
            )));
        }
        let id = self.next_request_id;
        self.next_request_id += 1;
        let seed = self.config.seed.wrapping_add(id);
        self.waiting
            .push_back(Sequence::new(id, prompt, params, max_new, seed));
        Ok(id)
    }

    /// Aborts a request wherever it is, freeing its blocks. Returns whether it was found.
    pub fn abort(&mut self, request_id: u64) -> bool {
        let mut seq = if let Some(i) = self.waiting.iter().position(|s| s.request_id == request_id)
        {
            self.waiting.remove(i)
        } else if let Some(i) = self.running.iter().position(|s| s.request_id == request_id) {
            Some(self.running.swap_remove(i))
        } else {
            None
        };
        if let Some(s) = seq.as_mut() {
            self.pool.release(&mut s.block_table);
            s.finish_reason = Some(FinishReason::Abort);
        }
        seq.is_some() || self.take(request_id).is_some()
    }

    /// A running, waiting or finished (not yet taken) sequence.
    pub fn get(&self, request_id: u64) -> Option<&Sequence> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .chain(self.finished.iter())
            .find(|s| s.request_id == request_id)
    }

    /// Removes and returns a finished sequence.
    pub fn take(&mut self, request_id: u64) -> Option<Sequence> {
        let i = self
            .finished
            .iter()
            .position(|s| s.request_id == request_id)?;
        Some(self.finished.swap_remove(i))
    }

    /// Runs one forward step over the running sequences and samples where a sequence reached
    /// its last token. Returns which requests got new tokens or finished.
    pub fn step(&mut self) -> Result<Vec<StepEvent>> {
        self.admit();
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.build_batch();
        let logits = self
            .model
            .forward(&self.backend, &batch, &mut self.cache, &mut self.bufs);
        let vocab = self.model.config.vocab_size;
        let mut events = Vec::new();
        let mut next_logits = logits.chunks_exact(vocab);
        for (slice, seq) in batch.seqs.iter().zip(self.running.iter_mut()) {
            seq.num_computed += slice.query_len;
            if seq.num_computed < seq.num_tokens() {
                continue; // a prefill chunk that does not reach the end of the prompt yet
            }
            let Some(row) = next_logits.next() else {
                return Err(Error::Engine(
                    "forward returned fewer logits rows than asked".into(),
                ));
            };
            let mut row = row.to_vec();
            let sampled = seq.sampler.sample(&seq.params, &mut row);
            seq.append(
                sampled.token,
                sampled.logprobs,
                &self.tokenizer,
                &self.eos_token_ids,
            )?;
            events.push(StepEvent {
                request_id: seq.request_id,
                finished: seq.is_finished(),
            });
        }
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(Sequence::is_finished);
        self.running = still;
        for mut seq in done {
            self.pool.release(&mut seq.block_table);
            self.finished.push(seq);
        }
        Ok(events)
    }

    /// Moves waiting requests to running while blocks for their whole length are free.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_num_seqs {
            let Some(seq) = self.waiting.front_mut() else {
                break;
            };
            let total = seq.prompt.len() + seq.max_new_tokens;
            if !self.pool.grow(&mut seq.block_table, total) {
                break;
            }
            if let Some(seq) = self.waiting.pop_front() {
                self.running.push(seq);
            }
        }
    }

    /// The step's rows: one token per decoding sequence, then prompt chunks within the budget.
    /// Sequences left without budget get an empty slice this step.
    fn build_batch(&self) -> ForwardBatch {
        let bs = self.pool.block_size() as u32;
        let mut budget = self.config.max_num_batched_tokens;
        let mut b = ForwardBatch::default();
        // Decoding sequences first, so long prompts never stall them.
        let mut want: Vec<usize> = self
            .running
            .iter()
            .map(|s| s.num_tokens() - s.num_computed)
            .collect();
        for (w, s) in want.iter_mut().zip(&self.running) {
            if s.num_computed >= s.prompt.len() {
                *w = (*w).min(budget);
                budget -= *w;
            }
        }
        for (w, s) in want.iter_mut().zip(&self.running) {
            if s.num_computed < s.prompt.len() {
                *w = (*w).min(budget);
                budget -= *w;
            }
        }
        for (s, &n) in self.running.iter().zip(&want) {
            let start = b.token_ids.len();
            for pos in s.num_computed..s.num_computed + n {
                b.token_ids.push(s.token(pos));
                b.positions.push(pos as u32);
                b.slot_mapping
                    .push(s.block_table[pos / bs as usize] * bs + pos as u32 % bs);
            }
            if n > 0 && s.num_computed + n == s.num_tokens() {
                b.logits_rows.push((start + n - 1) as u32);
            }
            b.seqs.push(SeqSlice {
                query_start: start,
                query_len: n,
                context_len: s.num_computed + n,
                block_table: s.block_table.clone(),
            });
        }
        b
    }
}
