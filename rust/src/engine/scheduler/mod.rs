//! Continuous batching: which sequences run in the next step, and how many of their tokens.
//!
//! Each step has a budget of `max_num_batched_tokens` rows. Running sequences are served
//! first, oldest first: a decoding sequence takes one row, a sequence still in prefill takes
//! the next chunk of its prompt (chunked prefill mixes into decode steps). Waiting sequences
//! are then admitted in (priority, arrival) order while the budget, `max_num_seqs` and the KV
//! blocks allow, reusing cached prefix blocks. When a running sequence cannot get a block, the
//! lowest-priority, newest running sequence is preempted: its blocks are freed and it goes
//! back to the waiting queue to be recomputed later. A step's outcome comes back through
//! [`Scheduler::update`] (`update.rs`), which advances the sequences and seals their full
//! blocks into the prefix cache.
//!
//! Traffic classes: a sequence whose priority is at least `BATCH_PRIORITY / 2` is batch work
//! (the server offsets batch requests by [`BATCH_PRIORITY`]), any other interactive. Running
//! interactive sequences are served before running batch ones; an interactive sequence that
//! cannot be admitted for lack of blocks preempts running batch sequences (counted in
//! `num_batch_preemptions`); and while batch work exists, interactive work takes at most
//! `1 - batch_min_share` of a step's rows, so that batch work is never starved
//! (`step_budget.rs`, `admit.rs`).

mod admit;
mod jump_forward;
mod step_budget;
mod update;

use std::collections::{HashMap, HashSet, VecDeque};

pub use self::step_budget::{is_batch, BATCH_PRIORITY};
use self::step_budget::{Plan, StepBudget};
pub use self::update::{StepOutput, UpdateContext};
use super::sequence::Sequence;
use crate::kv::BlockManager;

/// Limits of one step.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Most prompt rows per step whose logits are kept for `prompt_logprobs` (they need a
    /// vocabulary-wide row of the logits buffer each).
    pub max_prompt_logprob_rows: usize,
    /// Share of a step's rows that interactive work leaves to batch work while there is any
    /// (so that batch work is never starved).
    pub batch_min_share: f64,
}

/// One sequence's share of a step: `running[seq]` computes its next `num_tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub seq: usize,
    pub num_tokens: usize,
}

/// Waiting and running sequences, and the policy that moves them.
///
/// Invariants: `waiting` is sorted by `(priority, arrival_seq)`; a running sequence's block
/// table covers its computed tokens; a waiting sequence holds no blocks.
pub struct Scheduler {
    config: SchedulerConfig,
    pub waiting: VecDeque<Sequence>,
    pub running: Vec<Sequence>,
    /// Sequences 1..n of requests whose sequence 0 is still in prefill: they start once its
    /// prompt blocks are in the prefix cache, so the prompt is computed once.
    pending_siblings: HashMap<u64, Vec<Sequence>>,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// Batch sequences preempted so that interactive ones could be admitted (also counted in
    /// `num_preemptions`).
    pub num_batch_preemptions: u64,
    /// Tokens appended by jump-forward (forced by a grammar, no forward step of their own).
    pub num_forced_tokens: u64,
    /// Steps in which a constrained sequence computed output tokens without reaching its end (a
    /// forced run split by the step's budget, or a recompute after preemption): each costs back
    /// one step jump-forward saved.
    pub num_split_output_steps: u64,
}

/// Tokens `seq` computes next within `budget` rows; a prefill chunk of a `prompt_logprobs`
/// request also stays within the step's prompt-logprob rows (and takes them).
fn chunk(seq: &Sequence, budget: usize, plp_rows: &mut usize) -> usize {
    let n = (seq.num_tokens() - seq.num_computed).min(budget);
    if seq.params.prompt_logprobs.is_none() {
        return n;
    }
    let rows = prompt_logprob_rows(seq, n);
    if rows <= *plp_rows {
        *plp_rows -= rows;
        return n;
    }
    // Stop the chunk where the rows run out (it may still be 0 this step).
    let n = *plp_rows;
    *plp_rows = 0;
    n
}

/// Rows among the next `n` tokens of `seq` whose logits give a prompt token's log-probability:
/// positions `p < prompt_len - 1` (row `p` predicts prompt token `p + 1`).
pub fn prompt_logprob_rows(seq: &Sequence, n: usize) -> usize {
    let end = (seq.num_computed + n).min(seq.prompt_len.saturating_sub(1));
    end.saturating_sub(seq.num_computed)
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            pending_siblings: HashMap::new(),
            num_preemptions: 0,
            num_batch_preemptions: 0,
            num_forced_tokens: 0,
            num_split_output_steps: 0,
        }
    }

    /// Queues the sequences of one request. With `share_prompt` (prefix caching on), its
    /// sequences after the first wait until the first one's prompt is cached
    /// ([`update`](Self::update)) or it finishes, so that the prompt is computed once.
    pub fn add_request(&mut self, seqs: Vec<Sequence>, share_prompt: bool) {
        let mut seqs = seqs.into_iter();
        let Some(first) = seqs.next() else { return };
        let request_id = first.request_id;
        self.add(first);
        let rest: Vec<Sequence> = seqs.collect();
        if rest.is_empty() {
            return;
        }
        if share_prompt {
            self.pending_siblings.insert(request_id, rest);
        } else {
            rest.into_iter().for_each(|s| self.add(s));
        }
    }

    /// Forward steps jump-forward saved: a step per forced token, less the steps in which
    /// output tokens were computed without a sample (see `num_split_output_steps`).
    pub fn forced_steps_saved(&self) -> u64 {
        self.num_forced_tokens
            .saturating_sub(self.num_split_output_steps)
    }

    /// Lets the held sequences of `request_id` queue up.
    fn release_siblings(&mut self, request_id: u64) {
        if let Some(siblings) = self.pending_siblings.remove(&request_id) {
            siblings.into_iter().for_each(|sib| self.add(sib));
        }
    }

    /// Sequences waiting to run, those held behind their request's first one included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len() + self.pending_siblings.values().map(Vec::len).sum::<usize>()
    }

    /// Queues a sequence in priority order (FCFS among equal priorities).
    pub fn add(&mut self, seq: Sequence) {
        let key = (seq.priority, seq.arrival_seq);
        let at = self
            .waiting
            .partition_point(|s| (s.priority, s.arrival_seq) <= key);
        self.waiting.insert(at, seq);
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty() || !self.pending_siblings.is_empty()
    }

    /// Plans the next step. Allocates KV blocks for every scheduled token; the returned
    /// entries index `running`, in increasing order, which is the batch's row order. Running interactive
    /// sequences are served first, then running batch ones, then waiting sequences are
    /// admitted (`admit.rs`); while batch work exists, interactive work leaves it
    /// `batch_min_share` of the step's rows.
    pub fn schedule(&mut self, kv: &mut BlockManager) -> Vec<Scheduled> {
        let mut step = StepBudget::new(&self.config, self.has_batch_work());
        let mut plan = Plan::default();
        let preemptions_before = self.num_preemptions;
        for batch in [false, true] {
            self.serve_running(kv, &mut step, &mut plan, batch);
        }
        // Admit waiting sequences while there is room; not in a step that had to preempt, which
        // would only take blocks back from the sequences just served.
        if self.num_preemptions == preemptions_before {
            self.admit(kv, &mut step, &mut plan);
        }
        plan.indices(&self.running)
    }

    /// Whether any batch sequence runs or waits.
    fn has_batch_work(&self) -> bool {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .any(|s| is_batch(s.priority))
            || self
                .pending_siblings
                .values()
                .flatten()
                .any(|s| is_batch(s.priority))
    }

    /// Plans the running sequences of one class (`batch` or not), oldest first. When one
    /// cannot get a block, the least important sequence not yet planned is preempted.
    fn serve_running(
        &mut self,
        kv: &mut BlockManager,
        step: &mut StepBudget,
        plan: &mut Plan,
        batch: bool,
    ) {
        let mut i = 0;
        while i < self.running.len() {
            let seq = &self.running[i];
            if is_batch(seq.priority) != batch || plan.has(seq) {
                i += 1;
                continue;
            }
            let cap = step.cap(batch);
            if cap == 0 {
                return;
            }
            let n = chunk(seq, cap, &mut step.plp_rows);
            if n == 0 {
                i += 1;
                continue;
            }
            let need = seq.num_computed + n;
            if kv.allocate(&mut self.running[i].block_table, need) {
                plan.push(&self.running[i], n);
                step.take(batch, n);
                i += 1;
                continue;
            }
            // Out of blocks: preempt the least important sequence not yet planned (batch ones
            // first: their priorities are the largest).
            let victim = (0..self.running.len())
                .filter(|&j| !plan.has(&self.running[j]))
                .max_by_key(|&j| (self.running[j].priority, self.running[j].arrival_seq))
                .unwrap_or(i);
            self.preempt(victim, kv);
            // Planned entries are kept by identity, so removals leave them valid; the sequence
            // at `i` moved down one when the victim was before it, and `i` is retried.
            if victim < i {
                i -= 1;
            }
        }
    }

    /// Frees a running sequence's blocks and sends it back to wait for recompute.
    fn preempt(&mut self, index: usize, kv: &mut BlockManager) {
        let mut seq = self.running.remove(index);
        kv.free(&mut seq.block_table);
        seq.num_computed = 0;
        self.num_preemptions += 1;
        self.add(seq);
    }

    /// Removes finished sequences from `running`, freeing their blocks, and returns them. A
    /// request whose first sequence ended before its siblings started lets them go.
    pub fn take_finished(&mut self, kv: &mut BlockManager) -> Vec<Sequence> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_finished() {
                let mut seq = self.running.remove(i);
                kv.free(&mut seq.block_table);
                done.push(seq);
            } else {
                i += 1;
            }
        }
        for seq in &done {
            self.release_siblings(seq.request_id);
        }
        done
    }

    /// Removes every sequence of the requests in `ids`, freeing their blocks; with
    /// `waiting_only`, only those not running (held siblings included). One pass over the
    /// queues whatever the number of requests, so that a flood of aborts costs what it
    /// removes, not its square.
    pub fn remove_requests(
        &mut self,
        ids: &HashSet<u64>,
        kv: &mut BlockManager,
        waiting_only: bool,
    ) -> Vec<Sequence> {
        let mut out = Vec::new();
        if !waiting_only {
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|s| ids.contains(&s.request_id));
            self.running = rest;
            out.extend(mine);
        }
        if self.waiting.iter().any(|s| ids.contains(&s.request_id)) {
            let (mine, rest): (Vec<_>, Vec<_>) = self
                .waiting
                .drain(..)
                .partition(|s| ids.contains(&s.request_id));
            self.waiting = rest.into();
            out.extend(mine);
        }
        for id in ids {
            out.extend(self.pending_siblings.remove(id).unwrap_or_default());
        }
        for seq in &mut out {
            kv.free(&mut seq.block_table);
        }
        out
    }
}

#[cfg(test)]
#[path = "proptest.rs"]
mod proptests;

#[cfg(test)]
#[path = "class_tests.rs"]
mod class_tests;
