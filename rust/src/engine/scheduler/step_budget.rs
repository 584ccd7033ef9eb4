//! One step's row budget split by traffic class, and the plan being built, kept by sequence
//! identity so that preemptions while it is built leave it valid.

use std::collections::{HashMap, HashSet};

use super::{Scheduled, SchedulerConfig};
use crate::engine::sequence::Sequence;

/// The priority offset of batch requests: a sequence whose priority is at least half of it is
/// batch work.
pub const BATCH_PRIORITY: i32 = 1 << 24;

/// Whether a sequence of `priority` is batch work.
pub fn is_batch(priority: i32) -> bool {
    priority >= BATCH_PRIORITY / 2
}

/// Rows left in the step, in all and for interactive work.
pub(super) struct StepBudget {
    left: usize,
    interactive_left: usize,
    /// Prompt-logprob rows left.
    pub plp_rows: usize,
}

impl StepBudget {
    /// A step's budget; with `batch_work`, interactive work leaves `batch_min_share` of the
    /// rows (rounded up) to batch work.
    pub fn new(config: &SchedulerConfig, batch_work: bool) -> Self {
        let total = config.max_num_batched_tokens;
        let share = config.batch_min_share.clamp(0.0, 1.0);
        let reserve = if batch_work {
            ((total as f64 * share).ceil() as usize).min(total)
        } else {
            0
        };
        StepBudget {
            left: total,
            // At least one row: a step whose batch work cannot be admitted (no blocks) still
            // moves the interactive work that holds them.
            interactive_left: (total - reserve).max(total.min(1)),
            plp_rows: config.max_prompt_logprob_rows,
        }
    }

    /// Rows a sequence of this class may still take.
    pub fn cap(&self, batch: bool) -> usize {
        if batch {
            self.left
        } else {
            self.left.min(self.interactive_left)
        }
    }

    pub fn take(&mut self, batch: bool, n: usize) {
        self.left -= n;
        if !batch {
            self.interactive_left -= n;
        }
    }

    pub fn give_back(&mut self, batch: bool, n: usize) {
        self.left += n;
        if !batch {
            self.interactive_left += n;
        }
    }
}

/// A sequence's identity within the scheduler.
type SeqKey = (u64, usize);

fn key(seq: &Sequence) -> SeqKey {
    (seq.request_id, seq.index)
}

/// The step's plan, by sequence identity.
#[derive(Default)]
pub(super) struct Plan {
    rows: Vec<(SeqKey, usize)>,
    planned: HashSet<SeqKey>,
}

impl Plan {
    pub fn has(&self, seq: &Sequence) -> bool {
        self.planned.contains(&key(seq))
    }

    pub fn push(&mut self, seq: &Sequence, n: usize) {
        self.rows.push((key(seq), n));
        self.planned.insert(key(seq));
    }

    /// Takes `seq` out of the plan; returns the rows it had.
    pub fn remove(&mut self, seq: &Sequence) -> Option<usize> {
        let k = key(seq);
        self.planned.remove(&k).then_some(())?;
        let at = self.rows.iter().position(|(r, _)| *r == k)?;
        Some(self.rows.remove(at).1)
    }

    /// The plan as indices into `running`, in increasing order: the batch's rows follow it,
    /// and `Scheduler::update` pairs its samples with `running` in one ordered pass.
    pub fn indices(self, running: &[Sequence]) -> Vec<Scheduled> {
        let at: HashMap<SeqKey, usize> = running
            .iter()
            .enumerate()
            .map(|(i, s)| (key(s), i))
            .collect();
        let mut plan: Vec<Scheduled> = self
            .rows
            .into_iter()
            .map(|(k, n)| Scheduled {
                seq: at[&k],
                num_tokens: n,
            })
            .collect();
        plan.sort_unstable_by_key(|s| s.seq);
        plan
    }
}
