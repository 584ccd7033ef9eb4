use super::test_writer::{err_of, f32_bytes, llama_cpp_permute, sample, Builder};
use super::*;

#[test]
fn parses_metadata_and_tensors() {
    let file = GgufFile::from_bytes(sample().build()).unwrap();
    assert_eq!((file.version(), file.alignment()), (3, 32));
    assert_eq!(file.architecture(), Some("qwen2"));
    assert_eq!(file.get("f"), Some(&GgufValue::F32(0.5)));
    assert_eq!(file.get("b"), Some(&GgufValue::Bool(true)));
    assert_eq!(file.get("i8"), Some(&GgufValue::I8(-1)));
    assert_eq!(file.get("u64").and_then(GgufValue::as_u64), Some(u64::MAX));
    assert_eq!(file.get("f64"), Some(&GgufValue::F64(2.5)));
    let tokens = file.get("tokens").and_then(GgufValue::as_array).unwrap();
    assert_eq!(tokens[1].as_str(), Some("héllo"));
    let nested = GgufValue::Array(vec![GgufValue::Array(vec![
        GgufValue::I32(-1),
        GgufValue::I32(7),
    ])]);
    assert_eq!(file.get("nested"), Some(&nested));
    let names = file.names();
    assert_eq!(
        names,
        [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "rope_freqs.weight"
        ]
    );
    let embed = file.load_f32("model.embed_tokens.weight").unwrap();
    assert_eq!(embed.shape, [2, 3], "GGUF dims [3, 2] are 2 rows of 3");
    assert_eq!(embed.data, [0., 1., 2., 3., 4., 5.]);
    let bias = file
        .load_f32("model.layers.0.self_attn.q_proj.bias")
        .unwrap();
    assert_eq!((bias.shape, bias.data), (vec![2], vec![1.0, -2.0]));
    let k = file
        .load_f32("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!((k.shape, k.data), (vec![1, 32], vec![1.0; 32]));
    assert_eq!(file.load_f32("rope_freqs.weight").unwrap().data, [9.0]);
    assert!(file.contains("model.layers.0.self_attn.q_proj.bias"));
    assert!(!file.contains("lm_head.weight"));
    assert!(file
        .load_f32("lm_head.weight")
        .unwrap_err()
        .to_string()
        .contains("no tensor"));

    let mut v2 = sample();
    v2.version = 2;
    assert_eq!(GgufFile::from_bytes(v2.build()).unwrap().version(), 2);
}

#[test]
fn honours_general_alignment() {
    let mut b = Builder::new().kv_u32("general.alignment", 256);
    b.alignment = 256;
    let b = b
        .tensor("a", &[1], 0, &f32_bytes(&[1.0]))
        .tensor("b", &[1], 0, &f32_bytes(&[2.0]));
    let file = GgufFile::from_bytes(b.build()).unwrap();
    assert_eq!(file.alignment(), 256);
    assert_eq!(file.tensors()[1].offset, 256);
    assert_eq!(file.load_f32("b").unwrap().data, [2.0]);
    for bad in [48, 0, 1, 4] {
        let e = err_of(Builder::new().kv_u32("general.alignment", bad).build());
        assert!(e.contains("general.alignment"), "{bad}: {e}");
    }
    let mut nan = Builder::new().tensor("n", &[2], 0, &f32_bytes(&[1.0, f32::NAN]));
    nan.alignment = 32;
    let e = GgufFile::from_bytes(nan.build())
        .unwrap()
        .load_f32("n")
        .unwrap_err();
    assert!(
        e.to_string().contains("tensor n holds a non-finite value"),
        "{e}"
    );
}

#[test]
fn every_truncation_is_an_error() {
    let full = sample().build();
    for len in 0..full.len() {
        assert!(
            GgufFile::from_bytes(full[..len].to_vec()).is_err(),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let full = sample().build();
    for at in 0..full.len() {
        for mask in [0x01, 0x80, 0xFF] {
            let mut bytes = full.clone();
            bytes[at] ^= mask;
            if let Ok(file) = GgufFile::from_bytes(bytes) {
                for name in file.names() {
                    let _ = file.load_f32(&name);
                }
            }
        }
    }
}

#[test]
fn tensor_data_past_the_end() {
    let b = Builder::new()
        .tensor("blk.3.attn_q.weight", &[2], 0, &[0; 8])
        .info("late", &[4], 0, 64);
    let e = err_of(b.build());
    assert!(
        e.contains("tensor late: data range 192..208 exceeds file size 136"),
        "{e}"
    );
    let e = err_of(Builder::new().info("far", &[1], 0, u64::MAX).build());
    assert!(e.contains("exceeds file size"), "{e}");
    let e = err_of(
        Builder::new()
            .info("big", &[1 << 40, 1 << 20], 0, 0)
            .build(),
    );
    assert!(e.contains("exceeds file size"), "{e}");
}

#[test]
fn row_not_a_whole_number_of_blocks() {
    let e = err_of(Builder::new().tensor("q", &[16, 2], 2, &[0; 18]).build());
    assert!(
        e.contains("row length 16 is not a multiple of the Q4_0 block size 32"),
        "{e}"
    );
}

#[test]
fn unknown_and_unsupported_types_fail_only_at_load() {
    let b = Builder::new()
        .info("odd", &[8], 99, 0)
        .tensor("iq", &[256], 16, &[0; 66]);
    let file = GgufFile::from_bytes(b.build()).unwrap();
    let e = file.load_f32("odd").unwrap_err();
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("unknown ggml type id 99"),
        "{e}"
    );
    let e = file.load_f32("iq").unwrap_err().to_string();
    assert!(
        e.contains("tensor iq: ggml type IQ2_XXS cannot be dequantized"),
        "{e}"
    );
}

#[test]
fn unpermutes_q_and_k_for_llama_only() {
    let (q, k): (Vec<f32>, Vec<f32>) = (
        (0..16 * 2).map(|v| v as f32).collect(),
        (0..8).map(|v| -(v as f32)).collect(),
    );
    let build = |arch: &str| {
        Builder::new()
            .kv_str("general.architecture", arch)
            .kv_u32("llama.attention.head_count", 4)
            .kv_u32("llama.attention.head_count_kv", 2)
            .tensor(
                "blk.0.attn_q.weight",
                &[2, 16],
                0,
                &f32_bytes(&llama_cpp_permute(&q, 16, 4)),
            )
            .tensor(
                "blk.0.attn_k.bias",
                &[8],
                0,
                &f32_bytes(&llama_cpp_permute(&k, 8, 2)),
            )
            .build()
    };
    let llama = GgufFile::from_bytes(build("llama")).unwrap();
    assert_eq!(
        llama
            .load_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .data,
        q
    );
    assert_eq!(
        llama
            .load_f32("model.layers.0.self_attn.k_proj.bias")
            .unwrap()
            .data,
        k
    );
    let qwen = GgufFile::from_bytes(build("qwen2")).unwrap();
    let stored = qwen
        .load_f32("model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .data;
    assert_eq!(stored, llama_cpp_permute(&q, 16, 4));
}

#[test]
fn llama_head_counts_are_checked_when_q_or_k_loads() {
    let rows: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let with = |b: Builder| {
        let b = b.kv_str("general.architecture", "llama");
        let b = b.tensor("blk.0.attn_k.bias", &[8], 0, &f32_bytes(&rows));
        GgufFile::from_bytes(
            b.tensor("output_norm.weight", &[8], 0, &f32_bytes(&rows))
                .build(),
        )
        .unwrap()
    };
    let k = "model.layers.0.self_attn.k_proj.bias";
    let e = with(Builder::new()).load_f32(k).unwrap_err().to_string();
    assert!(e.contains("head_count missing"), "{e}");
    assert_eq!(
        with(Builder::new())
            .load_f32("model.norm.weight")
            .unwrap()
            .data,
        rows
    );
    let bad = Builder::new().kv_u32("llama.attention.head_count", 1);
    let e = with(bad.kv_str("llama.attention.head_count_kv", "2"))
        .load_f32(k)
        .unwrap_err();
    assert!(e.to_string().contains("not an integer"), "{e}");
    // Without head_count_kv, K has as many heads as Q (llama.cpp's default).
    let one_head = with(Builder::new().kv_u32("llama.attention.head_count", 1));
    assert_eq!(
        one_head.load_f32(k).unwrap().data,
        [0., 2., 4., 6., 1., 3., 5., 7.]
    );
    let e = with(Builder::new().kv_u32("llama.attention.head_count", 3)).load_f32(k);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("cannot be split into 3 heads"));
}

/// `raw` offers block-quantized tensors only, with the Q/K rows in Hugging Face order
/// (their dequantization equals `load_f32`), and refuses a block with an infinite scale.
#[test]
fn raw_blocks_are_unpermuted_and_checked() {
    // 8 rows of one Q4_1 block (20 bytes): scale 2⁻⁴ and min −2⁻³ (f16), then the row's
    // index in every nibble, so that each row dequantizes to its own values.
    let block = |row: u8, d: [u8; 2]| {
        let mut b = vec![d[0], d[1], 0x00, 0xB0];
        b.extend([row | (row << 4); 16]);
        b
    };
    let good: Vec<u8> = (0..8).flat_map(|r| block(r, [0x00, 0x2C])).collect();
    let mut bad = good.clone();
    bad[20..22].copy_from_slice(&[0x00, 0x7C]);
    let file = GgufFile::from_bytes(
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.attention.head_count", 2)
            .tensor("blk.0.attn_q.weight", &[32, 8], 3, &good)
            .tensor("blk.0.attn_v.weight", &[32, 8], 3, &good)
            .tensor("blk.0.attn_k.weight", &[32, 8], 3, &bad)
            .tensor("output_norm.weight", &[2], 0, &f32_bytes(&[1.0, 2.0]))
            .build(),
    )
    .unwrap();
    for (name, permuted) in [("q_proj", true), ("v_proj", false)] {
        let name = format!("model.layers.0.self_attn.{name}.weight");
        let raw = file.raw(&name).unwrap();
        assert_eq!((raw.dtype, raw.shape), ("Q4_1", &[8, 32][..]));
        assert_eq!(raw.bytes != &good[..], permuted, "{name}");
        let values = dequantize(GgmlType::Q4_1, raw.bytes, 256).unwrap();
        assert_eq!(values, file.load_f32(&name).unwrap().data, "{name}");
    }
    assert!(file.raw("model.layers.0.self_attn.k_proj.weight").is_none());
    assert!(file.raw("model.norm.weight").is_none());
    assert!(file.raw("lm_head.weight").is_none());
}

/// Reads `tiny_llama.gguf`, written by gguf-py's `GGUFWriter`, and compares every tensor with
/// gguf-py's dequantization followed by transformers' un-permutation
/// (`tests/make_gguf_fixtures.py`). Exact: both sides do the same f32 arithmetic.
#[test]
fn matches_gguf_py_and_transformers_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let file = GgufFile::open(&dir.join("tiny_llama.gguf")).unwrap();
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(
        file.get("general.name").and_then(GgufValue::as_str),
        Some("tiny llama fixture")
    );
    assert_eq!(
        file.get("llama.attention.head_count_kv")
            .and_then(GgufValue::as_u64),
        Some(2)
    );
    assert_eq!(
        file.get("tokenizer.ggml.add_bos_token"),
        Some(&GgufValue::Bool(true))
    );
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .unwrap();
    assert_eq!(
        tokens
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<Vec<_>>(),
        ["<s>", "</s>", "héllo", "wörld"]
    );
    assert_eq!(
        file.get("fixture.negative").and_then(GgufValue::as_i64),
        Some(-5)
    );
    assert_eq!(
        file.get("fixture.pi"),
        Some(&GgufValue::F64(std::f64::consts::PI))
    );

    let expected = std::fs::read(dir.join("tiny_llama.expected.bin")).unwrap();
    let mut rest = &expected[..];
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    };
    let (mut seen, mut compared) = (0, 0);
    while seen < file.tensors().len() {
        let name_len = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let name = String::from_utf8(take(name_len).to_vec()).unwrap();
        let rank = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let shape: Vec<usize> = (0..rank)
            .map(|_| u64::from_le_bytes(take(8).try_into().unwrap()) as usize)
            .collect();
        let n: usize = shape.iter().product();
        let want: Vec<f32> = take(4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if want.iter().any(|v| !v.is_finite()) {
            // Random bits include infinities and NaNs: such a weight is refused by name.
            let e = file.load_f32(&name).unwrap_err().to_string();
            assert!(e.contains("holds a non-finite value"), "{name}: {e}");
            seen += 1;
            continue;
        }
        compared += 1;
        let got = file.load_f32(&name).unwrap();
        assert_eq!(got.shape, shape, "{name}");
        for (i, (g, w)) in got.data.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} != {w}");
        }
        seen += 1;
    }
    assert!(rest.is_empty());
    assert!(compared > 0, "no tensor was compared bit for bit");
}
