//! `POST /v1/chat/completions`: the messages through the model's chat template, then one
//! engine request with `n` choices.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::access_log::RequestLog;
use super::errors::ApiError;
use super::generation::Generation;
use super::logprobs::{chat_shape, token_logprobs};
use super::openai_types::{ChatRequest, Message, MessageContent, Usage, CHAT_FIELDS};
use super::request_params::sampling_params;
use super::sse::{spawn_sse, Emitter};
use super::stop_reason_json;
use super::{parse_request, unix_time, AppState};
use crate::tokenizer::ChatMessage;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<RequestLog>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let mut req: ChatRequest = parse_request(&state, body, CHAT_FIELDS)?;
    log.set_model(&req.model);
    state.check_model(&req.model)?;
    reject_unsupported(&req)?;
    let kwargs = req.chat_template_kwargs.take().unwrap_or_default();
    let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
    let messages = std::mem::take(&mut req.messages);
    let prompt = chat_prompt(&state, messages, add_generation_prompt, &kwargs)?;
    let k = match (req.logprobs, req.top_logprobs) {
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::bad_request(
                "top_logprobs needs logprobs: true",
                Some("top_logprobs"),
            ))
        }
    };
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let params = sampling_params(req.sampling, max_tokens, k, &state.defaults)?;
    let n = params.n;
    let generation = Generation::start(&state, prompt, params, arrival, &log)?;
    let id = format!("chatcmpl-{}", generation.output().request_id);
    let k = k.map(|k| k.max(0) as usize);
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(spawn_sse(state.cut.subscribe(), move |out| {
            stream_chunks(state, generation, out, id, n, k, include_usage)
        }));
    }
    let o = generation.finish().await?;
    let mut usage = Usage::default();
    usage.add(
        o.prompt_token_ids.len(),
        o.outputs.iter().map(|c| c.token_ids.len()).sum(),
    );
    usage.add_cached(o.num_cached_tokens);
    let choices: Vec<Value> = o
        .outputs
        .iter()
        .map(|c| {
            let logprobs = k.map(|k| {
                let steps = c.logprobs.as_deref().unwrap_or_default();
                chat_shape(&token_logprobs(&state.tokenizer, &c.token_ids, steps, k))
            });
            json!({
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": c.finish_reason.map(|r| r.as_str()),
                "stop_reason": stop_reason_json(c.stop_reason.as_ref()),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_time(),
        "model": state.config.served_model_name,
        "system_fingerprint": state.fingerprint,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}

/// The prompt's token ids: `messages` through the chat template (with `kwargs` as more
/// template variables), tokenized.
fn chat_prompt(
    state: &AppState,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<Vec<u32>, ApiError> {
    let messages = messages
        .into_iter()
        .map(to_template_message)
        .collect::<Result<Vec<_>, _>>()?;
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    // Rendering and tokenizing a long chat takes a while: tell the runtime.
    let prompt = tokio::task::block_in_place(|| {
        let tok = &state.tokenizer;
        let text = tok.apply_chat_template_with(&messages, add_generation_prompt, kwargs)?;
        tok.encode(&text, false)
    })?;
    Ok(prompt)
}

/// Fields this server does not implement yet: a 400 naming them, never silence.
fn reject_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    for (name, v) in [
        ("tools", &req.tools),
        ("tool_choice", &req.tool_choice),
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        let empty_list = v
            .as_ref()
            .is_some_and(|v| v.as_array().is_some_and(Vec::is_empty));
        let none_choice = v.as_ref().is_some_and(|v| v == "none");
        if set(v) && !empty_list && !none_choice {
            return Err(ApiError::bad_request(
                format!("{name} is not supported by this server (no tool calling yet)"),
                Some(name),
            ));
        }
    }
    if let Some(f) = req.response_format.as_ref().filter(|v| !v.is_null()) {
        if f.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::bad_request(
                format!(
                    "response_format {f} is not supported: only {{\"type\": \"text\"}} is \
                     (no structured output yet)"
                ),
                Some("response_format"),
            ));
        }
    }
    Ok(())
}

/// One message as the template sees it: text parts joined, anything else refused.
fn to_template_message(m: Message) -> Result<ChatMessage, ApiError> {
    if !matches!(
        m.role.as_str(),
        "system" | "developer" | "user" | "assistant"
    ) {
        return Err(ApiError::bad_request(
            format!(
                "message role {:?} is not supported (system, developer, user, assistant)",
                m.role
            ),
            Some("messages"),
        ));
    }
    if m.tool_calls.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "tool_calls in messages are not supported by this server",
            Some("messages"),
        ));
    }
    let content = match m.content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t,
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(
                            format!(
                                "content part of type {} is not supported: only text parts are",
                                kind.unwrap_or("(none)")
                            ),
                            Some("messages"),
                        ))
                    }
                }
            }
            text
        }
    };
    let role = if m.role == "developer" {
        "system".into()
    } else {
        m.role
    };
    Ok(ChatMessage { role, content })
}

/// Produces the chunks of a streamed chat response.
async fn stream_chunks(
    state: Arc<AppState>,
    mut generation: Generation,
    out: Emitter,
    id: String,
    n: usize,
    k: Option<usize>,
    include_usage: bool,
) {
    let created = unix_time();
    let chunk = |choices: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.config.served_model_name,
            "system_fingerprint": state.fingerprint,
            "choices": choices,
        })
    };
    for i in 0..n {
        let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null}]);
        out.send(&chunk(c));
    }
    let mut completion_tokens = 0;
    loop {
        let item = tokio::select! {
            item = generation.next() => item,
            () = out.closed() => return,
        };
        let d = match item {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                out.send(&e.body());
                return;
            }
        };
        completion_tokens += d.token_ids.len();
        let logprobs = k.map(|k| {
            let steps = d.logprobs.as_deref().unwrap_or_default();
            chat_shape(&token_logprobs(&state.tokenizer, &d.token_ids, steps, k))
        });
        let delta = if d.text.is_empty() {
            json!({})
        } else {
            json!({"content": d.text})
        };
        let c = json!([{
            "index": d.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": d.finish_reason.map(|r| r.as_str()),
            "stop_reason": stop_reason_json(d.stop_reason.as_ref()),
        }]);
        if !out.send(&chunk(c)) {
            return;
        }
    }
    if include_usage {
        let mut usage = Usage::default();
        usage.add(
            generation.output().prompt_token_ids.len(),
            completion_tokens,
        );
        usage.add_cached(generation.output().num_cached_tokens);
        let mut last = chunk(json!([]));
        last["usage"] = json!(usage);
        out.send(&last);
    }
}
