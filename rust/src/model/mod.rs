//! The Llama-family model: weights in a backend's format and the forward pass.

mod llama;

pub use llama::{LayerWeights, LlamaModel, StepBuffers};

use crate::error::{Error, Result};
use crate::weights::{HostTensor, WeightSource};

/// Reads a tensor and checks its shape, naming the tensor when it is missing or wrong.
pub(crate) fn load_checked(
    src: &dyn WeightSource,
    name: &str,
    shape: &[usize],
) -> Result<HostTensor> {
    if !src.contains(name) {
        return Err(Error::Unsupported(format!(
            "model has no tensor \"{name}\""
        )));
    }
    let t = src.load_f32(name)?;
    if t.shape != shape {
        return Err(Error::InvalidModel {
            path: name.into(),
            reason: format!(
                "tensor has shape {:?}, the config implies {:?}",
                t.shape, shape
            ),
        });
    }
    Ok(t)
}

/// Concatenates matrices with the same column count along rows (QKV and gate/up fusion).
pub(crate) fn concat_rows(parts: Vec<HostTensor>) -> HostTensor {
    let cols = parts[0].shape[1];
    let rows = parts.iter().map(|p| p.shape[0]).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for p in parts {
        data.extend_from_slice(&p.data);
    }
    HostTensor {
        shape: vec![rows, cols],
        data,
    }
}
