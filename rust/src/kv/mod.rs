//! KV-cache memory: the pool of fixed-size blocks that sequences' block tables point into.

mod block_pool;

pub use block_pool::BlockPool;
