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
use super::otel::RequestSpan;
use super::request::{
    check_stream_options, parse_request, response_id, stop_reason_json, unix_time,
};
use super::request_params::{compile_structured, sampling_params};
use super::sse::{spawn_sse, Emitter};
use super::tool_calls::{assistant_message, ToolStream};
use super::tools::{self, render_calls, ToolFormat, ToolRequest};
use super::{AppState, Caller};
use crate::engine::FinishReason;
use crate::tokenizer::ChatMessage;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<RequestLog>,
    Extension(caller): Extension<Caller>,
    Extension(span): Extension<RequestSpan>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let mut req: ChatRequest = parse_request(&state, body, CHAT_FIELDS)?;
    log.set_model(&req.model);
    span.set_model(&req.model);
    let state = state
        .route(&req.model, req.sampling.priority, &caller)
        .await?;
    reject_unsupported(&req)?;
    let template = (state.tokenizer.chat_template()).map_or(String::new(), |t| t.source().into());
    let tools = tools::parse(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls.as_ref(),
        &template,
    )?;
    let format = (tools.as_ref()).map_or_else(|| ToolFormat::of_template(&template), |t| t.format);
    let mut kwargs = req.chat_template_kwargs.take().unwrap_or_default();
    let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
    let mut messages = (std::mem::take(&mut req.messages).into_iter())
        .map(|m| to_template_message(m, format))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(t) = &tools {
        if template.contains("tools") {
            let (name, value) = t.template_vars();
            kwargs.insert(name, value);
        } else {
            t.describe_in_prompt(&mut messages, &template);
        }
    }
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
    let mut params = sampling_params(req.sampling, max_tokens, k, &state.defaults)?;
    if let Some(grammar) = tools.as_ref().and_then(ToolRequest::grammar) {
        if params.structured_outputs.is_some() {
            return Err(ApiError::bad_request(
                "tool_choice required or named cannot be combined with another output \
                 constraint (response_format, structured_outputs, guided_*)",
                Some("tool_choice"),
            ));
        }
        params.structured_outputs = Some(grammar);
    }
    if format == ToolFormat::Mistral && tools.is_some() {
        // Its calls begin with a special token, which the text must keep to be parsed.
        params.skip_special_tokens = false;
    }
    compile_structured(&state, &mut params)?;
    let tools = tools.map(|t| t.format);
    let n = params.n;
    let generation = Generation::start(&state, prompt, params, arrival, &log, &span)?;
    let id = response_id("chatcmpl");
    let k = k.map(|k| k.max(0) as usize);
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(spawn_sse(state.cut.subscribe(), move |out| {
            stream_chunks(state, generation, out, id, (n, k, include_usage), tools)
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
            let (message, called) = assistant_message(&c.text, tools);
            json!({
                "index": c.index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason(c.finish_reason, called),
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
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<Vec<u32>, ApiError> {
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

/// A choice's finish reason; `stop` becomes `tool_calls` when the output holds calls.
fn finish_reason(reason: Option<FinishReason>, called: bool) -> Option<&'static str> {
    match reason {
        Some(FinishReason::Stop) if called => Some("tool_calls"),
        r => r.map(|r| r.as_str()),
    }
}

/// Fields this server does not implement: a 400 naming them, never silence.
fn reject_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    check_stream_options(req.stream, req.stream_options.as_ref())?;
    for (name, v) in [
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(
                format!("{name} (the deprecated form) is not supported: use tools"),
                Some(name),
            ));
        }
    }
    Ok(())
}

/// One message as the template sees it: text parts joined, an assistant's `tool_calls`
/// written after its text as the model writes calls (`format`), anything else refused.
fn to_template_message(m: Message, format: ToolFormat) -> Result<ChatMessage, ApiError> {
    if !matches!(
        m.role.as_str(),
        "system" | "developer" | "user" | "assistant" | "tool"
    ) {
        return Err(ApiError::bad_request(
            format!(
                "message role {:?} is not supported (system, developer, user, assistant, tool)",
                m.role
            ),
            Some("messages"),
        ));
    }
    let calls = match m.tool_calls.as_ref().filter(|v| !v.is_null()) {
        Some(_) if m.role != "assistant" => {
            return Err(ApiError::bad_request(
                "only assistant messages may hold tool_calls",
                Some("messages"),
            ))
        }
        Some(c) => Some(render_calls(c, format)?),
        None => None,
    };
    let mut content = match m.content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t,
        Some(MessageContent::Parts(parts)) => {
            let texts = parts
                .iter()
                .map(
                    |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                        (kind, _) => Err(ApiError::bad_request(
                            format!(
                                "content part of type {} is not supported: only text parts are",
                                kind.unwrap_or("(none)")
                            ),
                            Some("messages"),
                        )),
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
            texts.join("\n") // as vLLM joins a message's text parts
        }
    };
    if let Some(calls) = calls {
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(&calls);
    }
    let role = if m.role == "developer" {
        "system".into()
    } else {
        m.role
    };
    Ok(ChatMessage { role, content })
}

/// Produces the chunks of a streamed chat response; with tools (`tools`: their format),
/// content streams until calls begin and the calls go out whole when the choice ends.
async fn stream_chunks(
    state: Arc<AppState>,
    mut generation: Generation,
    out: Emitter,
    id: String,
    (n, k, include_usage): (usize, Option<usize>, bool),
    tools: Option<ToolFormat>,
) {
    let created = unix_time();
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
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
    for i in 0..n {
        let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null}]);
        out.send(&chunk(c));
    }
    let mut parsers: Vec<Option<ToolStream>> = (0..n).map(|_| tools.map(ToolStream::new)).collect();
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
        let parser = parsers.get_mut(d.index).and_then(Option::as_mut);
        let (text, calls) = match parser {
            None => (d.text.clone(), Vec::new()),
            Some(p) => {
                let mut text = p.push(&d.text);
                let mut calls = Vec::new();
                if d.finish_reason.is_some() {
                    let (rest, done) = p.finish();
                    text.push_str(&rest);
                    calls = done;
                }
                (text, calls)
            }
        };
        let mut delta = json!({});
        if !text.is_empty() {
            delta["content"] = json!(text);
        }
        if !calls.is_empty() {
            let calls: Vec<Value> = (calls.iter().enumerate())
                .map(|(i, c)| c.to_json(Some(i)))
                .collect();
            delta["tool_calls"] = json!(calls);
        }
        if delta.as_object().is_some_and(|d| d.is_empty())
            && logprobs.is_none()
            && d.finish_reason.is_none()
        {
            continue; // text held back (a possible stop string or tool call): nothing to send
        }
        let c = json!([{
            "index": d.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason(d.finish_reason, !calls.is_empty()),
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
