//! The paged KV cache, as ids and counts only (no tensors): the block pool,
//! prefix hashing and the per-sequence block tables.

pub mod block_pool;
pub mod manager;
pub mod prefix;

pub use block_pool::{BlockId, BlockPool};
pub use manager::{KvManager, SeqBlocks};
pub use prefix::{BlockHash, PrefixHasher};
