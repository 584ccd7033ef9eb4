//! The block manager: hands KV blocks to sequences' block tables, shares blocks holding the
//! same prompt prefix between sequences (prefix caching), and keeps freed blocks findable until
//! their memory is needed.
//!
//! Every operation costs O(blocks it touches): the free blocks sit in one intrusive linked
//! list ([`FreeBlockQueue`]) and the cache is a hash index ([`PrefixCache`]), so nothing scans
//! the whole pool.

use super::free_block_queue::FreeBlockQueue;
use super::prefix_cache::{hash_block, BlockHasher, PrefixCache, PrefixId};

/// Per-sequence list of block ids; the manager holds one reference per (table, block).
pub type BlockTable = Vec<u32>;

/// Owner of the pool of KV blocks `0..num_blocks` and of the prefix cache over them.
///
/// Every block is either *referenced* (held by at least one table; `ref_counts[b] > 0`) or
/// *free* (in `free`, exactly once), never both. Free blocks whose content is indexed by the
/// prefix cache are *cached*: they still serve [`BlockManager::match_prefix`] until evicted. In
/// `free`, all plain blocks come before all cached ones, and the cached ones are in
/// least-recently-freed-first order, so taking from the front uses plain blocks first and then
/// evicts the least recently used cached block.
#[derive(Debug)]
pub struct BlockManager {
    /// Tokens per block; at least 1.
    block_size: usize,
    /// Number of tables holding each block.
    ref_counts: Vec<u32>,
    /// The free blocks: plain ones at the front, cached ones behind them in LRU order.
    free: FreeBlockQueue,
    /// The index of full blocks by prefix; `None` when prefix caching is off.
    cache: Option<PrefixCache>,
    /// Prompt tokens passed to `match_prefix` since creation.
    queried_tokens: u64,
    /// Of those, tokens served from the cache.
    hit_tokens: u64,
}

impl BlockManager {
    /// `num_blocks` blocks of `block_size` tokens, all free; prefix caching on or off.
    ///
    /// Panics if `block_size` is 0 or `num_blocks` does not fit a `u32` block id (less one):
    /// both come from validated engine configuration, not from requests.
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        let mut manager = Self::with_hasher(num_blocks, block_size, hash_block);
        if !enable_prefix_caching {
            manager.cache = None;
        }
        manager
    }

    /// A manager with prefix caching on and `hasher` as the block hash; tests pass weak hashers
    /// to force collisions.
    fn with_hasher(num_blocks: usize, block_size: usize, hasher: BlockHasher) -> Self {
        assert!(block_size > 0, "block_size must be at least 1");
        BlockManager {
            block_size,
            ref_counts: vec![0; num_blocks],
            free: FreeBlockQueue::new(num_blocks),
            cache: Some(PrefixCache::new(num_blocks, block_size, hasher)),
            queried_tokens: 0,
            hit_tokens: 0,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks not referenced by any table (free, including evictable cached ones).
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Number of tables holding `block` (0 when free or out of range). For tests and metrics.
    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts.get(block as usize).copied().unwrap_or(0)
    }

    /// Looks up the longest prefix of full blocks of `tokens` that is cached, capped so that at
    /// least one token of `tokens` is left to compute (the engine needs the last position's
    /// logits); takes a reference on each hit block and appends them to `table`, which must be
    /// empty. Returns the number of cached tokens, a multiple of `block_size`. With prefix
    /// caching off, returns 0. Counts `tokens.len()` looked-up and the returned number of hit
    /// tokens for [`BlockManager::hit_rate`] (so a request looked up again after a failed
    /// admission counts again). A non-empty `table` is a caller bug: debug builds panic, release
    /// builds return 0 and change nothing.
    pub fn match_prefix(&mut self, tokens: &[u32], table: &mut BlockTable) -> usize {
        debug_assert!(table.is_empty(), "match_prefix needs an empty table");
        let Some(cache) = &self.cache else { return 0 };
        if !table.is_empty() {
            return 0;
        }
        let max_blocks = tokens.len().saturating_sub(1) / self.block_size;
        let mut parent = PrefixId::ROOT;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let Some((b, id)) = cache.lookup(parent, chunk) else {
                break;
            };
            if self.ref_counts[b as usize] == 0 {
                let was_free = self.free.remove(b);
                debug_assert!(
                    was_free,
                    "unreferenced block {b} missing from the free queue"
                );
            }
            self.ref_counts[b as usize] += 1;
            table.push(b);
            parent = id;
        }
        let hit = table.len() * self.block_size;
        self.queried_tokens += tokens.len() as u64;
        self.hit_tokens += hit as u64;
        hit
    }

    /// Grows `table` so it covers `num_tokens` tokens, taking fresh blocks (evicting the least
    /// recently used cached free blocks when no plain free block is left). Returns false and
    /// changes nothing if not enough blocks are free. A table already covering `num_tokens`
    /// is left as it is.
    pub fn allocate(&mut self, table: &mut BlockTable, num_tokens: usize) -> bool {
        let need = self.blocks_for(num_tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        table.reserve(need);
        for _ in 0..need {
            let Some(b) = self.free.pop_front() else {
                return false;
            };
            if let Some(cache) = &mut self.cache {
                cache.forget(b);
            }
            self.ref_counts[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Registers in the prefix cache every full block among the first `num_computed` tokens of
    /// `tokens` (the sequence's prompt and output so far; `table` covers them) that is not
    /// registered yet. No-op when caching is off.
    ///
    /// If an equal prefix is already cached in another block (two sequences computed it at the
    /// same time), that entry is kept and this table's block stays out of the index, to be
    /// freed normally. Blocks of a table are sealed front to back and stay sealed while held,
    /// so only the blocks filled since the last call are looked at.
    pub fn cache_full_blocks(&mut self, table: &BlockTable, tokens: &[u32], num_computed: usize) {
        let Some(cache) = &mut self.cache else { return };
        let full = (num_computed.min(tokens.len()) / self.block_size).min(table.len());
        let mut first = full;
        while first > 0 && cache.prefix_id(table[first - 1]).is_none() {
            first -= 1;
        }
        let mut parent = match first {
            0 => PrefixId::ROOT,
            i => cache.prefix_id(table[i - 1]).unwrap_or(PrefixId::ROOT),
        };
        for (i, &b) in table.iter().enumerate().take(full).skip(first) {
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            if let Some(displaced) = cache.seal(b, parent, chunk) {
                // Unreachable now; if nobody holds it, it is plain free memory.
                if self.ref_counts[displaced as usize] == 0 {
                    cache.forget(displaced);
                    self.free.remove(displaced);
                    self.free.push_front(displaced);
                }
            }
            let Some(id) = cache.prefix_id(b) else { return };
            parent = id;
        }
    }

    /// Drops `table`'s references and empties it. Blocks whose count reaches 0 become free;
    /// cached ones stay findable by `match_prefix` until evicted. Blocks are released from the
    /// table's end, so a sequence's tail is evicted before its head, which other requests are
    /// likelier to share. Dropping a reference that is not held is a caller bug: debug builds
    /// panic, release builds skip that block.
    pub fn free(&mut self, table: &mut BlockTable) {
        for b in table.drain(..).rev() {
            let Some(count) = self.ref_counts.get_mut(b as usize) else {
                debug_assert!(false, "block id {b} out of range");
                continue;
            };
            debug_assert!(*count > 0, "block {b} freed more often than referenced");
            if *count == 0 {
                continue;
            }
            *count -= 1;
            if *count > 0 {
                continue;
            }
            match &mut self.cache {
                Some(cache) if cache.is_indexed(b) => self.free.push_back(b),
                Some(cache) => {
                    // A duplicate or partial block: nobody can find it, its memory is plain.
                    cache.forget(b);
                    self.free.push_front(b);
                }
                None => self.free.push_front(b),
            }
        }
    }

    /// Fraction of looked-up prompt tokens that were served from the cache, since creation
    /// (0.0 when nothing was looked up). Not reset by `reset_prefix_cache`.
    pub fn hit_rate(&self) -> f64 {
        match self.queried_tokens {
            0 => 0.0,
            q => self.hit_tokens as f64 / q as f64,
        }
    }

    /// Clears the prefix cache's index of every block no table holds, turning those blocks
    /// into plain free blocks. Blocks held by tables stay indexed. O(free blocks).
    pub fn reset_prefix_cache(&mut self) {
        let Some(cache) = &mut self.cache else { return };
        let cached: Vec<u32> = self.free.iter().filter(|&b| cache.is_indexed(b)).collect();
        for b in cached {
            cache.forget(b);
            self.free.remove(b);
            self.free.push_front(b);
        }
    }

    /// Whether `block` is indexed by the prefix cache.
    #[cfg(test)]
    fn is_cached(&self, block: u32) -> bool {
        self.cache.as_ref().is_some_and(|c| c.is_indexed(block))
    }

    /// Checks every invariant stated on [`BlockManager`] and its parts, returning a description
    /// of the first violation. O(num_blocks); for property tests and debug assertions.
    /// (That reference counts equal table memberships is for the caller to check: the manager
    /// does not see the tables.)
    pub fn check_invariants(&self) -> Result<(), String> {
        self.free.check()?;
        let mut seen_cached = false;
        for b in self.free.iter() {
            if self.ref_counts[b as usize] != 0 {
                return Err(format!(
                    "block {b} is free with ref count {}",
                    self.ref_counts[b as usize]
                ));
            }
            match &self.cache {
                Some(cache) if cache.is_indexed(b) => seen_cached = true,
                Some(_) if seen_cached => {
                    return Err(format!("plain free block {b} queued behind cached ones"));
                }
                Some(cache) if cache.prefix_id(b).is_some() => {
                    return Err(format!("free block {b} is sealed but not indexed"));
                }
                _ => {}
            }
        }
        let referenced = self.ref_counts.iter().filter(|&&c| c > 0).count();
        if referenced + self.free.len() != self.num_blocks() {
            return Err(format!(
                "{referenced} referenced + {} free blocks != {} blocks",
                self.free.len(),
                self.num_blocks()
            ));
        }
        match &self.cache {
            Some(cache) => cache.check(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "block_manager_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "block_manager_proptest.rs"]
mod proptests;
