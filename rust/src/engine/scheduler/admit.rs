//! Admission of waiting sequences: in (priority, arrival) order while the step's rows (by
//! class), `max_num_seqs` and the KV blocks allow, reusing cached prefix blocks; an interactive
//! sequence short of blocks or of a sequence slot takes them from running batch sequences.

use super::step_budget::{is_batch, Plan, StepBudget};
use super::{chunk, Scheduler};
use crate::engine::sequence::now_s;
use crate::kv::BlockManager;

impl Scheduler {
    /// Admits waiting sequences into `plan` (see the module docs).
    pub(super) fn admit(&mut self, kv: &mut BlockManager, step: &mut StepBudget, plan: &mut Plan) {
        // The first waiting sequence whose class has rows left (interactive ones come first in
        // the queue's order).
        while let Some(w) = self
            .waiting
            .iter()
            .position(|s| step.cap(is_batch(s.priority)) > 0)
        {
            let batch = is_batch(self.waiting[w].priority);
            if self.running.len() >= self.config.max_num_seqs {
                // Every slot is taken: an interactive sequence takes one from batch work.
                if batch || !self.preempt_batch(kv, step, plan) {
                    break;
                }
                continue;
            }
            let seq = &mut self.waiting[w];
            // Prompt log-probabilities need every prompt row computed, so no cache hits.
            let cached = if seq.params.prompt_logprobs.is_some() {
                0
            } else {
                kv.match_prefix(&seq.tokens, &mut seq.block_table)
            };
            seq.num_computed = cached;
            let mut rows_left = step.plp_rows;
            let n = chunk(seq, step.cap(batch), &mut rows_left);
            if n == 0 || !kv.allocate(&mut seq.block_table, cached + n) {
                kv.free(&mut seq.block_table);
                seq.num_computed = 0;
                if n > 0 && !batch && self.preempt_batch(kv, step, plan) {
                    continue;
                }
                break;
            }
            step.plp_rows = rows_left;
            if !seq.was_admitted {
                seq.num_cached_tokens = cached;
                seq.was_admitted = true;
                seq.scheduled_time = Some(now_s());
            }
            step.take(batch, n);
            plan.push(seq, n);
            if let Some(seq) = self.waiting.remove(w) {
                self.running.push(seq);
            }
        }
    }

    /// Preempts the least important running batch sequence (taking it out of this step's plan
    /// if it was in it) so that an interactive one can have its blocks; `false` when no batch
    /// sequence runs.
    fn preempt_batch(
        &mut self,
        kv: &mut BlockManager,
        step: &mut StepBudget,
        plan: &mut Plan,
    ) -> bool {
        let victim = (0..self.running.len())
            .filter(|&j| is_batch(self.running[j].priority))
            .max_by_key(|&j| (self.running[j].priority, self.running[j].arrival_seq));
        let Some(victim) = victim else {
            return false;
        };
        if let Some(n) = plan.remove(&self.running[victim]) {
            step.give_back(true, n);
        }
        self.preempt(victim, kv);
        self.num_batch_preemptions += 1;
        true
    }
}
