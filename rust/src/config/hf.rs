//! The model's configuration from a Hugging Face `config.json`: both the transformers 4 keys
//! (`rope_theta`, `rope_scaling`) and transformers 5's `rope_parameters`.

use std::path::Path;

use serde_json::Value;

use super::quant::parse_quantization_config;
use super::{Architecture, ModelConfig, RopeScaling};
use crate::error::{Error, Result};

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
            quantization: parse_quantization_config(json.get("quantization_config"))?,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
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
