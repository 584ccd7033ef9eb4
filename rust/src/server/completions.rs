//! `POST /v1/completions`: one engine request per prompt, `n` choices each; choice `i * n + j`
//! is sequence `j` of prompt `i`, as in OpenAI's API.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::try_join_all;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::access_log::RequestLog;
use super::errors::ApiError;
use super::generation::Generation;
use super::logprobs::{completion_shape, prompt_token_logprobs, token_logprobs};
use super::openai_types::{CompletionRequest, PromptArg, Usage, COMPLETION_FIELDS};
use super::otel::RequestSpan;
use super::request::{
    check_stream_options, parse_request, response_id, stop_reason_json, unix_time,
};
use super::request_params::{compile_structured, sampling_params};
use super::sse::{spawn_sse, Emitter};
use super::{AppState, Caller};
use crate::engine::{CompletionOutput, FinishReason, RequestOutput, SeqDelta};

/// Per-choice state of a response being built.
#[derive(Default, Clone)]
struct Choice {
    text_offset: usize,
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<RequestLog>,
    Extension(caller): Extension<Caller>,
    Extension(span): Extension<RequestSpan>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let req: CompletionRequest = parse_request(&state, body, COMPLETION_FIELDS)?;
    log.set_model(&req.model);
    span.set_model(&req.model);
    let state = state
        .route(&req.model, req.sampling.priority, &caller)
        .await?;
    reject_unsupported(&req)?;
    let tok = &state.tokenizer;
    // Tokenizing a long prompt takes a while: tell the runtime, so other requests move on.
    let prompts: Vec<Vec<u32>> = tokio::task::block_in_place(|| match req.prompt {
        PromptArg::Text(t) => Ok::<_, crate::Error>(vec![tok.encode(&t, true)?]),
        PromptArg::Texts(ts) => ts.iter().map(|t| tok.encode(t, true)).collect(),
        PromptArg::Ids(ids) => Ok(vec![ids]),
        PromptArg::IdLists(lists) => Ok(lists),
    })?;
    if prompts.is_empty() {
        return Err(ApiError::bad_request(
            "prompt must not be empty",
            Some("prompt"),
        ));
    }
    let k = req.logprobs;
    // echo with max_tokens 0 scores the prompt (vLLM's, and what lm-evaluation-harness sends
    // for log-likelihoods): the engine runs one step for the prompt's log-probabilities, and
    // the answer leaves its token out.
    let prompt_only = req.echo && req.max_tokens == Some(0);
    let max_tokens = if prompt_only {
        1
    } else {
        req.max_tokens.unwrap_or(16)
    };
    let mut params = sampling_params(req.sampling, Some(max_tokens), k, &state.defaults)?;
    compile_structured(&state, &mut params)?;
    // Echo with logprobs covers the prompt's tokens too: the engine's prompt logprobs.
    if req.echo {
        params.prompt_logprobs = params.logprobs;
    }
    let n = params.n;
    // A request whose sequences could never all wait at once is refused whole, not admitted
    // in part until the queue is full (one request of 200,000 prompts used to queue them all).
    let sequences = prompts.len().saturating_mul(n);
    if prompts.len() > 1 && sequences > state.config.max_waiting {
        return Err(ApiError::bad_request(
            format!(
                "{} prompts x n = {n} make {sequences} sequences, more than this server queues                  ({}); send them in smaller requests",
                prompts.len(),
                state.config.max_waiting
            ),
            Some("prompt"),
        ));
    }
    let echoes: Vec<Option<String>> = if req.echo {
        prompts
            .iter()
            .map(|p| tok.decode(p, false).map(Some))
            .collect::<Result<_, _>>()?
    } else {
        vec![None; prompts.len()]
    };
    let gens = prompts
        .into_iter()
        .map(|p| Generation::start(&state, p, params.clone(), arrival, &log, &span))
        .collect::<Result<Vec<_>, _>>()?;
    let id = response_id("cmpl");
    let k = k.map(|k| k.max(0) as usize);
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    if req.stream {
        let shape = (n, k, prompt_only, include_usage);
        return Ok(spawn_sse(state.cut.subscribe(), move |out| {
            stream_chunks(state, gens, out, id, shape, echoes)
        }));
    }
    let mut outputs = try_join_all(gens.into_iter().map(Generation::finish)).await?;
    if prompt_only {
        for c in outputs.iter_mut().flat_map(|o| o.outputs.iter_mut()) {
            *c = prompt_only_output(c);
        }
    }
    Ok(Json(response(&state, &id, &outputs, n, k, &echoes)).into_response())
}

/// Fields this server does not implement: a 400 naming them, never silence.
fn reject_unsupported(req: &CompletionRequest) -> Result<(), ApiError> {
    check_stream_options(req.stream, req.stream_options.as_ref())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "suffix is not supported by this server",
            Some("suffix"),
        ));
    }
    if req
        .best_of
        .is_some_and(|b| Some(b) != req.sampling.n.or(Some(1)))
    {
        return Err(ApiError::bad_request(
            "best_of other than n is not supported by this server",
            Some("best_of"),
        ));
    }
    Ok(())
}

/// A sequence of a prompt-only request (echo, max_tokens 0) as answered: its one generated
/// token left out, finished by length.
fn prompt_only_output(c: &CompletionOutput) -> CompletionOutput {
    CompletionOutput {
        index: c.index,
        logprobs: c.logprobs.as_ref().map(|_| Vec::new()),
        finish_reason: c.finish_reason.map(|_| FinishReason::Length),
        ..Default::default()
    }
}

/// The whole (non-streamed) response.
fn response(
    state: &AppState,
    id: &str,
    outputs: &[RequestOutput],
    n: usize,
    k: Option<usize>,
    echoes: &[Option<String>],
) -> Value {
    let mut usage = Usage::default();
    let mut choices = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        usage.add(
            o.prompt_token_ids.len(),
            o.outputs.iter().map(|c| c.token_ids.len()).sum(),
        );
        usage.add_cached(o.num_cached_tokens);
        for c in &o.outputs {
            let logprobs = k.map(|k| {
                let mut items = match echoes[i] {
                    Some(_) => prompt_token_logprobs(
                        &state.tokenizer,
                        &o.prompt_token_ids,
                        o.prompt_logprobs.as_deref().unwrap_or_default(),
                        k,
                    ),
                    None => Vec::new(),
                };
                items.extend(token_logprobs(
                    &state.tokenizer,
                    &c.token_ids,
                    c.logprobs.as_deref().unwrap_or_default(),
                    k,
                ));
                completion_shape(&items, &mut 0)
            });
            let text = match &echoes[i] {
                Some(e) => format!("{e}{}", c.text),
                None => c.text.clone(),
            };
            choices.push(json!({
                "index": i * n + c.index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": c.finish_reason.map(|r| r.as_str()),
                "stop_reason": stop_reason_json(c.stop_reason.as_ref()),
            }));
        }
    }
    json!({
        "id": id,
        "object": "text_completion",
        "created": unix_time(),
        "model": state.config.served_model_name,
        "system_fingerprint": state.fingerprint,
        "choices": choices,
        "usage": usage,
    })
}

/// The deltas of every generation as they come, each with its generation's index; a failure
/// ends its generation's part.
fn interleave(
    gens: Vec<Generation>,
) -> stream::SelectAll<stream::BoxStream<'static, Result<(usize, SeqDelta), ApiError>>> {
    stream::select_all(gens.into_iter().enumerate().map(|(i, g)| {
        stream::unfold(Some(g), move |g| async move {
            let mut g = g?;
            match g.next().await {
                Ok(Some(d)) => Some((Ok((i, d)), Some(g))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }))
}

/// The `choices` of a streamed chunk for delta `d` of choice `index` (with `k` top logprobs
/// per token when asked for).
fn delta_choice(
    state: &AppState,
    index: usize,
    d: &SeqDelta,
    k: Option<usize>,
    choice: &mut Choice,
) -> Value {
    let logprobs = k.map(|k| {
        let lp = d.logprobs.as_deref().unwrap_or_default();
        let items = token_logprobs(&state.tokenizer, &d.token_ids, lp, k);
        completion_shape(&items, &mut choice.text_offset)
    });
    json!([{
        "index": index,
        "text": d.text,
        "logprobs": logprobs,
        "finish_reason": d.finish_reason.map(|r| r.as_str()),
        "stop_reason": stop_reason_json(d.stop_reason.as_ref()),
    }])
}

/// Produces the chunks of a streamed response, all prompts' sequences interleaved.
/// `(n, k, prompt_only, include_usage)`: sequences a prompt, top logprobs per token, whether
/// the generated tokens are left out (echo with max_tokens 0), the usage chunk.
async fn stream_chunks(
    state: Arc<AppState>,
    gens: Vec<Generation>,
    out: Emitter,
    id: String,
    (n, k, prompt_only, include_usage): (usize, Option<usize>, bool, bool),
    echoes: Vec<Option<String>>,
) {
    let created = unix_time();
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": state.config.served_model_name,
            "system_fingerprint": state.fingerprint,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = Value::Null; // every chunk but the last, as OpenAI sends them
        }
        c
    };
    // An echoed prompt goes first; with logprobs it waits for the sequence's first delta,
    // which carries the prompt's log-probabilities.
    if k.is_none() {
        for (i, echo) in echoes.iter().enumerate() {
            if let Some(e) = echo {
                for j in 0..n {
                    let c = json!([{"index": i * n + j, "text": e, "logprobs": null,
                        "finish_reason": null}]);
                    out.send(&chunk(c));
                }
            }
        }
    }
    let prompts: Vec<Vec<u32>> = gens
        .iter()
        .map(|g| g.output().prompt_token_ids.clone())
        .collect();
    let mut echo_pending = vec![k.is_some(); gens.len() * n];
    let mut usage = Usage::default();
    for g in &gens {
        usage.add(g.output().prompt_token_ids.len(), 0);
    }
    let mut choices = vec![Choice::default(); gens.len() * n];
    // Prompt tokens each prompt had from the prefix cache (its first sequence's deltas say).
    let mut cached = vec![0; gens.len()];
    let mut merged = interleave(gens);
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = out.closed() => return,
        };
        let (i, mut d): (usize, SeqDelta) = match item {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                out.send(&e.body());
                return;
            }
        };
        if prompt_only {
            // As prompt_only_output: the generated token left out, finished by length.
            d.token_ids.clear();
            d.text.clear();
            d.logprobs.iter_mut().for_each(Vec::clear);
            d.finish_reason = d.finish_reason.map(|_| FinishReason::Length);
            d.stop_reason = None;
        }
        usage.add(0, d.token_ids.len());
        if d.index == 0 {
            cached[i] = d.num_cached_tokens;
        }
        let index = i * n + d.index;
        let choice = &mut choices[index];
        if let (Some(k), Some(echo), true) = (k, &echoes[i], echo_pending[index]) {
            // With logprobs the echoed prompt waits for the first delta (its logprobs).
            echo_pending[index] = false;
            let lp = d.prompt_logprobs.as_deref().unwrap_or_default();
            let items = prompt_token_logprobs(&state.tokenizer, &prompts[i], lp, k);
            let c = json!([{
                "index": index,
                "text": echo,
                "logprobs": completion_shape(&items, &mut choice.text_offset),
                "finish_reason": null,
            }]);
            if !out.send(&chunk(c)) {
                return;
            }
        }
        if d.text.is_empty() && k.is_none() && d.finish_reason.is_none() {
            continue; // text held back (a possible stop string): nothing to send
        }
        if !out.send(&chunk(delta_choice(&state, index, &d, k, choice))) {
            return;
        }
    }
    if include_usage {
        usage.add_cached(cached.iter().sum());
        let mut last = chunk(json!([]));
        last["usage"] = json!(usage);
        out.send(&last);
    }
}
