//! Scheduler overhead: one `Scheduler::schedule` call with 256 running decoding sequences
//! (target < 50 µs), and with 256 sequences arriving at once (admission with prefix lookups).
//!
//! Run: `cargo bench --bench scheduler [-- --json PATH]`. Prints a table; with `--json`,
//! writes the figures there too. Only the scheduler and the block manager run: no model.

use std::sync::Arc;
use std::time::Instant;

use infire::engine::{Scheduler, SchedulerConfig, Sequence};
use infire::kv::BlockManager;
use infire::sampling::SamplingParams;

const SEQS: usize = 256;
const PROMPT: usize = 200;
const BLOCK: usize = 16;
const STEPS: usize = 2000;

fn main() {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let mut kv = BlockManager::new(SEQS * (PROMPT + STEPS + 64) / BLOCK, BLOCK, true);
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_seqs: SEQS,
        max_num_batched_tokens: SEQS * PROMPT + SEQS,
        max_prompt_logprob_rows: 0,
        batch_min_share: 0.1,
    });
    let params = Arc::new(SamplingParams {
        max_tokens: None,
        ..Default::default()
    });
    for i in 0..SEQS {
        // Half the prompts share a 128-token prefix, so admission exercises prefix hits too.
        let prompt: Vec<u32> = (0..PROMPT)
            .map(|t| {
                if t < 128 && i % 2 == 0 {
                    t as u32
                } else {
                    (i * 7919 + t) as u32 % 49152
                }
            })
            .collect();
        sched.add(Sequence::new(
            i as u64,
            0,
            0,
            i as u64,
            prompt,
            params.clone(),
            1 << 20,
            i as u64,
        ));
    }
    let t = Instant::now();
    let plan = sched.schedule(&mut kv);
    let admit_us = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(plan.len(), SEQS, "every sequence is admitted in one step");
    complete(&mut sched, &mut kv, &plan);

    let mut times = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let t = Instant::now();
        let plan = sched.schedule(&mut kv);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(plan.len(), SEQS);
        complete(&mut sched, &mut kv, &plan);
    }
    times.sort_by(f64::total_cmp);
    let p50 = times[STEPS / 2];
    let p99 = times[STEPS * 99 / 100];
    let mean = times.iter().sum::<f64>() / STEPS as f64;
    println!("| scheduler, {SEQS} sequences | µs |");
    println!("| --- | --- |");
    println!("| admission of {SEQS} prompts of {PROMPT} tokens | {admit_us:.1} |");
    println!("| decode step: mean | {mean:.1} |");
    println!("| decode step: p50 | {p50:.1} |");
    println!("| decode step: p99 | {p99:.1} (target < 50) |");
    if let Some(path) = json_path {
        let json = format!(
            "{{\"bench\": \"scheduler\", \"sequences\": {SEQS}, \"admission_us\": {admit_us:.2}, \
             \"decode_mean_us\": {mean:.2}, \"decode_p50_us\": {p50:.2}, \"decode_p99_us\": {p99:.2}, \
             \"command\": \"cargo bench --bench scheduler\"}}\n"
        );
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {path}: {e}");
        }
    }
}

/// Marks the planned tokens computed and, where a sequence reached its end, appends a token,
/// as the engine does after the forward pass.
fn complete(sched: &mut Scheduler, kv: &mut BlockManager, plan: &[infire::engine::Scheduled]) {
    for s in plan {
        let seq = &mut sched.running[s.seq];
        seq.num_computed += s.num_tokens;
        kv.cache_full_blocks(&seq.block_table, &seq.tokens, seq.num_computed);
        if seq.num_computed == seq.num_tokens() {
            let next = seq.tokens.len() as u32 % 49152;
            seq.tokens.push(next);
        }
    }
}
