//! `quantization_config` parsing: each FP8 format as published, and the unsupported ones.

use serde_json::{json, Value};

use super::*;
use crate::error::Error;

fn with_quant(q: Value) -> Result<ModelConfig, Error> {
    let mut cfg = json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
    });
    cfg["quantization_config"] = q;
    ModelConfig::from_hf_json(&cfg)
}

fn fp8(q: Value) -> Fp8Config {
    with_quant(q).unwrap().quantization.expect("an FP8 config")
}

fn unsupported(q: Value) -> String {
    match with_quant(q) {
        Err(Error::Unsupported(m)) => m,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// A compressed-tensors config as llm-compressor writes it (FP8_DYNAMIC-like when `acts` is
/// dynamic per token).
fn compressed(strategy: &str, acts: Value) -> Value {
    json!({
        "quant_method": "compressed-tensors", "format": "float-quantized",
        "quantization_status": "compressed", "global_compression_ratio": 1.2,
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": strategy, "dynamic": false,
                        "symmetric": true, "group_size": null, "observer": "minmax"},
            "input_activations": acts, "output_activations": null}},
        "ignore": ["lm_head", "re:.*mlp\\.down_proj$"],
        "kv_cache_scheme": null,
    })
}

#[test]
fn no_quantization_config_is_none() {
    assert_eq!(with_quant(Value::Null).unwrap().quantization, None);
}

#[test]
fn compressed_tensors_per_tensor_static() {
    let acts = json!({"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": false,
                      "symmetric": true});
    let q = fp8(compressed("tensor", acts));
    assert_eq!(q.format, Fp8Format::CompressedTensors);
    assert_eq!(q.scales, Fp8ScaleLayout::Tensor);
    assert_eq!(q.activations, Fp8Activations::Static);
    assert_eq!(
        q.scale_name("model.layers.0.self_attn.q_proj.weight"),
        "model.layers.0.self_attn.q_proj.weight_scale"
    );
    assert!(!q.kv_cache_scheme);
}

#[test]
fn compressed_tensors_per_channel_dynamic_with_ignore_list() {
    let acts = json!({"num_bits": 8, "type": "float", "strategy": "token", "dynamic": true});
    let q = fp8(compressed("channel", acts));
    assert_eq!(q.scales, Fp8ScaleLayout::Channel);
    assert_eq!(q.activations, Fp8Activations::Dynamic);
    assert!(q.ignores("lm_head"));
    assert!(!q.ignores("lm_head_2") && !q.ignores("model.lm_head"));
    // `re:` matches at the start of the name, as Python's re.match.
    assert!(q.ignores("model.layers.3.mlp.down_proj"));
    assert!(!q.ignores("model.layers.3.mlp.up_proj"));
}

#[test]
fn compressed_tensors_weight_only_block_and_kv_cache_scheme() {
    let mut c = compressed("block", Value::Null);
    c["config_groups"]["group_0"]["weights"]["block_structure"] = json!([128, 128]);
    c["kv_cache_scheme"] = json!({"num_bits": 8, "type": "float", "strategy": "tensor",
                                  "dynamic": false, "symmetric": true});
    c["format"] = json!("naive-quantized");
    let q = fp8(c);
    assert_eq!(q.scales, Fp8ScaleLayout::Block([128, 128]));
    assert_eq!(q.activations, Fp8Activations::None);
    assert!(q.kv_cache_scheme);
}

#[test]
fn fp8_block_format_as_qwen3_ships_it() {
    let q = fp8(
        json!({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [128, 128]}),
    );
    assert_eq!(q.format, Fp8Format::Fp8);
    assert_eq!(q.scales, Fp8ScaleLayout::Block([128, 128]));
    assert_eq!(q.activations, Fp8Activations::Dynamic);
    assert_eq!(q.scale_name("w.weight"), "w.weight_scale_inv");
    assert!(q.ignore.is_empty());
}

#[test]
fn fp8_per_tensor_with_ignored_layers() {
    let q = fp8(json!({"quant_method": "fp8", "activation_scheme": "static",
                       "ignored_layers": ["lm_head"], "modules_to_not_convert": ["re:model\\.layers\\.0\\."]}));
    assert_eq!(q.scales, Fp8ScaleLayout::Tensor);
    assert_eq!(q.activations, Fp8Activations::Static);
    assert_eq!(q.scale_name("w.weight"), "w.weight_scale");
    assert!(q.ignores("lm_head") && q.ignores("model.layers.0.mlp.up_proj"));
    assert!(!q.ignores("model.layers.10.mlp.up_proj"));
}

#[test]
fn unsupported_methods_are_named() {
    for method in ["awq", "gptq", "bitsandbytes", "aqlm", "fbgemm_fp8"] {
        let m = unsupported(json!({"quant_method": method, "bits": 4}));
        assert!(
            m.contains(&format!("quantization method \"{method}\"")),
            "{m}"
        );
    }
    let m = unsupported(json!({"quant_method": "fp8", "fmt": "e5m2"}));
    assert!(m.contains("\"fp8\" with fmt \"e5m2\""), "{m}");
    let m = unsupported(json!({"bits": 4}));
    assert!(m.contains("without a \"quant_method\""), "{m}");
}

#[test]
fn unsupported_compressed_tensors_schemes_are_named() {
    // int8 W8A8, as llm-compressor's W8A8 scheme writes it.
    let mut int8 = compressed("channel", Value::Null);
    int8["config_groups"]["group_0"]["weights"]["type"] = json!("int");
    int8["format"] = json!("int-quantized");
    let m = unsupported(int8);
    assert!(
        m.contains("\"compressed-tensors\" with format \"int-quantized\""),
        "{m}"
    );
    let mut int8 = compressed("channel", Value::Null);
    int8["config_groups"]["group_0"]["weights"]["type"] = json!("int");
    let m = unsupported(int8);
    assert!(m.contains("8-bit int weights"), "{m}");
    let mut w4 = compressed("group", Value::Null);
    w4["format"] = json!("pack-quantized");
    assert!(unsupported(w4).contains("format \"pack-quantized\""));
    let m = unsupported(compressed("group", Value::Null));
    assert!(m.contains("strategy \"group\""), "{m}");
    let acts = json!({"num_bits": 8, "type": "float", "strategy": "channel", "dynamic": false});
    let m = unsupported(compressed("tensor", acts));
    assert!(m.contains("activations with strategy \"channel\""), "{m}");
    let mut mixed = compressed("tensor", Value::Null);
    mixed["config_groups"]["group_1"] =
        compressed("channel", Value::Null)["config_groups"]["group_0"].clone();
    assert!(unsupported(mixed).contains("different schemes"));
    let mut kv = compressed("tensor", Value::Null);
    kv["kv_cache_scheme"] = json!({"num_bits": 8, "type": "int", "strategy": "tensor"});
    assert!(unsupported(kv).contains("8-bit int KV cache"));
}

#[test]
fn malformed_fp8_configs_are_invalid_models() {
    let cases = [
        (
            json!({"quant_method": "fp8", "weight_block_size": [128]}),
            "weight_block_size",
        ),
        (
            json!({"quant_method": "fp8", "weight_block_size": [0, 128]}),
            "weight_block_size",
        ),
        (
            json!({"quant_method": "fp8", "activation_scheme": "sometimes"}),
            "activation_scheme",
        ),
        (
            json!({"quant_method": "fp8", "ignored_layers": "lm_head"}),
            "must be a list",
        ),
        (
            json!({"quant_method": "fp8", "ignored_layers": ["re:(unclosed"]}),
            "re:(unclosed",
        ),
        (
            json!({"quant_method": "compressed-tensors", "format": "float-quantized"}),
            "config_groups",
        ),
    ];
    for (q, want) in cases {
        match with_quant(q) {
            Err(Error::InvalidModel { reason, .. }) => {
                assert!(reason.contains(want), "{reason} should name {want}")
            }
            other => panic!("expected InvalidModel naming {want}, got {other:?}"),
        }
    }
}
