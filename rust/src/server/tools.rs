//! Tools in chat: `tools`, `tool_choice` and `parallel_tool_calls` checked; the model family's
//! call format ([`ToolFormat`], from its chat template); the prompt the tools go into; and,
//! when calls are required or named, the grammar that makes every call valid JSON matching
//! its function's `parameters`.

use serde_json::{json, Value};

use super::errors::ApiError;
use crate::structured::{json_layout, StructuredOutputs};
use crate::tokenizer::ChatMessage;

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call
    /// (Hermes; Qwen2.5, Qwen3, SmolLM2).
    Hermes,
    /// A bare `{"name": ..., "parameters": {...}}` (Llama 3.x), after an optional
    /// `<|python_tag|>`.
    Llama3Json,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Mistral).
    Mistral,
}

impl ToolFormat {
    /// The format a chat template renders; Hermes where the template says nothing of tools.
    pub fn of_template(source: &str) -> ToolFormat {
        if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if source.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// The key that holds a call's arguments.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    Required,
    Named(String),
}

/// A request's tools, checked.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// The `tools` entries as given (`{"type": "function", "function": {...}}`).
    pub tools: Vec<Value>,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub format: ToolFormat,
}

fn bad(msg: impl Into<String>, field: &str) -> ApiError {
    ApiError::bad_request(msg.into(), Some(field))
}

/// Checks one `tools` entry; returns its function's name.
fn check_tool(i: usize, t: &Value) -> Result<String, ApiError> {
    let at = |m: &str| bad(format!("tools[{i}]: {m}"), "tools");
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(at("type must be \"function\""));
    }
    let f = t
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| at("function must be an object"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| at("function.name must be a string"))?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(at(&format!(
            "function.name {name:?} must be 1 to 64 letters, digits, '_' or '-'"
        )));
    }
    match f.get("parameters") {
        None | Some(Value::Object(_)) => Ok(name.to_string()),
        Some(_) => Err(at("function.parameters must be a JSON schema object")),
    }
}

/// `tool_choice` against the tools' names.
fn parse_choice(v: Option<&Value>, names: &[String]) -> Result<Option<ToolChoice>, ApiError> {
    const F: &str = "tool_choice";
    let named = |v: &Value| {
        let n = v.get("function").and_then(|f| f.get("name"))?.as_str()?;
        Some(n.to_string())
    };
    Ok(Some(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => return Ok(None),
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(v @ Value::Object(_)) => match named(v) {
            Some(n) if names.contains(&n) => ToolChoice::Named(n),
            Some(n) => return Err(bad(format!("tool_choice names {n:?}, not in tools"), F)),
            None => {
                return Err(bad(
                    "tool_choice object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    F,
                ))
            }
        },
        Some(other) => {
            return Err(bad(
                format!("tool_choice must be none, auto, required or a named function, got {other}"),
                F,
            ))
        }
    }))
}

/// The request's tools, or `None` when it has none or `tool_choice` is `none`.
pub fn parse(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<&Value>,
    template_source: &str,
) -> Result<Option<ToolRequest>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("tools must be a list", "tools")),
    };
    let names = (list.iter().enumerate())
        .map(|(i, t)| check_tool(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    let parallel = match parallel {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "parallel_tool_calls must be a bool",
                "parallel_tool_calls",
            ))
        }
    };
    let choice = parse_choice(tool_choice, &names)?;
    if list.is_empty() {
        // An explicit "auto" without tools is refused too, as OpenAI and vLLM refuse it ("none"
        // is accepted: it asks for no call).
        let explicit = matches!(tool_choice, Some(Value::String(_) | Value::Object(_)));
        return match choice {
            Some(ToolChoice::Required | ToolChoice::Named(_)) => {
                Err(bad("tool_choice needs tools", "tool_choice"))
            }
            Some(ToolChoice::Auto) if explicit => {
                Err(bad("tool_choice needs tools", "tool_choice"))
            }
            _ => Ok(None),
        };
    }
    Ok(choice.map(|choice| ToolRequest {
        tools: list,
        choice,
        parallel,
        format: ToolFormat::of_template(template_source),
    }))
}

impl ToolRequest {
    /// The functions a call may name (all of them, or the one `tool_choice` names).
    fn callable(&self) -> impl Iterator<Item = &Value> {
        self.tools
            .iter()
            .map(|t| &t["function"])
            .filter(|f| match &self.choice {
                ToolChoice::Named(n) => f["name"] == *n,
                _ => true,
            })
    }

    /// The JSON schema of one call: its name fixed, its arguments its function's parameters.
    fn call_schema(&self) -> Value {
        let key = self.format.arguments_key();
        let alts: Vec<Value> = self
            .callable()
            .map(|f| {
                let params = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or(json!({"type": "object"}));
                json!({"type": "object", "properties": {"name": {"const": f["name"]}, key: params},
                    "required": ["name", key], "additionalProperties": false})
            })
            .collect();
        json!({"anyOf": alts, "x-guidance": json_layout()})
    }

    /// The grammar that holds the output to tool calls (`required` or named), `None` for
    /// `auto` (the model decides).
    pub fn grammar(&self) -> Option<StructuredOutputs> {
        if self.choice == ToolChoice::Auto {
            return None;
        }
        let call = format!("%json {}", self.call_schema());
        let many = self.parallel && !matches!(self.choice, ToolChoice::Named(_));
        let lark = match (self.format, many) {
            (ToolFormat::Hermes, true) => format!(
                "start: call (\"\\n\" call)*\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: {call}"
            ),
            (ToolFormat::Hermes, false) => format!(
                "start: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: {call}"
            ),
            (ToolFormat::Llama3Json, _) => format!("start: body\nbody: {call}"),
            (ToolFormat::Mistral, true) => format!(
                "start: \"[TOOL_CALLS][\" body (\", \" body)* \"]\"\nbody: {call}"
            ),
            (ToolFormat::Mistral, false) => format!("start: \"[TOOL_CALLS][\" body \"]\"\nbody: {call}"),
        };
        Some(StructuredOutputs::Grammar(lark))
    }

    /// The template variables: `tools` as the template expects them.
    pub fn template_vars(&self) -> (String, Value) {
        ("tools".to_string(), Value::Array(self.tools.clone()))
    }

    /// Where the template does not render tools, a system message that tells the model of
    /// them in the Hermes format (as SmolLM2 was taught) goes first, joined to the first
    /// system message if there is one.
    pub fn describe_in_prompt(&self, messages: &mut Vec<ChatMessage>, template_source: &str) {
        if template_source.contains("tools") {
            return;
        }
        let mut text = String::from(
            "You may call one or more functions to assist with the user query.\n\nYou are \
             provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for t in &self.tools {
            text.push('\n');
            text.push_str(&t.to_string());
        }
        text.push_str(
            "\n</tools>\n\nFor each function call, return a json object with function name \
             and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
             {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
        );
        match messages.first_mut().filter(|m| m.role == "system") {
            Some(m) => m.content = format!("{}\n\n{text}", m.content),
            None => messages.insert(0, ChatMessage::new("system", text)),
        }
    }
}

/// An assistant message's `tool_calls`, written as the model writes calls (how templates
/// that render them show them too), so that a conversation can carry them.
pub fn render_calls(calls: &Value, format: ToolFormat) -> Result<String, ApiError> {
    const F: &str = "messages";
    let list = calls
        .as_array()
        .ok_or_else(|| bad("tool_calls must be a list", F))?;
    let mut objs = Vec::new();
    for c in list {
        let f = c
            .get("function")
            .ok_or_else(|| bad("tool_calls[].function is missing", F))?;
        let name = f.get("name").and_then(Value::as_str);
        let name = name.ok_or_else(|| bad("tool_calls[].function.name must be a string", F))?;
        let args = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                bad(
                    format!("tool_calls[].function.arguments is not JSON: {e}"),
                    F,
                )
            })?,
            Some(v @ Value::Object(_)) => v.clone(),
            _ => json!({}),
        };
        objs.push(json!({"name": name, format.arguments_key(): args}));
    }
    Ok(match format {
        ToolFormat::Hermes => objs
            .iter()
            .map(|o| format!("<tool_call>\n{o}\n</tool_call>"))
            .collect::<Vec<_>>()
            .join("\n"),
        ToolFormat::Llama3Json => objs
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        ToolFormat::Mistral => format!("[TOOL_CALLS]{}", Value::Array(objs)),
    })
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
