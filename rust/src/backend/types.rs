//! The types a backend and its callers share: a step's batch, the attention shape, the KV
//! layout, graph keys, step timing.

use crate::config::ModelConfig;
use crate::error::{Error, Result};

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

/// Element type of the KV cache (on CUDA, also of activations and weights, except for
/// `Fp8E4m3`, a cache of e4m3 codes beside bf16/f16 activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    Bf16,
    F16,
    /// e4m3fn codes with a per-tensor scale per layer (keys and values each).
    Fp8E4m3,
}

impl KvDtype {
    /// Bytes of one element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 | KvDtype::F16 => 2,
            KvDtype::Fp8E4m3 => 1,
        }
    }

    /// The name `stats()` and `/metrics` report.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "float32",
            KvDtype::Bf16 => "bfloat16",
            KvDtype::F16 => "float16",
            KvDtype::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

/// How the KV cache is laid out: decided once, before the backend is made, and handed to it
/// ([`CpuBackend::new`](crate::backend::cpu::CpuBackend::new), `CudaBackend::new`); the CUDA
/// kernels are compiled for it. Each layer holds keys, then values, each
/// `[num_blocks, block_size, num_kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    /// Tokens per block (the block manager's unit).
    pub block_size: usize,
    pub shape: AttentionShape,
    pub dtype: KvDtype,
}

impl KvLayout {
    /// The layout of `model`'s cache in blocks of `block_size` tokens of `dtype`.
    pub fn for_model(model: &ModelConfig, block_size: usize, dtype: KvDtype) -> KvLayout {
        KvLayout {
            num_layers: model.num_hidden_layers,
            block_size,
            shape: AttentionShape {
                num_heads: model.num_attention_heads,
                num_kv_heads: model.num_key_value_heads,
                head_dim: model.head_dim,
            },
            dtype,
        }
    }

    /// Bytes one token takes in the cache over all layers (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.shape.kv_size() * self.dtype.bytes()
    }

    /// Elements of one layer's keys (and of its values) for `num_blocks` blocks, or an error
    /// when the size overflows.
    pub fn plane_len(&self, num_blocks: usize) -> Result<usize> {
        num_blocks
            .checked_mul(self.block_size)
            .and_then(|n| n.checked_mul(self.shape.kv_size()))
            .ok_or_else(|| Error::InvalidConfig("KV cache size overflows".into()))
    }
}

/// What a captured graph is specialized for: the rows of a decode step and a variant of its
/// launches the backend names (`Backend::graph_variant`; CUDA: decode attention's split
/// count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphKey {
    pub rows: usize,
    pub variant: usize,
}

/// The graph type of a backend that records none (the CPU): no value exists.
pub enum NoGraph {}

/// How long one step took on the device ([`Backend::step_timing`](super::Backend::step_timing)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTiming {
    /// From the step's first operation (the upload of its batch) to its last (the sampling).
    pub device_ms: f32,
    /// Between the previous timed step's end and this step's start, where the device had
    /// nothing to do: it waited for the host. `None` for the first timed step.
    pub idle_before_ms: Option<f32>,
}

/// Where the result of an [`Ops::linear_residual`](super::Ops::linear_residual) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// Added into the residual stream.
    Added,
    /// Written to the `out` buffer; the caller adds it (with its next norm).
    Pending,
}
