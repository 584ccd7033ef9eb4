//! Request bodies of the OpenAI API as this server reads them, with the vLLM extension fields,
//! and the pieces shared by responses. Fields outside [`COMPLETION_FIELDS`] /
//! [`CHAT_FIELDS`] are refused with a 400 naming them, as OpenAI's server does (unless the
//! server allows unknown fields); known fields this server cannot honour are rejected by the
//! handlers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopArg {
    One(String),
    Many(Vec<String>),
}

impl StopArg {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopArg::One(s) => vec![s],
            StopArg::Many(v) => v,
        }
    }
}

/// `prompt` of a completion: text, texts, token ids or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptArg {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints (OpenAI's and vLLM's extensions).
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub n: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopArg>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub logit_bias: Option<Value>,
    pub min_tokens: Option<i64>,
    #[serde(default)]
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: Option<bool>,
    /// OpenAI's `{"type": "text" | "json_object" | "json_schema", ...}`.
    pub response_format: Option<Value>,
    /// vLLM's `{"json" | "regex" | "choice" | "grammar" | "json_object": ...}`.
    pub structured_outputs: Option<Value>,
    /// vLLM's older spellings of the same.
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    /// vLLM's request priority (lower is more urgent); read by the routing, not a sampling
    /// parameter.
    pub priority: Option<i64>,
}

/// Sampling fields of both endpoints (see [`SamplingFields`]).
const SAMPLING_FIELDS: &[&str] = &[
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "logit_bias",
    "min_tokens",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "priority",
    // OpenAI's, accepted and ignored: they change nothing a client can see.
    "user",
    "metadata",
    "store",
    "service_tier",
];

/// The top-level fields `POST /v1/completions` takes, beyond [`SAMPLING_FIELDS`].
pub const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "echo",
    "logprobs",
    "stream",
    "stream_options",
    "suffix",
    "best_of",
];

/// The top-level fields `POST /v1/chat/completions` takes, beyond [`SAMPLING_FIELDS`].
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "chat_template_kwargs",
    "add_generation_prompt",
];

/// The fields of `body` (a JSON object) that neither `known` nor the sampling fields name, in
/// the map's order.
pub fn unknown_fields<'a>(
    body: &'a serde_json::Map<String, Value>,
    known: &[&str],
) -> Vec<&'a str> {
    body.keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k) && !SAMPLING_FIELDS.contains(k))
        .collect()
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptArg,
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    /// Top log-probabilities per token (0 returns only the sampled token's).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// One message's `content`: text, or a list of parts of which only text parts are served.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Value>),
}

/// One message of a chat.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<MessageContent>,
    pub tool_calls: Option<Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    /// More variables for the chat template (vLLM's extension; e.g. `enable_thinking`).
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// Whether the prompt ends with the assistant's header (vLLM's extension; default true).
    pub add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// As OpenAI reports it: how many prompt tokens came from the (prefix) cache.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn add(&mut self, prompt: usize, completion: usize) {
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
        self.total_tokens += prompt + completion;
    }

    /// Counts `n` prompt tokens served from the prefix cache.
    pub fn add_cached(&mut self, n: usize) {
        self.prompt_tokens_details.cached_tokens += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_those_no_list_names() {
        let body = serde_json::json!({
            "model": "m", "prompt": "p", "top_k": 3, "min_tokens": 1, "user": "u",
            "foo": 1, "messages": [],
        });
        let body = body.as_object().unwrap();
        let sorted = |known| {
            let mut v = unknown_fields(body, known);
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(COMPLETION_FIELDS), vec!["foo", "messages"]);
        assert_eq!(sorted(CHAT_FIELDS), vec!["foo", "prompt"]);
        // Every field the request types read is known.
        for f in [
            "max_tokens",
            "echo",
            "logprobs",
            "stream_options",
            "best_of",
            "suffix",
        ] {
            assert!(COMPLETION_FIELDS.contains(&f), "{f}");
        }
        for f in [
            "chat_template_kwargs",
            "tools",
            "top_logprobs",
            "max_completion_tokens",
        ] {
            assert!(CHAT_FIELDS.contains(&f), "{f}");
        }
    }
}
