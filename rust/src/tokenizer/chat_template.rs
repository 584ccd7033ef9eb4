//! Chat templates: the Jinja program shipped with a model that turns a conversation into the
//! prompt text it was trained on. Rendered with `minijinja` set up as transformers sets up Jinja
//! (`trim_blocks`, `lstrip_blocks`, Python string/dict methods through `pycompat`, loop controls,
//! `raise_exception`, `strftime_now`, a `json.dumps`-compatible `tojson`), with the same
//! variables: `messages`, `add_generation_prompt`, `tools` and `documents` (none), and the
//! special tokens (`bos_token`, `eos_token`) where the tokenizer has them; callers may add
//! more (`chat_template_kwargs`).

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value};
use minijinja::Environment;
use serde::{Deserialize, Serialize};

use super::template_budget::{self, BYTES_PER_FUEL};
use super::template_functions::{self, TemplateException};
use crate::error::{Error, Result};

/// Name of the one template held by a [`ChatTemplate`]'s environment.
const TEMPLATE_NAME: &str = "chat_template";

/// A rendering's budget (minijinja's fuel), counting instructions and data together: one fuel
/// per instruction and one per [`BYTES_PER_FUEL`] bytes the template builds or writes (strings,
/// list slots, output, captured blocks). Real templates spend 30 to 50 per message and about
/// one per 15 bytes of content, so this renders conversations of tens of thousands of
/// messages or tens of MiB of text, while a template that loops without end stops within a
/// fraction of a second and one that grows a value stops at [`RENDER_MEMORY_BUDGET`].
pub const RENDER_FUEL: u64 = 2 << 20;

/// The most data, in bytes, a rendering may build: [`RENDER_FUEL`] spent on data alone
/// (128 MiB). Values a template builds are charged before they are allocated, or, for the
/// few minijinja charges after the fact, paid for first by [`template_budget`]'s filters.
pub const RENDER_MEMORY_BUDGET: u64 = RENDER_FUEL * BYTES_PER_FUEL;

/// Largest rendered prompt, in bytes. Far beyond any context a model takes (the prompt is
/// tokenized and checked against `max_model_len` next). The fuel charges output too, but one
/// string written again and again costs little of it per byte: this cap stops such a template
/// at 64 MiB of prompt rather than at the whole memory budget.
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
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Tokenizer(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        template_functions::register(&mut env);
        template_budget::register(&mut env);
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
    /// (e.g. Mistral on roles that do not alternate), when it runs out of [`RENDER_FUEL`]
    /// (instructions and [`RENDER_MEMORY_BUDGET`] counted together) or writes more than
    /// [`MAX_RENDERED_BYTES`], or describing the failure otherwise.
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
        context.insert("messages", Value::from(Serde(messages)));
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
            context.insert(name.as_str(), Value::from(Serde(value)));
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
            "chat template exceeded its budget of {RENDER_FUEL} instructions and its memory \
             budget of {} MiB, counted together (a template that loops or grows a value without \
             end, or a conversation far too long)",
            RENDER_MEMORY_BUDGET >> 20
        ));
    }
    Error::Tokenizer(format!("chat template failed: {error}"))
}

#[cfg(test)]
#[path = "chat_template_tests.rs"]
mod tests;
