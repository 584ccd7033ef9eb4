//! Chat templates: the Jinja program shipped with a model that turns a conversation into the
//! prompt text it was trained on. Rendered with `minijinja` set up as transformers sets up Jinja
//! (`trim_blocks`, `lstrip_blocks`, Python string/dict methods through `pycompat`, loop controls,
//! `raise_exception`, `strftime_now`, a `json.dumps`-compatible `tojson`), with the same
//! variables: `messages`, `add_generation_prompt`, `tools` and `documents` (none), and the
//! special tokens (`bos_token`, `eos_token`) where the tokenizer has them; callers may add
//! more (`chat_template_kwargs`).

use std::collections::BTreeMap;

use minijinja::value::Value;
use minijinja::Environment;
use serde::{Deserialize, Serialize};

use super::template_functions::{self, TemplateException};
use crate::error::{Error, Result};

/// Name of the one template held by a [`ChatTemplate`]'s environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one rendering may execute (minijinja's fuel). Real templates spend a few hundred
/// per message, so this leaves room for conversations of tens of thousands of messages while a
/// template that loops without end (nested `range`s) stops within about a second on a CPU.
pub const RENDER_FUEL: u64 = 20_000_000;

/// Largest rendered prompt, in bytes. Far beyond any context a model takes (the prompt is
/// tokenized and checked against `max_model_len` next), and small enough that a template whose
/// output grows without end fails here instead of exhausting memory.
///
/// Only the output is capped. A string a template builds in a variable is bounded where
/// minijinja bounds it (repetition with `*` at 100 MB; a `set` inside a loop lasts one
/// iteration), but a namespace attribute or a recursive macro's argument doubled again and again
/// (`{% set ns.s = ns.s ~ ns.s %}` in a loop) grows until memory runs out: minijinja has no hook
/// on its string operations, so the model's template must be trusted that far.
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

/// One message of a conversation, as templates see it: `message.role` / `message['content']`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: usually "system", "user" or "assistant"; templates decide what they accept.
    pub role: String,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template. Compiled once by [`ChatTemplate::new`]; rendering is thread-safe.
#[derive(Clone)]
pub struct ChatTemplate {
    /// Holds exactly one template, named [`TEMPLATE_NAME`], compiled with the HF-compatible
    /// settings and functions.
    env: Environment<'static>,
    /// The template's Jinja source, as given.
    source: String,
    /// Exposed to the template as `bos_token` when present; undefined otherwise.
    bos_token: Option<String>,
    /// Exposed to the template as `eos_token` when present; undefined otherwise.
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the texts the template sees under those
    /// names. A template that does not parse is an [`Error::Tokenizer`] naming the problem.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        template_functions::register(&mut env);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::Tokenizer(format!("chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` into prompt text; with `add_generation_prompt`, the text ends with the
    /// header that makes the model answer as the assistant. The text already holds the special
    /// tokens the template writes (e.g. BOS), so encode it with `add_special_tokens = false`, as
    /// transformers does.
    ///
    /// Errors: [`Error::Tokenizer`] with the template's message when it calls `raise_exception`
    /// (e.g. Mistral on roles that do not alternate), when it runs out of [`RENDER_FUEL`] or
    /// writes more than [`MAX_RENDERED_BYTES`], or describing the failure otherwise.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`render`](Self::render) with more variables for the template (transformers' and vLLM's
    /// `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`, or `tools`): each is set under
    /// its name and may replace the defaults above, except `messages`.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))?;
        let mut context: BTreeMap<&str, Value> = BTreeMap::new();
        context.insert("messages", Value::from_serialize(messages));
        context.insert("add_generation_prompt", Value::from(add_generation_prompt));
        context.insert("tools", Value::from(()));
        context.insert("documents", Value::from(()));
        if let Some(bos) = &self.bos_token {
            context.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            context.insert("eos_token", Value::from(eos.as_str()));
        }
        for (name, value) in extra.iter().filter(|(name, _)| *name != "messages") {
            context.insert(name.as_str(), Value::from_serialize(value));
        }
        let mut out = CappedWriter {
            bytes: Vec::new(),
            cap: MAX_RENDERED_BYTES,
            overflowed: false,
        };
        if let Err(e) = template.render_captured_to(context, &mut out) {
            if out.overflowed {
                return Err(Error::Tokenizer(format!(
                    "chat template output exceeds the limit of {MAX_RENDERED_BYTES} bytes"
                )));
            }
            return Err(render_error(e));
        }
        String::from_utf8(out.bytes)
            .map_err(|_| Error::Tokenizer("chat template wrote invalid UTF-8".into()))
    }
}

/// The rendering's output buffer: refuses a write that would take it past `cap` bytes.
struct CappedWriter {
    /// What was written; never longer than `cap`.
    bytes: Vec<u8>,
    cap: usize,
    /// Set when a write was refused.
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.cap - self.bytes.len() {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The template's own message for `raise_exception`, or minijinja's description otherwise.
fn render_error(error: minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(TemplateException(message)) = current.downcast_ref::<TemplateException>() {
            return Error::Tokenizer(format!("chat template raised an exception: {message}"));
        }
        source = current.source();
    }
    if error.kind() == minijinja::ErrorKind::OutOfFuel {
        return Error::Tokenizer(format!(
            "chat template ran past its limit of {RENDER_FUEL} instructions (a template that \
             loops without end, or a conversation far too long)"
        ));
    }
    Error::Tokenizer(format!("chat template failed: {error}"))
}

#[cfg(test)]
#[path = "chat_template_tests.rs"]
mod tests;
