//! Unit tests of [`BlockManager`]; the randomized workload test is in `block_manager_proptest.rs`.

use super::*;

/// `n` distinct tokens starting at `from`.
fn toks(from: u32, n: usize) -> Vec<u32> {
    (from..from + n as u32).collect()
}

/// Admits `tokens` the way the scheduler does (match, allocate the rest, compute all of it,
/// cache the full blocks); returns the table and the number of cached tokens.
fn run_prompt(m: &mut BlockManager, tokens: &[u32]) -> (BlockTable, usize) {
    let mut table = BlockTable::new();
    let cached = m.match_prefix(tokens, &mut table);
    assert!(m.allocate(&mut table, tokens.len()));
    m.cache_full_blocks(&table, tokens, tokens.len());
    m.check_invariants().unwrap();
    (table, cached)
}

#[test]
fn allocate_and_free_account_for_every_block() {
    let mut m = BlockManager::new(8, 16, true);
    let (mut a, mut b) = (BlockTable::new(), BlockTable::new());
    assert!(m.allocate(&mut a, 17));
    assert_eq!(a.len(), 2);
    assert!(m.allocate(&mut a, 32));
    assert_eq!(a.len(), 2);
    assert!(m.allocate(&mut b, 16 * 6));
    assert_eq!(m.num_free_blocks(), 0);
    let mut all: Vec<u32> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(all, toks(0, 8));
    m.check_invariants().unwrap();
    m.free(&mut a);
    m.free(&mut b);
    assert!(a.is_empty() && b.is_empty());
    assert_eq!(m.num_free_blocks(), 8);
    m.check_invariants().unwrap();
}

#[test]
fn failed_allocate_changes_nothing() {
    let mut m = BlockManager::new(4, 4, true);
    let (mut a, _) = run_prompt(&mut m, &toks(0, 8));
    m.free(&mut a); // Two cached free blocks, two plain ones.
    let mut b = vec![];
    assert!(m.allocate(&mut b, 4));
    assert!(!m.allocate(&mut b, 4 * 5));
    assert_eq!(b.len(), 1);
    assert_eq!(m.num_free_blocks(), 3);
    // Nothing was evicted either: the cached prefix is still there.
    let mut c = vec![];
    assert_eq!(m.match_prefix(&toks(0, 9), &mut c), 8);
    m.check_invariants().unwrap();
}

#[test]
fn shared_200_token_prefix_gives_12_cached_blocks() {
    let mut m = BlockManager::new(64, 16, true);
    let shared = toks(0, 200);
    let (a, cached_a) = run_prompt(&mut m, &[shared.clone(), toks(1000, 30)].concat());
    assert_eq!(cached_a, 0);
    let (b, cached_b) = run_prompt(&mut m, &[shared, toks(2000, 5)].concat());
    assert_eq!(cached_b, 192);
    assert_eq!(b[..12], a[..12]);
    assert!(b[12..].iter().all(|x| !a.contains(x)));
    assert!(a[..12].iter().all(|&x| m.ref_count(x) == 2));
}

#[test]
fn prompt_of_whole_blocks_leaves_the_last_block_to_compute() {
    let mut m = BlockManager::new(64, 16, true);
    let prompt = toks(0, 208);
    let (a, _) = run_prompt(&mut m, &prompt);
    let (b, cached) = run_prompt(&mut m, &prompt);
    assert_eq!(cached, 192);
    assert_eq!(b.len(), 13);
    assert_ne!(b[12], a[12]);
    // One token is a special case of the same rule: nothing can be served.
    assert_eq!(m.match_prefix(&prompt[..1], &mut vec![]), 0);
    assert_eq!(m.match_prefix(&[], &mut vec![]), 0);
}

#[test]
fn freed_cached_blocks_are_revived_by_a_hit() {
    let mut m = BlockManager::new(32, 16, true);
    let prompt = toks(0, 100);
    let (mut a, _) = run_prompt(&mut m, &prompt);
    let head = a[..6].to_vec();
    m.free(&mut a);
    assert_eq!(m.num_free_blocks(), 32);
    let mut b = vec![];
    assert_eq!(m.match_prefix(&prompt, &mut b), 96);
    assert_eq!(b, head);
    assert_eq!(m.num_free_blocks(), 26);
    m.check_invariants().unwrap();
}

#[test]
fn eviction_takes_plain_blocks_first_then_least_recently_freed_tails_first() {
    let mut m = BlockManager::new(6, 2, true);
    let (pa, pb) = (toks(0, 6), toks(100, 6));
    let (mut a, _) = run_prompt(&mut m, &pa);
    let (mut b, _) = run_prompt(&mut m, &pb);
    let (a_blocks, b_blocks) = (a.clone(), b.clone());
    m.free(&mut a);
    m.free(&mut b);
    // A hit makes A's head the most recently used.
    let mut a2 = vec![];
    assert_eq!(m.match_prefix(&pa[..3], &mut a2), 2);
    m.free(&mut a2);
    let expected = [
        a_blocks[2],
        a_blocks[1],
        b_blocks[2],
        b_blocks[1],
        b_blocks[0],
        a_blocks[0],
    ];
    for &victim in &expected {
        assert!(m.is_cached(victim));
        let mut t = vec![];
        assert!(m.allocate(&mut t, 1));
        assert_eq!(t, [victim]);
        assert!(!m.is_cached(victim));
        m.check_invariants().unwrap();
    }
}

#[test]
fn plain_free_blocks_are_used_before_cached_ones() {
    let mut m = BlockManager::new(4, 2, true);
    let (mut a, _) = run_prompt(&mut m, &toks(0, 4));
    m.free(&mut a);
    let mut t = vec![];
    assert!(m.allocate(&mut t, 4));
    assert_eq!(m.match_prefix(&toks(0, 5), &mut vec![]), 4);
}

#[test]
fn caching_off_never_hits() {
    let mut m = BlockManager::new(16, 4, false);
    let prompt = toks(0, 20);
    let (mut a, _) = run_prompt(&mut m, &prompt);
    let (b, cached) = run_prompt(&mut m, &prompt);
    assert_eq!(cached, 0);
    assert!(b.iter().all(|x| !a.contains(x)));
    m.free(&mut a);
    assert_eq!(m.match_prefix(&prompt, &mut vec![]), 0);
    assert_eq!(m.hit_rate(), 0.0);
    m.reset_prefix_cache();
    m.check_invariants().unwrap();
}

#[test]
fn hit_rate_counts_tokens_looked_up_and_served() {
    let mut m = BlockManager::new(16, 16, true);
    assert_eq!(m.hit_rate(), 0.0);
    let prompt = toks(0, 40);
    run_prompt(&mut m, &prompt);
    assert_eq!(m.hit_rate(), 0.0);
    run_prompt(&mut m, &prompt);
    assert_eq!(m.hit_rate(), 32.0 / 80.0);
}

#[test]
fn a_mismatch_in_the_middle_stops_the_match() {
    let mut m = BlockManager::new(16, 2, true);
    run_prompt(&mut m, &[1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(m.match_prefix(&[1, 2, 9, 4, 5, 6, 7], &mut vec![]), 2);
}

#[test]
fn hash_collisions_give_misses_never_wrong_blocks() {
    // Every hash equal; and hashes blind to the parent, so equal blocks after different prefixes
    // collide.
    let weak_hashers: [BlockHasher; 2] = [|_, _| 0, |_, t| t.iter().map(|&x| x as u64).sum()];
    for hasher in weak_hashers {
        let mut m = BlockManager::with_hasher(16, 2, hasher);
        let (pa, pb) = ([1, 2, 3, 4, 5], [1, 2, 6, 7, 8]);
        let (a, _) = run_prompt(&mut m, &pa);
        let (b, cached) = run_prompt(&mut m, &pb);
        assert!(cached <= 2);
        assert!(b[cached / 2..].iter().all(|x| !a.contains(x)));
        let mut c = vec![];
        let cached = m.match_prefix(&[9, 9, 9], &mut c);
        assert_eq!((cached, c.len()), (0, 0));
        m.check_invariants().unwrap();
    }
}

#[test]
fn concurrent_duplicate_keeps_the_first_entry_and_frees_the_copy() {
    let mut m = BlockManager::new(8, 2, true);
    let prompt = toks(0, 5);
    let (mut a, mut b) = (vec![], vec![]);
    assert_eq!(m.match_prefix(&prompt, &mut a), 0);
    assert_eq!(m.match_prefix(&prompt, &mut b), 0);
    assert!(m.allocate(&mut a, 5) && m.allocate(&mut b, 5));
    m.cache_full_blocks(&a, &prompt, 5);
    m.cache_full_blocks(&b, &prompt, 5);
    assert!(m.is_cached(a[0]) && m.is_cached(a[1]));
    assert!(!m.is_cached(b[0]) && !m.is_cached(b[1]));
    let b_blocks = b.clone();
    m.free(&mut b);
    m.check_invariants().unwrap();
    let mut c = vec![];
    assert_eq!(m.match_prefix(&prompt, &mut c), 4);
    assert_eq!(c, a[..2]);
    // B's copies went to the front of the queue: they are reused before anything cached.
    let mut d = vec![];
    assert!(m.allocate(&mut d, 6));
    assert_eq!(d, b_blocks);
}

#[test]
fn blocks_filled_by_decoding_are_cached_as_they_fill() {
    let mut m = BlockManager::new(8, 4, true);
    let mut tokens = toks(0, 6);
    let (mut a, _) = run_prompt(&mut m, &tokens);
    for t in 6..9 {
        tokens.push(t);
        assert!(m.allocate(&mut a, tokens.len()));
        m.cache_full_blocks(&a, &tokens, tokens.len());
        m.check_invariants().unwrap();
    }
    assert!(m.is_cached(a[0]) && m.is_cached(a[1]) && !m.is_cached(a[2]));
    m.free(&mut a);
    assert_eq!(m.match_prefix(&toks(0, 10), &mut vec![]), 8);
}

#[test]
fn a_child_orphaned_by_eviction_is_replaced_when_its_prefix_is_recomputed() {
    let mut m = BlockManager::new(6, 2, true);
    let (pa, pb) = ([1, 2, 3], [1, 2, 3, 4, 5]);
    let (mut a, mut b) = (vec![], vec![]);
    m.match_prefix(&pa, &mut a);
    m.match_prefix(&pb, &mut b);
    assert!(m.allocate(&mut a, 3) && m.allocate(&mut b, 5));
    m.cache_full_blocks(&a, &pa, 3);
    m.cache_full_blocks(&b, &pb, 5); // b[0] duplicates a[0]; b[1] is indexed under it.
    assert!(m.is_cached(b[1]));
    let a0 = a[0];
    m.free(&mut a);
    let mut x = vec![];
    assert!(m.allocate(&mut x, 6)); // Evicts a[0], the parent of b[1].
    assert!(x.contains(&a0));
    m.free(&mut x);
    let (d, cached) = run_prompt(&mut m, &[1, 2, 3, 4, 9]);
    assert_eq!(cached, 0);
    assert!(m.is_cached(d[1]) && !m.is_cached(b[1]));
    let mut e = vec![];
    assert_eq!(m.match_prefix(&[1, 2, 3, 4, 7], &mut e), 4);
    assert_eq!(e, d[..2]);
    m.free(&mut b);
    m.check_invariants().unwrap();
}

#[test]
fn reset_prefix_cache_forgets_only_unreferenced_blocks() {
    let mut m = BlockManager::new(16, 2, true);
    let (pa, pb) = (toks(0, 5), toks(50, 5));
    let (mut a, _) = run_prompt(&mut m, &pa);
    let (b, _) = run_prompt(&mut m, &pb);
    m.free(&mut a);
    m.reset_prefix_cache();
    m.check_invariants().unwrap();
    assert_eq!(m.match_prefix(&pa, &mut vec![]), 0);
    assert_eq!(m.match_prefix(&pb, &mut vec![]), 4);
    assert!(m.is_cached(b[0]));
}
