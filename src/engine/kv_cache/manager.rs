//! The KV manager: block tables of sequences over the block pool, with
//! automatic prefix caching.
//!
//! A sequence's table covers its token positions in order: position p lives
//! in `blocks[p / block_size]` at offset `p % block_size`. Blocks whose
//! tokens are all computed are registered in the prefix cache under their
//! chained hash, so a later sequence with the same prefix references them
//! instead of computing them again.

use super::block_pool::{BlockId, BlockPool};
use super::prefix::{BlockHash, PrefixHasher};

/// The KV state of one sequence.
#[derive(Clone, Debug, Default)]
pub struct SeqBlocks {
    /// Block table: one reference held on each block.
    pub blocks: Vec<BlockId>,
    /// Chained hashes of the sequence's full token blocks. They depend on the
    /// tokens only, so they survive `free` (a preempted sequence reuses them).
    hashes: Vec<BlockHash>,
    /// `blocks[..num_registered]` are computed and offered to the prefix cache.
    num_registered: usize,
}

impl SeqBlocks {
    /// The block table as raw ids, the runner's view.
    pub fn table(&self) -> &[u32] {
        bytemuck::cast_slice(&self.blocks)
    }
}

#[derive(Debug)]
pub struct KvManager {
    pool: BlockPool,
    block_size: usize,
    hasher: PrefixHasher,
    caching: bool,
    /// Tokens looked up in the prefix cache at admission, and tokens found.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

impl KvManager {
    /// `num_blocks` counts the null block. The hasher is keyed with a fresh
    /// secret.
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> KvManager {
        Self::with_hasher(num_blocks, block_size, enable_prefix_caching, PrefixHasher::random())
    }

    pub fn with_hasher(num_blocks: usize, block_size: usize, caching: bool, hasher: PrefixHasher) -> KvManager {
        assert!(block_size > 0);
        KvManager { pool: BlockPool::new(num_blocks), block_size, hasher, caching, prefix_queries: 0, prefix_hits: 0 }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn caching_enabled(&self) -> bool {
        self.caching
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Blocks needed to hold `num_tokens` positions.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    pub fn num_usable_blocks(&self) -> usize {
        self.pool.num_usable()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.pool.num_used()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// The longest run of cached full blocks that starts `tokens`, capped so
    /// that at least the last token is left to compute (its logits are
    /// needed). Takes no reference: pass the result to `allocate_slots`.
    pub fn lookup_prefix(&self, seq: &mut SeqBlocks, tokens: &[u32]) -> Vec<BlockId> {
        if !self.caching || tokens.is_empty() {
            return Vec::new();
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        self.hasher.extend_chain(&mut seq.hashes, &tokens[..max_blocks * self.block_size], self.block_size);
        seq.hashes[..max_blocks].iter().map_while(|h| self.pool.lookup(h)).collect()
    }

    /// Counts one admission's prefix-cache lookup.
    pub fn record_prefix_query(&mut self, query_tokens: usize, hit_tokens: usize) {
        if self.caching {
            self.prefix_queries += query_tokens as u64;
            self.prefix_hits += hit_tokens as u64;
        }
    }

    /// Grows `seq`'s table to hold `num_tokens` positions, first taking a
    /// reference on each prefix hit (`hits` only for an empty table). All or
    /// nothing: returns false, changing nothing, when the pool is short.
    pub fn allocate_slots(&mut self, seq: &mut SeqBlocks, hits: &[BlockId], num_tokens: usize) -> bool {
        debug_assert!(hits.is_empty() || seq.blocks.is_empty());
        let have = seq.blocks.len() + hits.len();
        let new = self.blocks_for(num_tokens).saturating_sub(have);
        // Hits with no reference sit on the free list: reviving them uses it up.
        let revived = hits.iter().filter(|&&b| self.pool.ref_count(b) == 0).count();
        if new + revived > self.pool.num_free() {
            return false;
        }
        for &b in hits {
            self.pool.touch(b);
            seq.blocks.push(b);
        }
        if !hits.is_empty() {
            seq.num_registered = hits.len();
        }
        for _ in 0..new {
            let b = self.pool.allocate().expect("free count checked above");
            seq.blocks.push(b);
        }
        true
    }

    /// Registers every block whose tokens are now all computed.
    pub fn commit_computed(&mut self, seq: &mut SeqBlocks, tokens: &[u32], num_computed: usize) {
        if !self.caching {
            return;
        }
        let full = (num_computed / self.block_size).min(seq.blocks.len());
        if full <= seq.num_registered {
            return;
        }
        self.hasher.extend_chain(&mut seq.hashes, &tokens[..full * self.block_size], self.block_size);
        for i in seq.num_registered..full {
            self.pool.register(seq.blocks[i], seq.hashes[i]);
        }
        seq.num_registered = full;
    }

    /// A new table sharing the first `num_blocks` blocks of `src` (which must
    /// be computed), one more reference each: no copy.
    pub fn fork(&mut self, src: &SeqBlocks, num_blocks: usize) -> SeqBlocks {
        let blocks = src.blocks[..num_blocks].to_vec();
        for &b in &blocks {
            self.pool.touch(b);
        }
        SeqBlocks {
            blocks,
            hashes: src.hashes[..num_blocks.min(src.hashes.len())].to_vec(),
            num_registered: src.num_registered.min(num_blocks),
        }
    }

    /// Drops the sequence's references, last block first so that the blocks
    /// least likely to be shared are evicted first.
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        for &b in seq.blocks.iter().rev() {
            self.pool.free(b);
        }
        seq.blocks.clear();
        seq.num_registered = 0;
    }

    /// Forgets every unreferenced cached block.
    pub fn reset_prefix_cache(&mut self) {
        self.pool.evict_all_unused();
    }

    /// Checks that the pool is consistent and that every block's ref count
    /// equals the number of tables referencing it.
    pub fn check<'a>(&self, tables: impl IntoIterator<Item = &'a SeqBlocks>) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs = vec![0u32; self.pool.num_usable() + 1];
        for t in tables {
            for b in &t.blocks {
                if *b == BlockId::NULL {
                    return Err("a table references the null block".into());
                }
                refs[b.0 as usize] += 1;
            }
        }
        for (i, &r) in refs.iter().enumerate().skip(1) {
            let have = self.pool.ref_count(BlockId(i as u32));
            if have != r {
                return Err(format!("block {i}: ref count {have}, referenced by {r} tables"));
            }
        }
        let used = refs.iter().filter(|&&r| r > 0).count();
        if used != self.pool.num_used() || used + self.pool.num_free() != self.pool.num_usable() {
            return Err(format!("{used} blocks referenced, pool says {} used", self.pool.num_used()));
        }
        Ok(())
    }
}
