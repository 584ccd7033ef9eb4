//! Log-probabilities in OpenAI's two shapes: the completions shape (`tokens`,
//! `token_logprobs`, `top_logprobs`, `text_offset`) and the chat shape (`content` entries with
//! `token`, `logprob`, `bytes`, `top_logprobs`).

use serde_json::{json, Map, Value};

use crate::tokenizer::Tokenizer;

/// One token with its log-probability and the top alternatives. `None` for the first token
/// of an echoed prompt, which nothing predicts (OpenAI answers `null` there).
pub struct TokenLogprob {
    pub token: String,
    pub logprob: Option<f32>,
    pub top: Option<Vec<(String, f32)>>,
}

/// Pairs each generated token with its step's `(token, logprob)` list (top `k` first, then
/// the sampled token when it was not among them).
pub fn token_logprobs(
    tok: &Tokenizer,
    ids: &[u32],
    steps: &[Vec<(u32, f32)>],
    k: usize,
) -> Vec<TokenLogprob> {
    let text = |id: u32| tok.decode(&[id], false).unwrap_or_default();
    ids.iter()
        .zip(steps)
        .map(|(&id, step)| TokenLogprob {
            token: text(id),
            logprob: Some(
                step.iter()
                    .find(|(t, _)| *t == id)
                    .map_or(f32::NEG_INFINITY, |&(_, lp)| lp),
            ),
            top: Some(step.iter().take(k).map(|&(t, lp)| (text(t), lp)).collect()),
        })
        .collect()
}

/// The log-probabilities of an echoed prompt: `null` for its first token, then each token's
/// from `steps` (the engine's prompt log-probabilities, one per token from the second on).
pub fn prompt_token_logprobs(
    tok: &Tokenizer,
    prompt: &[u32],
    steps: &[Vec<(u32, f32)>],
    k: usize,
) -> Vec<TokenLogprob> {
    let Some((&first, rest)) = prompt.split_first() else {
        return Vec::new();
    };
    let mut items = vec![TokenLogprob {
        token: tok.decode(&[first], false).unwrap_or_default(),
        logprob: None,
        top: None,
    }];
    items.extend(token_logprobs(tok, rest, steps, k));
    items
}

/// A log-probability as JSON: finite values as numbers, -inf as OpenAI's -9999.0, none as
/// `null`.
fn num(lp: Option<f32>) -> Value {
    match lp {
        None => Value::Null,
        Some(lp) => json!(if lp.is_finite() { lp } else { -9999.0 }),
    }
}

/// The completions shape; `offset` is the text offset of the first token, advanced past the
/// last. Offsets count characters (Unicode scalar values), as OpenAI's and vLLM's (Python's
/// `len`) do, not bytes. Each position's `top_logprobs` holds the top `k` and the token itself
/// (so `k + 1` entries where it is not among them), as vLLM's completions give them.
pub fn completion_shape(items: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(items.len());
    for it in items {
        text_offset.push(*offset);
        *offset += it.token.chars().count();
    }
    let top: Vec<Value> = items
        .iter()
        .map(|it| match &it.top {
            None => Value::Null,
            Some(top) => {
                let mut m: Map<String, Value> = top
                    .iter()
                    .map(|(t, lp)| (t.clone(), num(Some(*lp))))
                    .collect();
                if !m.contains_key(&it.token) {
                    m.insert(it.token.clone(), num(it.logprob));
                }
                Value::Object(m)
            }
        })
        .collect();
    json!({
        "tokens": items.iter().map(|it| it.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": items.iter().map(|it| num(it.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// The chat shape.
pub fn chat_shape(items: &[TokenLogprob]) -> Value {
    let entry = |token: &str, lp: Option<f32>| json!({"token": token, "logprob": num(lp), "bytes": token.as_bytes()});
    let content: Vec<Value> = items
        .iter()
        .map(|it| {
            let mut e = entry(&it.token, it.logprob);
            e["top_logprobs"] = it
                .top
                .iter()
                .flatten()
                .map(|(t, lp)| entry(t, Some(*lp)))
                .collect();
            e
        })
        .collect();
    json!({ "content": content })
}
