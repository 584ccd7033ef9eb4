//! Hugging Face names for GGUF tensors, and the undoing of llama.cpp's Q/K row permutation.

/// The Hugging Face Llama-family name of a GGUF tensor, or `None` for a tensor with no
/// equivalent (e.g. `rope_freqs.weight`, which transformers derives from the config).
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let (layer, rest) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
    if !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.split_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{suffix}"))
}

/// Undoes llama.cpp's Q/K permutation of the rows of `data` (row-major, `shape[0]` rows):
/// within each of `heads` heads of `2 * dim` rows, row `2 * i + t` moves to `t * dim + i`.
/// This is transformers' `_reverse_permute_weights`:
/// `w.reshape(heads, dim, 2, cols).swapaxes(1, 2).reshape(shape)`. `T` is `f32` for
/// dequantized rows and `u8` for rows of quantized blocks (a row is a whole number of blocks).
pub fn reverse_permute_rows<T: Copy + Default>(
    data: &[T],
    shape: &[usize],
    heads: usize,
) -> Result<Vec<T>, String> {
    let rows = shape.first().copied().unwrap_or(1);
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(format!(
            "{rows} rows cannot be split into {heads} heads of pairs"
        ));
    }
    let cols = data.len() / rows.max(1);
    let dim = rows / heads / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..heads {
        for i in 0..dim {
            for t in 0..2 {
                let src = (h * 2 * dim + 2 * i + t) * cols;
                let dst = (h * 2 * dim + t * dim + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_writer::llama_cpp_permute;
    use super::*;

    #[test]
    fn maps_gguf_names_to_hugging_face_names() {
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_norm.weight",
                "model.layers.0.input_layernorm.weight",
            ),
            (
                "blk.12.ffn_norm.weight",
                "model.layers.12.post_attention_layernorm.weight",
            ),
            ("blk.3.attn_q.bias", "model.layers.3.self_attn.q_proj.bias"),
            (
                "blk.3.attn_k.weight",
                "model.layers.3.self_attn.k_proj.weight",
            ),
            ("blk.3.attn_v.bias", "model.layers.3.self_attn.v_proj.bias"),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.3.attn_q_norm.weight",
                "model.layers.3.self_attn.q_norm.weight",
            ),
            (
                "blk.3.attn_k_norm.weight",
                "model.layers.3.self_attn.k_norm.weight",
            ),
            (
                "blk.3.ffn_gate.weight",
                "model.layers.3.mlp.gate_proj.weight",
            ),
            ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
            (
                "blk.3.ffn_down.weight",
                "model.layers.3.mlp.down_proj.weight",
            ),
        ];
        for (gguf, hf) in cases {
            assert_eq!(hf_name(gguf).as_deref(), Some(hf), "{gguf}");
        }
        for unmapped in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.1.attn_q.scale",
            "blk.1.foo.weight",
        ] {
            assert_eq!(hf_name(unmapped), None, "{unmapped}");
        }
    }

    #[test]
    fn reverse_permutation_undoes_llama_cpp() {
        // Rows of one head of 8 (dim 4): the converter stored HF rows 0,4,1,5,2,6,3,7.
        let stored = [0., 4., 1., 5., 2., 6., 3., 7.];
        assert_eq!(
            reverse_permute_rows(&stored, &[8], 1).unwrap(),
            [0., 1., 2., 3., 4., 5., 6., 7.]
        );
        let w: Vec<f32> = (0..24 * 3).map(|v| v as f32).collect();
        for heads in [1, 2, 3, 6, 12] {
            let p = llama_cpp_permute(&w, 24, heads);
            assert_eq!(
                reverse_permute_rows(&p, &[24, 3], heads).unwrap(),
                w,
                "{heads} heads"
            );
        }
        assert!(reverse_permute_rows(&w, &[24, 3], 5).is_err());
        assert!(reverse_permute_rows(&w, &[24, 3], 0).is_err());
    }
}
