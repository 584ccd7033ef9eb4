//! Tests of [`Tokenizer`]: round trips, special tokens, id validation, HF directories.

use std::path::PathBuf;

use super::test_vocab::{gpt2_metadata, spm_metadata};
use super::*;

fn gpt2() -> Tokenizer {
    Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).expect("build")
}

fn spm() -> Tokenizer {
    Tokenizer::from_gguf_metadata(&spm_metadata(None)).expect("build")
}

/// Texts that every tokenizer here must decode back exactly from their plain encoding.
const ROUND_TRIP: [&str; 10] = [
    "the world and the end",
    "  leading and trailing spaces   ",
    "tabs\tand\r\nnewlines\n\n",
    "数字 12345 and 中文",
    "emoji 😀👩‍👩‍👧 and combining e\u{301}",
    "<|im_start|>user\nhi<|im_end|>",
    "",
    "العربية",
    "\u{0}\u{7f} control bytes",
    "x",
];

#[test]
fn tokenizers_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<IncrementalDetokenizer>();
}

#[test]
fn byte_level_round_trips_any_text() {
    let tokenizer = gpt2();
    for text in ROUND_TRIP {
        let ids = tokenizer.encode(text, false).expect("encode");
        assert_eq!(tokenizer.decode(&ids, false).expect("decode"), text);
    }
}

#[test]
fn sentencepiece_round_trips_text_without_a_leading_space() {
    let tokenizer = spm();
    for text in ROUND_TRIP.iter().filter(|t| !t.starts_with(' ')) {
        let ids = tokenizer.encode(text, false).expect("encode");
        assert_eq!(
            tokenizer.decode(&ids, false).expect("decode"),
            *text,
            "{ids:?}"
        );
    }
}

#[test]
fn special_tokens_in_text_are_recognised_and_skippable() {
    let tokenizer = gpt2();
    let ids = tokenizer
        .encode("<|im_start|>user\nhi<|im_end|>", false)
        .expect("encode");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(tokenizer.decode(&ids, true).expect("decode"), "user\nhi");
    assert_eq!(tokenizer.token_class(1), TokenClass::Special);
    assert_eq!(
        tokenizer.token_class(275),
        TokenClass::Normal,
        "<think> is added but not special"
    );
    assert_eq!(spm().token_class(3 + 0x41), TokenClass::Byte);
}

#[test]
fn out_of_range_ids_are_errors() {
    let tokenizer = gpt2();
    let n = tokenizer.vocab_size() as u32;
    assert!(tokenizer.decode(&[n - 1], false).is_ok());
    assert!(matches!(
        tokenizer.decode(&[5, n], false),
        Err(Error::Tokenizer(_))
    ));
    assert!(matches!(
        tokenizer.decode(&[u32::MAX], true),
        Err(Error::Tokenizer(_))
    ));
    assert_eq!(tokenizer.id_to_token(n), None);
}

#[test]
fn missing_chat_template_is_an_error_on_use() {
    let err = gpt2().apply_chat_template(&[ChatMessage::new("user", "hi")], true);
    assert!(matches!(err, Err(Error::Tokenizer(_))));
    let mut meta = gpt2_metadata(None, None);
    meta.insert(
        "tokenizer.chat_template".into(),
        GgufValue::String("{% for %}".into()),
    );
    let tokenizer =
        Tokenizer::from_gguf_metadata(&meta).expect("a bad template does not fail the load");
    assert!(tokenizer.chat_template().is_none());
    let err = tokenizer
        .apply_chat_template(&[], true)
        .expect_err("bad template");
    assert!(err.to_string().contains("does not compile"), "{err}");
}

/// A fresh, empty directory under the system temp dir.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infire-tok-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes the byte-level test tokenizer as `tokenizer.json` (as `tokenizers` serializes it).
fn write_tokenizer_json(dir: &std::path::Path) {
    let built = gguf_vocab::build(&gpt2_metadata(None, None)).expect("build");
    let json = built.tokenizer.to_string(false).expect("serialize");
    std::fs::write(dir.join("tokenizer.json"), json).expect("write tokenizer.json");
}

#[test]
fn hf_dir_reads_config_tokens_flags_and_template() {
    let dir = scratch_dir("config");
    write_tokenizer_json(&dir);
    let config = serde_json::json!({
        "bos_token": {"content": "<|endoftext|>", "special": true},
        "eos_token": "<|im_end|>",
        "pad_token": null,
        "add_bos_token": true,
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"},
        ],
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write config");
    let tokenizer = Tokenizer::from_hf_dir(&dir).expect("load");
    assert_eq!(tokenizer.bos_token_id(), Some(0));
    assert_eq!(tokenizer.eos_token_ids(), vec![2]);
    assert!(tokenizer.special_tokens().add_bos);
    assert_eq!(
        tokenizer.encode("the", true).expect("encode"),
        vec![0, 119, 260]
    );
    assert_eq!(
        tokenizer.encode("the", false).expect("encode"),
        vec![119, 260]
    );
    let rendered = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "hi")], false)
        .expect("render");
    assert_eq!(rendered, "<|endoftext|>hi<|im_end|>");

    std::fs::write(
        dir.join("chat_template.jinja"),
        "file {{ messages | length }}",
    )
    .expect("write");
    let tokenizer = Tokenizer::from_hf_dir(&dir).expect("load");
    assert_eq!(
        tokenizer.apply_chat_template(&[], true).expect("render"),
        "file 0"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hf_dir_without_config_keeps_tokenizer_json_behaviour() {
    let dir = scratch_dir("bare");
    write_tokenizer_json(&dir);
    let tokenizer = Tokenizer::from_hf_dir(&dir).expect("load");
    assert_eq!(tokenizer.bos_token_id(), None);
    assert!(!tokenizer.special_tokens().add_bos);
    assert_eq!(
        tokenizer.encode("the", true).expect("encode"),
        vec![119, 260]
    );
    assert!(tokenizer.chat_template().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hf_dir_file_problems_are_typed_errors() {
    let dir = scratch_dir("broken");
    assert!(matches!(
        Tokenizer::from_hf_dir(&dir),
        Err(Error::Io { .. })
    ));
    std::fs::write(dir.join("tokenizer.json"), "{not json").expect("write");
    assert!(matches!(
        Tokenizer::from_hf_dir(&dir),
        Err(Error::InvalidModel { .. })
    ));
    write_tokenizer_json(&dir);
    std::fs::write(dir.join("tokenizer_config.json"), "[1,").expect("write");
    assert!(matches!(
        Tokenizer::from_hf_dir(&dir),
        Err(Error::InvalidModel { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
