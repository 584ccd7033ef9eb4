//! A model's output → OpenAI `tool_calls`, by its family's format ([`ToolFormat`]): the
//! whole text at once ([`parse_output`]), or as it streams ([`ToolStream`]: content goes out
//! as it comes until a call begins; calls go out once complete).

use rand::Rng;
use serde_json::{json, Value};

use super::tools::ToolFormat;

/// One parsed call: the function's name and its arguments as JSON text (OpenAI's shape).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

impl ParsedCall {
    /// The call as a `tool_calls` entry (with `index` when streamed).
    pub fn to_json(&self, index: Option<usize>) -> Value {
        let id: String = {
            let mut rng = rand::rng();
            (0..24)
                .map(|_| format!("{:x}", rng.random_range(0..16u8)))
                .collect()
        };
        let mut v = json!({"id": format!("call_{id}"), "type": "function",
            "function": {"name": self.name, "arguments": self.arguments}});
        if let Some(i) = index {
            v["index"] = json!(i);
        }
        v
    }
}

/// Where the calls of `format` begin in `text`, if they do.
fn call_start(text: &str, format: ToolFormat) -> Option<usize> {
    match format {
        ToolFormat::Hermes => text.find("<tool_call>"),
        ToolFormat::Mistral => text.find("[TOOL_CALLS]"),
        ToolFormat::Llama3Json => {
            let trimmed = text.trim_start();
            let at = text.len() - trimmed.len();
            (trimmed.starts_with("<|python_tag|>") || trimmed.starts_with('{')).then_some(at)
        }
    }
}

/// A call object `{"name": ..., "arguments" | "parameters": ...}`.
fn call_of(v: &Value) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters"));
    let arguments = match args {
        Some(Value::String(s)) => s.clone(),
        Some(a @ Value::Object(_)) => a.to_string(),
        None => "{}".into(),
        Some(_) => return None,
    };
    Some(ParsedCall { name, arguments })
}

/// The calls written in `calls` (the text from where they begin), or `None` if it does not
/// parse as calls of `format`.
fn parse_calls(calls: &str, format: ToolFormat) -> Option<Vec<ParsedCall>> {
    match format {
        ToolFormat::Hermes => {
            let mut out = Vec::new();
            for block in calls.split("<tool_call>").skip(1) {
                let body = block.split("</tool_call>").next().unwrap_or(block);
                out.push(call_of(&serde_json::from_str(body.trim()).ok()?)?);
            }
            Some(out)
        }
        ToolFormat::Mistral => {
            let body = calls.trim_start().strip_prefix("[TOOL_CALLS]")?.trim();
            let list: Value = serde_json::from_str(body).ok()?;
            list.as_array()?.iter().map(call_of).collect()
        }
        ToolFormat::Llama3Json => {
            let body = calls.trim_start();
            let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
            body.split(';')
                .map(|one| call_of(&serde_json::from_str(one.trim()).ok()?))
                .collect()
        }
    }
}

/// `text` split into content before the calls (`None` if blank) and the calls; text whose
/// calls do not parse stays content, with no calls.
pub fn parse_output(text: &str, format: ToolFormat) -> (Option<String>, Vec<ParsedCall>) {
    let content = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let Some(at) = call_start(text, format) else {
        return (Some(text.to_string()), Vec::new());
    };
    match parse_calls(&text[at..], format) {
        Some(calls) if !calls.is_empty() => (content(&text[..at]), calls),
        _ => (Some(text.to_string()), Vec::new()),
    }
}

/// The streamed side: content deltas until the calls begin, then the calls when the output
/// ends. Text that may be the start of the calls' marker is held back until it is decided.
pub struct ToolStream {
    format: ToolFormat,
    /// Everything seen so far.
    text: String,
    /// Bytes of `text` sent as content.
    sent: usize,
    /// Where the calls begin, once seen.
    calls_at: Option<usize>,
}

impl ToolStream {
    pub fn new(format: ToolFormat) -> Self {
        ToolStream {
            format,
            text: String::new(),
            sent: 0,
            calls_at: None,
        }
    }

    /// Takes `delta`; returns the content that can go out now.
    pub fn push(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        if self.calls_at.is_some() {
            return String::new();
        }
        if let Some(at) = call_start(&self.text, self.format) {
            self.calls_at = Some(at);
            return self.take_content(at);
        }
        let keep = held_back(&self.text, self.format);
        self.take_content(self.text.len() - keep)
    }

    fn take_content(&mut self, upto: usize) -> String {
        let upto = upto.max(self.sent);
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }

    /// At the end of the output: the content still held back and the calls (none if they
    /// did not parse: then their text goes out as content).
    pub fn finish(&mut self) -> (String, Vec<ParsedCall>) {
        let calls = match self.calls_at {
            Some(at) => parse_calls(&self.text[at..], self.format).unwrap_or_default(),
            None => Vec::new(),
        };
        if calls.is_empty() {
            let rest = self.text.len();
            return (self.take_content(rest), calls);
        }
        (String::new(), calls)
    }
}

/// How many bytes at the end of `text` could begin the calls' marker (held back).
fn held_back(text: &str, format: ToolFormat) -> usize {
    let markers: &[&str] = match format {
        ToolFormat::Hermes => &["<tool_call>"],
        ToolFormat::Mistral => &["[TOOL_CALLS]"],
        // Only a start of output decides; whitespace alone may still precede a call.
        ToolFormat::Llama3Json if text.trim().is_empty() => return text.len(),
        ToolFormat::Llama3Json => &["<|python_tag|>"],
    };
    let mut keep = 0;
    for m in markers {
        for n in (1..m.len()).rev() {
            if n > keep
                && text.is_char_boundary(text.len().saturating_sub(n))
                && text.ends_with(&m[..n])
            {
                keep = n;
                break;
            }
        }
    }
    keep
}

/// The assistant message of a finished choice; with tools, its calls parsed out. Returns the
/// message and whether it holds calls (then a `stop` finish is reported as `tool_calls`).
pub fn assistant_message(text: &str, format: Option<ToolFormat>) -> (Value, bool) {
    let Some(format) = format else {
        return (json!({"role": "assistant", "content": text}), false);
    };
    let (content, calls) = parse_output(text, format);
    if calls.is_empty() {
        return (json!({"role": "assistant", "content": text}), false);
    }
    let calls: Vec<Value> = calls.iter().map(|c| c.to_json(None)).collect();
    (
        json!({"role": "assistant", "content": content, "tool_calls": calls}),
        true,
    )
}
