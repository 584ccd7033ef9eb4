//! The model's vocabulary as llguidance sees it: each token's bytes in a trie (special tokens
//! marked so that a grammar never produces them as text), and tokenization through the model's
//! own tokenizer (where it spells the text exactly) so that forced text becomes the tokens the
//! model would have produced.

use std::sync::Arc;

use llguidance::token_bytes_from_tokenizer_json;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// [`TokenizerEnv`] over an Infire [`Tokenizer`] (HF directories and GGUF files alike: both
/// are a `tokenizers` pipeline).
pub struct ModelTokEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl ModelTokEnv {
    /// Builds the trie of `tokenizer`'s vocabulary; `eos` is the token a grammar allows once
    /// it accepts (the engine lets every end-of-sequence id through then).
    pub fn build(tokenizer: &Tokenizer, eos: u32) -> Result<TokEnv> {
        let json: serde_json::Value = serde_json::from_str(&tokenizer.to_hf_json()?)
            .map_err(|e| Error::Tokenizer(format!("tokenizer JSON: {e}")))?;
        let mut words = token_bytes_from_tokenizer_json(&json)
            .map_err(|e| Error::Tokenizer(format!("token bytes for grammars: {e}")))?;
        // Ids the JSON does not spell (gaps) stay empty: no grammar can pick them.
        words.resize(tokenizer.vocab_size().max(words.len()), Vec::new());
        let info = TokRxInfo::new(words.len() as u32, eos);
        let env = ModelTokEnv {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        };
        Ok(Arc::new(env))
    }
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The model's tokenizer where its tokens spell exactly `s`; a SentencePiece tokenizer
        // adds a space in front, and a cut may split a character: then the trie's greedy
        // tokenization, which always spells `s`.
        let encoded = std::str::from_utf8(s)
            .ok()
            .and_then(|text| self.tokenizer.encode(text, false).ok());
        match encoded {
            Some(ids) if self.trie.decode_raw(&ids) == s => ids,
            _ => self.trie.greedy_tokenize(s),
        }
    }
}
