//! The block pool: an arena of KV blocks with reference counts, an
//! index-linked free list in LRU order, and the prefix-cache map from block
//! hash to block.
//!
//! ```text
//! blocks:    [ 0:null | 1 | 2 | 3 | 4 | 5 ]        (arena, BlockId = index)
//! free list: head -> 4 <-> 1 <-> 5 <- tail          (ref_cnt == 0 only)
//!            head = evicted first; tail = freed most recently
//! cached:    hash(a) -> 1, hash(b) -> 3             (full blocks, any ref_cnt)
//! ```
//! Invariants (checked by `check_invariants`):
//! - block 0 is the null block: never allocated, never freed, never listed;
//! - a block is on the free list iff its ref count is 0;
//! - `block.hash == Some(h)` iff `cached[h] == block`;
//! - `num_free` is the length of the free list.
//!
//! A block returns to the free list in exactly one place, `free`, when its
//! last reference goes.

use std::collections::HashMap;

use super::prefix::BlockHash;

/// Index of a block in the pool; also its index in the runner's KV memory.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

// SAFETY: `BlockId` is `repr(transparent)` over `u32`, so any bit pattern is
// valid and it has no padding; this lets block tables be viewed as `&[u32]`.
unsafe impl bytemuck::Zeroable for BlockId {}
unsafe impl bytemuck::Pod for BlockId {}

impl BlockId {
    /// The null block: padding in block tables, never holds a live token.
    pub const NULL: BlockId = BlockId(0);
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Block {
    ref_cnt: u32,
    /// Set iff this block is the one registered in the cache under this hash.
    hash: Option<BlockHash>,
    /// Free-list links (NIL when not listed).
    prev: u32,
    next: u32,
    on_free_list: bool,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks, block 0 included (so `num_blocks - 1`
    /// are usable). All usable blocks start free.
    pub fn new(num_blocks: usize) -> BlockPool {
        assert!(num_blocks >= 2, "a KV pool needs the null block and at least one more");
        assert!(num_blocks < NIL as usize, "too many KV blocks");
        let blank = Block { ref_cnt: 0, hash: None, prev: NIL, next: NIL, on_free_list: false };
        let mut pool =
            BlockPool { blocks: vec![blank; num_blocks], head: NIL, tail: NIL, num_free: 0, cached: HashMap::new() };
        for i in 1..num_blocks as u32 {
            pool.push_back(i);
        }
        pool
    }

    /// Usable blocks (the null block excluded).
    pub fn num_usable(&self) -> usize {
        self.blocks.len() - 1
    }

    /// Blocks with no reference (cached ones included: they can be evicted).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn num_used(&self) -> usize {
        self.num_usable() - self.num_free
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id.0 as usize].ref_cnt
    }

    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// The cached block holding the content with this hash, if any.
    pub fn lookup(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// Takes the least recently freed block, evicting its cached content.
    /// The block comes back with ref count 1.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let idx = self.head;
        if idx == NIL {
            return None;
        }
        self.unlink(idx);
        if let Some(h) = self.blocks[idx as usize].hash.take() {
            let removed = self.cached.remove(&h);
            debug_assert_eq!(removed, Some(BlockId(idx)));
        }
        let b = &mut self.blocks[idx as usize];
        debug_assert_eq!(b.ref_cnt, 0);
        b.ref_cnt = 1;
        Some(BlockId(idx))
    }

    /// Adds a reference to a block (a prefix-cache hit or a fork). A block
    /// with no reference leaves the free list, keeping its cached content.
    pub fn touch(&mut self, id: BlockId) {
        debug_assert_ne!(id, BlockId::NULL, "the null block is never referenced");
        let b = &self.blocks[id.0 as usize];
        if b.ref_cnt == 0 {
            debug_assert!(b.on_free_list);
            self.unlink(id.0);
        }
        self.blocks[id.0 as usize].ref_cnt += 1;
    }

    /// Drops one reference; the block returns to the free list when the last
    /// one goes. The only place a block is freed. Blocks holding cached
    /// content go to the tail (kept longest); others to the head (reused first).
    pub fn free(&mut self, id: BlockId) {
        debug_assert_ne!(id, BlockId::NULL, "the null block is never freed");
        let b = &mut self.blocks[id.0 as usize];
        debug_assert!(b.ref_cnt > 0, "double free of block {}", id.0);
        if b.ref_cnt == 0 {
            return; // release builds: a double free is ignored rather than corrupting the list
        }
        b.ref_cnt -= 1;
        if b.ref_cnt == 0 {
            if b.hash.is_some() {
                self.push_back(id.0);
            } else {
                self.push_front(id.0);
            }
        }
    }

    /// Registers a full, computed block under `hash`. If another block already
    /// holds the same content, this one stays unregistered (a duplicate).
    pub fn register(&mut self, id: BlockId, hash: BlockHash) {
        debug_assert!(self.blocks[id.0 as usize].ref_cnt > 0, "only referenced blocks are registered");
        if self.blocks[id.0 as usize].hash.is_some() || self.cached.contains_key(&hash) {
            return;
        }
        self.cached.insert(hash, id);
        self.blocks[id.0 as usize].hash = Some(hash);
    }

    /// Forgets every cached block that has no reference (they stay free).
    pub fn evict_all_unused(&mut self) {
        let blocks = &mut self.blocks;
        self.cached.retain(|_, id| {
            let b = &mut blocks[id.0 as usize];
            if b.ref_cnt == 0 {
                b.hash = None;
                false
            } else {
                true
            }
        });
    }

    fn push_back(&mut self, idx: u32) {
        let tail = self.tail;
        let b = &mut self.blocks[idx as usize];
        b.prev = tail;
        b.next = NIL;
        b.on_free_list = true;
        if tail == NIL {
            self.head = idx;
        } else {
            self.blocks[tail as usize].next = idx;
        }
        self.tail = idx;
        self.num_free += 1;
    }

    fn push_front(&mut self, idx: u32) {
        let head = self.head;
        let b = &mut self.blocks[idx as usize];
        b.prev = NIL;
        b.next = head;
        b.on_free_list = true;
        if head == NIL {
            self.tail = idx;
        } else {
            self.blocks[head as usize].prev = idx;
        }
        self.head = idx;
        self.num_free += 1;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let b = &mut self.blocks[idx as usize];
            debug_assert!(b.on_free_list);
            b.on_free_list = false;
            (std::mem::replace(&mut b.prev, NIL), std::mem::replace(&mut b.next, NIL))
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        self.num_free -= 1;
    }

    /// Free-list order, head (next evicted) first. For tests and checks.
    pub fn free_list(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut i = self.head;
        while i != NIL && out.len() <= self.blocks.len() {
            out.push(BlockId(i));
            i = self.blocks[i as usize].next;
        }
        out
    }

    /// Verifies every invariant of the module comment; returns the first
    /// violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let list = self.free_list();
        if list.len() != self.num_free {
            return Err(format!("free list has {} blocks, num_free says {}", list.len(), self.num_free));
        }
        let null = &self.blocks[0];
        if null.on_free_list || null.ref_cnt != 0 || null.hash.is_some() {
            return Err("the null block is in use".into());
        }
        let mut listed = vec![false; self.blocks.len()];
        for id in &list {
            if std::mem::replace(&mut listed[id.0 as usize], true) {
                return Err(format!("block {} listed twice", id.0));
            }
        }
        for (i, b) in self.blocks.iter().enumerate().skip(1) {
            if listed[i] != (b.ref_cnt == 0) || listed[i] != b.on_free_list {
                return Err(format!("block {i}: ref_cnt {} but listed {}", b.ref_cnt, listed[i]));
            }
            if let Some(h) = &b.hash {
                if self.cached.get(h) != Some(&BlockId(i as u32)) {
                    return Err(format!("block {i} has a hash the cache does not map to it"));
                }
            }
        }
        for (h, id) in &self.cached {
            if self.blocks[id.0 as usize].hash.as_ref() != Some(h) {
                return Err(format!("cache maps a hash to block {} which does not hold it", id.0));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: u8) -> BlockHash {
        BlockHash([x; 32])
    }

    #[test]
    fn lru_order_and_cached_blocks_survive_until_evicted() {
        let mut p = BlockPool::new(4); // usable: 1, 2, 3
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!((a, b), (BlockId(1), BlockId(2)));
        p.register(a, h(1));
        p.free(b); // uncached: to the head
        p.free(a); // cached: to the tail
        assert_eq!(p.free_list(), vec![BlockId(2), BlockId(3), BlockId(1)]);
        assert_eq!(p.lookup(&h(1)), Some(a));
        // A hit revives the cached block without allocating.
        p.touch(a);
        assert_eq!(p.num_free(), 2);
        p.free(a);
        // Allocating everything evicts the cached block last.
        let got: Vec<_> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got, vec![BlockId(2), BlockId(3), BlockId(1)]);
        assert_eq!(p.lookup(&h(1)), None);
        assert_eq!(p.allocate(), None);
        p.check_invariants().unwrap();
    }

    #[test]
    fn duplicate_content_stays_unregistered() {
        let mut p = BlockPool::new(3);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        p.register(a, h(7));
        p.register(b, h(7));
        assert_eq!(p.lookup(&h(7)), Some(a));
        assert_eq!(p.num_cached(), 1);
        p.free(a);
        p.free(b);
        p.check_invariants().unwrap();
        p.evict_all_unused();
        assert_eq!(p.num_cached(), 0);
        p.check_invariants().unwrap();
    }

    #[test]
    #[should_panic(expected = "double free")]
    #[cfg(debug_assertions)]
    fn double_free_is_caught() {
        let mut p = BlockPool::new(3);
        let a = p.allocate().unwrap();
        p.free(a);
        p.free(a);
    }
}
