//! The CPU backend's device side: weights and buffers in host memory, the KV cache, and a
//! step that is done when its operations return (nothing to wait for, time or record).

use super::{zeros, CpuBackend, CpuKvCache, CpuMatrix, WeightBuf};
use crate::backend::{Backend, KvLayout, NoGraph};
use crate::error::{Error, Result};
use crate::weights::quantize::LoadQuant;
use crate::weights::{HostTensor, RawTensor};

use super::quant::{QuantFormat, QuantMatrix};

impl Backend for CpuBackend {
    type Graph = NoGraph;

    fn kv_layout(&self) -> KvLayout {
        self.layout
    }

    fn matrix(&self, t: HostTensor) -> Result<CpuMatrix> {
        match t.shape[..] {
            [rows, cols] => Ok(CpuMatrix::F32 {
                rows,
                cols,
                data: WeightBuf::new(t.data),
            }),
            _ => Err(Error::Engine(format!(
                "expected a 2-D weight, got shape {:?}",
                t.shape
            ))),
        }
    }

    /// GGUF blocks of a [`QuantFormat`] the backend keeps quantized ([`QuantFormat::KEPT`]),
    /// copied as they are when this backend keeps quantized weights and every part has the
    /// same format; `None` otherwise (the model then loads the parts through f32).
    fn matrix_raw(&self, parts: &[RawTensor<'_>]) -> Option<Result<CpuMatrix>> {
        if !self.keep_quantized {
            return None;
        }
        let format = QuantFormat::from_name(parts.first()?.dtype)?;
        if !QuantFormat::KEPT.contains(&format) {
            return None;
        }
        QuantMatrix::from_raw(parts).map(|q| Ok(CpuMatrix::Quant(q)))
    }

    /// With quantization at load: the parts' dense bytes (BF16, F16, F32) quantized row by
    /// row into the projections' format, or into Q8_0 for the LM head (a tied model gets
    /// this copy beside its f32 embedding rows). `None` for any other dtype, a width that is
    /// not a multiple of 32, or a value that is not finite: the model then loads the parts
    /// through f32 (which names a bad value's tensor).
    fn quantize_raw(&self, parts: &[RawTensor<'_>], lm_head: bool) -> Option<Result<CpuMatrix>> {
        // The LM head turns activations straight into logits, with no norm after it to absorb
        // error, and on a small model it is a quarter of a decode step: Q8_0 keeps its error
        // small and runs on the fastest one-row kernel (llama.cpp keeps it at Q6_K or Q8_0 too).
        let format = match (self.quantize?, lm_head) {
            (_, true) => LoadQuant::Q8_0,
            (format, false) => format,
        };
        let cols = *parts.first()?.shape.get(1)?;
        let dense = |p: &RawTensor<'_>| matches!(p.dtype, "BF16" | "F16" | "F32");
        if parts
            .iter()
            .any(|p| !dense(p) || p.shape.len() != 2 || p.shape[1] != cols)
        {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        let row_bytes = format.row_bytes(cols);
        let mut out = vec![0u8; rows.checked_mul(row_bytes)?];
        let mut at = 0;
        for p in parts {
            let part = &mut out[at..at + p.shape[0] * row_bytes];
            if !format.quantize_bytes(p.dtype, p.bytes, cols, part) {
                return None;
            }
            at += part.len();
        }
        Some(Ok(quant_matrix(format, rows, cols, &out)))
    }

    /// With quantization at load, an f32 projection (one the file does not store in a dense
    /// dtype [`quantize_raw`](Backend::quantize_raw) reads) is quantized here; one whose width
    /// is not a multiple of 32 stays f32, and blocks from the file stay as they are.
    fn projection(&self, m: CpuMatrix) -> Result<CpuMatrix> {
        let (Some(format), CpuMatrix::F32 { rows, cols, data }) = (self.quantize, &m) else {
            return Ok(m);
        };
        Ok(match format.quantize_f32(data, *cols) {
            Some(bytes) => quant_matrix(format, *rows, *cols, &bytes),
            None => m,
        })
    }

    fn vector(&self, t: HostTensor) -> Result<Vec<f32>> {
        Ok(t.data)
    }

    fn buffer(&self, len: usize) -> Result<Vec<f32>> {
        zeros(len, "an activation buffer")
    }

    fn kv_cache(&self, num_blocks: usize) -> Result<CpuKvCache> {
        let len = self.layout.plane_len(num_blocks)?;
        let plane = || zeros(len, "the KV cache");
        let layers = self.layout.num_layers;
        Ok(CpuKvCache {
            block_size: self.layout.block_size,
            num_blocks,
            k: (0..layers).map(|_| plane()).collect::<Result<_>>()?,
            v: (0..layers).map(|_| plane()).collect::<Result<_>>()?,
        })
    }

    fn to_host(&mut self, x: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        Ok(x[..len].to_vec())
    }
}

/// A matrix of `rows × cols` weights in `format`'s blocks (`bytes`, as quantized at load).
fn quant_matrix(format: LoadQuant, rows: usize, cols: usize, bytes: &[u8]) -> CpuMatrix {
    let raw = RawTensor {
        dtype: format.ggml().name(),
        shape: &[rows, cols],
        bytes,
    };
    CpuMatrix::Quant(QuantMatrix::from_raw(&[raw]).expect("blocks sized by their format"))
}
