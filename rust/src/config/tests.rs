//! Parsing and checks of model configs from each source.

use serde_json::{json, Value};

use super::*;
use crate::error::Error;

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
