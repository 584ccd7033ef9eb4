//! One sequence's place in its grammar: the mask of allowed tokens for its next pick, and the
//! advance past each token it takes.

use std::sync::Arc;

use llguidance::Matcher;

use super::CompiledGrammar;
use crate::error::{Error, Result};

/// A constrained sequence's matcher.
pub struct GrammarState {
    matcher: Matcher,
    eos_token_ids: Arc<[u32]>,
}

impl GrammarState {
    pub fn new(grammar: &CompiledGrammar) -> Self {
        let (matcher, eos_token_ids) = grammar.start();
        GrammarState {
            matcher,
            eos_token_ids,
        }
    }

    /// Sets the logit of every token the grammar does not allow next to -inf, so that the
    /// sampling rules (penalties, temperature, top-k/p, min-p, the seeded draw) apply to the
    /// allowed tokens alone. Ends of sequence are allowed exactly when the grammar accepts
    /// (after it is complete, only they are). Ids past the vocabulary (padding rows) never are.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| grammar_error(&e.to_string()))?;
        let words = mask.as_slice();
        // The trie knows one end-of-sequence id; the model may have several, all allowed
        // when that one is.
        let eos_allowed =
            (self.eos_token_ids.iter()).any(|&t| (t as usize) < mask.len() && mask.is_allowed(t));
        let eos_logits: Vec<(usize, f32)> = self
            .eos_token_ids
            .iter()
            .filter_map(|&t| logits.get(t as usize).map(|&l| (t as usize, l)))
            .collect();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX && chunk.len() == 32 {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for (t, l) in eos_logits {
            logits[t] = if eos_allowed { l } else { f32::NEG_INFINITY };
        }
        Ok(())
    }

    /// Moves past `token` (which the mask allowed). An end-of-sequence token is not fed: it
    /// ends the sequence, which is all the grammar asked.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        if self.eos_token_ids.contains(&token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| grammar_error(&e.to_string()))
    }

    /// Whether the grammar is complete and allows nothing more: the sequence can stop now.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }
}

fn grammar_error(e: &str) -> Error {
    Error::Engine(format!(
        "structured output: {}",
        e.lines().next().unwrap_or(e)
    ))
}
