//! The operations the Llama-family forward pass is written against.
//!
//! A backend owns its buffers and weights in its own format (f32 host memory for the CPU,
//! bf16 device memory for CUDA). The model (`crate::model`) calls these operations in order;
//! nothing model-specific lives in a backend, and nothing backend-specific in the model.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::error::Result;
use crate::sampling::StepSampling;
use crate::weights::{HostTensor, RawTensor};

/// The flat description of one forward step, shared by every backend.
///
/// Tokens of all sequences are laid end to end (`token_ids`, `positions`, `slot_mapping` have
/// one entry per token); `seqs` says which rows belong to which sequence.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    /// Input token ids, one per row.
    pub token_ids: Vec<u32>,
    /// Position of each row in its sequence (0-based).
    pub positions: Vec<u32>,
    /// KV-cache slot written by each row: `block_id * block_size + offset`.
    pub slot_mapping: Vec<u32>,
    /// The sequences of this step, in row order.
    pub seqs: Vec<SeqSlice>,
    /// Rows whose logits are wanted (usually the last row of each sequence), in output order.
    pub logits_rows: Vec<u32>,
}

/// One sequence's part of a [`ForwardBatch`].
///
/// Invariant: the rows `query_start .. query_start + query_len` hold the positions
/// `context_len - query_len .. context_len`, and `block_table` covers `context_len` tokens.
#[derive(Debug, Clone, Default)]
pub struct SeqSlice {
    /// First row of this sequence in the batch.
    pub query_start: usize,
    /// Number of rows (new tokens) of this sequence in the batch.
    pub query_len: usize,
    /// Tokens in the KV cache after this step (cached + new).
    pub context_len: usize,
    /// KV-cache block ids of the sequence, in order.
    pub block_table: Vec<u32>,
}

impl ForwardBatch {
    /// Number of token rows.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}

/// Shape of the attention part of a model, as a backend needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Width of the query part of a fused QKV row.
    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of the key (and of the value) part of a fused QKV row.
    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Width of a fused QKV row.
    pub fn qkv_width(&self) -> usize {
        self.q_size() + 2 * self.kv_size()
    }
}

/// How long one step took on the device ([`Backend::step_timing`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTiming {
    /// From the step's first operation (the upload of its batch) to its last (the sampling).
    pub device_ms: f32,
    /// Between the previous timed step's end and this step's start, where the device had
    /// nothing to do: it waited for the host. `None` for the first timed step.
    pub idle_before_ms: Option<f32>,
}

/// Where the result of a [`Backend::linear_residual`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// Added into the residual stream.
    Added,
    /// Written to the `out` buffer; the caller adds it (with its next norm).
    Pending,
}

/// Operations of the forward pass. Buffers hold `rows × width` activations row-major; each
/// operation is told the row count, so one buffer sized for the largest batch serves every step.
pub trait Backend: Send {
    /// An activation buffer.
    type Buf: Send;
    /// A weight matrix `[out, in]` (nn.Linear layout).
    type Matrix: Send + Sync;
    /// A 1-D weight (norm scale, bias).
    type Vector: Send + Sync;
    /// The paged KV cache of all layers.
    type KvCache: Send;

    /// Takes ownership of a weight matrix of shape `[out, in]`.
    fn matrix(&self, t: HostTensor) -> Result<Self::Matrix>;
    /// A weight matrix made of `parts` stacked along rows (QKV and gate/up fusion), copied
    /// straight from the file's bytes. `None` when this backend does not keep the parts'
    /// dtype as is; the caller then converts through [`matrix`](Self::matrix).
    fn matrix_raw(&self, _parts: &[RawTensor<'_>]) -> Option<Result<Self::Matrix>> {
        None
    }
    /// Takes ownership of a 1-D weight.
    fn vector(&self, t: HostTensor) -> Result<Self::Vector>;
    /// A zeroed activation buffer of `len` elements.
    fn buffer(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed buffer of `len` f32 values for logits (the LM head writes f32 on every
    /// backend, so log-probabilities do not pay for a narrower activation dtype).
    fn logits_buffer(&self, len: usize) -> Result<Self::Buf> {
        self.buffer(len)
    }
    /// Bytes of one element of the KV cache.
    fn kv_element_bytes(&self) -> usize {
        4
    }
    /// Bytes the KV cache may take once weights and activation buffers are in place, when the
    /// backend sizes it from its memory (`None`: the engine's own default applies).
    fn kv_cache_budget_bytes(&self) -> Option<usize> {
        None
    }
    /// Called once the weights are loaded: a backend that prepares something in the
    /// background (the CUDA backend compiles its kernels while weights load) finishes it here,
    /// so that an engine is ready to serve when it is returned.
    fn finish_loading(&self) -> Result<()> {
        Ok(())
    }
    /// The row count a decode-only step of `rows` rows should be padded to, when this backend
    /// replays decode steps as captured graphs (fixed shapes); `None` runs every step as is.
    /// Padding rows have position and slot `u32::MAX`: they attend to nothing and write no
    /// KV, and their outputs are dropped.
    fn decode_graph_rows(&self, _rows: usize) -> Option<usize> {
        None
    }
    /// The decode steps that cover every graph this backend can replay, as (rows, width of
    /// the widest block table) pairs, for block tables of up to `max_blocks_per_seq` entries
    /// (empty for a backend without graphs): the engine runs a padding batch of each shape at
    /// start-up so that the backend captures its graphs before the first request.
    fn decode_graph_shapes(&self, _max_blocks_per_seq: usize) -> Vec<(usize, usize)> {
        Vec::new()
    }
    /// Called once before the first step with the largest step the engine will run (rows,
    /// sequences, block-table entries per sequence), so that a backend can size its per-step
    /// buffers once.
    fn reserve_steps(
        &mut self,
        _rows: usize,
        _seqs: usize,
        _max_blocks_per_seq: usize,
    ) -> Result<()> {
        Ok(())
    }
    /// Called once per step before the operations, with the step's batch. A device backend
    /// copies the batch description (ids, positions, slots, block tables) to the device here
    /// and its operations read that copy rather than the host slices they are also given.
    fn prepare_step(&mut self, _batch: &ForwardBatch) {}
    /// Called once all of a step's operations are enqueued: a backend that defers work (a
    /// replayed CUDA graph) starts it now, and with `sampling = Some((step, width))` also
    /// starts picking the tokens of the step's logits rows (`width` logits each), which
    /// [`sample_rows`](Self::sample_rows) then waits for instead of starting it. Errors
    /// surface in `to_host` / `sample_rows`.
    fn submit_step(&self, _logits: &Self::Buf, _sampling: Option<(&StepSampling, usize)>) {}
    /// Whether a step's launch only enqueues its work, which the device computes while the
    /// host goes on (CUDA), rather than computing it there and then (the CPU). The engine
    /// schedules asynchronously by default where it does ([`crate::engine::EngineConfig`]).
    fn launches_ahead(&self) -> bool {
        false
    }
    /// Turns timing of each step on the device on (it is off by default): from then on
    /// [`step_timing`](Self::step_timing) reports the last step waited for. A backend that
    /// computes a step as it is launched (the CPU) has nothing to time and ignores this.
    fn time_steps(&mut self) {}
    /// The device time of the last step that [`sample_rows`](Self::sample_rows) or
    /// [`to_host`](Self::to_host) waited for, when [`time_steps`](Self::time_steps) is on.
    fn step_timing(&self) -> Option<StepTiming> {
        None
    }
    /// A KV cache of `num_blocks` blocks of `block_size` tokens for `num_layers` layers.
    fn kv_cache(
        &self,
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        shape: AttentionShape,
    ) -> Result<Self::KvCache>;

    /// `out[r] = table[ids[r]]` for each row.
    fn embedding(&self, table: &Self::Matrix, ids: &[u32], out: &mut Self::Buf);
    /// `out[r] = rmsnorm(x[r]) * w`.
    fn rms_norm(&self, x: &Self::Buf, w: &Self::Vector, eps: f32, rows: usize, out: &mut Self::Buf);
    /// `residual[r] += x[r]; out[r] = rmsnorm(residual[r]) * w` (fused residual add + norm).
    fn add_rms_norm(
        &self,
        residual: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Vector,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    );
    /// `out = x · wᵀ (+ bias)` for `rows` rows.
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
        out: &mut Self::Buf,
    );
    /// `out = rmsnorm(residual) * norm_w · wᵀ (+ bias)`, with `residual += add` first (stored,
    /// as [`add_rms_norm`](Self::add_rms_norm) does) when `add` is given. `normed` is
    /// scratch of `rows × w.cols` for a backend that materializes the normalized rows (this
    /// default does); a backend that fuses the norm into the projection may leave it alone.
    #[allow(clippy::too_many_arguments)]
    fn norm_linear(
        &self,
        residual: &mut Self::Buf,
        add: Option<&Self::Buf>,
        norm_w: &Self::Vector,
        eps: f32,
        rows: usize,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
        normed: &mut Self::Buf,
        out: &mut Self::Buf,
    ) {
        match add {
            Some(x) => self.add_rms_norm(residual, x, norm_w, eps, rows, normed),
            None => self.rms_norm(residual, norm_w, eps, rows, normed),
        }
        self.linear(normed, rows, w, bias, out);
    }
    /// A projection whose result belongs to the residual stream: either adds `x · wᵀ` into
    /// `residual` itself ([`Residual::Added`]) or writes it to `out` and leaves the add to the
    /// caller's next [`norm_linear`](Self::norm_linear) ([`Residual::Pending`], this default:
    /// the add then fuses with the norm).
    #[must_use]
    fn linear_residual(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Matrix,
        _residual: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Residual {
        self.linear(x, rows, w, None, out);
        Residual::Pending
    }
    /// The MLP's first half: `act = silu(gate) * up` (`rows × n`), where `[gate | up]` is
    /// [`norm_linear`](Self::norm_linear) of `residual` through the fused gate/up matrix `w`
    /// (no bias). `normed` and `gate_up` (`rows × 2n`) are scratch for a backend that
    /// materializes the normalized rows and the projection (this default does); one that fuses
    /// the activation into the projection's epilogue may leave them alone.
    #[allow(clippy::too_many_arguments)]
    fn norm_linear_silu_mul(
        &self,
        residual: &mut Self::Buf,
        add: Option<&Self::Buf>,
        norm_w: &Self::Vector,
        eps: f32,
        rows: usize,
        n: usize,
        w: &Self::Matrix,
        normed: &mut Self::Buf,
        gate_up: &mut Self::Buf,
        act: &mut Self::Buf,
    ) {
        self.norm_linear(residual, add, norm_w, eps, rows, w, None, normed, gate_up);
        self.silu_mul(gate_up, rows, n, act);
    }
    /// RMSNorm of each head of q and k in a fused QKV buffer, in place (Qwen3).
    fn qk_norm(
        &self,
        qkv: &mut Self::Buf,
        rows: usize,
        shape: AttentionShape,
        q_w: &Self::Vector,
        k_w: &Self::Vector,
        eps: f32,
    );
    /// Applies RoPE to q and k of a fused QKV buffer in place (rotate-half convention, as HF)
    /// and writes k and v of every row into `layer`'s cache at `batch.slot_mapping`.
    fn rope_and_cache_write(
        &self,
        qkv: &mut Self::Buf,
        batch: &ForwardBatch,
        inv_freq: &[f32],
        shape: AttentionShape,
        cache: &mut Self::KvCache,
        layer: usize,
    );
    /// Causal attention of each row's query over its sequence's cached keys and values;
    /// `out` gets `rows × q_size`.
    fn attention(
        &self,
        qkv: &Self::Buf,
        batch: &ForwardBatch,
        shape: AttentionShape,
        cache: &Self::KvCache,
        layer: usize,
        out: &mut Self::Buf,
    );
    /// `out[r] = silu(x[r][..n]) * x[r][n..2n]` for a fused gate/up buffer of width `2n`.
    fn silu_mul(&self, x: &Self::Buf, rows: usize, n: usize, out: &mut Self::Buf);
    /// `out[i] = x[rows[i]]` for rows of width `width`.
    fn gather_rows(&self, x: &Self::Buf, rows: &[u32], width: usize, out: &mut Self::Buf);
    /// Copies the first `len` values of a buffer to the host, as f32. Waits for the work
    /// enqueued so far, and reports the first failure of any of it (operations do not return
    /// errors themselves, so that a device backend can enqueue them without waiting).
    fn to_host(&self, x: &Self::Buf, len: usize) -> Result<Vec<f32>>;
    /// The token of each logits row (`sampling.rows.len()` rows of `width`), picked by the
    /// rules of [`crate::sampling::sample_row`], waiting and reporting failures as
    /// [`to_host`](Self::to_host) does. A device backend picks them in place, so only the
    /// token ids travel; this default copies the logits and picks them on the host.
    fn sample_rows(
        &self,
        logits: &Self::Buf,
        sampling: &StepSampling,
        width: usize,
    ) -> Result<Vec<u32>> {
        let mut host = self.to_host(logits, sampling.rows.len() * width)?;
        Ok(sampling.sample(&mut host, width))
    }
}
