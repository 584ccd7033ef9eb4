//! One generated sequence: its tokens, KV blocks, sampler, detokenizer and stop state.
//! A request with `n > 1` owns `n` sequences that share its prompt.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use super::output::{FinishReason, SeqDelta};
use crate::error::Result;
use crate::kv::BlockTable;
use crate::sampling::{log_softmax_top, Sampled, Sampler, SamplingParams, StopChecker, StopReason};
use crate::structured::GrammarState;
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// Seconds since the Unix epoch, as vLLM's request metrics report times.
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The state of one sequence inside the engine.
///
/// Invariants: `num_computed <= tokens.len()`; `block_table` covers at least `num_computed`
/// tokens; `tokens[..prompt_len]` is the prompt.
pub struct Sequence {
    pub request_id: u64,
    /// Index of this sequence among its request's `n`.
    pub index: usize,
    /// Lower runs first (vLLM's convention); ties go to the earlier arrival.
    pub priority: i32,
    /// Order of arrival, engine-wide; breaks priority ties and picks preemption victims.
    pub arrival_seq: u64,
    pub arrival_time: f64,
    /// When the scheduler first admitted it (the end of its time in the queue).
    pub scheduled_time: Option<f64>,
    pub first_token_time: Option<f64>,
    pub finished_time: Option<f64>,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub params: Arc<SamplingParams>,
    /// Most tokens this sequence may generate (`max_tokens`, capped by `max_model_len`).
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    /// Where a constrained sequence (structured outputs) is in its grammar.
    pub grammar: Option<GrammarState>,
    pub block_table: BlockTable,
    /// Tokens whose keys and values are in the cache.
    pub num_computed: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    pub num_cached_tokens: usize,
    /// Whether the sequence was admitted once already (preempted sequences come back).
    pub was_admitted: bool,
    detokenizer: IncrementalDetokenizer,
    /// Tokens whose text is in `text` (the prompt's count as done).
    detokenized: usize,
    stop: StopChecker,
    /// Text of the output (cut at a stop string once one is found).
    pub text: String,
    /// Per generated token, the requested log-probabilities.
    pub logprobs: Vec<Vec<(u32, f32)>>,
    /// Per prompt token from the second on, the requested log-probabilities.
    pub prompt_logprobs: Vec<Vec<(u32, f32)>>,
    pub finish_reason: Option<FinishReason>,
    /// The stop token id or stop string that ended the sequence, if one did.
    pub stop_reason: Option<StopReason>,
    /// Whether the last token ended the sequence as an end-of-sequence or stop token whose
    /// text stays out of the output (unless `include_stop_str_in_output`), as in vLLM.
    hide_stop_token: bool,
    /// Progress already reported to the caller: tokens, bytes of text, logprob steps.
    pub reported: (usize, usize),
    /// Whether the delta with the finish reason went out (there is only one).
    final_reported: bool,
}

impl Sequence {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        request_id: u64,
        index: usize,
        priority: i32,
        arrival_seq: u64,
        prompt: Vec<u32>,
        params: Arc<SamplingParams>,
        max_new_tokens: usize,
        seed: u64,
    ) -> Self {
        Sequence {
            request_id,
            index,
            priority,
            arrival_seq,
            arrival_time: now_s(),
            scheduled_time: None,
            first_token_time: None,
            finished_time: None,
            sampler: Sampler::new(&params, &prompt, seed),
            grammar: params.grammar.as_ref().map(GrammarState::new),
            detokenizer: IncrementalDetokenizer::new(&prompt, params.skip_special_tokens),
            stop: StopChecker::new(&params.stop),
            prompt_len: prompt.len(),
            detokenized: prompt.len(),
            tokens: prompt,
            max_new_tokens,
            block_table: BlockTable::new(),
            num_computed: 0,
            num_cached_tokens: 0,
            was_admitted: false,
            text: String::new(),
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            finish_reason: None,
            stop_reason: None,
            hide_stop_token: false,
            reported: (0, 0),
            final_reported: false,
            params,
        }
    }

    /// Prompt and output tokens so far.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn is_finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// Whether the prompt has not been fully computed yet.
    pub fn in_prefill(&self) -> bool {
        self.num_computed < self.prompt_len
    }

    /// Records the log-probabilities of prompt token `pos + 1` from the logits of row `pos`
    /// (once: a recompute after preemption finds them recorded).
    pub fn record_prompt_logprobs(&mut self, pos: usize, logits: &[f32]) {
        let (Some(k), Some(&next)) = (self.params.prompt_logprobs, self.tokens.get(pos + 1)) else {
            return;
        };
        if self.prompt_logprobs.len() != pos || pos + 1 >= self.prompt_len {
            return;
        }
        let (mut top, lse) = log_softmax_top(logits, k);
        if !top.iter().any(|&(t, _)| t == next) {
            top.push((next, logits[next as usize] - lse));
        }
        self.prompt_logprobs.push(top);
    }

    /// Whether the next token must be picked from logits on the host: log-probabilities are
    /// computed there, and `min_tokens` bans tokens ([`banned_tokens`](Self::banned_tokens)).
    /// A grammar's mask goes with the step's sampling ([`grammar_mask`](Self::grammar_mask)).
    pub fn needs_host_logits(&self) -> bool {
        self.params.logprobs.is_some()
            || self.params.prompt_logprobs.is_some()
            || self.output().len() < self.params.min_tokens
    }

    /// Tokens the next pick must not take: before `min_tokens` tokens are out, the
    /// end-of-sequence tokens (unless `ignore_eos`) and the stop token ids, as in vLLM.
    pub fn banned_tokens(&self, eos_token_ids: &[u32]) -> Vec<u32> {
        if self.output().len() >= self.params.min_tokens {
            return Vec::new();
        }
        let eos = eos_token_ids.iter().filter(|_| !self.params.ignore_eos);
        eos.chain(&self.params.stop_token_ids).copied().collect()
    }

    /// Picks the next token on the host from its logits `row`: banned tokens and those the
    /// grammar forbids are out.
    pub fn sample_host(&mut self, row: &[f32], eos_token_ids: &[u32]) -> Result<Sampled> {
        let banned = self.banned_tokens(eos_token_ids);
        let mut logits = row.to_vec();
        let grammar = self.grammar.as_mut();
        self.sampler
            .sample_constrained(&self.params, &mut logits, &banned, grammar)
    }

    /// The tokens the grammar allows at the next pick, over a logits row of `width` tokens;
    /// computed once per position, so that the engine can compute it as soon as the last
    /// token is known. `None` without a grammar.
    pub fn grammar_mask(&mut self, width: usize) -> Result<Option<Arc<[u32]>>> {
        (self.grammar.as_mut())
            .map(|g| g.allowed_tokens(width))
            .transpose()
    }

    /// Moves the grammar past the last token; once the grammar is complete the sequence ends
    /// (a stop, as at an end-of-sequence token) without a step spent on picking that token.
    pub fn advance_grammar(&mut self) -> Result<()> {
        let last = self.output().last().copied();
        let (Some(g), Some(token)) = (&mut self.grammar, last) else {
            return Ok(());
        };
        g.accept(token)?;
        if g.is_complete() && !self.is_finished() {
            self.finish(Some(FinishReason::Stop));
        }
        Ok(())
    }

    /// Appends a sampled token and finishes the sequence on an end-of-sequence or stop token
    /// id (once `min_tokens` tokens came before it) or at its length limit; the text (and stop
    /// strings) follow in [`detokenize`](Self::detokenize). Cheap: the engine does this before
    /// planning the next step, and the text while that step runs.
    pub fn push_token(
        &mut self,
        token: u32,
        logprobs: Option<Vec<(u32, f32)>>,
        eos_token_ids: &[u32],
    ) {
        let may_stop = self.output().len() >= self.params.min_tokens;
        self.tokens.push(token);
        self.first_token_time.get_or_insert_with(now_s);
        self.sampler.observe(&self.params, token);
        if let Some(lp) = logprobs {
            self.logprobs.push(lp);
        }
        let eos = may_stop && !self.params.ignore_eos && eos_token_ids.contains(&token);
        let stop_token = may_stop && self.params.stop_token_ids.contains(&token);
        if eos || stop_token {
            if !eos {
                self.stop_reason = Some(StopReason::Token(token));
            }
            self.hide_stop_token = !self.params.include_stop_str_in_output;
            self.finish(Some(FinishReason::Stop));
        } else if self.output().len() >= self.max_new_tokens {
            self.finish(Some(FinishReason::Length));
        }
    }

    /// Whether a stop string can end the sequence (only text tells).
    pub fn has_stop_strings(&self) -> bool {
        !self.params.stop.is_empty()
    }

    /// Brings `text` up to the tokens: decodes the tokens appended since the last call (all of
    /// the rest once finished) and finishes the sequence at a stop string (looked for once
    /// `min_tokens` tokens are out), cutting the text there (after it with
    /// `include_stop_str_in_output`).
    pub fn detokenize(&mut self, tokenizer: &Tokenizer) -> Result<()> {
        while self.detokenized < self.tokens.len() {
            let token = self.tokens[self.detokenized];
            self.detokenized += 1;
            let checked = self.text.len();
            // Models often have more embedding rows than their tokenizer has tokens (padding,
            // as in Qwen2); such ids carry no text, as in vLLM. Nor does the token that
            // stopped the sequence, unless asked for.
            let hidden = self.hide_stop_token && self.detokenized == self.tokens.len();
            if (token as usize) < tokenizer.vocab_size() && !hidden {
                self.text
                    .push_str(&self.detokenizer.push(tokenizer, token)?);
            }
            if self.is_finished() && self.detokenized == self.tokens.len() {
                self.text.push_str(&self.detokenizer.finish(tokenizer)?);
            }
            if self.detokenized - self.prompt_len < self.params.min_tokens {
                continue;
            }
            if let Some(m) = self.stop.find(&self.text, checked) {
                let cut = if self.params.include_stop_str_in_output {
                    m.at + m.stop.len()
                } else {
                    m.at
                };
                self.stop_reason = Some(StopReason::Text(m.stop.to_string()));
                self.text.truncate(cut);
                self.finish(Some(FinishReason::Stop));
                self.detokenized = self.tokens.len();
            }
        }
        Ok(())
    }

    /// Marks the sequence finished (the caller frees its blocks).
    pub fn finish(&mut self, reason: Option<FinishReason>) {
        self.finish_reason = reason;
        self.finished_time = Some(now_s());
    }

    /// The text that may be shown now: all of it once finished, else everything up to where a
    /// stop string could still begin.
    pub fn visible_text(&self) -> &str {
        if self.is_finished() {
            &self.text
        } else {
            &self.text[..self.stop.safe_len(&self.text)]
        }
    }

    /// What changed since the last call, or `None` if nothing did.
    /// Brings the text up to the tokens and takes the delta; a failed detokenization finishes
    /// the sequence (Abort) and comes back with its request id.
    pub fn emit_delta(
        &mut self,
        tokenizer: &Tokenizer,
    ) -> std::result::Result<Option<SeqDelta>, (u64, crate::error::Error)> {
        match self.detokenize(tokenizer) {
            Ok(()) => Ok(self.take_delta()),
            Err(e) => {
                self.finish(Some(FinishReason::Abort));
                Err((self.request_id, e))
            }
        }
    }

    /// Finishes the sequence as aborted and returns its final delta, with the text of every
    /// token first (with async scheduling the last collected token has none yet).
    pub fn abort_delta(&mut self, tokenizer: &Tokenizer) -> Option<SeqDelta> {
        let _ = self.detokenize(tokenizer);
        self.finish(Some(FinishReason::Abort));
        self.take_delta()
    }

    pub fn take_delta(&mut self) -> Option<SeqDelta> {
        let (tokens_done, text_done) = self.reported;
        let out_len = self.output().len();
        if out_len == tokens_done && (!self.is_finished() || self.final_reported) {
            return None;
        }
        self.final_reported = self.is_finished();
        let text = self.visible_text();
        let delta = SeqDelta {
            request_id: self.request_id,
            index: self.index,
            token_ids: self.output()[tokens_done..].to_vec(),
            text: text[text_done.min(text.len())..].to_string(),
            logprobs: self
                .params
                .logprobs
                .map(|_| self.logprobs[tokens_done.min(self.logprobs.len())..].to_vec()),
            prompt_logprobs: (tokens_done == 0 && self.params.prompt_logprobs.is_some())
                .then(|| self.prompt_logprobs.clone()),
            finish_reason: self.finish_reason,
            stop_reason: self.finish_reason.and(self.stop_reason.clone()),
            num_cached_tokens: self.num_cached_tokens,
            arrival_time: self.arrival_time,
            scheduled_time: self.scheduled_time,
            first_token_time: self.first_token_time,
            finished_time: self.finished_time,
        };
        self.reported = (out_len, text.len());
        Some(delta)
    }
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
