//! KV-cache memory: the pool of fixed-size blocks that sequences' block tables point into.
//!
//! [`BlockManager`] hands blocks to block tables and shares full blocks of equal prompt
//! prefixes between sequences (prefix caching, with LRU eviction of free cached blocks).

mod block_manager;
mod free_block_queue;
mod prefix_cache;

pub use block_manager::{BlockManager, BlockTable};
