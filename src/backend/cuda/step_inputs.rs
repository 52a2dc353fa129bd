//! Everything the GPU needs to know about one step, packed on the host into
//! one byte buffer (pinned) and copied to the device: the forward-pass
//! arrays first, then the sampling arrays. Both go in one transfer, unless
//! some row is constrained: then the forward part is copied and launched
//! before the runner waits for the grammar masks, and the sampling part
//! (masks included) follows in a second copy (`InputLayout::sampling_start`),
//! so the masks never delay the forward pass.
//!
//! The layout is compact and computed from the step's sizes; a CUDA graph is
//! captured with the layout of its bucket and replayed with inputs packed in
//! that same layout (a decode batch padded to the bucket: padding rows have
//! token 0, slot -1 (no cache write) and context length 0 (zero output)).

use super::attention_plan::AttentionPlan;
use super::sampling_plan::SamplingBatch;
use crate::model::BatchInput;

/// Array lengths of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputSizes {
    pub tokens: usize,
    pub decode_seqs: usize,
    pub prefill_seqs: usize,
    /// Width of every block-table row (the kernels' `max_blocks`).
    pub table_width: usize,
    pub tiles: usize,
    /// Rows of logits (sequences wanting a token).
    pub rows: usize,
    pub pen_entries: usize,
    pub bias_entries: usize,
    /// Rows with an allowed-token mask (constrained decoding).
    pub mask_rows: usize,
    /// u32 words of one mask: ceil(vocab_size / 32).
    pub mask_width: usize,
}

/// Gap after every array: unused on a GPU, guard bytes on the emulated
/// device (a kernel writing past an input array fails, naming it).
pub const GAP: usize = 16;

/// Byte offset of every array; each is aligned to 16 bytes and followed by
/// a gap of GAP bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputLayout {
    pub sizes: InputSizes,
    pub tokens: usize,
    pub positions: usize,
    pub slots: usize,
    pub dec_q_rows: usize,
    pub dec_ctx: usize,
    pub dec_tables: usize,
    pub pf_q_start: usize,
    pub pf_q_len: usize,
    pub pf_ctx: usize,
    pub pf_tables: usize,
    pub tile_seq: usize,
    pub tile_q0: usize,
    pub last_rows: usize,
    pub temperature: usize,
    pub top_k: usize,
    pub top_p: usize,
    pub min_p: usize,
    pub seeds: usize,
    pub steps: usize,
    pub repetition: usize,
    pub frequency: usize,
    pub presence: usize,
    pub pen_offsets: usize,
    pub pen_ids: usize,
    pub pen_counts: usize,
    pub bias_offsets: usize,
    pub bias_ids: usize,
    pub bias_values: usize,
    pub mask_index: usize,
    pub masks: usize,
    pub total: usize,
}

impl InputLayout {
    pub fn new(s: InputSizes) -> InputLayout {
        Self::build(s).0
    }

    /// Every array as (name, byte offset, bytes), in order (for the emulated
    /// device's guard bytes).
    pub fn regions(&self) -> Vec<(&'static str, usize, usize)> {
        Self::build(self.sizes).1
    }

    /// Byte offset where the sampling arrays begin: everything before it is
    /// what the forward pass reads, everything from it on only sampling.
    pub fn sampling_start(&self) -> usize {
        self.temperature
    }

    fn build(s: InputSizes) -> (InputLayout, Vec<(&'static str, usize, usize)>) {
        let mut at = 0usize;
        let mut regions = Vec::with_capacity(30);
        let mut push = |name: &'static str, bytes: usize| {
            let off = at.div_ceil(16) * 16;
            at = off + bytes + GAP;
            regions.push((name, off, bytes));
            off
        };
        let (d, p, r) = (s.decode_seqs, s.prefill_seqs, s.rows);
        let mut l = InputLayout {
            sizes: s,
            tokens: push("tokens", 4 * s.tokens),
            positions: push("positions", 4 * s.tokens),
            slots: push("slots", 4 * s.tokens),
            dec_q_rows: push("dec_q_rows", 4 * d),
            dec_ctx: push("dec_ctx", 4 * d),
            dec_tables: push("dec_tables", 4 * d * s.table_width),
            pf_q_start: push("pf_q_start", 4 * p),
            pf_q_len: push("pf_q_len", 4 * p),
            pf_ctx: push("pf_ctx", 4 * p),
            pf_tables: push("pf_tables", 4 * p * s.table_width),
            tile_seq: push("tile_seq", 4 * s.tiles),
            tile_q0: push("tile_q0", 4 * s.tiles),
            last_rows: push("last_rows", 4 * r),
            temperature: push("temperature", 4 * r),
            top_k: push("top_k", 4 * r),
            top_p: push("top_p", 4 * r),
            min_p: push("min_p", 4 * r),
            seeds: push("seeds", 8 * r),
            steps: push("steps", 8 * r),
            repetition: push("repetition", 4 * r),
            frequency: push("frequency", 4 * r),
            presence: push("presence", 4 * r),
            pen_offsets: push("pen_offsets", 4 * (r + 1)),
            pen_ids: push("pen_ids", 4 * s.pen_entries),
            pen_counts: push("pen_counts", 4 * s.pen_entries),
            bias_offsets: push("bias_offsets", 4 * (r + 1)),
            bias_ids: push("bias_ids", 4 * s.bias_entries),
            bias_values: push("bias_values", 4 * s.bias_entries),
            mask_index: push("mask_index", 4 * r),
            masks: push("masks", 4 * s.mask_rows * s.mask_width),
            total: 0,
        };
        l.total = at.div_ceil(16) * 16;
        (l, regions)
    }
}

/// The host arrays of one step, before packing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostStep {
    pub tokens: Vec<u32>,
    pub positions: Vec<i32>,
    pub slots: Vec<i32>,
    pub plan: AttentionPlan,
    /// [rows] token index of the last query of each sequence wanting logits.
    pub last_rows: Vec<i32>,
    pub sampling: SamplingBatch,
    pub table_width: usize,
    /// u32 words of one allowed-token mask: ceil(vocab_size / 32).
    pub mask_width: usize,
}

impl HostStep {
    /// `table_width` >= every block table's length (the pool's longest
    /// sequence); `mask_width`: words of one allowed-token mask.
    pub fn new(batch: &BatchInput, plan: AttentionPlan, sampling: SamplingBatch, table_width: usize, mask_width: usize) -> HostStep {
        let last_rows = batch.seqs.iter().filter(|s| s.want_logits).map(|s| (s.q_start + s.q_len - 1) as i32).collect();
        HostStep {
            tokens: batch.tokens.clone(),
            positions: batch.positions.iter().map(|&p| p as i32).collect(),
            slots: batch.slots.iter().map(|&s| s as i32).collect(),
            plan,
            last_rows,
            sampling,
            table_width,
            mask_width,
        }
    }

    /// Whether the step is pure decode (every sequence one token wanting
    /// logits, in token order) -- the steps CUDA graphs replay.
    pub fn is_pure_decode(&self) -> bool {
        let n = self.tokens.len();
        self.plan.prefill.is_empty()
            && self.plan.decode.len() == n
            && self.last_rows.len() == n
            && self.plan.decode_q_rows.iter().enumerate().all(|(i, &r)| r == i as i32)
    }

    /// Pads a pure-decode step to `bucket` sequences (see the module comment).
    /// Sampling arrays are not padded: sampling runs on the real rows only.
    pub fn pad_decode_to(&mut self, bucket: usize) {
        let n = self.tokens.len();
        debug_assert!(self.is_pure_decode() && bucket >= n);
        for i in n..bucket {
            self.tokens.push(0);
            self.positions.push(0);
            self.slots.push(-1);
            self.plan.decode.push(usize::MAX);
            self.plan.decode_q_rows.push(i as i32);
            self.plan.decode_ctx_lens.push(0);
            self.last_rows.push(i as i32);
        }
        self.plan.decode_tables.resize(bucket * self.plan.max_blocks, 0);
    }

    pub fn sizes(&self) -> InputSizes {
        InputSizes {
            tokens: self.tokens.len(),
            decode_seqs: self.plan.decode_q_rows.len(),
            prefill_seqs: self.plan.prefill_q_len.len(),
            table_width: self.table_width,
            tiles: self.plan.tile_seq.len(),
            rows: self.last_rows.len(),
            pen_entries: self.sampling.pen_ids.len(),
            bias_entries: self.sampling.bias_ids.len(),
            mask_rows: self.sampling.masked_rows(),
            mask_width: self.mask_width,
        }
    }

    /// Writes the arrays into `out` at `l`'s offsets (`out.len() >= l.total`).
    /// Sampling arrays shorter than `l.sizes.rows` (padded decode) leave the
    /// rest of their region untouched.
    pub fn write(&self, l: &InputLayout, out: &mut [u8]) {
        self.write_forward(l, out);
        self.write_sampling(l, out);
    }

    /// Writes the forward-pass arrays (before `l.sampling_start()`).
    pub fn write_forward(&self, l: &InputLayout, out: &mut [u8]) {
        assert!(out.len() >= l.total, "staging buffer of {} bytes for a {}-byte layout", out.len(), l.total);
        assert!(self.plan.max_blocks <= self.table_width, "block table wider than the pool allows");
        put(out, l.tokens, &self.tokens);
        put(out, l.positions, &self.positions);
        put(out, l.slots, &self.slots);
        put(out, l.dec_q_rows, &self.plan.decode_q_rows);
        put(out, l.dec_ctx, &self.plan.decode_ctx_lens);
        put(out, l.dec_tables, &widen(&self.plan.decode_tables, self.plan.max_blocks, self.table_width));
        put(out, l.pf_q_start, &self.plan.prefill_q_start);
        put(out, l.pf_q_len, &self.plan.prefill_q_len);
        put(out, l.pf_ctx, &self.plan.prefill_ctx_len);
        put(out, l.pf_tables, &widen(&self.plan.prefill_tables, self.plan.max_blocks, self.table_width));
        put(out, l.tile_seq, &self.plan.tile_seq);
        put(out, l.tile_q0, &self.plan.tile_q0);
        put(out, l.last_rows, &self.last_rows);
    }

    /// Writes the sampling arrays (from `l.sampling_start()`), the masks
    /// included: for constrained rows, after `SamplingBatch::wait_masks`.
    pub fn write_sampling(&self, l: &InputLayout, out: &mut [u8]) {
        assert!(out.len() >= l.total, "staging buffer of {} bytes for a {}-byte layout", out.len(), l.total);
        let s = &self.sampling;
        assert!(s.masks.len() <= l.sizes.mask_rows * l.sizes.mask_width, "more mask words than the layout holds");
        put(out, l.temperature, &s.temperature);
        put(out, l.top_k, &s.top_k);
        put(out, l.top_p, &s.top_p);
        put(out, l.min_p, &s.min_p);
        put(out, l.seeds, &s.seeds);
        put(out, l.steps, &s.steps);
        put(out, l.repetition, &s.repetition);
        put(out, l.frequency, &s.frequency);
        put(out, l.presence, &s.presence);
        put(out, l.pen_offsets, &s.pen_offsets);
        put(out, l.pen_ids, &s.pen_ids);
        put(out, l.pen_counts, &s.pen_counts);
        put(out, l.bias_offsets, &s.bias_offsets);
        put(out, l.bias_ids, &s.bias_ids);
        put(out, l.bias_values, &s.bias_values);
        put(out, l.mask_index, &s.mask_index);
        put(out, l.masks, &s.masks);
    }
}

fn put<T: bytemuck::Pod>(out: &mut [u8], at: usize, v: &[T]) {
    let b: &[u8] = bytemuck::cast_slice(v);
    out[at..at + b.len()].copy_from_slice(b);
}

/// Rows of `from` values widened to `to` with zeros (block 0: the null block).
fn widen(t: &[i32], from: usize, to: usize) -> Vec<i32> {
    if from == to || t.is_empty() {
        return t.to_vec();
    }
    t.chunks(from.max(1)).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0, to - from))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::attention_plan::AttentionPlan;

    fn read<T: bytemuck::Pod>(buf: &[u8], at: usize, n: usize) -> Vec<T> {
        bytemuck::cast_slice(&buf[at..at + n * std::mem::size_of::<T>()]).to_vec()
    }

    fn step() -> HostStep {
        let b = BatchInput::build(16, &[(&[5], 20, &[2, 3], true), (&[6, 7, 8], 0, &[4], true), (&[9], 7, &[1], false)]);
        let plan = AttentionPlan::build(&b, 8);
        HostStep::new(&b, plan, SamplingBatch::default(), 4, 10)
    }

    #[test]
    fn layout_regions_are_aligned_and_disjoint() {
        let l = InputLayout::new(InputSizes { tokens: 5, decode_seqs: 3, prefill_seqs: 1, table_width: 7, tiles: 2, rows: 3, pen_entries: 9, bias_entries: 1, mask_rows: 2, mask_width: 10 });
        let offs = [l.tokens, l.positions, l.slots, l.dec_q_rows, l.dec_ctx, l.dec_tables, l.pf_q_start, l.pf_tables, l.seeds, l.bias_values];
        assert!(offs.windows(2).all(|w| w[0] < w[1]));
        assert!(offs.iter().all(|o| o % 16 == 0));
        assert_eq!(l.dec_tables - l.dec_ctx, 32); // 3 i32 and the gap, rounded up
        let r = l.regions();
        assert_eq!(r.len(), 30);
        assert_eq!(r[29], ("masks", l.masks, 4 * 2 * 10));
        assert!(l.sampling_start() > l.last_rows && l.sampling_start() <= l.temperature);
        assert_eq!(r[5], ("dec_tables", l.dec_tables, 4 * 3 * 7));
        assert!(r.windows(2).all(|w| w[0].1 + w[0].2 + GAP <= w[1].1));
        assert!(l.total >= l.masks + 80 && l.total % 16 == 0);
    }

    #[test]
    fn write_packs_every_array_where_the_layout_says() {
        let s = step();
        assert_eq!(s.last_rows, vec![0, 3]);
        let l = InputLayout::new(s.sizes());
        let mut buf = vec![0xAAu8; l.total];
        s.write(&l, &mut buf);
        assert_eq!(read::<u32>(&buf, l.tokens, 5), vec![5, 6, 7, 8, 9]);
        assert_eq!(read::<i32>(&buf, l.positions, 5), vec![20, 0, 1, 2, 7]);
        assert_eq!(read::<i32>(&buf, l.slots, 5), vec![3 * 16 + 4, 64, 65, 66, 16 + 7]);
        assert_eq!(read::<i32>(&buf, l.dec_q_rows, 2), vec![0, 4]);
        assert_eq!(read::<i32>(&buf, l.dec_ctx, 2), vec![21, 8]);
        // Tables are 2 wide in the plan, widened to 4 with the null block.
        assert_eq!(read::<i32>(&buf, l.dec_tables, 8), vec![2, 3, 0, 0, 1, 0, 0, 0]);
        assert_eq!(read::<i32>(&buf, l.pf_tables, 4), vec![4, 0, 0, 0]);
        assert_eq!(read::<i32>(&buf, l.pf_q_len, 1), vec![3]);
        assert_eq!(read::<i32>(&buf, l.tile_q0, 1), vec![0]);
        assert_eq!(read::<i32>(&buf, l.last_rows, 2), vec![0, 3]);
    }

    /// The two halves of a constrained step's staging touch only their own
    /// bytes: the sampling copy cannot clobber what the forward pass reads.
    #[test]
    fn forward_and_sampling_parts_are_disjoint() {
        let mut s = step();
        s.sampling.mask_index = vec![-1, 0];
        s.sampling.masks = (0..10).collect();
        s.sampling.temperature = vec![0.5, 1.0];
        let l = InputLayout::new(s.sizes());
        assert_eq!((l.sizes.mask_rows, l.sizes.mask_width), (1, 10));
        let mut fwd = vec![0xAAu8; l.total];
        s.write_forward(&l, &mut fwd);
        assert!(fwd[l.sampling_start()..].iter().all(|&b| b == 0xAA));
        let mut smp = vec![0xAAu8; l.total];
        s.write_sampling(&l, &mut smp);
        assert!(smp[..l.sampling_start()].iter().all(|&b| b == 0xAA));
        assert_eq!(read::<i32>(&smp, l.mask_index, 2), vec![-1, 0]);
        assert_eq!(read::<u32>(&smp, l.masks, 10), (0..10).collect::<Vec<u32>>());
        let mut both = vec![0xAAu8; l.total];
        s.write(&l, &mut both);
        let merged: Vec<u8> = fwd[..l.sampling_start()].iter().chain(&smp[l.sampling_start()..]).copied().collect();
        assert_eq!(both, merged);
    }

    #[test]
    fn decode_steps_pad_to_their_bucket() {
        let b = BatchInput::build(16, &[(&[5], 20, &[2, 3], true), (&[6], 3, &[4], true)]);
        let plan = AttentionPlan::build(&b, 8);
        let mut s = HostStep::new(&b, plan, SamplingBatch::default(), 8, 10);
        assert!(s.is_pure_decode());
        assert!(!step().is_pure_decode());
        s.pad_decode_to(4);
        assert_eq!(s.tokens, vec![5, 6, 0, 0]);
        assert_eq!(s.slots[2..], [-1, -1]);
        assert_eq!(s.plan.decode_q_rows, vec![0, 1, 2, 3]);
        assert_eq!(s.plan.decode_ctx_lens, vec![21, 4, 0, 0]);
        assert_eq!(s.plan.decode_tables.len(), 4 * 2);
        assert_eq!(s.last_rows, vec![0, 1, 2, 3]);
        let l = InputLayout::new(s.sizes());
        assert_eq!(l.sizes.decode_seqs, 4);
        let mut buf = vec![0u8; l.total];
        s.write(&l, &mut buf);
        assert_eq!(read::<i32>(&buf, l.dec_tables, 16), vec![2, 3, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0][..16].to_vec());
    }
}
