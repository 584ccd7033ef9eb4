//! The special tokens a tokenizer names (BOS, EOS, UNK, PAD), whether encoding adds BOS/EOS, and
//! the post-processor that adds them, built the way transformers builds it
//! (`TokenizersBackend.update_post_processor`).

use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// One special token: its text and its id in the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// The token's text as it appears in the vocabulary, e.g. `<|im_end|>` or `<s>`.
    pub content: String,
    /// The token's id; always below the tokenizer's `vocab_size()`.
    pub id: u32,
}

/// The special tokens a tokenizer's metadata names, and how encoding uses them.
///
/// Each named token is also registered as a special added token of the tokenizer, so it is
/// recognised whole in text and dropped by `decode(.., skip_special_tokens = true)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<NamedToken>,
    /// End-of-sequence token, if the model has one.
    pub eos: Option<NamedToken>,
    /// Unknown token, if the model has one.
    pub unk: Option<NamedToken>,
    /// Padding token, if the model has one.
    pub pad: Option<NamedToken>,
    /// Further ids that end a generation besides `eos` (GGUF `tokenizer.ggml.eot_token_id` and
    /// `eom_token_id`, e.g. Llama-3's `<|eot_id|>`). Never contains `eos`'s id; no duplicates.
    pub extra_eos_ids: Vec<u32>,
    /// Whether `encode(.., add_special_tokens = true)` puts `bos` first. Never true without `bos`.
    pub add_bos: bool,
    /// Whether `encode(.., add_special_tokens = true)` puts `eos` last. Never true without `eos`.
    pub add_eos: bool,
}

impl SpecialTokens {
    /// The ids that end a generation according to the tokenizer metadata: `eos` first, then
    /// `extra_eos_ids`, without duplicates.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos.iter().map(|t| t.id).collect();
        for &id in &self.extra_eos_ids {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The named tokens that are present (BOS, EOS, UNK, PAD), in that order.
    pub(crate) fn named(&self) -> impl Iterator<Item = &NamedToken> {
        [&self.bos, &self.eos, &self.unk, &self.pad]
            .into_iter()
            .flatten()
    }

    /// Registers BOS/EOS/UNK/PAD as special added tokens where they are not added tokens yet,
    /// as transformers does for the tokens it is told about, so that they are matched whole in
    /// text and skipped by `decode(.., skip_special_tokens = true)`. A named token whose text is
    /// not in the vocabulary is skipped rather than given a new id the model lacks.
    pub(crate) fn register_as_added_tokens(&self, tokenizer: &mut tokenizers::Tokenizer) {
        let missing: Vec<AddedToken> = self
            .named()
            .filter(|t| {
                !tokenizer
                    .get_added_vocabulary()
                    .get_vocab()
                    .contains_key(&t.content)
                    && tokenizer.token_to_id(&t.content).is_some()
            })
            .map(|t| AddedToken::from(t.content.clone(), true).normalized(false))
            .collect();
        if !missing.is_empty() {
            tokenizer.add_special_tokens(&missing);
        }
    }

    /// Clears `add_bos` / `add_eos` where the token they would add is missing, as transformers
    /// does.
    pub(crate) fn normalize_flags(&mut self) {
        self.add_bos &= self.bos.is_some();
        self.add_eos &= self.eos.is_some();
    }

    /// A post-processor that adds `bos` / `eos` around each sequence as `add_bos` / `add_eos`
    /// say (transformers' `update_post_processor`): single `"<bos>:0 $A:0 <eos>:0"`, pair the
    /// same with `$B:1`.
    pub(crate) fn post_processor(&self) -> Result<TemplateProcessing> {
        let bos = self.bos.as_ref().filter(|_| self.add_bos);
        let eos = self.eos.as_ref().filter(|_| self.add_eos);
        let piece = |token: Option<&NamedToken>, type_id: u32| {
            token.map(|t| format!("{}:{type_id}", t.content))
        };
        let sequence = |name: &str, type_id: u32| {
            [
                piece(bos, type_id),
                Some(format!("${name}:{type_id}")),
                piece(eos, type_id),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
        };
        let single = sequence("A", 0);
        let pair = format!("{single} {}", sequence("B", 1));
        let special: Vec<(String, u32)> = bos
            .iter()
            .chain(eos.iter())
            .map(|t| (t.content.clone(), t.id))
            .collect();
        let bad = |e: String| Error::Tokenizer(format!("cannot build the BOS/EOS template: {e}"));
        TemplateProcessing::builder()
            .try_single(single.as_str())
            .map_err(bad)?
            .try_pair(pair.as_str())
            .map_err(bad)?
            .special_tokens(special)
            .build()
            .map_err(|e| bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(content: &str, id: u32) -> Option<NamedToken> {
        Some(NamedToken {
            content: content.into(),
            id,
        })
    }

    #[test]
    fn eos_ids_put_eos_first_without_duplicates() {
        let special = SpecialTokens {
            eos: token("</s>", 2),
            extra_eos_ids: vec![7, 2, 7, 9],
            ..Default::default()
        };
        assert_eq!(special.eos_token_ids(), vec![2, 7, 9]);
        assert!(SpecialTokens::default().eos_token_ids().is_empty());
    }

    #[test]
    fn flags_without_their_token_are_cleared() {
        let mut special = SpecialTokens {
            add_bos: true,
            add_eos: true,
            ..Default::default()
        };
        special.normalize_flags();
        assert!(!special.add_bos && !special.add_eos);
    }

    #[test]
    fn post_processor_adds_what_the_flags_ask() {
        let special = SpecialTokens {
            bos: token("<s>", 1),
            eos: token("</s>", 2),
            add_bos: true,
            ..Default::default()
        };
        let expected = TemplateProcessing::builder()
            .try_single("<s>:0 $A:0")
            .and_then(|b| b.try_pair("<s>:0 $A:0 <s>:1 $B:1"))
            .expect("template")
            .special_tokens(vec![("<s>", 1)])
            .build()
            .expect("template");
        assert_eq!(special.post_processor().expect("template"), expected);
        let none = SpecialTokens {
            add_bos: false,
            ..special
        };
        let plain = TemplateProcessing::builder()
            .try_single("$A:0")
            .and_then(|b| b.try_pair("$A:0 $B:1"))
            .expect("template")
            .build()
            .expect("template");
        assert_eq!(none.post_processor().expect("template"), plain);
    }
}
