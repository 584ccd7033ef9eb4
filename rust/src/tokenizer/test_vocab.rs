//! Small GGUF tokenizer metadata maps for tests, one byte-level (`gpt2`) and one SentencePiece
//! (`llama`). They are the vocabularies of the GGUF files `tests/make_tokenizer_golden.py`-style
//! scripts wrote with the `gguf` package to get transformers' ids for the expectations in the
//! tests (transformers 5.24, `AutoTokenizer.from_pretrained(dir, gguf_file=...)`).

use std::collections::BTreeMap;

use super::byte_alphabet::byte_to_char;
use crate::weights::gguf_value::GgufValue;

/// Merges of the byte-level test vocabulary; each adds the merged token after the 256 bytes.
const GPT2_MERGES: [&str; 16] = [
    "Ġ t",
    "h e",
    "Ġt he",
    "Ġ a",
    "i n",
    "Ġ w",
    "o r",
    "Ġw or",
    "l d",
    "Ġwor ld",
    "Ġ Ġ",
    "1 2",
    "Ċ Ċ",
    "ä ¸",
    "ä¸ Ń",
    "Ġ ä¸Ń",
];

/// Pieces of the SentencePiece test vocabulary with scores -1, -2, ... (best first).
const SPM_PIECES: [&str; 28] = [
    "▁t",
    "he",
    "▁the",
    "▁a",
    "in",
    "▁h",
    "ll",
    "▁w",
    "or",
    "▁he",
    "▁hell",
    "▁hello",
    "▁wor",
    "▁world",
    "an",
    "▁an",
    "▁and",
    "▁i",
    "▁is",
    "▁▁",
    "▁▁▁",
    "▁1",
    "23",
    "▁中",
    "é",
    "▁é",
    "ab",
    "▁ab",
];
/// Single characters of the SentencePiece test vocabulary, scored far below the pieces.
const SPM_CHARS: [&str; 22] = [
    "▁", "t", "h", "e", "a", "i", "n", "l", "o", "w", "r", "d", "s", "1", "2", "3", ",", ".", "!",
    "中", "b", "c",
];

fn strings(items: &[String]) -> GgufValue {
    GgufValue::Array(items.iter().map(|s| GgufValue::String(s.clone())).collect())
}

fn meta_entry(meta: &mut BTreeMap<String, GgufValue>, key: &str, value: GgufValue) {
    meta.insert(key.to_string(), value);
}

/// A byte-level vocabulary: 3 control tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`),
/// the 256 byte characters (ids 3..259), one token per merge (259..275, the last one stored
/// as the raw text " 中" that must be respelled), then `<think>` (user-defined, 275),
/// `<bad ctrl>` (control but outside the byte alphabet, 276) and `<|eot|>` (control, 277).
/// BOS 0, EOS 2; `pre` and `add_bos` as given.
pub(crate) fn gpt2_metadata(
    pre: Option<&str>,
    add_bos: Option<bool>,
) -> BTreeMap<String, GgufValue> {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types: Vec<i32> = vec![3, 3, 3];
    tokens.extend((0..=255u8).map(|b| byte_to_char(b).to_string()));
    types.extend([1; 256]);
    for merge in GPT2_MERGES {
        let merged = merge.replace(' ', "");
        tokens.push(if merged == "Ġä¸Ń" {
            " 中".to_string()
        } else {
            merged
        });
        types.push(1);
    }
    for (token, kind) in [("<think>", 4), ("<bad ctrl>", 3), ("<|eot|>", 3)] {
        tokens.push(token.to_string());
        types.push(kind);
    }
    let mut meta = BTreeMap::new();
    meta_entry(
        &mut meta,
        "general.architecture",
        GgufValue::String("llama".into()),
    );
    meta_entry(
        &mut meta,
        "tokenizer.ggml.model",
        GgufValue::String("gpt2".into()),
    );
    if let Some(pre) = pre {
        meta_entry(
            &mut meta,
            "tokenizer.ggml.pre",
            GgufValue::String(pre.into()),
        );
    }
    meta_entry(&mut meta, "tokenizer.ggml.tokens", strings(&tokens));
    meta_entry(
        &mut meta,
        "tokenizer.ggml.token_type",
        GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
    );
    let merges: Vec<String> = GPT2_MERGES.map(String::from).to_vec();
    meta_entry(&mut meta, "tokenizer.ggml.merges", strings(&merges));
    meta_entry(&mut meta, "tokenizer.ggml.bos_token_id", GgufValue::U32(0));
    meta_entry(&mut meta, "tokenizer.ggml.eos_token_id", GgufValue::U32(2));
    if let Some(add_bos) = add_bos {
        meta_entry(
            &mut meta,
            "tokenizer.ggml.add_bos_token",
            GgufValue::Bool(add_bos),
        );
    }
    meta
}

/// A SentencePiece vocabulary: `<unk>` (unknown, 0), `<s>` (1), `</s>` (2), byte tokens
/// `<0x00>`..`<0xFF>` (3..259), [`SPM_PIECES`] (259..287), [`SPM_CHARS`] (287..309),
/// `<|user|>` (user-defined, 309) and `<|end|>` (control, 310). No merges: they are recovered
/// from the scores. BOS 1, EOS 2, UNK 0; `add_space_prefix` as given.
pub(crate) fn spm_metadata(add_space_prefix: Option<bool>) -> BTreeMap<String, GgufValue> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut scores: Vec<f32> = vec![0.0; 3];
    let mut types: Vec<i32> = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for (rank, piece) in SPM_PIECES.iter().enumerate() {
        tokens.push(piece.to_string());
        scores.push(-1.0 - rank as f32);
        types.push(1);
    }
    for piece in SPM_CHARS {
        scores.push(-1000.0 - tokens.len() as f32);
        tokens.push(piece.to_string());
        types.push(1);
    }
    for (token, kind) in [("<|user|>", 4), ("<|end|>", 3)] {
        tokens.push(token.to_string());
        scores.push(0.0);
        types.push(kind);
    }
    let mut meta = BTreeMap::new();
    meta_entry(
        &mut meta,
        "general.architecture",
        GgufValue::String("llama".into()),
    );
    meta_entry(
        &mut meta,
        "tokenizer.ggml.model",
        GgufValue::String("llama".into()),
    );
    meta_entry(&mut meta, "tokenizer.ggml.tokens", strings(&tokens));
    meta_entry(
        &mut meta,
        "tokenizer.ggml.scores",
        GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
    );
    meta_entry(
        &mut meta,
        "tokenizer.ggml.token_type",
        GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
    );
    meta_entry(&mut meta, "tokenizer.ggml.bos_token_id", GgufValue::U32(1));
    meta_entry(&mut meta, "tokenizer.ggml.eos_token_id", GgufValue::U32(2));
    meta_entry(
        &mut meta,
        "tokenizer.ggml.unknown_token_id",
        GgufValue::U32(0),
    );
    if let Some(add_space_prefix) = add_space_prefix {
        meta_entry(
            &mut meta,
            "tokenizer.ggml.add_space_prefix",
            GgufValue::Bool(add_space_prefix),
        );
    }
    meta
}
