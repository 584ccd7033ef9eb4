//! Weight files: safetensors (memory-mapped) and GGUF (dequantized at load).
//!
//! Both readers hand the model f32 [`HostTensor`]s named with Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`), so the model loader is written once.

pub mod finite;
pub mod ggml_quants;
pub mod gguf;
pub mod gguf_value;
pub mod safetensors;

use crate::error::Result;

/// A dense f32 tensor in host memory, row-major (C order), with its shape.
///
/// Invariant: `data.len() == shape.iter().product()`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// A tensor's bytes as its file stores them (little-endian), unconverted (except for a
/// row permutation the reader undoes, so that rows are in Hugging Face order).
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// The file's dtype name: `"BF16"`, `"F16"`, `"F32"` (safetensors), or a ggml block type
    /// (`"Q4_1"`, `"Q8_0"`, ...: GGUF; each row is a whole number of blocks).
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// A source of named tensors. Names follow Hugging Face's Llama naming.
pub trait WeightSource: Send + Sync {
    /// Whether a tensor of this name exists (optional tensors: biases, q/k norms, `lm_head`).
    fn contains(&self, name: &str) -> bool;
    /// Reads one tensor, converted to f32. Errors name the tensor and the file; a tensor that
    /// holds a NaN or an infinity is an [`crate::error::Error::InvalidModel`].
    fn load_f32(&self, name: &str) -> Result<HostTensor>;
    /// Every tensor name in the source (for error messages and checks).
    fn names(&self) -> Vec<String>;
    /// The tensor's bytes as stored, when the source keeps them in a dense dtype (safetensors)
    /// or in ggml blocks (GGUF), so that a backend that computes in that dtype copies them as
    /// they are. `None` otherwise, and `None` when the bytes (a sample of them, for a dense
    /// dtype; every block's scales, for ggml blocks) hold a non-finite value, so that the
    /// caller falls back to [`WeightSource::load_f32`], which reports it.
    fn raw(&self, _name: &str) -> Option<RawTensor<'_>> {
        None
    }
}
