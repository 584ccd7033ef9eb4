//! A pool of KV-cache block ids. Block ids are the only thing the engine knows about KV
//! memory; the backend's cache holds the blocks themselves.

/// Free list of block ids `0..num_blocks`.
///
/// Invariant: every id is either in `free` exactly once or owned by exactly one sequence.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    num_blocks: usize,
    /// Free ids, handed out from the end (so low ids are reused first after a full free).
    free: Vec<u32>,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks of `block_size` tokens.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        BlockPool {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Number of free blocks.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` so it covers `tokens` tokens. On failure nothing is taken and `false`
    /// is returned.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        let at = self.free.len() - need;
        table.extend(self.free.drain(at..).rev());
        true
    }

    /// Returns every block of `table` to the pool and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        debug_assert!(table.iter().all(|b| (*b as usize) < self.num_blocks));
        self.free.extend(table.drain(..).rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_release_keep_every_block_accounted_for() {
        let mut pool = BlockPool::new(8, 16);
        let mut a = Vec::new();
        let mut b = Vec::new();
        assert!(pool.grow(&mut a, 17));
        assert_eq!(a.len(), 2);
        assert!(pool.grow(&mut a, 32));
        assert_eq!(a.len(), 2);
        assert!(pool.grow(&mut b, 16 * 6));
        assert_eq!(pool.num_free(), 0);
        assert!(!pool.grow(&mut a, 33));
        assert_eq!(a.len(), 2);
        let mut all: Vec<u32> = a.iter().chain(&b).copied().collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        pool.release(&mut a);
        pool.release(&mut b);
        assert_eq!(pool.num_free(), 8);
        assert!(a.is_empty() && b.is_empty());
    }
}
