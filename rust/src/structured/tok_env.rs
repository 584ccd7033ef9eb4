//! The model's vocabulary as llguidance sees it: each token's bytes in a trie (special tokens
//! marked so that a grammar never produces them as text), and tokenization through the model's
//! own tokenizer so that forced text becomes the tokens the model would have produced.

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
        // llguidance hands over text it forces (valid UTF-8 except at a cut, which the lossy
        // conversion only affects where the trie's greedy fallback below would apply).
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text, false).unwrap_or_default(),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
