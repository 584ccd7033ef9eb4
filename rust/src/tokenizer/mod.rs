//! Text ↔ token ids for a model: [`Tokenizer`] wraps the Hugging Face `tokenizers` crate, built
//! from an HF model directory ([`Tokenizer::from_hf_dir`]) or from a GGUF file's metadata
//! ([`Tokenizer::from_gguf_metadata`]) so that it gives the ids transformers gives for the same
//! model; [`ChatTemplate`] renders conversations; [`IncrementalDetokenizer`] turns a stream of
//! generated ids into text deltas.

mod byte_alphabet;
mod chat_template;
mod detokenizer;
mod gguf_merges;
mod gguf_vocab;
mod hf_dir;
mod python_json;
mod special_tokens;
mod template_budget;
mod template_functions;
#[cfg(test)]
pub(crate) mod test_vocab;

use std::collections::BTreeMap;
use std::path::Path;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use detokenizer::IncrementalDetokenizer;
pub use special_tokens::{NamedToken, SpecialTokens};

use crate::error::{Error, Result};
use crate::weights::gguf_value::GgufValue;

/// What the detokenizer needs to know about one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenClass {
    /// An ordinary token (or an id with no token, which decodes to nothing).
    Normal,
    /// A special added token: dropped by `decode(.., skip_special_tokens = true)`.
    Special,
    /// A byte-fallback token `<0xXX>`: consecutive ones decode together as one UTF-8 string.
    Byte,
}

/// A model's tokenizer: encoding, decoding, special tokens and chat template.
///
/// Invariants: every id below `vocab_size()` has a [`TokenClass`]; `decode` rejects any other
/// id; `special().bos` / `eos` ids are below `vocab_size()`. Cloning copies the vocabulary;
/// share one behind an `Arc` where that matters.
#[derive(Clone)]
pub struct Tokenizer {
    /// The `tokenizers` pipeline (normalizer, pre-tokenizer, model, post-processor, decoder)
    /// with the special tokens registered as added tokens.
    inner: tokenizers::Tokenizer,
    /// Named special tokens and whether encoding adds BOS/EOS.
    special: SpecialTokens,
    /// One past the largest id of the vocabulary, added tokens included.
    vocab_size: usize,
    /// Class of each id, `vocab_size` entries.
    token_class: Vec<TokenClass>,
    /// The compiled chat template, if the model has one that compiles.
    chat_template: Option<ChatTemplate>,
    /// Why the model's chat template did not compile, if it did not.
    chat_template_error: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("special", &self.special)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a Hugging Face model directory (`tokenizer.json`, and
    /// `tokenizer_config.json` / `chat_template.jinja` when present).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let loaded = hf_dir::load(dir)?;
        Ok(Tokenizer::from_parts(
            loaded.tokenizer,
            loaded.special,
            loaded.chat_template,
        ))
    }

    /// Builds the tokenizer described by a GGUF file's metadata (`tokenizer.ggml.*`,
    /// `tokenizer.chat_template`); see the `gguf_vocab` module for how each model kind is built.
    pub fn from_gguf_metadata(meta: &BTreeMap<String, GgufValue>) -> Result<Tokenizer> {
        let built = gguf_vocab::build(meta)?;
        Ok(Tokenizer::from_parts(
            built.tokenizer,
            built.special,
            built.chat_template,
        ))
    }

    /// Assembles a tokenizer; a chat template that does not compile is remembered as an error
    /// for [`Tokenizer::apply_chat_template`] instead of failing the load.
    fn from_parts(
        inner: tokenizers::Tokenizer,
        special: SpecialTokens,
        chat_template: Option<String>,
    ) -> Tokenizer {
        let mut vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&id| id as usize + 1);
        let mut token_class = vec![TokenClass::Normal; vocab_size];
        for (token, id) in vocab.drain() {
            if is_byte_fallback_token(&token) {
                token_class[id as usize] = TokenClass::Byte;
            }
        }
        let added = inner.get_added_vocabulary();
        for (token, &id) in added.get_vocab() {
            if added.is_special_token(token) {
                token_class[id as usize] = TokenClass::Special;
            }
        }
        let bos = special.bos.as_ref().map(|t| t.content.as_str());
        let eos = special.eos.as_ref().map(|t| t.content.as_str());
        let (chat_template, chat_template_error) = match chat_template {
            None => (None, None),
            Some(source) => match ChatTemplate::new(&source, bos, eos) {
                Ok(template) => (Some(template), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        Tokenizer {
            inner,
            special,
            vocab_size,
            token_class,
            chat_template,
            chat_template_error,
        }
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) are always
    /// recognised; `add_special_tokens` adds BOS/EOS only where the model's configuration says
    /// so (see [`SpecialTokens::add_bos`]), as transformers does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special_tokens`, special tokens are left out. An id at or
    /// above `vocab_size()` is an [`Error::Tokenizer`].
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is out of range (vocabulary size {})",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// The `tokenizers` pipeline as `tokenizer.json` spells it (what grammar engines read
    /// each token's bytes from).
    pub(crate) fn to_hf_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer(format!("serializing the tokenizer failed: {e}")))
    }

    /// One past the largest token id, added tokens included: the number of rows the model's
    /// embedding needs at least.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of `token` (its vocabulary spelling, e.g. `Ġthe` or `▁the`), if it has one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of `id`, if it has one.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The beginning-of-sequence token id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.special.bos.as_ref().map(|t| t.id)
    }

    /// The ids that end a generation according to the tokenizer metadata (EOS first). The engine
    /// adds those of `generation_config.json` for HF directories.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.special.eos_token_ids()
    }

    /// The named special tokens and the add-BOS/EOS flags.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The model's chat template, if it has one that compiles.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders `messages` with the model's chat template (see [`ChatTemplate::render`]).
    /// Errors when the model has no chat template or its template does not compile.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`apply_chat_template`](Self::apply_chat_template) with more template variables (see
    /// [`ChatTemplate::render_with`]).
    pub fn apply_chat_template_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        match (&self.chat_template, &self.chat_template_error) {
            (Some(template), _) => template.render_with(messages, add_generation_prompt, extra),
            (None, Some(reason)) => Err(Error::Tokenizer(reason.clone())),
            (None, None) => Err(Error::Tokenizer("the model has no chat template".into())),
        }
    }

    /// What the detokenizer needs to know about `id` (`Normal` for ids out of range).
    pub(crate) fn token_class(&self, id: u32) -> TokenClass {
        self.token_class
            .get(id as usize)
            .copied()
            .unwrap_or(TokenClass::Normal)
    }
}

/// Whether `token` is spelled as a byte-fallback token, `<0xXX>` with two hex digits: the
/// spelling the `ByteFallback` decoder turns into a byte.
fn is_byte_fallback_token(token: &str) -> bool {
    let bytes = token.as_bytes();
    bytes.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && bytes[3..5].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
#[path = "tokenizer_tests.rs"]
mod tests;
