//! The model's configuration from GGUF metadata (`general.architecture` and `{arch}.*` keys).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Architecture, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::weights::gguf_value::GgufValue;

impl ModelConfig {
    /// Builds the config from GGUF metadata (`general.architecture` and `{arch}.*` keys).
    /// `has_output_tensor` says whether the file holds a separate `output.weight` (else the
    /// embeddings are tied).
    pub fn from_gguf(
        meta: &BTreeMap<String, GgufValue>,
        has_output_tensor: bool,
        path: &Path,
    ) -> Result<Self> {
        let bad = |reason: String| Error::invalid_model(path, reason);
        let arch_name = meta
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| bad("missing general.architecture".into()))?;
        let architecture = Architecture::parse(arch_name).ok_or_else(|| {
            Error::Unsupported(format!(
                "GGUF architecture \"{arch_name}\" (supported: llama, qwen2, qwen3)"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| -> Result<usize> {
            meta.get(&key(k))
                .and_then(GgufValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("missing or non-integer {}", key(k))))
        };
        // Present but malformed optional keys are errors, not silently defaulted.
        let opt_u = |k: &str| -> Result<Option<usize>> {
            match meta.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        bad(format!(
                            "{} must be a non-negative integer, got {v:?}",
                            key(k)
                        ))
                    }),
            }
        };
        let opt_f = |k: &str| -> Result<Option<f64>> {
            match meta.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("{} must be a number, got {v:?}", key(k)))),
            }
        };
        let hidden_size = get("embedding_length")?;
        let num_attention_heads = get("attention.head_count")?;
        let vocab_size = match opt_u("vocab_size")? {
            Some(v) => v,
            None => meta
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(<[GgufValue]>::len)
                .ok_or_else(|| {
                    bad(format!(
                        "missing {} and tokenizer.ggml.tokens",
                        key("vocab_size")
                    ))
                })?,
        };
        let rope_scaling = match meta
            .get(&key("rope.scaling.type"))
            .and_then(GgufValue::as_str)
        {
            Some("linear") => Some(RopeScaling::Linear {
                factor: opt_f("rope.scaling.factor")?.unwrap_or(1.0) as f32,
            }),
            Some("none") | None => None,
            Some(other) => {
                return Err(Error::Unsupported(format!("GGUF rope scaling \"{other}\"")));
            }
        };
        let max_position_embeddings = get("context_length")?;
        let cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: get("feed_forward_length")?,
            num_hidden_layers: get("block_count")?,
            num_attention_heads,
            num_key_value_heads: opt_u("attention.head_count_kv")?.unwrap_or(num_attention_heads),
            head_dim: opt_u("attention.key_length")?
                .unwrap_or(hidden_size / num_attention_heads.max(1)),
            vocab_size,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            rope_theta: opt_f("rope.freq_base")?.unwrap_or(10000.0) as f32,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: !has_output_tensor,
            eos_token_ids: meta
                .get("tokenizer.ggml.eos_token_id")
                .and_then(GgufValue::as_u64)
                .map(|v| vec![v as u32])
                .unwrap_or_default(),
            bos_token_id: meta
                .get("tokenizer.ggml.bos_token_id")
                .and_then(GgufValue::as_u64)
                .map(|v| v as u32),
            quantization: None,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }
}
