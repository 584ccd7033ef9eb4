//! Randomized workloads against [`BlockManager`]: sequences are admitted with prefix matching,
//! prefilled in chunks, decoded, preempted when blocks run out, and finished or aborted at
//! random points, in a pool small enough that allocation failures and evictions are common.
//!
//! Besides the manager's own invariants, the test keeps every table itself and a shadow of the
//! "KV" each block holds (the token prefix written into it), and checks that reference counts
//! equal table memberships, that no shared or cached block is ever written, and that every
//! prefix hit is a block computed from exactly the looked-up tokens, also under hash functions
//! so weak that most blocks collide.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

/// One step of a workload; indices are taken modulo the number of live sequences.
#[derive(Clone, Debug)]
enum Op {
    /// A new request: `base[..keep]` (a shared system prompt) followed by `tail`.
    Admit {
        base: usize,
        keep: usize,
        tail: Vec<u32>,
    },
    /// One scheduler step for a sequence: re-admit it if preempted, else compute up to `chunk`
    /// more prompt tokens, or decode `token` when the prompt is done.
    Step {
        seq: usize,
        chunk: usize,
        token: u32,
    },
    /// The sequence finishes or is aborted.
    Finish { seq: usize },
    /// `reset_prefix_cache`.
    Reset,
}

/// Tokens come from a tiny vocabulary so that prefixes repeat.
const VOCAB: u32 = 3;

fn op() -> impl Strategy<Value = Op> {
    let tail = prop::collection::vec(0..VOCAB, 1..8);
    prop_oneof![
        3 => (0..3usize, 0..24usize, tail).prop_map(|(base, keep, tail)| Op::Admit { base, keep, tail }),
        8 => (any::<usize>(), 1..12usize, 0..VOCAB).prop_map(|(seq, chunk, token)| Op::Step { seq, chunk, token }),
        2 => any::<usize>().prop_map(|seq| Op::Finish { seq }),
        1 => Just(Op::Reset),
    ]
}

/// A sequence as the scheduler sees it.
struct Seq {
    /// Prompt and output so far.
    tokens: Vec<u32>,
    table: BlockTable,
    /// Tokens whose KV is in the table's blocks.
    computed: usize,
    /// False after preemption: the table is empty and the next step re-admits it.
    admitted: bool,
}

/// The workload driver and its shadow state.
struct Sim {
    m: BlockManager,
    seqs: Vec<Seq>,
    /// Block id -> the token prefix whose KV was last written into it (through its last slot
    /// written).
    shadow: HashMap<u32, Vec<u32>>,
}

impl Sim {
    /// `match_prefix` for `seq`, checking each hit against the shadow KV.
    fn admit(&mut self, i: usize) -> Result<(), TestCaseError> {
        let s = &mut self.seqs[i];
        let cached = self.m.match_prefix(&s.tokens, &mut s.table);
        let bs = self.m.block_size();
        prop_assert_eq!(cached, s.table.len() * bs);
        prop_assert!(cached < s.tokens.len());
        for (k, b) in s.table.iter().enumerate() {
            let want = &s.tokens[..(k + 1) * bs];
            prop_assert_eq!(
                self.shadow.get(b).map(|v| &v[..]),
                Some(want),
                "wrong KV in block {}",
                b
            );
        }
        s.computed = cached;
        s.admitted = true;
        Ok(())
    }

    fn step(&mut self, i: usize, chunk: usize, token: u32) -> Result<(), TestCaseError> {
        if !self.seqs[i].admitted {
            return self.admit(i);
        }
        let bs = self.m.block_size();
        let s = &mut self.seqs[i];
        if s.computed == s.tokens.len() {
            s.tokens.push(token);
        }
        let end = s.computed + chunk.min(s.tokens.len() - s.computed);
        let (before_table, before_free) = (s.table.clone(), self.m.num_free_blocks());
        if !self.m.allocate(&mut s.table, end) {
            prop_assert_eq!(&s.table, &before_table);
            prop_assert_eq!(self.m.num_free_blocks(), before_free);
            // Preemption by recompute.
            self.m.free(&mut s.table);
            s.computed = 0;
            s.admitted = false;
            return Ok(());
        }
        prop_assert_eq!(s.table.len(), self.m.blocks_for(end));
        for k in s.computed / bs..end.div_ceil(bs) {
            let b = s.table[k];
            prop_assert_eq!(self.m.ref_count(b), 1, "writing into shared block {}", b);
            prop_assert!(!self.m.is_cached(b), "writing into cached block {}", b);
            self.shadow
                .insert(b, s.tokens[..end.min((k + 1) * bs)].to_vec());
        }
        s.computed = end;
        self.m.cache_full_blocks(&s.table, &s.tokens, end);
        Ok(())
    }

    /// The manager's invariants, plus reference counts against the tables kept here.
    fn check(&self) -> Result<(), TestCaseError> {
        if let Err(e) = self.m.check_invariants() {
            return Err(TestCaseError::fail(e));
        }
        let mut refs = vec![0u32; self.m.num_blocks()];
        for s in &self.seqs {
            let mut sorted = s.table.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), s.table.len(), "a block twice in one table");
            for &b in &s.table {
                refs[b as usize] += 1;
            }
        }
        for (b, &want) in refs.iter().enumerate() {
            prop_assert_eq!(self.m.ref_count(b as u32), want, "ref count of block {}", b);
        }
        let unreferenced = refs.iter().filter(|&&r| r == 0).count();
        prop_assert_eq!(self.m.num_free_blocks(), unreferenced);
        Ok(())
    }
}

/// Parent-blind, tiny-range hash: most blocks collide.
fn weak_hash(_parent: u64, tokens: &[u32]) -> u64 {
    tokens.iter().map(|&t| t as u64).sum::<u64>() % 3
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_workloads_keep_every_invariant(
        num_blocks in 1..24usize,
        block_size in 1..5usize,
        mode in 0..3u8,
        bases in prop::collection::vec(prop::collection::vec(0..VOCAB, 24), 3),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let m = match mode {
            0 => BlockManager::new(num_blocks, block_size, true),
            1 => BlockManager::with_hasher(num_blocks, block_size, weak_hash),
            _ => BlockManager::new(num_blocks, block_size, false),
        };
        let mut sim = Sim { m, seqs: vec![], shadow: HashMap::new() };
        for op in ops {
            let n = sim.seqs.len();
            match op {
                Op::Admit { base, keep, tail } => {
                    let tokens = [&bases[base][..keep], &tail[..]].concat();
                    let seq = Seq { tokens, table: vec![], computed: 0, admitted: false };
                    sim.seqs.push(seq);
                    sim.admit(n)?;
                }
                Op::Step { seq, chunk, token } if n > 0 => sim.step(seq % n, chunk, token)?,
                Op::Finish { seq } if n > 0 => {
                    let mut s = sim.seqs.swap_remove(seq % n);
                    sim.m.free(&mut s.table);
                }
                Op::Reset => sim.m.reset_prefix_cache(),
                _ => {}
            }
            sim.check()?;
        }
        for s in &mut sim.seqs {
            sim.m.free(&mut s.table);
        }
        sim.seqs.clear();
        sim.check()?;
        prop_assert_eq!(sim.m.num_free_blocks(), num_blocks);
        prop_assert!((0.0..=1.0).contains(&sim.m.hit_rate()));
        if mode == 2 {
            prop_assert_eq!(sim.m.hit_rate(), 0.0);
        }
    }
}
