//! The detokenizer's deltas add up to a full decode, on random id sequences and on text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::tokenizer::test_vocab::{gpt2_metadata, spm_metadata};

fn gpt2() -> Tokenizer {
    Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).expect("build")
}

fn spm() -> Tokenizer {
    Tokenizer::from_gguf_metadata(&spm_metadata(None)).expect("build")
}

/// Streams `ids` through a fresh detokenizer and returns every delta, `finish` last.
fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special_tokens: bool) -> Vec<String> {
    let mut detokenizer = IncrementalDetokenizer::new(&[], skip_special_tokens);
    let mut deltas: Vec<String> = ids
        .iter()
        .map(|&id| detokenizer.push(tokenizer, id).expect("push"))
        .collect();
    deltas.push(detokenizer.finish(tokenizer).expect("finish"));
    assert!(detokenizer.window.len() <= MAX_HELD_TOKENS + PROMPT_CONTEXT_TOKENS + 1);
    deltas
}

/// Checks the property on `cases` random sequences of up to `max_len` ids over the vocabulary.
fn check_random_sequences(tokenizer: &Tokenizer, seed: u64, cases: usize, max_len: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab_size = tokenizer.vocab_size() as u32;
    for _ in 0..cases {
        let len = rng.random_range(0..=max_len);
        let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab_size)).collect();
        for skip in [false, true] {
            let streamed = stream(tokenizer, &ids, skip).concat();
            let full = tokenizer.decode(&ids, skip).expect("decode");
            assert_eq!(streamed, full, "ids {ids:?}, skip_special_tokens {skip}");
        }
    }
}

#[test]
fn byte_level_random_sequences_stream_to_the_full_decode() {
    check_random_sequences(&gpt2(), 7, 400, 40);
}

#[test]
fn sentencepiece_random_sequences_stream_to_the_full_decode() {
    check_random_sequences(&spm(), 11, 400, 40);
}

#[test]
fn emoji_and_cjk_stream_to_the_full_decode() {
    let texts = [
        "中é 中 the world 😀👩‍👩‍👧",
        "é中😀 hello world, 123!",
        "<|im_start|>user\n中<|im_end|>",
    ];
    for tokenizer in [gpt2(), spm()] {
        for text in texts {
            let ids = tokenizer.encode(text, false).expect("encode");
            for skip in [false, true] {
                let deltas = stream(&tokenizer, &ids, skip);
                assert_eq!(
                    deltas.concat(),
                    tokenizer.decode(&ids, skip).expect("decode"),
                    "{text:?}"
                );
                assert!(
                    deltas
                        .iter()
                        .all(|d| !d.contains(char::REPLACEMENT_CHARACTER)),
                    "{deltas:?}"
                );
            }
        }
    }
}

#[test]
fn split_characters_are_held_until_complete() {
    // "😀" is four byte tokens in both vocabularies.
    let gpt2 = gpt2();
    assert_eq!(
        stream(&gpt2, &[243, 162, 155, 131, 119], false),
        ["", "", "", "😀", "t", ""]
    );
    let spm = spm();
    let deltas = stream(&spm, &[284, 243, 162, 155, 131, 271], false);
    assert_eq!(deltas, ["é", "", "", "", "", "😀 wor", ""]);
}

#[test]
fn incomplete_text_is_released_by_finish() {
    let tokenizer = gpt2();
    let deltas = stream(&tokenizer, &[119, 243, 162], false);
    assert_eq!(deltas, ["t", "", "", "\u{FFFD}"]);
}

#[test]
fn prompt_context_keeps_the_leading_space() {
    let tokenizer = spm();
    let prompt = tokenizer.encode("hello", true).expect("encode");
    let mut detokenizer = IncrementalDetokenizer::new(&prompt, true);
    let deltas: Vec<String> = [271, 294, 298]
        .iter()
        .map(|&id| detokenizer.push(&tokenizer, id).expect("push"))
        .collect();
    assert_eq!(deltas, [" wor", "l", "d"]);
    // Without context, the first token's leading space is stripped, as decode does.
    assert_eq!(stream(&tokenizer, &[271, 294, 298], true).concat(), "world");
}

#[test]
fn out_of_range_ids_are_rejected_without_changing_state() {
    let tokenizer = gpt2();
    let mut detokenizer = IncrementalDetokenizer::new(&[], false);
    assert_eq!(detokenizer.push(&tokenizer, 243).expect("push"), "");
    assert!(detokenizer
        .push(&tokenizer, tokenizer.vocab_size() as u32)
        .is_err());
    let rest: Vec<String> = [162, 155, 131]
        .iter()
        .map(|&id| detokenizer.push(&tokenizer, id).expect("push"))
        .collect();
    assert_eq!(rest.concat(), "😀");
}

#[test]
fn long_streams_keep_a_short_window() {
    let tokenizer = gpt2();
    let mut detokenizer = IncrementalDetokenizer::new(&[], false);
    let ids = tokenizer
        .encode(&"the world and the end ".repeat(200), false)
        .expect("encode");
    let mut text = String::new();
    for &id in &ids {
        text.push_str(&detokenizer.push(&tokenizer, id).expect("push"));
        assert!(detokenizer.window.len() <= 2);
    }
    assert_eq!(text, "the world and the end ".repeat(200));
}

#[test]
fn text_after_falls_back_to_the_common_prefix() {
    assert_eq!(text_after("ab", "abc"), "c");
    assert_eq!(text_after("aé", "aèx"), "èx");
    assert_eq!(text_after("", "x"), "x");
}
