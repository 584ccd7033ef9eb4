//! Jump-forward in the scheduler, without a model: a grammar's forced tokens are appended
//! after the sampled one, planned as one multi-token chunk in the next step (sampled at its
//! end only), cut by `max_tokens` and stop strings exactly where token-by-token would cut, and
//! counted.

use std::sync::Arc;

use super::super::{Scheduled, Scheduler, SchedulerConfig, StepOutput, UpdateContext};
use crate::engine::sequence::{FinishReason, Sequence};
use crate::kv::BlockManager;
use crate::sampling::SamplingParams;
use crate::structured::{GrammarCompiler, StructuredOutputs};
use crate::tokenizer::test_vocab::gpt2_metadata;
use crate::tokenizer::Tokenizer;

/// EOS of the test vocabulary (`<|im_end|>`).
const EOS: u32 = 2;
/// After "a" or "b", the grammar allows one continuation up to the digit.
const GRAMMAR: &str = "(a|b)-fixed-text-[0-9]";

struct Harness {
    s: Scheduler,
    kv: BlockManager,
    tok: Tokenizer,
    jump_forward: bool,
}

impl Harness {
    fn new(budget: usize, jump_forward: bool) -> Self {
        Harness {
            s: Scheduler::new(SchedulerConfig {
                max_num_seqs: 4,
                max_num_batched_tokens: budget,
                max_prompt_logprob_rows: 8,
                batch_min_share: 0.1,
            }),
            kv: BlockManager::new(64, 4, true),
            tok: Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap(),
            jump_forward,
        }
    }

    fn add(&mut self, params: SamplingParams, max_new: usize) {
        let mut params = params;
        params.structured_outputs = Some(StructuredOutputs::Regex(GRAMMAR.into()));
        GrammarCompiler::new(self.tok.clone(), &[EOS])
            .prepare(&mut params)
            .unwrap();
        let prompt = self.tok.encode("a prompt", false).unwrap();
        let seq = Sequence::new(0, 0, 0, 0, prompt, Arc::new(params), max_new, 0);
        self.s.add_request(vec![seq], true);
    }

    fn token(&self, text: &str) -> u32 {
        let ids = self.tok.encode(text, false).unwrap();
        assert_eq!(ids.len(), 1, "{text:?} is one token");
        ids[0]
    }

    /// One step: the plan, then `pick` as the token of each sequence that reached its end.
    fn step(&mut self, pick: u32) -> Vec<Scheduled> {
        let plan = self.s.schedule(&mut self.kv);
        let ends = plan
            .iter()
            .filter(|p| {
                let seq = &self.s.running[p.seq];
                seq.num_computed + p.num_tokens == seq.num_tokens()
            })
            .count();
        let tokens = vec![pick; ends];
        let out = StepOutput {
            plan: &plan,
            logits: &[],
            tokens: Some(&tokens),
            vocab: 1,
        };
        let ctx = UpdateContext {
            tokenizer: &self.tok,
            eos_token_ids: &[EOS],
            defer_text: false,
            jump_forward: self.jump_forward,
        };
        assert!(self.s.update(&mut self.kv, out, &ctx).is_empty());
        plan
    }

    /// The one sequence, waiting or running.
    fn seq(&self) -> &Sequence {
        self.s.running.first().or(self.s.waiting.front()).unwrap()
    }
}

#[test]
fn forced_tokens_follow_the_sample_and_run_as_one_chunk() {
    let mut h = Harness::new(64, true);
    h.add(SamplingParams::default(), 32);
    let prompt_len = h.seq().prompt_len;
    // Prefill, then "a": the rest up to the digit is forced at once.
    let plan = h.step(h.token("a"));
    assert_eq!(plan[0].num_tokens, prompt_len);
    let out_len = h.seq().output().len();
    let forced = h.s.num_forced_tokens as usize;
    assert!(forced >= 2, "forced {forced}");
    assert_eq!(out_len, 1 + forced);
    let text = h.tok.decode(h.seq().output(), true).unwrap();
    assert!(
        "a-fixed-text-".starts_with(&text) && text.len() > 1,
        "{text:?}"
    );
    // The next step computes the sampled token and every forced one in one chunk.
    let plan = h.step(h.token("7"));
    assert_eq!(plan[0].num_tokens, 1 + forced);
    let seq = h.seq();
    let text = h.tok.decode(seq.output(), true).unwrap();
    // llguidance may leave the last forced piece to the model (it could merge with what
    // follows): then the model's token completes it here.
    if seq.is_finished() {
        assert_eq!(text, "a-fixed-text-7");
        assert_eq!(seq.finish_reason, Some(FinishReason::Stop));
    }
    assert_eq!(h.s.num_split_output_steps, 0);
    assert_eq!(h.s.forced_steps_saved(), h.s.num_forced_tokens);
}

#[test]
fn without_jump_forward_every_token_is_sampled() {
    let mut h = Harness::new(64, false);
    h.add(SamplingParams::default(), 32);
    h.step(h.token("a"));
    assert_eq!(h.seq().output().len(), 1);
    let plan = h.step(h.token("-"));
    assert_eq!(plan[0].num_tokens, 1);
    assert_eq!(h.s.num_forced_tokens, 0);
}

#[test]
fn requests_with_logprobs_sample_every_token() {
    let mut h = Harness::new(64, true);
    // Host sampling from logits rows: one row of `vocab` floats per sampled token.
    let params = SamplingParams {
        logprobs: Some(1),
        ..Default::default()
    };
    h.add(params, 32);
    let a = h.token("a");
    let plan = h.s.schedule(&mut h.kv);
    let mut row = vec![0.0f32; h.tok.vocab_size()];
    row[a as usize] = 10.0;
    let out = StepOutput {
        plan: &plan,
        logits: &row,
        tokens: None,
        vocab: row.len(),
    };
    let ctx = UpdateContext {
        tokenizer: &h.tok,
        eos_token_ids: &[EOS],
        defer_text: false,
        jump_forward: true,
    };
    assert!(h.s.update(&mut h.kv, out, &ctx).is_empty());
    assert_eq!(h.seq().output(), [a]);
    assert_eq!(h.seq().logprobs.len(), 1);
    assert_eq!(h.s.num_forced_tokens, 0);
}

#[test]
fn max_tokens_cuts_inside_a_forced_run() {
    let mut h = Harness::new(64, true);
    h.add(SamplingParams::default(), 3);
    h.step(h.token("a"));
    let seq = h.seq();
    assert_eq!(seq.output().len(), 3);
    assert_eq!(seq.finish_reason, Some(FinishReason::Length));
    assert_eq!(h.s.num_forced_tokens, 2);
}

#[test]
fn a_stop_string_cuts_inside_a_forced_run() {
    let mut h = Harness::new(64, true);
    let params = SamplingParams {
        stop: vec!["fix".into()],
        ..Default::default()
    };
    h.add(params, 32);
    h.step(h.token("a"));
    let seq = h.seq();
    assert_eq!(seq.finish_reason, Some(FinishReason::Stop));
    assert_eq!(seq.text, "a-");
    // No token past the one that completed the stop string.
    let text = h.tok.decode(seq.output(), true).unwrap();
    let before_last = h.tok.decode(&seq.output()[..seq.output().len() - 1], true);
    assert!(text.contains("fix") && !before_last.unwrap().contains("fix"));
}

#[test]
fn a_forced_run_longer_than_the_budget_is_split_and_counted() {
    // A budget of 3 rows: prefill in chunks, then the forced run over several steps.
    let mut h = Harness::new(3, true);
    h.add(SamplingParams::default(), 32);
    let a = h.token("a");
    while h.seq().output().is_empty() {
        h.step(a);
    }
    let forced = h.s.num_forced_tokens;
    let pending = h.seq().num_tokens() - h.seq().num_computed;
    assert_eq!(pending as u64, 1 + forced);
    assert!(pending > 3, "the run fits one step: {pending}");
    let seven = h.token("7");
    let mut steps = 0;
    while h.seq().num_computed + 3 < h.seq().num_tokens() {
        h.step(seven);
        steps += 1;
    }
    h.step(seven);
    assert_eq!(h.s.num_split_output_steps, steps);
    assert_eq!(h.s.forced_steps_saved(), forced - steps);
    assert!(h.seq().output().len() as u64 > 1 + forced);
}
