use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::tokenizer::test_vocab::gpt2_metadata;

fn sequence(params: SamplingParams, max_new_tokens: usize) -> Sequence {
    Sequence::new(1, 0, 0, 0, vec![5, 6], Arc::new(params), max_new_tokens, 0)
}

/// Every delta's text and tokens, concatenated, and the finish reason.
fn run(
    seq: &mut Sequence,
    tokenizer: &Tokenizer,
    ids: &[u32],
    text_every: usize,
) -> (String, Vec<u32>, Option<FinishReason>) {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    for (i, &id) in ids.iter().enumerate() {
        if seq.is_finished() {
            break;
        }
        seq.push_token(id, None, &[0]);
        if (i + 1) % text_every == 0 || seq.is_finished() || seq.has_stop_strings() {
            seq.detokenize(tokenizer).unwrap();
            if let Some(d) = seq.take_delta() {
                text.push_str(&d.text);
                tokens.extend(d.token_ids);
            }
        }
    }
    seq.detokenize(tokenizer).unwrap();
    while let Some(d) = seq.take_delta() {
        text.push_str(&d.text);
        tokens.extend(d.token_ids);
    }
    (text, tokens, seq.finish_reason)
}

/// Async scheduling makes the text of a step later than its tokens: deferring
/// `detokenize` by a few tokens must not change a sequence's text, tokens or finish, and
/// the final delta comes once.
#[test]
fn deferred_text_equals_text_after_every_token() {
    let tokenizer = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let vocab = tokenizer.vocab_size() as u32;
    for case in 0..200 {
        let ids: Vec<u32> = (0..rng.random_range(1..30))
            .map(|_| rng.random_range(1..vocab))
            .collect();
        let max_new = rng.random_range(1..40);
        let params = SamplingParams {
            ignore_eos: case % 2 == 0,
            ..Default::default()
        };
        let want = run(&mut sequence(params.clone(), max_new), &tokenizer, &ids, 1);
        let got = run(&mut sequence(params, max_new), &tokenizer, &ids, 4);
        assert_eq!(got, want, "case {case}");
        // Unfinished, the text holds back an incomplete character at the end.
        let full = tokenizer.decode(&want.1, true).unwrap();
        if want.2.is_some() {
            assert_eq!(want.0, full, "case {case}");
        } else {
            assert!(full.starts_with(&want.0), "case {case}");
        }
    }
}

#[test]
fn a_stop_string_cuts_the_text_and_finishes_once() {
    let tokenizer = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
    let ids = tokenizer.encode("hello world, again", false).unwrap();
    let params = SamplingParams {
        stop: vec![" wor".into()],
        ..Default::default()
    };
    let mut seq = sequence(params, 100);
    let (text, _, finish) = run(&mut seq, &tokenizer, &ids, 1);
    assert_eq!((text.as_str(), finish), ("hello", Some(FinishReason::Stop)));
    assert!(seq.take_delta().is_none());
}

#[test]
fn stop_reasons_and_the_stop_string_kept_on_request() {
    let tokenizer = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
    let ids = tokenizer.encode("hello world, again", false).unwrap();
    let params = SamplingParams {
        stop: vec![" wor".into()],
        include_stop_str_in_output: true,
        ..Default::default()
    };
    let mut seq = sequence(params, 100);
    let (text, _, finish) = run(&mut seq, &tokenizer, &ids, 1);
    assert_eq!(
        (text.as_str(), finish),
        ("hello wor", Some(FinishReason::Stop))
    );
    assert_eq!(seq.stop_reason, Some(StopReason::Text(" wor".into())));

    let params = SamplingParams {
        stop_token_ids: vec![ids[1]],
        ..Default::default()
    };
    let mut seq = sequence(params.clone(), 100);
    let (text, tokens, _) = run(&mut seq, &tokenizer, &ids, 1);
    assert_eq!(tokens, ids[..2].to_vec());
    assert_eq!(seq.stop_reason, Some(StopReason::Token(ids[1])));
    // The stop token's text stays out, unless asked for (as in vLLM).
    assert_eq!(text, tokenizer.decode(&ids[..1], true).unwrap());
    let params = SamplingParams {
        include_stop_str_in_output: true,
        ..params
    };
    let (text, _, _) = run(&mut sequence(params, 100), &tokenizer, &ids, 1);
    assert_eq!(text, tokenizer.decode(&ids[..2], true).unwrap());
    // An end-of-sequence token has no stop reason.
    let mut seq = sequence(SamplingParams::default(), 100);
    let (_, tokens, finish) = run(&mut seq, &tokenizer, &[ids[0], 0, ids[1]], 1);
    assert_eq!(
        (tokens, finish),
        (vec![ids[0], 0], Some(FinishReason::Stop))
    );
    assert_eq!(seq.stop_reason, None);
}

/// Before `min_tokens` tokens, end-of-sequence and stop tokens are banned from the pick
/// (and do not end the sequence) and stop strings are not looked for.
#[test]
fn min_tokens_holds_back_every_stop() {
    let tokenizer = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
    let ids = tokenizer
        .encode("hello world, again and again", false)
        .unwrap();
    assert!(ids.len() > 4);
    // Without min_tokens, the first token would end the sequence (its text is a stop
    // string, the token a stop token id), and so would the second (end-of-sequence).
    let first = tokenizer.decode(&ids[..1], true).unwrap();
    let params = SamplingParams {
        min_tokens: 3,
        stop: vec![first.clone()],
        stop_token_ids: vec![ids[0]],
        ..Default::default()
    };
    let mut seq = sequence(params, 100);
    assert_eq!(seq.banned_tokens(&[0]), vec![0, ids[0]]);
    assert!(seq.needs_host_logits());
    let (_, tokens, finish) = run(&mut seq, &tokenizer, &[ids[0], 0, ids[0], ids[1]], 1);
    // Once three tokens are out, the stop string is looked for (in the text's tail).
    assert_eq!(tokens, vec![ids[0], 0, ids[0]]);
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(seq.stop_reason, Some(StopReason::Text(first)));
    assert!(seq.banned_tokens(&[0]).is_empty());
    assert!(!seq.needs_host_logits());
    // The sampler never picks a banned token, however likely.
    let mut sampler = Sampler::new(&SamplingParams::default(), &[], 0);
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let picked = sampler.sample(&greedy, &mut [9.0, 1.0, 5.0], &[0]);
    assert_eq!(picked.token, 2);
}
