//! KV-cache memory: the pool of fixed-size blocks that sequences' block tables point into.
//!
//! [`BlockManager`] hands blocks to block tables and shares full blocks of equal prompt
//! prefixes between sequences (prefix caching, with LRU eviction of free cached blocks).

mod block_manager;
mod free_block_queue;
mod prefix_cache;

pub use block_manager::{BlockManager, BlockTable};

/// The chain hashes of the first `max_blocks` full blocks of `tokens`, exactly as the prefix
/// cache keys them (a partial last block has none). A router that sends equal hashes to one
/// engine sends each prompt where its prefix is likely cached.
pub fn prefix_chain_hashes(tokens: &[u32], block_size: usize, max_blocks: usize) -> Vec<u64> {
    let mut parent = prefix_cache::ROOT_HASH;
    tokens
        .chunks_exact(block_size.max(1))
        .take(max_blocks)
        .map(|block| {
            parent = prefix_cache::hash_block(parent, block);
            parent
        })
        .collect()
}
