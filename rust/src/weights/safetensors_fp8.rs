//! The `F8_E4M3` weights of a safetensors checkpoint with their scales (a part of
//! [`super::SafetensorsWeights`]).

use super::{Entry, SafetensorsWeights};
use crate::error::{Error, Result};
use crate::weights::fp8::{find_nan_code, scales_for};
use crate::weights::{Fp8Tensor, WeightSource};

impl SafetensorsWeights {
    /// The `F8_E4M3` weight `name` with its scales, checked: a 2-D matrix the config quantizes,
    /// scales of the declared layout, finite and positive, and no NaN code.
    pub(super) fn fp8_tensor(
        &self,
        name: &str,
        shard: usize,
        entry: &Entry,
    ) -> Result<Fp8Tensor<'_>> {
        let shard = &self.shards[shard];
        let bad =
            |reason: String| Error::invalid_model(&shard.path, format!("tensor {name} {reason}"));
        let q = self.quantization.as_ref().ok_or_else(|| {
            bad("is F8_E4M3 but config.json has no FP8 quantization_config".into())
        })?;
        let &[rows, cols] = entry.shape.as_slice() else {
            return Err(bad(format!(
                "is F8_E4M3 of shape {:?}, not a matrix",
                entry.shape
            )));
        };
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if q.ignores(module) {
            return Err(bad(format!(
                "is F8_E4M3 but quantization_config lists {module} as not quantized"
            )));
        }
        let scale_name = q.scale_name(name);
        if !self.contains(&scale_name) {
            return Err(bad(format!(
                "is F8_E4M3 but its scale {scale_name} is missing"
            )));
        }
        let scale = self.load_f32(&scale_name)?;
        let scales = scales_for(q.scales, [rows, cols], &scale.shape, scale.data)
            .map_err(|e| bad(format!("has a bad scale tensor {scale_name}: {e}")))?;
        let bytes = &shard.mmap[entry.range.clone()];
        if let Some(i) = find_nan_code(bytes) {
            return Err(bad(format!(
                "holds the e4m3 NaN code {:#04x} at flat index {i}; the checkpoint is corrupt",
                bytes[i]
            )));
        }
        Ok(Fp8Tensor {
            shape: [rows, cols],
            bytes,
            scales,
        })
    }
}
