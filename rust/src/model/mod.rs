//! The Llama-family model: weights in a backend's format and the forward pass.

mod llama;

pub use llama::{LayerWeights, LlamaModel, StepBuffers};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::weights::{HostTensor, RawTensor, WeightSource};

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

/// Loads the matrices `parts` (name, rows, cols), stacked along rows, into `backend`: from the
/// file's bytes when the backend keeps their dtype, else converted through f32.
pub(crate) fn load_matrix<B: Backend>(
    backend: &B,
    src: &dyn WeightSource,
    parts: &[(&str, usize, usize)],
) -> Result<B::Matrix> {
    if let Some(m) = raw_parts(src, parts).and_then(|raw| backend.matrix_raw(&raw)) {
        return m;
    }
    let tensors = parts
        .iter()
        .map(|&(name, rows, cols)| load_checked(src, name, &[rows, cols]))
        .collect::<Result<Vec<_>>>()?;
    backend.matrix(concat_rows(tensors))
}

/// The parts' bytes as the file stores them, when it has every one in the expected shape.
fn raw_parts<'a>(
    src: &'a dyn WeightSource,
    parts: &[(&str, usize, usize)],
) -> Option<Vec<RawTensor<'a>>> {
    parts
        .iter()
        .map(|&(name, rows, cols)| src.raw(name).filter(|r| r.shape == [rows, cols]))
        .collect()
}

/// The LM head `(name, rows, cols)` quantized at load by the backend
/// ([`Backend::quantize_raw`]), or `None` where it is loaded as stored.
pub(crate) fn quantized_head<B: Backend>(
    backend: &B,
    src: &dyn WeightSource,
    head: (&str, usize, usize),
) -> Option<Result<B::Matrix>> {
    backend.quantize_raw(&raw_parts(src, &[head])?, true)
}

/// Loads the projection made of `parts` (name, rows, cols), stacked along rows: kept in FP8
/// where the checkpoint stores every part in FP8 and the backend computes with FP8 weights,
/// quantized from the file's bytes where the backend does that ([`Backend::quantize_raw`]),
/// else as [`load_matrix`] does, then handed to [`Backend::projection`] (which quantizes it
/// where the engine quantizes at load).
pub(crate) fn load_projection<B: Backend>(
    backend: &B,
    src: &dyn WeightSource,
    parts: &[(&str, usize, usize)],
) -> Result<B::Matrix> {
    let fp8: Option<Vec<_>> = parts
        .iter()
        .map(|&(name, rows, cols)| {
            src.fp8(name)
                .filter(|t| t.as_ref().map_or(true, |t| t.shape == [rows, cols]))
        })
        .collect();
    if let Some(fp8) = fp8 {
        let fp8 = fp8.into_iter().collect::<Result<Vec<_>>>()?;
        if let Some(m) = backend.matrix_fp8(&fp8) {
            return m;
        }
    }
    if let Some(m) = raw_parts(src, parts).and_then(|raw| backend.quantize_raw(&raw, false)) {
        return m;
    }
    backend.projection(load_matrix(backend, src, parts)?)
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
