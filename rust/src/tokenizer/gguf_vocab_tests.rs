//! Tokenizers built from GGUF metadata give transformers' ids. The expectations are what
//! transformers 5.24 returned for GGUF files holding the vocabularies of `test_vocab`
//! (`encode(text, add_special_tokens=False)`, `encode(text)`, and
//! `decode(encode(text), skip_special_tokens=True)`).

use super::*;
use crate::tokenizer::test_vocab::{gpt2_metadata, spm_metadata};
use crate::tokenizer::Tokenizer;

/// (text, ids without special tokens, ids with them, decode of the latter skipping specials).
type Case = (&'static str, &'static [u32], &'static [u32], &'static str);

fn check(tokenizer: &Tokenizer, cases: &[Case]) {
    for &(text, plain, with_special, decoded) in cases {
        assert_eq!(
            tokenizer.encode(text, false).expect("encode"),
            plain,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.encode(text, true).expect("encode"),
            with_special,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.decode(with_special, true).expect("decode"),
            decoded,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.decode(plain, false).expect("decode"),
            text,
            "{text:?}"
        );
    }
}

const SPM_CASES: [Case; 14] = [
    (
        "hello world",
        &[270, 271, 294, 298],
        &[1, 270, 271, 294, 298],
        "hello world",
    ),
    (" hello", &[270], &[1, 270], "hello"),
    ("the", &[261], &[1, 261], "the"),
    (
        "hello  world",
        &[270, 287, 271, 294, 298],
        &[1, 270, 287, 271, 294, 298],
        "hello  world",
    ),
    ("", &[], &[1], ""),
    ("  ", &[278], &[1, 278], " "),
    ("123 ab", &[280, 281, 286], &[1, 280, 281, 286], "123 ab"),
    ("中 é!", &[282, 284, 305], &[1, 282, 284, 305], "中 é!"),
    ("abc", &[286, 308], &[1, 286, 308], "abc"),
    ("x", &[287, 123], &[1, 287, 123], "x"),
    (
        "hi<|user|>the<|end|></s><unk>",
        &[264, 292, 309, 288, 260, 310, 2, 0],
        &[1, 264, 292, 309, 288, 260, 310, 2, 0],
        "hi<|user|>the",
    ),
    ("\n", &[287, 13], &[1, 287, 13], "\n"),
    (
        "é中😀",
        &[284, 306, 243, 162, 155, 131],
        &[1, 284, 306, 243, 162, 155, 131],
        "é中😀",
    ),
    (
        "Hello",
        &[287, 75, 290, 265, 295],
        &[1, 287, 75, 290, 265, 295],
        "Hello",
    ),
];

#[test]
fn sentencepiece_matches_transformers() {
    let tokenizer = Tokenizer::from_gguf_metadata(&spm_metadata(None)).expect("build");
    // decode(encode(" hello")) loses the leading space to the prefix strip, as in transformers.
    for &(text, plain, with_special, decoded) in &SPM_CASES {
        assert_eq!(
            tokenizer.encode(text, false).expect("encode"),
            plain,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.encode(text, true).expect("encode"),
            with_special,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.decode(with_special, true).expect("decode"),
            decoded,
            "{text:?}"
        );
    }
    assert_eq!(tokenizer.vocab_size(), 311);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(tokenizer.eos_token_ids(), vec![2]);
    assert!(tokenizer.special_tokens().add_bos);
    assert_eq!(
        tokenizer
            .special_tokens()
            .unk
            .as_ref()
            .map(|t| t.content.as_str()),
        Some("<unk>")
    );
}

#[test]
fn sentencepiece_without_space_prefix_follows_the_metadata() {
    // llama.cpp's reading of add_space_prefix = false (transformers 5 ignores the flag).
    let tokenizer = Tokenizer::from_gguf_metadata(&spm_metadata(Some(false))).expect("build");
    assert_eq!(
        tokenizer.encode("the", false).expect("encode"),
        vec![288, 260]
    );
    assert_eq!(tokenizer.encode(" the", false).expect("encode"), vec![261]);
    assert_eq!(tokenizer.decode(&[261], false).expect("decode"), " the");
}

const GPT2_CASES: [Case; 9] = [
    ("the world", &[119, 260, 268], &[119, 260, 268], "the world"),
    (
        "  the  in\n\nend",
        &[35, 261, 35, 35, 263, 13, 13, 104, 113, 103],
        &[35, 261, 35, 35, 263, 13, 13, 104, 113, 103],
        "  the  in\n\nend",
    ),
    ("12345", &[270, 54, 55, 56], &[270, 54, 55, 56], "12345"),
    (
        "中é 中",
        &[273, 198, 172, 274],
        &[273, 198, 172, 274],
        "中é 中",
    ),
    (
        "hi<|im_start|>user\nthe<|im_end|><think><bad ctrl><|eot|>",
        &[
            107, 108, 1, 120, 118, 104, 117, 13, 119, 260, 2, 275, 63, 101, 100, 103, 35, 102, 119,
            117, 111, 65, 277,
        ],
        &[
            107, 108, 1, 120, 118, 104, 117, 13, 119, 260, 2, 275, 63, 101, 100, 103, 35, 102, 119,
            117, 111, 65, 277,
        ],
        "hiuser\nthe<think><bad ctrl>",
    ),
    ("", &[], &[], ""),
    (
        "it'S 1234 a\tb",
        &[108, 119, 42, 86, 35, 270, 54, 55, 262, 12, 101],
        &[108, 119, 42, 86, 35, 270, 54, 55, 262, 12, 101],
        "it'S 1234 a\tb",
    ),
    ("   ", &[269, 35], &[269, 35], "   "),
    (
        "😀 \r\n x",
        &[243, 162, 155, 131, 35, 16, 13, 35, 123],
        &[243, 162, 155, 131, 35, 16, 13, 35, 123],
        "😀 \r\n x",
    ),
];

#[test]
fn byte_level_matches_transformers() {
    let tokenizer =
        Tokenizer::from_gguf_metadata(&gpt2_metadata(Some("smollm"), Some(false))).expect("build");
    check(&tokenizer, &GPT2_CASES);
    assert_eq!(tokenizer.vocab_size(), 278);
    assert_eq!(tokenizer.token_to_id("Ġä¸Ń"), Some(274));
    assert_eq!(tokenizer.id_to_token(276).as_deref(), Some("<badĠctrl>"));
}

#[test]
fn byte_level_with_qwen2_split_matches_transformers() {
    let tokenizer =
        Tokenizer::from_gguf_metadata(&gpt2_metadata(Some("qwen2"), None)).expect("build");
    let cases: [Case; 3] = [
        (
            "  the  in\n\nend",
            &[35, 261, 35, 35, 263, 271, 104, 113, 103],
            &[35, 261, 35, 35, 263, 271, 104, 113, 103],
            "  the  in\n\nend",
        ),
        (
            "12345",
            &[52, 53, 54, 55, 56],
            &[52, 53, 54, 55, 56],
            "12345",
        ),
        (
            "it'S 1234 a\tb",
            &[108, 119, 42, 86, 35, 52, 53, 54, 55, 262, 12, 101],
            &[108, 119, 42, 86, 35, 52, 53, 54, 55, 262, 12, 101],
            "it'S 1234 a\tb",
        ),
    ];
    check(&tokenizer, &cases);
}

#[test]
fn byte_level_with_llama3_split_and_bos_matches_transformers() {
    let tokenizer = Tokenizer::from_gguf_metadata(&gpt2_metadata(Some("llama-bpe"), Some(true)))
        .expect("build");
    let cases: [Case; 3] = [
        (
            "  the  in\n\nend",
            &[35, 261, 35, 35, 263, 271, 104, 113, 103],
            &[0, 35, 261, 35, 35, 263, 271, 104, 113, 103],
            "  the  in\n\nend",
        ),
        ("12345", &[270, 54, 55, 56], &[0, 270, 54, 55, 56], "12345"),
        ("", &[], &[0], ""),
    ];
    check(&tokenizer, &cases);
}

#[test]
fn end_of_turn_ids_join_eos() {
    let mut meta = gpt2_metadata(None, None);
    meta.insert("tokenizer.ggml.eot_token_id".into(), GgufValue::U32(277));
    meta.insert("tokenizer.ggml.eom_token_id".into(), GgufValue::U32(2));
    let tokenizer = Tokenizer::from_gguf_metadata(&meta).expect("build");
    assert_eq!(tokenizer.eos_token_ids(), vec![2, 277]);
}

#[test]
fn malformed_metadata_is_an_error_not_a_panic() {
    let unsupported = |meta: BTreeMap<String, GgufValue>| {
        matches!(
            Tokenizer::from_gguf_metadata(&meta),
            Err(Error::Unsupported(_))
        )
    };
    let tokenizer_error = |meta: BTreeMap<String, GgufValue>| {
        matches!(
            Tokenizer::from_gguf_metadata(&meta),
            Err(Error::Tokenizer(_))
        )
    };

    let mut meta = gpt2_metadata(None, None);
    meta.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("t5".into()),
    );
    assert!(unsupported(meta));
    let mut meta = spm_metadata(None);
    meta.insert(
        "general.architecture".into(),
        GgufValue::String("gemma2".into()),
    );
    assert!(unsupported(meta));

    let mut meta = gpt2_metadata(None, None);
    meta.remove("tokenizer.ggml.model");
    assert!(tokenizer_error(meta));
    let mut meta = gpt2_metadata(None, None);
    meta.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(vec![GgufValue::U8(1)]),
    );
    assert!(tokenizer_error(meta));
    let mut meta = gpt2_metadata(None, None);
    meta.insert(
        "tokenizer.ggml.merges".into(),
        GgufValue::Array(vec![GgufValue::String("zz qq".into())]),
    );
    assert!(tokenizer_error(meta));
    let mut meta = gpt2_metadata(None, None);
    meta.remove("tokenizer.ggml.merges");
    assert!(tokenizer_error(meta));
    let mut meta = gpt2_metadata(None, None);
    meta.insert(
        "tokenizer.ggml.eos_token_id".into(),
        GgufValue::U32(100_000),
    );
    assert!(tokenizer_error(meta));

    // Out-of-range UNK/PAD ids are ignored, and -1 means "none".
    let mut meta = gpt2_metadata(None, None);
    meta.insert(
        "tokenizer.ggml.padding_token_id".into(),
        GgufValue::U32(100_000),
    );
    meta.insert("tokenizer.ggml.unknown_token_id".into(), GgufValue::I32(-1));
    let tokenizer = Tokenizer::from_gguf_metadata(&meta).expect("build");
    assert_eq!(tokenizer.special_tokens().pad, None);
    assert_eq!(tokenizer.special_tokens().unk, None);
}

#[test]
fn chat_template_comes_from_the_metadata() {
    let mut meta = gpt2_metadata(None, None);
    let source =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    meta.insert(
        "tokenizer.chat_template".into(),
        GgufValue::String(source.into()),
    );
    let tokenizer = Tokenizer::from_gguf_metadata(&meta).expect("build");
    let template = tokenizer.chat_template().expect("template");
    assert_eq!(template.source(), source);
    let messages = [crate::tokenizer::ChatMessage::new("user", "hi")];
    assert_eq!(
        tokenizer
            .apply_chat_template(&messages, false)
            .expect("render"),
        "<|im_start|>user\nhi<|im_end|>\n"
    );
}
