//! The CPU backend's device side: weights and buffers in host memory, the KV cache, and a
//! step that is done when its operations return (nothing to wait for, time or record).

use super::{zeros, CpuBackend, CpuKvCache, CpuMatrix, WeightBuf};
use crate::backend::{Backend, KvLayout, NoGraph};
use crate::error::{Error, Result};
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
