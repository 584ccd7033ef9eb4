//! Quantization at load (`quantization="q8_0"` / `"q4_0"` on the CPU): dense weights (BF16,
//! F16, F32) to ggml's Q8_0 and Q4_0 blocks, rounded exactly as ggml's reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` in `ggml-quants.c`) round. A checkpoint
//! quantized here holds the blocks `llama-quantize` writes without an importance matrix, so
//! the kernels kept for GGUF files apply unchanged.
//!
//! Rows are converted and quantized one at a time from the file's bytes (the mmap): no f32
//! copy of a tensor, let alone of the model, is ever made.

use half::f16;
use rayon::prelude::*;

use super::ggml_quants::GgmlType;

/// Elements per block (`QK8_0 = QK4_0 = 32`).
const QK: usize = 32;

/// Rows per rayon task: enough to amortize the task, few enough to split a 576-row matrix.
const ROWS_PER_TASK: usize = 16;

/// A block format weights are quantized to at load.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadQuant {
    /// `{ f16 d; i8 qs[32] }`, `d = amax / 127`.
    Q8_0,
    /// `{ f16 d; u8 qs[16] }`, `d = max / -8` (`max`: the value of largest magnitude).
    Q4_0,
}

impl LoadQuant {
    /// The format named by the `quantization` option (`"q8_0"`, `"q4_0"`), if it is one.
    pub fn from_option(name: &str) -> Option<LoadQuant> {
        match name {
            "q8_0" => Some(LoadQuant::Q8_0),
            "q4_0" => Some(LoadQuant::Q4_0),
            _ => None,
        }
    }

    /// The ggml type.
    pub fn ggml(self) -> GgmlType {
        match self {
            LoadQuant::Q8_0 => GgmlType::Q8_0,
            LoadQuant::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of 32).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / QK * self.ggml().type_size()
    }

    /// Quantizes one row (`x.len()` a multiple of 32) into `out` (`row_bytes(x.len())` bytes).
    pub fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        let block = self.ggml().type_size();
        for (x, out) in x.chunks_exact(QK).zip(out.chunks_exact_mut(block)) {
            match self {
                LoadQuant::Q8_0 => q8_0_block(x, out),
                LoadQuant::Q4_0 => q4_0_block(x, out),
            }
        }
    }

    /// `rows` rows of `cols` dense values in `dtype` ("BF16", "F16", "F32", little-endian)
    /// quantized into `out` (`rows · row_bytes(cols)` bytes), in parallel. `false` when the
    /// dtype is none of those, the sizes do not match, or a value is not finite (the caller
    /// then loads the tensor through f32, whose reader names the bad tensor).
    pub fn quantize_bytes(self, dtype: &str, bytes: &[u8], cols: usize, out: &mut [u8]) -> bool {
        let size = match dtype {
            "BF16" | "F16" => 2,
            "F32" => 4,
            _ => return false,
        };
        if cols == 0 || !cols.is_multiple_of(QK) || !bytes.len().is_multiple_of(cols * size) {
            return false;
        }
        let row_bytes = self.row_bytes(cols);
        if bytes.len() / (cols * size) * row_bytes != out.len() {
            return false;
        }
        out.par_chunks_mut(row_bytes * ROWS_PER_TASK)
            .zip(bytes.par_chunks(cols * size * ROWS_PER_TASK))
            .all(|(out, bytes)| {
                let mut row = vec![0.0f32; cols];
                for (out, bytes) in out
                    .chunks_exact_mut(row_bytes)
                    .zip(bytes.chunks_exact(cols * size))
                {
                    if !to_f32(dtype, bytes, &mut row) {
                        return false;
                    }
                    self.quantize_row(&row, out);
                }
                true
            })
    }

    /// `rows × cols` f32 values (row-major) quantized, in parallel; `None` when a value is
    /// not finite or `cols` is not a multiple of 32.
    pub fn quantize_f32(self, data: &[f32], cols: usize) -> Option<Vec<u8>> {
        if cols == 0 || !cols.is_multiple_of(QK) || !data.len().is_multiple_of(cols) {
            return None;
        }
        if !data.iter().all(|v| v.is_finite()) {
            return None;
        }
        let row_bytes = self.row_bytes(cols);
        let mut out = vec![0u8; data.len() / cols * row_bytes];
        out.par_chunks_mut(row_bytes)
            .zip(data.par_chunks(cols))
            .for_each(|(out, x)| self.quantize_row(x, out));
        Some(out)
    }
}

/// Converts one row's bytes to f32; `false` if a value is not finite.
fn to_f32(dtype: &str, bytes: &[u8], row: &mut [f32]) -> bool {
    match dtype {
        "BF16" => {
            for (y, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        "F16" => {
            for (y, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *y = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (y, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
    row.iter().all(|v| v.is_finite())
}

/// ggml's `quantize_row_q8_0_ref` for one block: `d = amax / 127` in f32, the codes
/// `roundf(x · (1 / d))` (halves away from zero), `d` stored as f16 (round to nearest even).
fn q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, &v) in out[2..2 + QK].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// ggml's `quantize_row_q4_0_ref` for one block: `max` is the first value of largest
/// magnitude, `d = max / -8`, each code `min(15, (int8_t)(x · (1 / d) + 8.5f))` (the sum in
/// f32, truncated), elements 0..16 in the low nibbles and 16..32 in the high ones.
fn q4_0_block(x: &[f32], out: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
    }
}

#[cfg(test)]
#[path = "quantize_tests.rs"]
mod tests;
