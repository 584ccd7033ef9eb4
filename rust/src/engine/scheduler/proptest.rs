//! Property test of the scheduler and the block manager together: random arrivals, steps,
//! completions and aborts on a small KV cache (so preemption and eviction happen), checking
//! after every operation that no block is both free and in use, that reference counts equal
//! table references, that waiting sequences hold no blocks, and that nothing leaks at the end.

use std::sync::Arc;

use proptest::prelude::*;

use super::{Scheduler, SchedulerConfig, StepOutput, UpdateContext};
use crate::engine::sequence::Sequence;
use crate::kv::BlockManager;
use crate::sampling::SamplingParams;
use crate::tokenizer::test_vocab::gpt2_metadata;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
enum Op {
    Add {
        prompt: Vec<u32>,
        max_new: usize,
        priority: i32,
    },
    Step,
    Abort(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Priority 3 stands for batch work (preempted for interactive work, kept a share).
        2 => (proptest::collection::vec(0u32..3, 1..24), 1usize..12, 0i32..4)
            .prop_map(|(prompt, max_new, p)| Op::Add {
                prompt,
                max_new,
                priority: if p == 3 { super::BATCH_PRIORITY } else { p },
            }),
        5 => Just(Op::Step),
        1 => (0u64..16).prop_map(Op::Abort),
    ]
}

fn check(s: &Scheduler, kv: &BlockManager) -> Result<(), TestCaseError> {
    kv.check_invariants().map_err(TestCaseError::fail)?;
    for seq in &s.waiting {
        prop_assert!(seq.block_table.is_empty(), "waiting sequence holds blocks");
    }
    let mut refs = vec![0u32; kv.num_blocks()];
    for seq in &s.running {
        prop_assert!(seq.block_table.len() * kv.block_size() >= seq.num_computed);
        for &b in &seq.block_table {
            refs[b as usize] += 1;
        }
    }
    for (b, &r) in refs.iter().enumerate() {
        prop_assert_eq!(kv.ref_count(b as u32), r, "block {}", b);
    }
    let used = refs.iter().filter(|&&r| r > 0).count();
    prop_assert_eq!(kv.num_free_blocks(), kv.num_blocks() - used);
    Ok(())
}

/// One engine step without a model: schedule, then apply the step through
/// [`Scheduler::update`] with a token for every sequence that reached its end, and take the
/// finished sequences out.
fn step(s: &mut Scheduler, kv: &mut BlockManager, tok: &Tokenizer) -> Result<(), TestCaseError> {
    let plan = s.schedule(kv);
    if !s.running.is_empty() {
        prop_assert!(!plan.is_empty(), "running sequences but nothing scheduled");
    }
    prop_assert!(
        plan.windows(2).all(|w| w[0].seq < w[1].seq),
        "the plan is in increasing order of running sequences"
    );
    // A token for each sequence whose last token the step computes, in plan order.
    let tokens: Vec<u32> = plan
        .iter()
        .map(|p| &s.running[p.seq])
        .zip(&plan)
        .filter(|(seq, p)| seq.num_computed + p.num_tokens == seq.num_tokens())
        .map(|(seq, _)| (seq.tokens.len() % 3) as u32)
        .collect();
    let out = StepOutput {
        plan: &plan,
        logits: &[],
        tokens: Some(&tokens),
        vocab: 1,
    };
    let ctx = UpdateContext {
        tokenizer: tok,
        eos_token_ids: &[],
        defer_text: true,
        jump_forward: true,
    };
    let errors = s.update(kv, out, &ctx);
    prop_assert!(errors.is_empty());
    s.take_finished(kv);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn scheduler_keeps_kv_accounting_exact(
        ops in proptest::collection::vec(op(), 1..120),
        num_blocks in 10usize..24,
        block_size in 1usize..5,
        budget in 1usize..24,
        max_num_seqs in 1usize..6,
        caching in any::<bool>(),
    ) {
        let mut kv = BlockManager::new(num_blocks, block_size, caching);
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: budget,
            max_prompt_logprob_rows: 8,
            batch_min_share: 0.1,
        });
        let params = Arc::new(SamplingParams::default());
        let tok = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Add { prompt, max_new, priority } => {
                    // As RequestLimits::check: a request must fit the whole cache alone.
                    if prompt.len() + max_new <= num_blocks * block_size {
                        let seq = Sequence::new(
                            next_id, 0, priority, next_id, prompt, params.clone(), max_new, 0,
                        );
                        s.add(seq);
                        next_id += 1;
                    }
                }
                Op::Step => step(&mut s, &mut kv, &tok)?,
                Op::Abort(id) => {
                    s.remove_requests(&[id].into(), &mut kv, false);
                }
            }
            check(&s, &kv)?;
        }
        // Everything eventually finishes: keep stepping (bounded), then nothing may leak.
        for _ in 0..10_000 {
            if !s.has_work() {
                break;
            }
            step(&mut s, &mut kv, &tok)?;
            check(&s, &kv)?;
        }
        prop_assert!(!s.has_work(), "work left after 10000 steps: starvation or livelock");
        prop_assert_eq!(kv.num_free_blocks(), num_blocks);
    }
}

/// A batch of aborts removes exactly its requests from every queue (running, waiting, held
/// siblings), frees their blocks, and leaves the others in their order.
#[test]
fn remove_requests_takes_exactly_its_requests_in_one_pass() {
    let mut kv = BlockManager::new(64, 4, true);
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_seqs: 2,
        max_num_batched_tokens: 64,
        max_prompt_logprob_rows: 8,
        batch_min_share: 0.1,
    });
    let params = Arc::new(SamplingParams {
        n: 2,
        ..SamplingParams::default()
    });
    for id in 0..6u64 {
        let seqs = (0..2)
            .map(|i| {
                Sequence::new(
                    id,
                    i,
                    0,
                    2 * id + i as u64,
                    vec![id as u32; 9],
                    params.clone(),
                    4,
                    0,
                )
            })
            .collect();
        s.add_request(seqs, true);
    }
    s.schedule(&mut kv); // requests 0 and 1 run; 2..5 wait; every second sequence is held
    assert_eq!(s.running.len(), 2);
    let gone = s.remove_requests(&[1, 3, 5].into(), &mut kv, false);
    let mut ids: Vec<u64> = gone.iter().map(|q| q.request_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 1, 3, 3, 5, 5]);
    assert!(gone.iter().all(|q| q.block_table.is_empty()));
    let running: Vec<u64> = s.running.iter().map(|q| q.request_id).collect();
    let waiting: Vec<u64> = s.waiting.iter().map(|q| q.request_id).collect();
    assert_eq!((running, waiting), (vec![0], vec![2, 4]));
    assert_eq!(s.num_waiting(), 2 + 3); // and the held siblings of 0, 2 and 4
    kv.check_invariants().unwrap();
}
