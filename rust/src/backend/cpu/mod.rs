//! The CPU backend: f32 activations, rayon for threads. Weights are f32 (the reference every
//! other backend is checked against), or, when the backend is made to keep them, GGUF blocks
//! as the file stores them, multiplied with integer dot products (`quant/`).

mod attention;
mod device;
pub mod matmul;
pub mod quant;
mod weight_buf;

pub use weight_buf::WeightBuf;

use rayon::prelude::*;

use super::{AttentionShape, ForwardBatch, KvDtype, KvLayout, Ops, Residual};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

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
}

impl CpuBackend {
    /// A CPU backend whose KV cache has `layout` (f32), with f32 weights.
    pub fn new(layout: KvLayout) -> CpuBackend {
        debug_assert_eq!(layout.dtype, KvDtype::F32);
        CpuBackend {
            layout,
            keep_quantized: false,
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
mod tests {
    use super::*;
    use crate::backend::Backend;

    /// A backend for the operations' tests (their KV layout is their own).
    const CPU: CpuBackend = CpuBackend {
        keep_quantized: false,
        layout: KvLayout {
            num_layers: 1,
            block_size: 16,
            shape: AttentionShape {
                num_heads: 1,
                num_kv_heads: 1,
                head_dim: 8,
            },
            dtype: KvDtype::F32,
        },
    };

    fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn add_rms_norm_matches_reference() {
        let (rows, width) = (3, 40);
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
            .collect();
        let r0: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 31) % 11) as f32 / 5.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / width as f32).collect();
        let mut residual = r0.clone();
        let mut out = vec![f32::NAN; rows * width];
        CPU.add_rms_norm(&mut residual, &x, &w, 1e-5, rows, &mut out);
        let mut want = Vec::new();
        for r in 0..rows {
            let sum: Vec<f64> = (0..width)
                .map(|i| r0[r * width + i] as f64 + x[r * width + i] as f64)
                .collect();
            let ms = sum.iter().map(|v| v * v).sum::<f64>() / width as f64;
            want.extend(
                sum.iter()
                    .zip(&w)
                    .map(|(v, w)| v / (ms + 1e-5).sqrt() * *w as f64),
            );
        }
        assert_close(&out, &want, 1e-5);
    }

    #[test]
    fn rope_rotates_halves_and_writes_the_cache() {
        let shape = AttentionShape {
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
        };
        let width = shape.qkv_width();
        let mut qkv: Vec<f32> = (0..2 * width).map(|i| i as f32 + 1.0).collect();
        let orig = qkv.clone();
        let batch = ForwardBatch {
            token_ids: vec![0, 0],
            positions: vec![0, 3],
            slot_mapping: vec![5, 2],
            ..Default::default()
        };
        let inv_freq = [1.0f32, 0.01];
        let cpu = CpuBackend::new(KvLayout {
            num_layers: 1,
            block_size: 4,
            shape,
            dtype: KvDtype::F32,
        });
        let mut cache = cpu.kv_cache(2).unwrap();
        cpu.rope_and_cache_write(&mut qkv, &batch, &inv_freq, shape, &mut cache, 0);
        // Position 0 is the identity; position 3 rotates pair (x_i, x_{i+2}) by 3 * inv_freq[i].
        assert_eq!(&qkv[..width], &orig[..width]);
        for head in 0..3 {
            let at = width + head * 4;
            for i in 0..2 {
                let (s, c) = (3.0 * inv_freq[i] as f64).sin_cos();
                let (x1, x2) = (orig[at + i] as f64, orig[at + i + 2] as f64);
                assert_close(&qkv[at + i..at + i + 1], &[x1 * c - x2 * s], 1e-6);
                assert_close(&qkv[at + i + 2..at + i + 3], &[x2 * c + x1 * s], 1e-6);
            }
        }
        // Row 1's rotated k and untouched v land in slot 2, row 0's in slot 5.
        assert_eq!(&cache.k[0][2 * 4..3 * 4], &qkv[width + 8..width + 12]);
        assert_eq!(&cache.v[0][2 * 4..3 * 4], &orig[width + 12..width + 16]);
        assert_eq!(&cache.k[0][5 * 4..6 * 4], &orig[8..12]);
    }

    #[test]
    fn silu_mul_and_gather() {
        let x = vec![1.0f32, -2.0, 3.0, 4.0];
        let mut out = vec![f32::NAN; 2];
        CPU.silu_mul(&x, 1, 2, &mut out);
        let silu = |v: f64| v / (1.0 + (-v).exp());
        assert_close(&out, &[silu(1.0) * 3.0, silu(-2.0) * 4.0], 1e-6);
        let mut g = vec![f32::NAN; 2];
        CPU.gather_rows(&x, &[1], 2, &mut g);
        assert_eq!(g, vec![3.0, 4.0]);
    }
}
