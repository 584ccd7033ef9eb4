//! Benchmark of the KV block manager (`infire::kv::BlockManager`): the per-sequence calls the
//! scheduler makes every step, on pools of growing size, to show that their cost depends on
//! the blocks a call touches and not on the size of the pool.
//!
//! Run: `cargo bench --bench kv_block_manager -- [--quick] [--json PATH]`.
//!
//! Workload per pool size: 256 sequences, each a 1,024-token system prompt shared by all plus
//! 1,000 tokens of its own, block size 16. Phases, each timed separately:
//! - `admit`: `match_prefix` + `allocate` + `cache_full_blocks` of the whole prompt (the first
//!   sequence computes the shared prompt, the rest hit 64 cached blocks);
//! - `decode`: per sequence and step, append a token, `allocate` and `cache_full_blocks` (one
//!   block in 16 fills up and is hashed);
//! - `free`: `free` of every table (their blocks become cached free blocks);
//! - `readmit`: the same prompts again, now all served from freed cached blocks (each hit is
//!   taken out of the middle of the free queue).

use std::time::Instant;

use infire::kv::{BlockManager, BlockTable};

/// Tokens per block.
const BLOCK_SIZE: usize = 16;
/// Concurrent sequences.
const SEQS: usize = 256;
/// Tokens of the system prompt every sequence starts with.
const SHARED: usize = 1024;
/// Tokens of each sequence's own prompt part.
const OWN: usize = 1000;

/// A deterministic pseudo-random token stream (xorshift), so that runs compare.
fn tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 50_000) as u32
        })
        .collect()
}

/// Nanoseconds per unit of `f`'s work.
fn time_per(units: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64 / units as f64
}

/// Runs the workload on a pool of `num_blocks` blocks; returns ns per admission, per decode
/// call pair, per freed block and per re-admission.
fn run(num_blocks: usize, decode_steps: usize) -> [f64; 4] {
    let mut m = BlockManager::new(num_blocks, BLOCK_SIZE, true);
    let shared = tokens(0, SHARED);
    let mut seqs: Vec<(Vec<u32>, BlockTable)> = (0..SEQS)
        .map(|i| ([&shared[..], &tokens(i as u64 + 1, OWN)].concat(), vec![]))
        .collect();
    let admit = |m: &mut BlockManager, seqs: &mut [(Vec<u32>, BlockTable)]| {
        for (toks, table) in seqs.iter_mut() {
            m.match_prefix(toks, table);
            assert!(m.allocate(table, toks.len()), "pool too small");
            m.cache_full_blocks(table, toks, toks.len());
        }
    };
    let admit_ns = time_per(SEQS, || admit(&mut m, &mut seqs));
    let decode_ns = time_per(SEQS * decode_steps, || {
        for step in 0..decode_steps {
            for (toks, table) in seqs.iter_mut() {
                toks.push(step as u32);
                assert!(m.allocate(table, toks.len()), "pool too small");
                m.cache_full_blocks(table, toks, toks.len());
            }
        }
    });
    let blocks: usize = seqs.iter().map(|(_, t)| t.len()).sum();
    let free_ns = time_per(blocks, || {
        for (_, table) in seqs.iter_mut() {
            m.free(table);
        }
    });
    let readmit_ns = time_per(SEQS, || admit(&mut m, &mut seqs));
    assert!(m.check_invariants().is_ok());
    [admit_ns, decode_ns, free_ns, readmit_ns]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    let decode_steps = if quick { 64 } else { 512 };
    let mut json = Vec::new();
    println!("block manager, {SEQS} seqs x ({SHARED} shared + {OWN} own) tokens, block {BLOCK_SIZE}, {decode_steps} decode steps");
    println!(
        "{:>10} {:>14} {:>18} {:>14} {:>16}",
        "blocks", "admit us/seq", "decode ns/seq-step", "free ns/block", "readmit us/seq"
    );
    for num_blocks in [1 << 16, 1 << 18, 1 << 20] {
        let [admit, decode, free, readmit] = run(num_blocks, decode_steps);
        println!(
            "{num_blocks:>10} {:>14.2} {decode:>18.1} {free:>14.1} {:>16.2}",
            admit / 1e3,
            readmit / 1e3
        );
        json.push(format!(
            "  {{\"num_blocks\": {num_blocks}, \"block_size\": {BLOCK_SIZE}, \"seqs\": {SEQS}, \
             \"decode_steps\": {decode_steps}, \"admit_ns_per_seq\": {admit:.0}, \
             \"decode_ns_per_seq_step\": {decode:.1}, \"free_ns_per_block\": {free:.1}, \
             \"readmit_ns_per_seq\": {readmit:.0}}}"
        ));
    }
    if let Some(path) = json_path {
        let text = format!("[\n{}\n]\n", json.join(",\n"));
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
