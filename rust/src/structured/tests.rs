//! Grammars over the small byte-level test vocabulary: masks allow exactly what the grammar
//! can continue with, sampling among random logits always yields a valid output, and bad
//! specs come back as invalid requests naming the problem.

use super::*;
use crate::error::Error;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::test_vocab::{gpt2_metadata, spm_metadata};
use crate::tokenizer::Tokenizer;

/// EOS of the test vocabulary (`<|im_end|>`).
const EOS: u32 = 2;

fn compiler() -> (GrammarCompiler, Tokenizer) {
    let tok = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
    (GrammarCompiler::new(tok.clone(), &[EOS]), tok)
}

/// Samples up to `max` tokens from seeded random logits under `spec` (temperature 1, so
/// every allowed token has a chance); returns the text and whether the grammar ended it.
fn generate(spec: StructuredOutputs, seed: u64, max: usize) -> (String, bool) {
    let (c, tok) = compiler();
    let params = SamplingParams {
        structured_outputs: Some(spec),
        ..Default::default()
    };
    let grammar = c
        .compile(params.structured_outputs.as_ref().unwrap())
        .unwrap();
    let mut state = GrammarState::new(&grammar);
    let mut sampler = Sampler::new(&params, &[], seed);
    // A fixed pseudo-random "model": an LCG's draws as logits in [0, 4).
    let mut x = seed.wrapping_add(1);
    let mut draw = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((x >> 33) % 1000) as f32 / 250.0
    };
    let mut out = Vec::new();
    for _ in 0..max {
        let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|_| draw()).collect();
        let picked = sampler
            .sample_constrained(&params, &mut logits, &[], Some(&mut state))
            .unwrap();
        if picked.token == EOS {
            return (tok.decode(&out, true).unwrap(), true);
        }
        state.accept(picked.token).unwrap();
        out.push(picked.token);
        if state.is_complete() {
            return (tok.decode(&out, true).unwrap(), true);
        }
    }
    (tok.decode(&out, true).unwrap(), false)
}

#[test]
fn json_schema_outputs_parse_and_match() {
    let schema = r#"{"type":"object","properties":{"a":{"type":"integer","minimum":0,"maximum":99},
        "b":{"enum":["x","y"]}},"required":["a","b"],"additionalProperties":false}"#;
    for seed in 0..8 {
        let spec = StructuredOutputs::Json {
            schema: schema.into(),
            strict: true,
        };
        let (text, done) = generate(spec, seed, 200);
        assert!(done, "seed {seed}: cut at {text:?}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let a = v["a"].as_i64().unwrap();
        assert!((0..=99).contains(&a), "{text}");
        assert!(v["b"] == "x" || v["b"] == "y", "{text}");
    }
}

#[test]
fn regex_and_choice_outputs_match() {
    for seed in 0..8 {
        let (t, done) = generate(StructuredOutputs::Regex("[0-9]{3}-[a-c]+".into()), seed, 50);
        let ok = t.len() > 4 && t[..3].bytes().all(|b| b.is_ascii_digit()) && &t[3..4] == "-";
        assert!(
            ok && t[4..].bytes().all(|b| (b'a'..=b'c').contains(&b)),
            "{t}"
        );
        assert!(done || t.len() > 40, "{t}");
        let choices = vec!["the world".to_string(), "in.|x".to_string()];
        let (t, done) = generate(StructuredOutputs::Choice(choices.clone()), seed, 50);
        assert!(done && choices.contains(&t), "{t:?}");
    }
}

#[test]
fn lark_grammar_outputs_match() {
    let g = "start: \"he\" tail\ntail: \"ll\" | \"y\" \" \" /[0-9]{2}/";
    for seed in 0..6 {
        let (t, done) = generate(StructuredOutputs::Grammar(g.into()), seed, 50);
        let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
        let ok = t == "hell" || t.strip_prefix("hey ").is_some_and(digits);
        assert!(done && ok, "{t:?}");
    }
}

#[test]
fn bad_specs_name_the_problem_and_the_cache_keeps_good_ones() {
    let (c, _) = compiler();
    let bad = [
        (
            StructuredOutputs::Json {
                schema: r#"{"type":"nonsense"}"#.into(),
                strict: true,
            },
            "nonsense",
        ),
        (StructuredOutputs::Regex("(unclosed".into()), "regex"),
        (
            StructuredOutputs::Grammar("start: missing_rule".into()),
            "missing_rule",
        ),
        // Valid, but no text matches it: refused when compiled (a 400), not at the first step.
        (StructuredOutputs::Regex(r"[^\s\S]".into()), "regex"),
    ];
    for (spec, word) in bad {
        let e = c.compile(&spec).unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
        assert!(e.to_string().contains(word), "{e} should name {word}");
    }
    let good = StructuredOutputs::JsonObject;
    let (a, b) = (c.compile(&good).unwrap(), c.compile(&good).unwrap());
    assert_eq!(a, b);
    let mut p = SamplingParams {
        structured_outputs: Some(good),
        ..Default::default()
    };
    c.prepare(&mut p).unwrap();
    assert_eq!(p.grammar, Some(a));
}

#[test]
fn sentencepiece_vocabularies_are_held_too() {
    // `▁` spells a space and `<0xXX>` bytes fall back: llguidance must see both as bytes.
    let tok = Tokenizer::from_gguf_metadata(&spm_metadata(None)).unwrap();
    let c = GrammarCompiler::new(tok.clone(), &[EOS]);
    let g = c
        .compile(&StructuredOutputs::Regex("the (hall|wall) [0-9]".into()))
        .unwrap();
    let mut state = GrammarState::new(&g);
    let mut out = Vec::new();
    while !state.is_complete() && out.len() < 40 {
        // Greedy over flat logits: the lowest allowed id each time.
        let mut logits = vec![0.0f32; tok.vocab_size()];
        state.mask_logits(&mut logits).unwrap();
        let t = logits.iter().position(|l| l.is_finite()).unwrap() as u32;
        if t == EOS {
            break;
        }
        state.accept(t).unwrap();
        out.push(t);
    }
    let text = tok.decode(&out, true).unwrap();
    let re = regex_lite(&text);
    assert!(re, "{text:?}");
}

/// Whether `t` matches `the (hall|wall) [0-9]` (with the leading space SentencePiece may add).
fn regex_lite(t: &str) -> bool {
    let t = t.trim_start();
    let rest = t
        .strip_prefix("the hall ")
        .or_else(|| t.strip_prefix("the wall "));
    rest.is_some_and(|d| d.len() == 1 && d.as_bytes()[0].is_ascii_digit())
}

#[test]
fn packed_masks_keep_llguidance_bit_order_and_every_eos() {
    use llguidance::toktrie::SimpleVob;
    // A vocabulary of 70 tokens in llguidance's mask; logits rows of 100 (padding past 70).
    let mut vob = SimpleVob::alloc(70);
    for t in [0, 5, 31, 32, 63, 64, 69] {
        vob.allow_token(t);
    }
    let words = pack_token_mask(&vob, 100, &[]);
    assert_eq!(words.len(), 4);
    let allowed = |t: usize| words[t / 32] >> (t % 32) & 1 == 1;
    for t in 0..100 {
        assert_eq!(allowed(t), t < 70 && vob.is_allowed(t as u32), "token {t}");
    }
    // Rows narrower than the vocabulary keep their own ids only.
    let narrow = pack_token_mask(&vob, 40, &[]);
    assert_eq!(narrow, [words[0], 1]);
    // One end-of-sequence id allowed (the trie's): all of them are, within the row.
    vob.allow_token(2);
    let words = pack_token_mask(&vob, 100, &[2, 40, 90]);
    assert!([2, 40, 90]
        .iter()
        .all(|&t| words[t / 32] >> (t % 32) & 1 == 1));
    // None allowed: none is, and the grammar's own tokens stay.
    let mut vob = SimpleVob::alloc(70);
    vob.allow_token(7);
    let words = pack_token_mask(&vob, 100, &[2, 40, 90]);
    assert_eq!(words, [1 << 7, 0, 0, 0]);
}

#[test]
fn the_mask_is_computed_once_per_position() {
    let (c, tok) = compiler();
    let g = c.compile(&StructuredOutputs::Regex("ab".into())).unwrap();
    let mut state = GrammarState::new(&g);
    let width = tok.vocab_size() + 5;
    let first = state.allowed_tokens(width).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &state.allowed_tokens(width).unwrap()
    ));
    // The mask on the logits is the packed one.
    let mut logits = vec![0.0f32; width];
    state.mask_logits(&mut logits).unwrap();
    for (t, l) in logits.iter().enumerate() {
        assert_eq!(
            l.is_finite(),
            first[t / 32] >> (t % 32) & 1 == 1,
            "token {t}"
        );
    }
    assert!(logits[tok.vocab_size()..].iter().all(|l| l.is_infinite()));
    // A token moves the grammar on: the next mask is another.
    let a = tok.encode("a", false).unwrap()[0];
    state.accept(a).unwrap();
    assert_ne!(first, state.allowed_tokens(width).unwrap());
}
