//! Applying a step's outcome: the scheduler's other half ([`Scheduler::update`]).
//!
//! A step computed the rows [`Scheduler::schedule`] planned. For each planned sequence, in plan
//! order: the prompt log-probabilities of its rows are recorded, its computed count advances,
//! its newly full KV blocks are sealed into the prefix cache, and, where the step reached the
//! end of its tokens, the sampled token is appended with the finish checks that need no text,
//! followed by the tokens its grammar forces (`jump_forward.rs`).
//! A request's other sequences (`n > 1`) start once its first one's prompt is cached.

use rayon::prelude::*;

use super::jump_forward::jump_forward;
use super::{prompt_logprob_rows, Scheduled, Scheduler};
use crate::engine::sequence::{FinishReason, Sequence};
use crate::error::Error;
use crate::kv::BlockManager;
use crate::sampling::Sampled;
use crate::tokenizer::Tokenizer;

/// What one step produced, for [`Scheduler::update`].
pub struct StepOutput<'a> {
    /// The step's plan, as [`Scheduler::schedule`] returned it.
    pub plan: &'a [Scheduled],
    /// The step's logits rows (`vocab` floats each) when the host samples or a request wants
    /// log-probabilities: prompt-logprob rows first, then sampling rows, in plan order.
    pub logits: &'a [f32],
    /// The tokens the backend picked, one per sampling row in plan order, when it picked them.
    pub tokens: Option<&'a [u32]>,
    pub vocab: usize,
}

/// What [`Scheduler::update`] needs to finish and detokenize sequences.
pub struct UpdateContext<'a> {
    pub tokenizer: &'a Tokenizer,
    pub eos_token_ids: &'a [u32],
    /// Leave the text of sequences without stop strings to later (async scheduling turns
    /// tokens into text while the next step runs); with stop strings, text decides whether
    /// the sequence runs on, so it is made here.
    pub defer_text: bool,
    /// Append the tokens a grammar forces after each sampled one (`jump_forward.rs`).
    pub jump_forward: bool,
}

/// Where a sequence's next token comes from in this step.
enum Sample<'a> {
    /// Picked by the backend.
    Token(u32),
    /// Sampled on the host from its logits row.
    Logits(&'a [f32]),
}

impl Scheduler {
    /// Applies `out` (see the module docs). Sequences that finished while the step was in
    /// flight (aborted) only have their rows skipped. Returns the requests whose sequence
    /// failed (its detokenization), which are finished as aborted.
    pub fn update(
        &mut self,
        kv: &mut BlockManager,
        out: StepOutput<'_>,
        ctx: &UpdateContext<'_>,
    ) -> Vec<(u64, Error)> {
        let mut rows = out.logits.chunks_exact(out.vocab);
        let mut backend_tokens = out.tokens.map(|t| t.iter().copied());
        // In plan order (increasing `s.seq`), as the logits rows are.
        let mut samples: Vec<(usize, Sample)> = Vec::with_capacity(out.plan.len());
        for s in out.plan {
            let seq = &mut self.running[s.seq];
            let gone = seq.is_finished();
            if seq.params.prompt_logprobs.is_some() {
                let n = prompt_logprob_rows(seq, s.num_tokens);
                for p in seq.num_computed..seq.num_computed + n {
                    let Some(row) = rows.next() else { break };
                    if !gone {
                        seq.record_prompt_logprobs(p, row);
                    }
                }
            }
            let reached_end = seq.num_computed + s.num_tokens == seq.num_tokens();
            let sample = match (&mut backend_tokens, reached_end) {
                (_, false) => None,
                (Some(tokens), true) => tokens.next().map(Sample::Token),
                (None, true) => rows.next().map(Sample::Logits),
            };
            if reached_end && sample.is_none() {
                break; // fewer results than rows: a step cut short
            }
            if gone {
                continue;
            }
            let constrained = ctx.jump_forward && seq.grammar.is_some();
            if constrained && !reached_end && seq.num_computed >= seq.prompt_len {
                // Output tokens split over steps: a forced run longer than the step's budget
                // (or a recompute after preemption), a step that saved none.
                self.num_split_output_steps += 1;
            }
            seq.num_computed += s.num_tokens;
            kv.cache_full_blocks(&seq.block_table, &seq.tokens, seq.num_computed);
            if let Some(sample) = sample {
                samples.push((s.seq, sample));
            }
        }
        let outcomes = self.append_tokens(samples, ctx);
        let mut errors = Vec::new();
        for (request_id, first, outcome) in outcomes {
            if let Ok(forced) = outcome {
                self.num_forced_tokens += forced as u64;
            }
            if let Err(e) = outcome {
                errors.push((request_id, e));
            } else if first {
                // Its prompt is in the prefix cache now: the request's other sequences start.
                self.release_siblings(request_id);
            }
        }
        errors
    }

    /// Samples (on the host where the backend did not) and appends each sequence's token and
    /// those its grammar forces after it, in parallel over the engine's threads in chunks of
    /// 64 sequences (4 where grammars mask). Returns per sequence its request, whether it is
    /// the request's first sequence, and the outcome: the number of forced tokens appended.
    fn append_tokens(
        &mut self,
        samples: Vec<(usize, Sample<'_>)>,
        ctx: &UpdateContext<'_>,
    ) -> Vec<(u64, bool, crate::error::Result<usize>)> {
        let mut work: Vec<(&mut Sequence, Sample)> = Vec::with_capacity(samples.len());
        let mut samples = samples.into_iter().peekable();
        for (i, seq) in self.running.iter_mut().enumerate() {
            if samples.peek().is_some_and(|(j, _)| *j == i) {
                let (_, sample) = samples.next().expect("peeked");
                work.push((seq, sample));
            }
        }
        // A grammar's mask takes far longer than a plain pick: spread those more finely.
        let constrained = work.iter().any(|(seq, _)| seq.grammar.is_some());
        work.into_par_iter()
            .with_min_len(if constrained { 4 } else { 64 })
            .map(|(seq, sample)| {
                let r = append_one(seq, sample, ctx);
                if r.is_err() {
                    seq.finish(Some(FinishReason::Abort));
                }
                (seq.request_id, seq.index == 0, r)
            })
            .collect()
    }
}

/// Appends `seq`'s sampled token and the tokens its grammar forces after it, with their
/// finish checks; the text too unless it is left to later. Returns the forced tokens' count.
fn append_one(
    seq: &mut Sequence,
    sample: Sample<'_>,
    ctx: &UpdateContext<'_>,
) -> crate::error::Result<usize> {
    let sampled = match sample {
        Sample::Token(token) => Sampled {
            token,
            logprobs: None,
        },
        Sample::Logits(row) => seq.sample_host(row, ctx.eos_token_ids)?,
    };
    seq.push_token(sampled.token, sampled.logprobs, ctx.eos_token_ids);
    seq.advance_grammar()?;
    // A stop string in the sampled token's text ends the sequence before any forced token.
    if seq.has_stop_strings() {
        seq.detokenize(ctx.tokenizer)?;
    }
    let forced = jump_forward(seq, ctx)?;
    if !ctx.defer_text {
        seq.detokenize(ctx.tokenizer)?;
    }
    Ok(forced)
}
