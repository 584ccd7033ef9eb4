//! The CPU backend: f32 activations, rayon for threads (`spin_pool` for the quantized matrix
//! products and attention, a decode step's parallel regions). Weights are f32 (the reference
//! every other backend is checked against), or, when the backend is made to keep them, GGUF
//! blocks as the file stores them, multiplied with integer dot products (`quant/`).

mod attention;
mod device;
pub mod matmul;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod spin_pool;
mod threads;
mod weight_buf;

pub use threads::{default_threads, physical_cores};
pub use weight_buf::WeightBuf;

use rayon::prelude::*;

use super::{AttentionShape, ForwardBatch, KvDtype, KvLayout, Ops, Residual};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::quantize::LoadQuant;

/// Rows per rayon task for row-wise elementwise operations: small rows are cheap, so batch
/// enough of them to amortize the task overhead.
const ROWS_PER_TASK: usize = 16;

/// A weight matrix `[rows, cols]`, row-major.
pub enum CpuMatrix {
    /// f32 values.
    F32 {
        rows: usize,
        cols: usize,
        data: WeightBuf,
    },
    /// ggml blocks ([`quant::QuantMatrix`]).
    Quant(quant::QuantMatrix),
}

impl CpuMatrix {
    /// Output rows.
    pub fn rows(&self) -> usize {
        match self {
            CpuMatrix::F32 { rows, .. } => *rows,
            CpuMatrix::Quant(q) => q.rows(),
        }
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        match self {
            CpuMatrix::F32 { cols, .. } => *cols,
            CpuMatrix::Quant(q) => q.cols(),
        }
    }
}

/// The paged KV cache: per layer, keys and values laid out
/// `[num_blocks, block_size, num_kv_heads, head_dim]` (a slot is one token's heads).
pub struct CpuKvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// The CPU backend: the KV layout it serves and whether it keeps quantized weights (threads
/// come from rayon's global pool). The device side (memory, the KV pool, the step's wait) is
/// in `device.rs`.
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    layout: KvLayout,
    /// Whether [`crate::backend::Backend::matrix_raw`] keeps GGUF blocks of the
    /// [`quant::QuantFormat`]s as they are (else every weight is dequantized to f32).
    keep_quantized: bool,
    /// The block format projections are quantized to at load (`quantization="q8_0"` or
    /// `"q4_0"`), with the LM head in Q8_0 (`device.rs`); `None`: weights as stored.
    quantize: Option<LoadQuant>,
}

impl CpuBackend {
    /// A CPU backend whose KV cache has `layout` (f32), with f32 weights.
    pub fn new(layout: KvLayout) -> CpuBackend {
        debug_assert_eq!(layout.dtype, KvDtype::F32);
        CpuBackend {
            layout,
            keep_quantized: false,
            quantize: None,
        }
    }

    /// This backend, keeping GGUF weight blocks quantized (`true`) or dequantizing every
    /// weight to f32 (`false`, the reference path).
    pub fn keep_quantized(self, keep: bool) -> CpuBackend {
        CpuBackend {
            keep_quantized: keep,
            ..self
        }
    }

    /// This backend, quantizing the dense projections of the checkpoint to `format` at load
    /// (and its LM head to Q8_0), or keeping them as stored (`None`).
    pub fn quantize_at_load(self, format: Option<LoadQuant>) -> CpuBackend {
        CpuBackend {
            quantize: format,
            ..self
        }
    }

    /// A CPU backend for `model`'s cache in blocks of `block_size` tokens.
    pub fn for_model(model: &ModelConfig, block_size: usize) -> CpuBackend {
        CpuBackend::new(KvLayout::for_model(model, block_size, KvDtype::F32))
    }
}

impl Ops for CpuBackend {
    type Buf = Vec<f32>;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type KvCache = CpuKvCache;

    fn embedding(&self, table: &CpuMatrix, ids: &[u32], out: &mut Vec<f32>) {
        let width = table.cols();
        for (row, &id) in out.chunks_exact_mut(width).zip(ids) {
            let id = id as usize;
            match table {
                CpuMatrix::F32 { data, .. } => {
                    row.copy_from_slice(&data[id * width..(id + 1) * width]);
                }
                CpuMatrix::Quant(q) => q.dequantize_rows(id, row),
            }
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &Vec<f32>, eps: f32, rows: usize, out: &mut Vec<f32>) {
        let width = w.len();
        out[..rows * width]
            .par_chunks_mut(width * ROWS_PER_TASK)
            .zip(x[..rows * width].par_chunks(width * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    rms_norm_row(x, w, eps, o);
                }
            });
    }

    fn add_rms_norm(
        &self,
        residual: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        rows: usize,
        out: &mut Vec<f32>,
    ) {
        let width = w.len();
        let n = rows * width;
        residual[..n]
            .par_chunks_mut(width * ROWS_PER_TASK)
            .zip(x[..n].par_chunks(width * ROWS_PER_TASK))
            .zip(out[..n].par_chunks_mut(width * ROWS_PER_TASK))
            .for_each(|((r, x), o)| {
                for ((r, x), o) in r
                    .chunks_exact_mut(width)
                    .zip(x.chunks_exact(width))
                    .zip(o.chunks_exact_mut(width))
                {
                    r.iter_mut().zip(x).for_each(|(r, x)| *r += x);
                    rms_norm_row(r, w, eps, o);
                }
            });
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuMatrix,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) {
        let (n, k) = (w.rows(), w.cols());
        let (x, out, bias) = (
            &x[..rows * k],
            &mut out[..rows * n],
            bias.map(Vec::as_slice),
        );
        match w {
            CpuMatrix::F32 { data, .. } => matmul::linear(x, rows, data, n, k, bias, out),
            CpuMatrix::Quant(q) => quant::linear(x, rows, q, bias, out),
        }
    }

    /// One-row steps add the projection into the residual stream here ([`Residual::Added`]);
    /// larger steps leave the add to the next norm ([`Residual::Pending`]), which fuses it.
    /// The arithmetic is the same either way (`residual += x · wᵀ` in f32, then the norm); the
    /// split mirrors the CUDA backend's (a GEMV that adds for one row, cuBLASLt beyond), so
    /// that the CPU tests run both of the model's paths.
    fn linear_residual(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuMatrix,
        residual: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Residual {
        self.linear(x, rows, w, None, out);
        if rows != 1 {
            return Residual::Pending;
        }
        let n = w.rows();
        residual[..n]
            .iter_mut()
            .zip(&out[..n])
            .for_each(|(r, x)| *r += x);
        Residual::Added
    }

    fn qk_norm(
        &self,
        qkv: &mut Vec<f32>,
        rows: usize,
        shape: AttentionShape,
        q_w: &Vec<f32>,
        k_w: &Vec<f32>,
        eps: f32,
    ) {
        let width = shape.qkv_width();
        let hd = shape.head_dim;
        let mut tmp = vec![0.0f32; hd];
        for row in qkv[..rows * width].chunks_exact_mut(width) {
            let (q, rest) = row.split_at_mut(shape.q_size());
            for (heads, w) in [(q, q_w), (&mut rest[..shape.kv_size()], k_w)] {
                for head in heads.chunks_exact_mut(hd) {
                    rms_norm_row(head, w, eps, &mut tmp);
                    head.copy_from_slice(&tmp);
                }
            }
        }
    }

    fn rope_and_cache_write(
        &self,
        qkv: &mut Vec<f32>,
        batch: &ForwardBatch,
        inv_freq: &[f32],
        shape: AttentionShape,
        cache: &mut CpuKvCache,
        layer: usize,
    ) {
        let width = shape.qkv_width();
        let hd = shape.head_dim;
        let half = hd / 2;
        let kv = shape.kv_size();
        let rows = batch.num_tokens();
        qkv[..rows * width]
            .par_chunks_mut(width)
            .zip(&batch.positions)
            .for_each(|(row, &pos)| {
                let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
                    .iter()
                    .map(|f| (pos as f32 * f).sin_cos())
                    .map(|(s, c)| (c, s))
                    .unzip();
                for head in row[..shape.q_size() + kv].chunks_exact_mut(hd) {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x1, x2) = (a[i], b[i]);
                        a[i] = x1 * cos[i] - x2 * sin[i];
                        b[i] = x2 * cos[i] + x1 * sin[i];
                    }
                }
            });
        let (k_cache, v_cache) = (&mut cache.k[layer], &mut cache.v[layer]);
        for (row, &slot) in qkv[..rows * width]
            .chunks_exact(width)
            .zip(&batch.slot_mapping)
        {
            let at = slot as usize * kv;
            let k = &row[shape.q_size()..shape.q_size() + kv];
            let v = &row[shape.q_size() + kv..];
            k_cache[at..at + kv].copy_from_slice(k);
            v_cache[at..at + kv].copy_from_slice(v);
        }
    }

    fn attention(
        &self,
        qkv: &Vec<f32>,
        batch: &ForwardBatch,
        shape: AttentionShape,
        cache: &CpuKvCache,
        layer: usize,
        out: &mut Vec<f32>,
    ) {
        attention::paged_attention(qkv, batch, shape, cache, layer, out);
    }

    fn silu_mul(&self, x: &Vec<f32>, rows: usize, n: usize, out: &mut Vec<f32>) {
        out[..rows * n]
            .par_chunks_mut(n)
            .zip(x[..rows * 2 * n].par_chunks(2 * n))
            .for_each(|(o, x)| {
                let (gate, up) = x.split_at(n);
                for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            });
    }

    fn gather_rows(&self, x: &Vec<f32>, rows: &[u32], width: usize, out: &mut Vec<f32>) {
        for (o, &r) in out.chunks_exact_mut(width).zip(rows) {
            let r = r as usize;
            o.copy_from_slice(&x[r * width..(r + 1) * width]);
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) * w`, accumulating the mean square in f32 as transformers
/// does for f32 models.
fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = w * (x * scale);
    }
}

/// `len` zeroed floats, or an error naming `what` when the memory cannot be had (where
/// `vec![0.0; len]` would abort the process). Zeroed pages are only touched as they are
/// written, as with `vec!`.
fn zeros(len: usize, what: &str) -> Result<Vec<f32>> {
    let too_big = || {
        Error::InvalidConfig(format!(
            "cannot allocate {what}: {} MiB of memory are not available",
            len.saturating_mul(4) >> 20
        ))
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| too_big())?;
    // SAFETY: `layout` has a non-zero size. A non-null result is an allocation of the global
    // allocator with the layout of `len` f32s, all bits zero (0.0f32), which is what
    // `Vec::from_raw_parts` with length and capacity `len` requires; the Vec owns it from here.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<f32>();
        if ptr.is_null() {
            return Err(too_big());
        }
        Ok(Vec::from_raw_parts(ptr, len, len))
    }
}

#[cfg(test)]
mod tests;
