//! Traffic classes in the scheduler: interactive work takes slots and blocks from batch work,
//! and batch work keeps its share of every step.

use std::sync::Arc;

use super::{Scheduler, SchedulerConfig, BATCH_PRIORITY};
use crate::engine::sequence::Sequence;
use crate::kv::BlockManager;
use crate::sampling::SamplingParams;

fn seq(id: u64, priority: i32, prompt_len: usize) -> Sequence {
    let params = Arc::new(SamplingParams::default());
    Sequence::new(id, 0, priority, id, vec![1; prompt_len], params, 8, 0)
}

fn scheduler(max_num_seqs: usize, max_num_batched_tokens: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens,
        max_prompt_logprob_rows: 0,
        batch_min_share: 0.25,
    })
}

/// Rows each request got in a step.
fn rows(s: &Scheduler, plan: &[super::Scheduled], id: u64) -> usize {
    plan.iter()
        .filter(|p| s.running[p.seq].request_id == id)
        .map(|p| p.num_tokens)
        .sum()
}

#[test]
fn interactive_work_takes_a_slot_from_batch_work() {
    let mut kv = BlockManager::new(64, 4, false);
    let mut s = scheduler(2, 64);
    s.add(seq(0, BATCH_PRIORITY, 4));
    s.add(seq(1, BATCH_PRIORITY, 4));
    assert_eq!(s.schedule(&mut kv).len(), 2);
    s.add(seq(2, 0, 4));
    let plan = s.schedule(&mut kv);
    assert_eq!(rows(&s, &plan, 2), 4, "the interactive prompt runs at once");
    assert_eq!(s.num_batch_preemptions, 1);
    assert_eq!(s.running.len(), 2);
    // The newest batch sequence went back to wait, holding no blocks.
    assert_eq!(s.waiting.len(), 1);
    assert_eq!(s.waiting[0].request_id, 1);
    assert!(s.waiting[0].block_table.is_empty());
}

#[test]
fn interactive_work_takes_blocks_from_batch_work() {
    // 4 blocks of 4 tokens: the batch prompt holds 3 of them.
    let mut kv = BlockManager::new(4, 4, false);
    let mut s = scheduler(8, 64);
    s.add(seq(0, BATCH_PRIORITY, 12));
    s.schedule(&mut kv);
    s.add(seq(1, 0, 8));
    let plan = s.schedule(&mut kv);
    assert_eq!(rows(&s, &plan, 1), 8);
    assert_eq!(s.num_batch_preemptions, 1);
    // Batch work never preempts interactive work: it waits.
    s.add(seq(2, BATCH_PRIORITY, 12));
    s.schedule(&mut kv);
    assert_eq!(s.num_batch_preemptions, 1);
    assert!(s.running.iter().any(|q| q.request_id == 1));
}

#[test]
fn batch_work_keeps_its_share_of_every_step() {
    let mut kv = BlockManager::new(256, 4, false);
    let mut s = scheduler(8, 16);
    // Long interactive prompts would take every row of every step...
    s.add(seq(0, 0, 200));
    s.add(seq(1, BATCH_PRIORITY, 40));
    for _ in 0..3 {
        let plan = s.schedule(&mut kv);
        // ...but 25% of the 16 rows stay for the batch prompt.
        assert_eq!(rows(&s, &plan, 0), 12);
        assert_eq!(rows(&s, &plan, 1), 4);
        for p in &plan {
            s.running[p.seq].num_computed += p.num_tokens;
        }
    }
    // Without batch work, interactive work has every row.
    let mut s = scheduler(8, 16);
    s.add(seq(0, 0, 200));
    let plan = s.schedule(&mut kv);
    assert_eq!(rows(&s, &plan, 0), 16);
}
