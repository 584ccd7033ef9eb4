//! Jump-forward for structured outputs: once a sampled token has advanced a sequence's
//! grammar, the tokens the grammar forces next (one continuation only, such as the rest of a
//! fixed key or the last enum choice left) are appended at once, as output.
//!
//! No forward step is spent to produce them: they are not yet computed, so the scheduler's
//! next plan gives the sequence all of them plus nothing else (its tokens past
//! `num_computed`), one multi-token chunk whose keys and values are written in one forward
//! pass and whose last row alone is sampled, as a prefill chunk after a cached prefix is.
//! Such a step runs eagerly (a decode graph has one row per sequence).
//!
//! Each forced token goes through the same checks as a sampled one, in order: the length
//! limit, stop token ids, the grammar's completion and, where the request has stop strings,
//! its text; the run stops at the first that ends the sequence, so `max_tokens` and stops cut
//! inside a run as they would token by token. A sequence that wants logprobs is left to
//! sample every token (forced tokens would have none from a forward pass). Each forced token
//! moves the sequence's random stream on by one key, as a pick would.

use super::UpdateContext;
use crate::engine::sequence::Sequence;
use crate::error::Result;

/// Appends the tokens `seq`'s grammar forces now (see the module docs); returns how many.
/// Call after the sampled token was pushed, its grammar advanced and, with stop strings, its
/// text made.
pub(super) fn jump_forward(seq: &mut Sequence, ctx: &UpdateContext<'_>) -> Result<usize> {
    if !ctx.jump_forward || seq.is_finished() || seq.params.logprobs.is_some() {
        return Ok(0);
    }
    let Some(grammar) = &mut seq.grammar else {
        return Ok(0);
    };
    let forced = grammar.forced_tokens();
    let mut taken = 0;
    for token in forced {
        // The random key this position would have used, drawn and dropped: later picks keep
        // the keys of their positions, so a seeded request picks as it would token by token
        // wherever the forced tokens are the ones it would have picked.
        seq.sampler.row(&seq.params, &mut Vec::new());
        seq.push_token(token, None, ctx.eos_token_ids);
        taken += 1;
        seq.advance_grammar()?;
        if seq.has_stop_strings() {
            seq.detokenize(ctx.tokenizer)?;
        }
        if seq.is_finished() {
            break;
        }
    }
    Ok(taken)
}

#[cfg(test)]
#[path = "jump_forward_tests.rs"]
mod tests;
