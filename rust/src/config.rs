//! Model configuration, read from a Hugging Face `config.json` or from GGUF metadata, and
//! validated once so the forward pass can trust every dimension.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::weights::gguf_value::GgufValue;

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

/// RoPE frequency scaling. `None` in [`ModelConfig::rope_scaling`] means plain RoPE.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 / 3.2 "llama3" scaling: long wavelengths divided by `factor`, short ones kept,
    /// a smooth blend in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
}

impl RopeScaling {
    /// Checks that every factor is finite and positive (a zero or NaN factor would make every
    /// rotation NaN or infinite, and the model would emit garbage), and that llama3's
    /// `high_freq_factor` exceeds its `low_freq_factor` (their difference divides).
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "rope scaling {name} ({v}) must be finite and positive"
                ))
            }
        };
        match *self {
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope scaling high_freq_factor ({high_freq_factor}) must exceed \
                         low_freq_factor ({low_freq_factor})"
                    ));
                }
                if original_max_position_embeddings == 0 {
                    return Err("rope scaling original_max_position_embeddings is 0".into());
                }
                Ok(())
            }
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
}

impl ModelConfig {
    /// Reads `config.json` in an HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        // Bytes, not a string: a file that is not UTF-8 is a malformed model, not an I/O error.
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid_model(&path, format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&json).map_err(|reason| match reason {
            Error::InvalidModel { reason, .. } => Error::invalid_model(&path, reason),
            other => other,
        })
    }

    /// Parses the contents of an HF `config.json`.
    pub fn from_hf_json(json: &Value) -> Result<Self> {
        let bad = |reason: String| Error::invalid_model("config.json", reason);
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing \"model_type\"".into()))?;
        let architecture = Architecture::parse(model_type).ok_or_else(|| {
            Error::Unsupported(format!(
                "architecture \"{model_type}\" (supported: llama, mistral, qwen2, qwen3)"
            ))
        })?;
        let get = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("missing or non-integer \"{key}\"")))
        };
        // An optional key that is present must hold a usable value: a malformed one is an
        // error, not silently replaced by the default.
        let opt = |key: &str| -> Result<Option<usize>> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        bad(format!("\"{key}\" must be a non-negative integer, got {v}"))
                    }),
            }
        };
        let opt_f = |key: &str, v: Option<&Value>| -> Result<Option<f64>> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("\"{key}\" must be a number, got {x}"))),
            }
        };
        let hidden_size = get("hidden_size")?;
        let num_attention_heads = get("num_attention_heads")?;
        let head_dim = opt("head_dim")?.unwrap_or(hidden_size / num_attention_heads.max(1));
        // transformers 5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`.
        let rope_params = json.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = opt_f(
            "rope_theta",
            rope_params
                .and_then(|p| p.get("rope_theta"))
                .or_else(|| json.get("rope_theta")),
        )?
        .unwrap_or(10000.0) as f32;
        let scaling = json
            .get("rope_scaling")
            .filter(|v| v.is_object())
            .or(rope_params);
        let rope_scaling = match scaling {
            Some(s) => parse_hf_rope_scaling(s)?,
            None => None,
        };
        let mut max_position_embeddings = opt("max_position_embeddings")?.unwrap_or(4096);
        // Sliding-window attention is exact while the context fits in the window.
        if let Some(window) = opt("sliding_window")? {
            let used = json
                .get("use_sliding_window")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if used && window > 0 {
                max_position_embeddings = max_position_embeddings.min(window);
            }
        }
        let eos_token_ids = match json.get("eos_token_id") {
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        let cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: get("intermediate_size")?,
            num_hidden_layers: get("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: opt("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim,
            vocab_size: get("vocab_size")?,
            rms_norm_eps: opt_f("rms_norm_eps", json.get("rms_norm_eps"))?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            eos_token_ids,
            bos_token_id: opt("bos_token_id")?.map(|v| v as u32),
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

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
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

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
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
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

    /// Inverse frequencies of RoPE, one per pair of dimensions (`head_dim / 2` values),
    /// with the model's scaling applied, computed as transformers does.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

fn parse_hf_rope_scaling(s: &Value) -> Result<Option<RopeScaling>> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str);
    let bad = |reason: String| Error::invalid_model("config.json", reason);
    let f = |k: &str, default: f64| -> Result<f32> {
        match s.get(k) {
            None | Some(Value::Null) => Ok(default as f32),
            Some(v) => v
                .as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| bad(format!("rope scaling \"{k}\" must be a number, got {v}"))),
        }
    };
    match kind {
        None | Some("default") => Ok(None),
        Some("linear") => Ok(Some(RopeScaling::Linear {
            factor: f("factor", 1.0)?,
        })),
        Some("llama3") => Ok(Some(RopeScaling::Llama3 {
            factor: f("factor", 8.0)?,
            low_freq_factor: f("low_freq_factor", 1.0)?,
            high_freq_factor: f("high_freq_factor", 4.0)?,
            original_max_position_embeddings: match s.get("original_max_position_embeddings") {
                None | Some(Value::Null) => 8192,
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "rope scaling \"original_max_position_embeddings\" must be a \
                             non-negative integer, got {v}"
                        ))
                    })?,
            },
        })),
        Some(other) => Err(Error::Unsupported(format!("rope scaling type \"{other}\""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama3_json() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 131072, "eos_token_id": [128001, 128008, 128009],
            "bos_token_id": 128000,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        })
    }

    #[test]
    fn parses_llama31_config() {
        let cfg = ModelConfig::from_hf_json(&llama3_json()).unwrap();
        assert_eq!(cfg.head_dim, 128);
        assert_eq!(cfg.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(cfg.qkv_size(), (32 + 16) * 128);
        assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let cfg = ModelConfig::from_hf_json(&llama3_json()).unwrap();
        let scaled = cfg.rope_inv_freq();
        let plain = ModelConfig {
            rope_scaling: None,
            ..cfg
        }
        .rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() <= 1e-12);
    }

    #[test]
    fn transformers5_rope_parameters() {
        let mut j = llama3_json();
        let obj = j.as_object_mut().unwrap();
        let scaling = obj.remove("rope_scaling").unwrap();
        obj.remove("rope_theta");
        let mut params = scaling.as_object().unwrap().clone();
        params.insert("rope_theta".into(), json!(500000.0));
        obj.insert("rope_parameters".into(), Value::Object(params));
        let cfg = ModelConfig::from_hf_json(&j).unwrap();
        assert_eq!(cfg.rope_theta, 500000.0);
        assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    }

    #[test]
    fn rejects_unknown_architecture_and_bad_heads() {
        let mut j = llama3_json();
        j["model_type"] = json!("gpt_neox");
        assert!(matches!(
            ModelConfig::from_hf_json(&j),
            Err(Error::Unsupported(_))
        ));
        let mut j = llama3_json();
        j["num_key_value_heads"] = json!(5);
        assert!(matches!(
            ModelConfig::from_hf_json(&j),
            Err(Error::InvalidModel { .. })
        ));
        let mut j = llama3_json();
        j.as_object_mut().unwrap().remove("hidden_size");
        assert!(matches!(
            ModelConfig::from_hf_json(&j),
            Err(Error::InvalidModel { .. })
        ));
    }

    #[test]
    fn sliding_window_caps_context() {
        let j = json!({
            "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096
        });
        assert_eq!(
            ModelConfig::from_hf_json(&j)
                .unwrap()
                .max_position_embeddings,
            4096
        );
    }
}

#[cfg(test)]
#[path = "config_hostile_tests.rs"]
mod hostile_tests;
