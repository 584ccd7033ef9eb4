//! One sequence's place in its grammar: the mask of allowed tokens for its next pick, and the
//! advance past each token it takes.

use std::sync::Arc;

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

use super::CompiledGrammar;
use crate::error::{Error, Result};
use crate::sampling::apply_token_mask;

/// A constrained sequence's matcher, and the mask of its next pick once computed.
pub struct GrammarState {
    matcher: Matcher,
    eos_token_ids: Arc<[u32]>,
    /// The allowed tokens of the next pick, packed for a logits row of `.0` tokens
    /// ([`pack_token_mask`]); cleared by [`accept`](Self::accept).
    mask: Option<(usize, Arc<[u32]>)>,
}

impl GrammarState {
    pub fn new(grammar: &CompiledGrammar) -> Self {
        let (matcher, eos_token_ids) = grammar.start();
        GrammarState {
            matcher,
            eos_token_ids,
            mask: None,
        }
    }

    /// The tokens the grammar allows next, as a bitmask over a logits row of `width` tokens
    /// (see [`pack_token_mask`]): computed once per position (the engine computes it as soon
    /// as the previous token is known, and a device sampler uploads it as it is).
    pub fn allowed_tokens(&mut self, width: usize) -> Result<Arc<[u32]>> {
        if let Some((w, mask)) = &self.mask {
            if *w == width {
                return Ok(mask.clone());
            }
        }
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| grammar_error(&e.to_string()))?;
        let mask: Arc<[u32]> = pack_token_mask(&vob, width, &self.eos_token_ids).into();
        self.mask = Some((width, mask.clone()));
        Ok(mask)
    }

    /// Sets the logit of every token the grammar does not allow next to -inf, so that the
    /// sampling rules (penalties, temperature, top-k/p, min-p, the seeded draw) apply to the
    /// allowed tokens alone.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self.allowed_tokens(logits.len())?;
        apply_token_mask(logits, &mask);
        Ok(())
    }

    /// Moves past `token` (which the mask allowed). An end-of-sequence token is not fed: it
    /// ends the sequence, which is all the grammar asked.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        if self.eos_token_ids.contains(&token) {
            return Ok(());
        }
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| grammar_error(&e.to_string()))
    }

    /// The tokens the grammar forces next (jump-forward), not yet taken: feed each to
    /// [`accept`](Self::accept). They are llguidance's canonical tokenization of the forced
    /// text, and it leaves out a tail that could tokenize differently once more text follows
    /// (the model picks across that boundary itself). Empty when nothing is forced, when the
    /// grammar is complete, or in an error state (which the next mask reports).
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        if self.matcher.is_stopped() {
            return Vec::new();
        }
        let mut forced = self.matcher.compute_ff_tokens();
        // An end-of-sequence id ends the sequence as a sampled token would; never forced here.
        if let Some(at) = forced.iter().position(|t| self.eos_token_ids.contains(t)) {
            forced.truncate(at);
        }
        forced
    }

    /// Whether the grammar is complete and allows nothing more: the sequence can stop now.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }
}

/// Packs llguidance's mask `vob` for a logits row of `width` tokens: `width.div_ceil(32)`
/// words, token `t` allowed when bit `t % 32` of word `t / 32` is set (llguidance's own order).
/// Ids past `vob` (padding of the model's vocabulary) are never allowed. The trie knows one
/// end-of-sequence id; the model may have several: each of `eos_token_ids` is allowed exactly
/// when one of them is in `vob` (after the grammar is complete, only they are).
pub fn pack_token_mask(vob: &SimpleVob, width: usize, eos_token_ids: &[u32]) -> Vec<u32> {
    let mut words = vec![0u32; width.div_ceil(32)];
    let known = width.min(vob.len());
    let src = vob.as_slice();
    let full = known / 32;
    words[..full].copy_from_slice(&src[..full]);
    if !known.is_multiple_of(32) {
        words[full] = src[full] & ((1u32 << (known % 32)) - 1);
    }
    let in_vob = |t: u32| (t as usize) < vob.len() && vob.is_allowed(t);
    let eos_allowed = eos_token_ids.iter().any(|&t| in_vob(t));
    for &t in eos_token_ids.iter().filter(|&&t| (t as usize) < width) {
        let (w, bit) = (t as usize / 32, 1u32 << (t % 32));
        if eos_allowed {
            words[w] |= bit;
        } else {
            words[w] &= !bit;
        }
    }
    words
}

fn grammar_error(e: &str) -> Error {
    Error::Engine(format!(
        "structured output: {}",
        e.lines().next().unwrap_or(e)
    ))
}
