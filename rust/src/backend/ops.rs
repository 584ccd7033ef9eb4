//! The forward pass's math: the operations the model is written against.
//!
//! Each operation enqueues its work (a device backend) or does it (the CPU) and returns
//! nothing: a device backend keeps the first failure of a step for the wait that ends it
//! ([`Backend::to_host`](super::Backend::to_host),
//! [`Backend::sampled_tokens`](super::Backend::sampled_tokens)). Memory, the KV pool, a
//! step's upload and lifecycle, sampling and timing are the device side:
//! [`Backend`](super::Backend).

use super::types::{AttentionShape, ForwardBatch, Residual};

/// Operations of the forward pass. Buffers hold `rows × width` activations row-major; each
/// operation is told the row count, so one buffer sized for the largest batch serves every step.
/// Fusions are operations of their own (`norm_linear`, `linear_residual`,
/// `norm_linear_silu_mul`), with defaults built from the plain ones.
pub trait Ops {
    /// An activation buffer.
    type Buf: Send;
    /// A weight matrix `[out, in]` (nn.Linear layout).
    type Matrix: Send + Sync;
    /// A 1-D weight (norm scale, bias).
    type Vector: Send + Sync;
    /// The paged KV cache of all layers.
    type KvCache: Send;

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
}
