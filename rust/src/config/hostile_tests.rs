//! Malformed values in model configs: each is an [`Error::InvalidModel`] naming the key, never
//! a silent default or a model that loads and emits garbage.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::error::Error;
use crate::weights::gguf_value::GgufValue;

fn base() -> Value {
    json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 256, "max_position_embeddings": 512
    })
}

fn err(j: &Value) -> String {
    match ModelConfig::from_hf_json(j) {
        Err(e @ Error::InvalidModel { .. }) => e.to_string(),
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

#[test]
fn malformed_optional_fields_are_errors_not_defaults() {
    for (key, value, want) in [
        (
            "max_position_embeddings",
            json!(-1),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            json!(0),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            json!("4096"),
            "max_position_embeddings",
        ),
        ("head_dim", json!(-1), "head_dim"),
        ("head_dim", json!(0), "head_dim"),
        ("head_dim", json!(1.5), "head_dim"),
        ("num_key_value_heads", json!(-2), "num_key_value_heads"),
        ("rms_norm_eps", json!("small"), "rms_norm_eps"),
        ("rope_theta", json!(-1.0), "rope_theta"),
        ("rope_theta", json!([1]), "rope_theta"),
        ("sliding_window", json!(-4096), "sliding_window"),
        ("bos_token_id", json!(-1), "bos_token_id"),
    ] {
        let mut j = base();
        j[key] = value.clone();
        let e = err(&j);
        assert!(e.contains(want), "{key} = {value}: {e}");
    }
    // Null means "not given", as transformers reads it.
    let mut j = base();
    j["head_dim"] = Value::Null;
    assert_eq!(ModelConfig::from_hf_json(&j).unwrap().head_dim, 16);
}

#[test]
fn rope_scaling_factors_must_be_finite_and_positive() {
    for scaling in [
        json!({"rope_type": "linear", "factor": 0.0}),
        json!({"rope_type": "linear", "factor": -2.0}),
        json!({"rope_type": "linear", "factor": "2"}),
        json!({"rope_type": "llama3", "factor": 0.0}),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
               "high_freq_factor": 4.0}),
        json!({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 0}),
        json!({"rope_type": "llama3", "factor": 1e39}),
    ] {
        let mut j = base();
        j["rope_scaling"] = scaling.clone();
        let e = err(&j);
        assert!(e.contains("rope scaling"), "{scaling}: {e}");
    }
}

#[test]
fn gguf_rope_factor_nan_and_malformed_keys() {
    let meta = |extra: &[(&str, GgufValue)]| {
        let mut m: BTreeMap<String, GgufValue> = [
            ("general.architecture", GgufValue::String("llama".into())),
            ("llama.embedding_length", GgufValue::U32(64)),
            ("llama.feed_forward_length", GgufValue::U32(128)),
            ("llama.block_count", GgufValue::U32(2)),
            ("llama.attention.head_count", GgufValue::U32(4)),
            ("llama.context_length", GgufValue::U32(512)),
            ("llama.vocab_size", GgufValue::U32(256)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            m.insert(k.to_string(), v.clone());
        }
        m
    };
    let path = Path::new("m.gguf");
    assert!(ModelConfig::from_gguf(&meta(&[]), false, path).is_ok());
    let linear = (
        "llama.rope.scaling.type",
        GgufValue::String("linear".into()),
    );
    for extra in [
        vec![
            linear.clone(),
            ("llama.rope.scaling.factor", GgufValue::F32(f32::NAN)),
        ],
        vec![
            linear.clone(),
            ("llama.rope.scaling.factor", GgufValue::F32(0.0)),
        ],
        vec![("llama.attention.key_length", GgufValue::I32(-1))],
        vec![(
            "llama.attention.head_count_kv",
            GgufValue::String("2".into()),
        )],
        vec![("llama.rope.freq_base", GgufValue::F32(f32::INFINITY))],
        vec![("llama.context_length", GgufValue::I64(-1))],
    ] {
        let e = ModelConfig::from_gguf(&meta(&extra), false, path);
        assert!(
            matches!(e, Err(Error::InvalidModel { .. })),
            "{extra:?}: {e:?}"
        );
    }
}
