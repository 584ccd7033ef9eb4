//! Model configuration, read from a Hugging Face `config.json` or from GGUF metadata, and
//! validated once so the forward pass can trust every dimension.
//!
//! `hf.rs` reads a `config.json`, `gguf.rs` GGUF metadata, `rope.rs` holds RoPE's scaling and
//! frequencies; this file holds what they build and the checks every source goes through.

use crate::error::Result;

mod gguf;
mod hf;
mod quant;
mod rope;

pub use quant::{Fp8Activations, Fp8Config, Fp8Format, Fp8ScaleLayout, IgnoredModule};
pub use rope::RopeScaling;

/// The model families covered by the one Llama-family implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    /// Parses an HF `model_type` or a GGUF `general.architecture`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "qwen2" => Some(Architecture::Qwen2),
            "qwen3" => Some(Architecture::Qwen3),
            _ => None,
        }
    }
}

/// The dimensions and options of a Llama-family model.
///
/// Invariants after [`ModelConfig::validate`]: every size is non-zero,
/// `num_attention_heads % num_key_value_heads == 0`, and `head_dim` is even.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context the model was trained for; the default `max_model_len`.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` reuses the embedding table.
    pub tie_word_embeddings: bool,
    /// End-of-sequence ids named by the model config (the tokenizer and
    /// `generation_config.json` may add more).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// The FP8 format of the checkpoint's weights (`quantization_config`), `None` for an
    /// unquantized checkpoint (and for GGUF, whose tensors carry their own types).
    pub quantization: Option<Fp8Config>,
}

impl ModelConfig {
    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in sizes {
            if v == 0 || v > (1 << 24) {
                return Err(format!("{name} = {v} is out of range"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "rms_norm_eps ({}) must be finite and non-negative",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        if let Some(scaling) = &self.rope_scaling {
            scaling.validate()?;
        }
        Ok(())
    }

    /// Width of the fused QKV projection's output per token.
    pub fn qkv_size(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
mod quant_tests;
