//! Weight files: safetensors (memory-mapped) and GGUF (dequantized at load).
//!
//! Both readers hand the model f32 [`HostTensor`]s named with Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`), so the model loader is written once.

pub mod finite;
pub mod fp8;
pub mod ggml_quants;
pub mod gguf;
pub mod gguf_value;
pub mod quantize;
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

/// How an FP8 weight's scales are laid out: a weight's value is its e4m3 code's value times
/// the scale of its place.
#[derive(Debug, Clone, PartialEq)]
pub enum Fp8Scales {
    /// One scale for the whole matrix (`compressed-tensors` with `strategy: "tensor"`).
    Tensor(f32),
    /// One scale per output row (`strategy: "channel"`): `rows` values.
    Channel(Vec<f32>),
    /// One scale per `block[0]` × `block[1]` tile (`quant_method: "fp8"` with
    /// `weight_block_size`, as Qwen3's and DeepSeek's FP8 releases), row-major over
    /// `[ceil(rows / block[0]), ceil(cols / block[1])]`.
    Block { block: [usize; 2], scales: Vec<f32> },
}

/// An FP8 (e4m3fn: safetensors' `F8_E4M3`) weight matrix as the checkpoint stores it, with its
/// scales (checked finite and positive by the reader).
#[derive(Debug, Clone)]
pub struct Fp8Tensor<'a> {
    /// `[rows, cols]` (nn.Linear's `[out, in]`).
    pub shape: [usize; 2],
    /// `rows * cols` e4m3 codes, row-major.
    pub bytes: &'a [u8],
    pub scales: Fp8Scales,
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
    /// The matrix's e4m3 codes and scales, when the checkpoint stores it in FP8 (`None`
    /// otherwise: a dense or ggml tensor, or no tensor of that name). [`load_f32`] of an FP8
    /// matrix returns it dequantized, so that a backend without FP8 kernels loads it too.
    ///
    /// [`load_f32`]: WeightSource::load_f32
    fn fp8(&self, _name: &str) -> Option<Result<Fp8Tensor<'_>>> {
        None
    }
}
