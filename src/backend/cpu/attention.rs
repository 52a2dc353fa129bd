//! The paged KV cache on the CPU and attention that reads it through each
//! sequence's block table.
//!
//! ```text
//! per layer, K and V: [num_blocks, block_size, num_kv_heads, head_dim] f32
//! slot s = block * block_size + offset  ->  K[s] is num_kv_heads*head_dim floats
//! ```

use crate::model::BatchInput;
use super::pool::for_each_chunk_mut;
use super::tile;

/// The CPU KV pool: every layer's K and V for `num_blocks` blocks.
pub struct KvCache {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> KvCache {
        let n = num_blocks * block_size * num_kv_heads * head_dim;
        KvCache {
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            k: (0..num_layers).map(|_| vec![0.0; n]).collect(),
            v: (0..num_layers).map(|_| vec![0.0; n]).collect(),
        }
    }

    /// Bytes one block takes over all layers (K and V).
    pub fn bytes_per_block(num_layers: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> usize {
        2 * num_layers * block_size * num_kv_heads * head_dim * std::mem::size_of::<f32>()
    }

    fn stride(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Writes `k, v: [tokens, num_kv_heads*head_dim]` of layer `layer` into their slots.
    pub fn write(&mut self, layer: usize, slots: &[u32], k: &[f32], v: &[f32]) {
        let st = self.stride();
        for (t, &s) in slots.iter().enumerate() {
            let dst = s as usize * st;
            self.k[layer][dst..dst + st].copy_from_slice(&k[t * st..(t + 1) * st]);
            self.v[layer][dst..dst + st].copy_from_slice(&v[t * st..(t + 1) * st]);
        }
    }
}

/// Causal attention of every query token of `batch` over its sequence's
/// cached context (which already holds this step's K and V).
/// `q: [tokens, num_heads*head_dim]`, `out: [tokens, num_heads*head_dim]`.
///
/// Work is split by (token, KV head): the query heads that share a KV head
/// (grouped-query attention) meet each cached K row together, up to
/// `tile::MR` heads by `tile::NR` consecutive slots per `tile::dots` call,
/// and each V row is read once for all of them (`simd::weighted_rows`).
pub fn paged_attention(batch: &BatchInput, cache: &KvCache, layer: usize, num_heads: usize, q: &[f32], out: &mut [f32]) {
    let (hd, nkv, bs) = (cache.head_dim, cache.num_kv_heads, cache.block_size);
    let group = num_heads / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let slot_stride = nkv * hd;
    // token index -> (sequence, query position in the context)
    let mut owner = vec![(0usize, 0usize); batch.tokens.len()];
    for (si, s) in batch.seqs.iter().enumerate() {
        for j in 0..s.q_len {
            owner[s.q_start + j] = (si, s.ctx_len - s.q_len + j);
        }
    }
    let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
    // A decode step of one short sequence is a few µs of work: cheaper on
    // the calling thread than as a region of the pool.
    let work: usize = batch.seqs.iter().map(|s| s.q_len * s.ctx_len).sum::<usize>() * num_heads * hd;
    // One (token, KV head): `o` is the outputs of its `group` query heads.
    let kv_head = |idx: usize, o: &mut [f32]| {
        let (t, kvh) = (idx / nkv, idx % nkv);
        let (si, qpos) = owner[t];
        let table = &batch.seqs[si].block_table;
        let ctx = qpos + 1;
        let qg = &q[(t * num_heads + kvh * group) * hd..(t * num_heads + (kvh + 1) * group) * hd];
        // Where position p's K and V rows of this KV head start, for both passes.
        let offs: Vec<usize> = (0..ctx).map(|p| ((table[p / bs] as usize * bs + p % bs) * nkv + kvh) * hd).collect();
        // scores[g * ctx + p] for query head g of the group, position p.
        let mut scores = vec![0f32; group * ctx];
        let mut tile_out = [[0f32; tile::NR]; tile::MR];
        let mut p = 0;
        while p < ctx {
            // Consecutive slots of one block are consecutive in the cache.
            let nr = (ctx - p).min(tile::NR).min(bs - p % bs);
            let kp = &kc[offs[p]..];
            for g0 in (0..group).step_by(tile::MR) {
                let mr = (group - g0).min(tile::MR);
                tile::dots(&qg[g0 * hd..], hd, mr, kp, slot_stride, nr, hd, &mut tile_out);
                for (g, row) in tile_out[..mr].iter().enumerate() {
                    for (j, v) in row[..nr].iter().enumerate() {
                        scores[(g0 + g) * ctx + p + j] = v * scale;
                    }
                }
            }
            p += nr;
        }
        scores.chunks_mut(ctx).for_each(super::simd::softmax_in_place);
        super::simd::weighted_rows(o, group, hd, &scores, vc, &offs);
    };
    if work < SERIAL_MAX_WORK {
        out.chunks_mut(group * hd).enumerate().for_each(|(idx, o)| kv_head(idx, o));
    } else {
        for_each_chunk_mut(out, group * hd, kv_head);
    }
}

/// Multiply-adds (query tokens × context × heads × head_dim) below which
/// attention runs on the calling thread: ~2^17, some 10-20 µs on one core.
const SERIAL_MAX_WORK: usize = 1 << 17;
