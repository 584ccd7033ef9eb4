//! Incremental detokenization for streaming: generated ids go in one at a time, text deltas come
//! out, and the deltas add up to exactly `decode(all ids)`.
//!
//! The approach is vLLM's / TGI's prefix and read offsets: decode a short window that starts a
//! few tokens back (so that decoders which look at neighbours — SentencePiece's leading-space
//! strip, byte-level BPE's multi-byte characters — see the same context as a full decode), and
//! emit what the window's text adds beyond the text of its already-emitted part. Text is held
//! back while it is incomplete:
//!
//! - it ends with U+FFFD: a multi-byte character split across tokens (byte-level BPE);
//! - the last token is a byte-fallback token `<0xXX>`: SentencePiece decodes a run of byte tokens
//!   as one UTF-8 string, so a later byte can still change how the whole run decodes;
//! - the new tokens add no text yet (e.g. a skipped special token): moving the window past them
//!   would lose the context a following token's leading space depends on.
//!
//! Each step decodes the window only (O(window), not O(sequence)). A pathological stream that
//! stays incomplete for [`MAX_HELD_TOKENS`] tokens is released anyway, after which the deltas
//! may differ from a full decode in the replacement characters of that invalid stretch.

use super::{TokenClass, Tokenizer};
use crate::error::{Error, Result};

/// Most tokens held back before their text is released even if incomplete.
pub(crate) const MAX_HELD_TOKENS: usize = 64;
/// Prompt tokens kept as context for the first generated token (vLLM uses 5).
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// Streaming decoder of one sequence. Feed ids with [`push`](Self::push), then call
/// [`finish`](Self::finish) once at the end to release any held-back text.
///
/// Invariants: `window[..read]` is the emitted context whose text is `prefix_text` (once known);
/// `window[read..]` are the held-back tokens, fewer than [`MAX_HELD_TOKENS`] between steps.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    /// Leave special tokens out of the text, as `decode(.., skip_special_tokens = true)` does.
    skip_special_tokens: bool,
    /// Ids from the prefix offset on.
    window: Vec<u32>,
    /// Read offset into `window`: ids before it have been emitted.
    read: usize,
    /// `decode(window[..read])`; computed at the first step (the constructor has no tokenizer).
    prefix_text: Option<String>,
    /// Whether the last id that contributes to the text is a byte-fallback token.
    in_byte_run: bool,
}

impl IncrementalDetokenizer {
    /// A detokenizer for ids generated after `prompt_ids` (empty for a sequence with no preceding
    /// text). The last few prompt tokens are the context of the first generated one, so that its
    /// leading space survives SentencePiece's strip; the deltas then add up to what the generated
    /// ids add to the prompt's text (to `decode(ids)` when the prompt is empty).
    pub fn new(prompt_ids: &[u32], skip_special_tokens: bool) -> Self {
        let context = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        IncrementalDetokenizer {
            skip_special_tokens,
            window: context.to_vec(),
            read: context.len(),
            prefix_text: None,
            in_byte_run: false,
        }
    }

    /// Adds generated token `id`; returns the text that became final (often empty while a
    /// character is incomplete). An id out of the vocabulary is an error and leaves the state
    /// unchanged.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        if id as usize >= tokenizer.vocab_size() {
            return Err(Error::Tokenizer(format!(
                "token id {id} is out of range (vocabulary size {})",
                tokenizer.vocab_size()
            )));
        }
        let prefix_len = self.prefix_text(tokenizer)?.len();
        let was_in_byte_run = self.in_byte_run;
        self.window.push(id);
        self.note_class(tokenizer, id);
        let text = match tokenizer.decode(&self.window, self.skip_special_tokens) {
            Ok(text) => text,
            Err(e) => {
                self.window.pop();
                self.in_byte_run = was_in_byte_run;
                return Err(e);
            }
        };
        let complete = !self.in_byte_run && !text.ends_with(char::REPLACEMENT_CHARACTER);
        let grew = text.len() > prefix_len;
        let held = self.window.len() - self.read;
        if (complete && grew) || held >= MAX_HELD_TOKENS {
            self.release(tokenizer, &text)
        } else {
            Ok(String::new())
        }
    }

    /// Releases whatever is held back (an incomplete character decodes to U+FFFD, as in a full
    /// decode). Call once after the last [`push`](Self::push); calling again returns "".
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        if self.read == self.window.len() {
            return Ok(String::new());
        }
        let text = tokenizer.decode(&self.window, self.skip_special_tokens)?;
        self.release(tokenizer, &text)
    }

    /// `decode(window[..read])`, computed once per window position.
    fn prefix_text(&mut self, tokenizer: &Tokenizer) -> Result<&str> {
        if self.prefix_text.is_none() {
            let context = tokenizer.decode(&self.window[..self.read], self.skip_special_tokens)?;
            for index in 0..self.read {
                self.note_class(tokenizer, self.window[index]);
            }
            self.prefix_text = Some(context);
        }
        Ok(self.prefix_text.as_deref().unwrap_or_default())
    }

    /// Emits what `text` (the window's text) adds to the prefix text, then moves the window so
    /// that the tokens just emitted become the context of the next ones.
    fn release(&mut self, tokenizer: &Tokenizer, text: &str) -> Result<String> {
        let delta = text_after(self.prefix_text(tokenizer)?, text).to_string();
        let new_prefix = tokenizer.decode(&self.window[self.read..], self.skip_special_tokens)?;
        self.window.drain(..self.read);
        self.read = self.window.len();
        self.prefix_text = Some(new_prefix);
        Ok(delta)
    }

    /// Tracks whether the text currently ends inside a run of byte-fallback tokens; special
    /// tokens that are skipped do not interrupt a run, as they do not reach the decoder.
    fn note_class(&mut self, tokenizer: &Tokenizer, id: u32) {
        match tokenizer.token_class(id) {
            TokenClass::Special if self.skip_special_tokens => {}
            TokenClass::Byte => self.in_byte_run = true,
            TokenClass::Special | TokenClass::Normal => self.in_byte_run = false,
        }
    }
}

/// The part of `text` after `prefix`. The decoders built here always extend the prefix's text;
/// should one rewrite it, what follows the longest common prefix is returned.
fn text_after<'t>(prefix: &str, text: &'t str) -> &'t str {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest;
    }
    let common: usize = prefix
        .chars()
        .zip(text.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    &text[common..]
}

#[cfg(test)]
#[path = "detokenizer_tests.rs"]
mod tests;
