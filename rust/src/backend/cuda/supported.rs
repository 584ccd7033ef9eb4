//! What the CUDA kernels support, checked before the GPU is opened: a model, activations'
//! dtype and KV layout they cannot run is a clear error instead of a failure at the first step.

use super::jit::KernelDtype;
use crate::backend::{KvDtype, KvLayout};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Checks that the kernels support `model`, the activations' `dtype` and `layout`; returns
/// the kernels' dtype.
pub(super) fn check_model(
    model: &ModelConfig,
    dtype: KvDtype,
    layout: &KvLayout,
) -> Result<KernelDtype> {
    let dtype = match dtype {
        KvDtype::Bf16 => KernelDtype::Bf16,
        KvDtype::F16 => KernelDtype::F16,
        KvDtype::F32 | KvDtype::Fp8E4m3 => {
            return Err(Error::InvalidConfig(
                "the CUDA backend keeps weights and activations in bfloat16 or float16".into(),
            ))
        }
    };
    if layout.dtype != dtype.kv_dtype() && layout.dtype != KvDtype::Fp8E4m3 {
        return Err(Error::InvalidConfig(format!(
            "a KV cache of {} beside activations of {}: the cache holds the activations' \
             dtype or FP8",
            layout.dtype.name(),
            dtype.kv_dtype().name()
        )));
    }
    for (what, n) in [
        ("hidden_size", model.hidden_size),
        ("intermediate_size", model.intermediate_size),
        ("head_dim", model.head_dim),
    ] {
        if n % 8 != 0 {
            return Err(Error::Unsupported(format!(
                "the CUDA backend needs {what} to be a multiple of 8, got {n}"
            )));
        }
    }
    // Limits of the kernels: rms_norm keeps a row in registers, prefill attention keeps
    // a tile of K and V of HEAD_DIM ≤ 128 in static shared memory.
    if model.hidden_size > 16384 || model.head_dim > 128 || !model.head_dim.is_multiple_of(16) {
        return Err(Error::Unsupported(format!(
            "the CUDA kernels support hidden_size ≤ 16384 and head_dim a multiple of 16 up \
                 to 128; this model has {} and {}",
            model.hidden_size, model.head_dim
        )));
    }
    if !layout.block_size.is_multiple_of(16) {
        return Err(Error::InvalidConfig(format!(
            "the CUDA backend needs block_size to be a multiple of 16, got {}",
            layout.block_size
        )));
    }
    Ok(dtype)
}
