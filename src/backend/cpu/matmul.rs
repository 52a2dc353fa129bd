//! y = x · Wᵀ (+ b): the CPU matmul behind every linear layer.
//!
//! ```text
//! x: [m, k] f32 row-major (m tokens)      W: [n, k] (Hugging Face Linear layout)
//! y: [m, n] f32 row-major
//! ```
//! Work is split over blocks of W's rows (tasks of the CPU `pool`, handed
//! out one at a time, so the 49152-row output projection is shared by
//! rows). Each task writes a disjoint set of columns of y, by one of three
//! paths chosen from m (see `BLOCK_GEMM_MIN_M`): row kernels, register
//! tiles (`tile`), or `gemm`.

use super::quant::{self, quantize_rows, Act8Block, ActBlock};
use super::quant_f32::{block_sums, widen_into, RowKernel, MAX_ROWS};
use super::simd::{dot_bf16, dot_f32};
use super::tile;
use crate::model::dequant::GgmlType;
use half::bf16;

/// Weight storage of a matrix. bf16 weights are widened exactly in the dot
/// product; GGUF block formats (Q4_0 … Q8_0, Q2_K … Q6_K; see
/// `quant::is_block_type`) stay in their blocks, rows of whole blocks.
#[derive(Clone, Debug)]
pub enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Blocks(GgmlType, Vec<u8>),
    /// Matrices with the same columns stacked by rows, each in its own
    /// storage (a Q4_K_M file's Q4_K q/k beside its Q6_K v, as one qkv).
    Stack(Vec<Weight>),
}

impl WeightData {
    /// Bytes of one row of `cols` values.
    fn row_bytes(&self, cols: usize) -> usize {
        match self {
            WeightData::F32(_) => cols * 4,
            WeightData::Bf16(_) => cols * 2,
            WeightData::Blocks(ty, _) => {
                let (n, bytes) = ty.block_layout().expect("a block type");
                cols / n * bytes
            }
            WeightData::Stack(_) => unreachable!("a stack's rows are its parts'"),
        }
    }

    /// Whether any rows are in a block format.
    /// Whether every row is in a block format (a stack of only block parts).
    fn all_blocks(&self) -> bool {
        match self {
            WeightData::Blocks(..) => true,
            WeightData::Stack(parts) => parts.iter().all(|p| p.data.all_blocks()),
            _ => false,
        }
    }

    fn has_blocks(&self) -> bool {
        match self {
            WeightData::Blocks(..) => true,
            WeightData::Stack(parts) => parts.iter().any(|p| p.data.has_blocks()),
            _ => false,
        }
    }
}

/// How the activations of a matmul of fewer than `TILE_MIN_M` rows (one to
/// three decoding sequences) meet block-format weights (`kiln …
/// --cpu-activations`). From `TILE_MIN_M` rows the f32 register tiles are
/// faster than quantized row dots (`cargo bench --bench cpu -- "matmul
/// q4_1"`: at m = 4 int8 rows 225 µs, tiles 219; at m = 16 891 against 514).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ActQuant {
    /// f32 activations, weights widened in registers: equal to the f32 dot
    /// with the dequantized weights up to summation order (transformers').
    #[default]
    F32,
    /// Activations quantized once per matmul to 16-bit blocks, integer dots
    /// (`quant`): logits within ~1e-3 of f32.
    Int16,
    /// Activations quantized once per matmul to 8-bit blocks, byte dots
    /// (`vpmaddubsw`; llama.cpp's numerics): the fastest decode, logits
    /// within ~1e-2 of f32 (tests/default_model.rs measures it).
    Int8,
}

/// A row-major `[rows, cols]` matrix of weights.
#[derive(Clone, Debug)]
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl Weight {
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Weight {
        assert_eq!(data.len(), rows * cols);
        Weight { rows, cols, data: WeightData::F32(data) }
    }

    /// x · row r of f32 or bf16 rows (block rows go through `RowKernel`s or
    /// `quant::rows_dot`).
    #[inline]
    fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let (a, b) = (r * self.cols, (r + 1) * self.cols);
        match &self.data {
            WeightData::F32(w) => dot_f32(x, &w[a..b]),
            WeightData::Bf16(w) => dot_bf16(x, &w[a..b]),
            _ => unreachable!("dot_row on block rows"),
        }
    }

    /// The part of a stack holding row `r`, and the row inside it.
    #[inline]
    fn part(parts: &[Weight], mut r: usize) -> (&Weight, usize) {
        for p in parts {
            if r < p.rows {
                return (p, r);
            }
            r -= p.rows;
        }
        panic!("row out of range")
    }

    /// The block-format storages of the rows, each with its first row and
    /// its kernel (one for `Blocks`, one per part for a `Stack`; parts in
    /// f32 or bf16 have no kernel).
    fn block_parts(&self) -> Vec<(usize, &Weight, Option<RowKernel>)> {
        match &self.data {
            WeightData::Blocks(ty, _) => vec![(0, self, Some(RowKernel::new(*ty)))],
            WeightData::Stack(parts) => {
                let mut first = 0;
                parts
                    .iter()
                    .map(|p| {
                        let k = match &p.data {
                            WeightData::Blocks(ty, _) => Some(RowKernel::new(*ty)),
                            _ => None,
                        };
                        first += p.rows;
                        (first - p.rows, p, k)
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Row `r` of block-format weights (or of a stack of them): its type and
    /// bytes. Panics on f32/bf16 rows.
    fn block_row(&self, r: usize) -> (GgmlType, &[u8]) {
        match &self.data {
            WeightData::Blocks(ty, w) => {
                let rb = self.data.row_bytes(self.cols);
                (*ty, &w[r * rb..(r + 1) * rb])
            }
            WeightData::Stack(parts) => {
                let (p, r) = Self::part(parts, r);
                p.block_row(r)
            }
            _ => unreachable!("block_row on f32 rows"),
        }
    }

    /// Rows `r..r + len` when they are block-format rows of one type
    /// stored together (one part of a stack): the type and their bytes.
    fn block_run(&self, r: usize, len: usize) -> Option<(GgmlType, &[u8])> {
        match &self.data {
            WeightData::Blocks(ty, w) => {
                let rb = self.data.row_bytes(self.cols);
                Some((*ty, &w[r * rb..(r + len) * rb]))
            }
            WeightData::Stack(parts) => {
                let (p, r) = Self::part(parts, r);
                if r + len <= p.rows { p.block_run(r, len) } else { None }
            }
            _ => None,
        }
    }

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let (a, b) = (r * self.cols, (r + 1) * self.cols);
        match &self.data {
            WeightData::F32(w) => out.copy_from_slice(&w[a..b]),
            WeightData::Bf16(w) => out.iter_mut().zip(&w[a..b]).for_each(|(o, v)| *o = v.to_f32()),
            WeightData::Blocks(ty, w) => {
                let rb = self.data.row_bytes(self.cols);
                widen_into(*ty, &w[r * rb..(r + 1) * rb], out)
            }
            WeightData::Stack(parts) => {
                let (p, r) = Self::part(parts, r);
                p.row_into(r, out)
            }
        }
    }

    /// The whole matrix as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.rows * self.cols];
        for (r, o) in v.chunks_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, o);
        }
        v
    }

    /// Stacks matrices with the same number of columns (e.g. q, k, v into
    /// qkv). Parts of one storage type keep it; mixed parts with blocks
    /// become a `Stack` (each keeps its blocks); other mixes become f32.
    pub fn concat_rows(parts: &[&Weight]) -> Weight {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols));
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = match &parts[0].data {
            WeightData::Bf16(_) if parts.iter().all(|p| matches!(p.data, WeightData::Bf16(_))) => {
                let mut v = Vec::with_capacity(rows * cols);
                parts.iter().for_each(|p| if let WeightData::Bf16(d) = &p.data { v.extend_from_slice(d) });
                WeightData::Bf16(v)
            }
            WeightData::Blocks(ty, _) if parts.iter().all(|p| matches!(&p.data, WeightData::Blocks(t, _) if t == ty)) => {
                let mut v = Vec::with_capacity(parts.iter().map(|p| p.bytes()).sum());
                parts.iter().for_each(|p| if let WeightData::Blocks(_, d) = &p.data { v.extend_from_slice(d) });
                WeightData::Blocks(*ty, v)
            }
            _ if parts.iter().any(|p| p.data.has_blocks()) => WeightData::Stack(parts.iter().map(|&p| p.clone()).collect()),
            _ => WeightData::F32(parts.iter().flat_map(|p| p.to_f32()).collect()),
        };
        Weight { rows, cols, data }
    }

    pub fn bytes(&self) -> usize {
        if let WeightData::Stack(parts) = &self.data {
            return parts.iter().map(Weight::bytes).sum();
        }
        self.rows * self.data.row_bytes(self.cols)
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint elements (their own columns) of the buffer.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `SyncPtr`).
    #[inline]
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Rows of x from which f32 and bf16 weights go through `gemm`.
const GEMM_MIN_M: usize = 8;
/// Rows of x from which block-format weights are widened to f32 a task's
/// rows at a time and go through `gemm` (prefill chunks). Below it, from
/// `TILE_MIN_M` rows, `tile::NR` weight rows at a time are widened into L1
/// scratch and met by `tile::MR` rows of x per `tile::dots` call; below
/// that (single-sequence decode) the row kernels widen each weight value in
/// registers. Both thresholds measured with `cargo bench --bench cpu --
/// "matmul q4"` (the default model's Q4_1 MLP and a Q4_K shape, 2 threads):
/// at m = 16 tiles take 0.48 ms where row kernels take 0.96 and gemm 0.77;
/// at m = 64 tiles 1.74 ms (Q4_1) / 3.03 ms (Q4_K) against gemm's 1.87 /
/// 3.77, at m = 128 gemm leads (3.28 / 5.72 against 3.47 / 5.93).
const BLOCK_GEMM_MIN_M: usize = 96;
/// See `BLOCK_GEMM_MIN_M`.
const TILE_MIN_M: usize = 4;

/// y[m, n] = x[m, k] · Wᵀ + bias, exact f32 activations.
pub fn matmul(x: &[f32], m: usize, w: &Weight, bias: Option<&[f32]>, y: &mut [f32]) {
    matmul_with(x, m, w, bias, y, ActQuant::F32)
}

/// y[m, n] = x[m, k] · Wᵀ + bias; `act` chooses how activations meet
/// block-format weights below `TILE_MIN_M` rows.
pub fn matmul_with(x: &[f32], m: usize, w: &Weight, bias: Option<&[f32]>, y: &mut [f32], act: ActQuant) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: x is not [m, k]");
    assert_eq!(y.len(), m * n, "matmul: y is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
    #[cfg(target_arch = "x86_64")]
    if act == ActQuant::Int8 && m >= TILE_MIN_M && k % quant::QK == 0 && w.data.all_blocks() && super::quant_vnni::available() {
        return matmul_vnni(x, m, w, bias, y);
    }
    let threads = super::pool::threads();
    // Enough blocks to balance, few enough to amortise task overhead.
    let block = (n / (threads * 8)).clamp(4, 256);
    let blocks = w.data.has_blocks();
    // With enough rows of x the work is a real GEMM: the task's block of
    // weight rows (widened to f32 once when stored otherwise) goes through
    // the `gemm` crate's register-blocked kernels.
    let use_gemm = m >= if blocks { BLOCK_GEMM_MIN_M } else { GEMM_MIN_M };
    let quantized = act != ActQuant::F32 && blocks && m < TILE_MIN_M;
    let use_tiles = blocks && !use_gemm && m >= TILE_MIN_M;
    let parts = if use_gemm || use_tiles { Vec::new() } else { w.block_parts() };
    // Block-format weights: x quantized (Int16, Int8) or summed by 32 (Q4_1,
    // Q4_K) once, here, for every task.
    let (xq16, xq8): (Vec<ActBlock>, Vec<Act8Block>) = match act {
        ActQuant::Int16 if quantized => (quantize_rows(x, k), Vec::new()),
        ActQuant::Int8 if quantized => (Vec::new(), quantize_rows(x, k)),
        _ => (Vec::new(), Vec::new()),
    };
    let xsums: Vec<f32> = if !quantized && parts.iter().any(|(_, _, kn)| kn.is_some_and(|kn| kn.needs_sums)) {
        x.chunks(k).flat_map(block_sums).collect()
    } else {
        Vec::new()
    };
    let kb = k.div_ceil(quant::QK);
    let out = SyncPtr(y.as_mut_ptr());
    let put = |i: usize, j: usize, v: f32| {
        // SAFETY: (i, j) is in bounds and column j belongs to this task only.
        unsafe { *out.ptr().add(i * n + j) = v + bias.map_or(0.0, |b| b[j]) };
    };
    super::pool::run(n.div_ceil(block), |bi, _| {
        let out = out;
        let (j0, j1) = (bi * block, ((bi + 1) * block).min(n));
        if use_gemm {
            // y[:, j0..j1] = x · wbᵀ, wb = rows j0..j1 of W as f32.
            let gemm = |wb: &[f32]| {
                // SAFETY: y[i, j0..j1] for all i is this task's own region of
                // the [m, n] buffer; x is [m, k] and wb is [j1-j0, k], read
                // as its transpose (row stride 1, column stride k).
                unsafe {
                    gemm::gemm(
                        m, j1 - j0, k,
                        out.0.add(j0), 1, n as isize, false,
                        x.as_ptr(), 1, k as isize,
                        wb.as_ptr(), k as isize, 1,
                        0.0, 1.0, false, false, false,
                        gemm::Parallelism::None,
                    );
                }
            };
            match &w.data {
                WeightData::F32(d) => gemm(&d[j0 * k..j1 * k]),
                _ => {
                    // Widened into per-thread scratch, reused across calls.
                    thread_local! { static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) }; }
                    WIDE.with(|s| {
                        let mut s = s.borrow_mut();
                        s.resize((j1 - j0) * k, 0.0);
                        for (j, row) in (j0..j1).zip(s.chunks_mut(k)) {
                            w.row_into(j, row);
                        }
                        gemm(&s);
                    })
                }
            }
            if let Some(b) = bias {
                for i in 0..m {
                    // SAFETY: as above.
                    let yr = unsafe { std::slice::from_raw_parts_mut(out.0.add(i * n + j0), j1 - j0) };
                    yr.iter_mut().zip(&b[j0..j1]).for_each(|(y, b)| *y += b);
                }
            }
            return;
        }
        // Block formats, a few rows of x: NR weight rows at a time widened
        // into per-thread scratch (in L1), met by MR rows of x per tile.
        if use_tiles {
            thread_local! { static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) }; }
            ROWS.with(|s| {
                let mut s = s.borrow_mut();
                s.resize(tile::NR * k, 0.0);
                let mut o = [[0f32; tile::NR]; tile::MR];
                for c0 in (j0..j1).step_by(tile::NR) {
                    let nr = (j1 - c0).min(tile::NR);
                    for (j, row) in (c0..c0 + nr).zip(s.chunks_mut(k)) {
                        w.row_into(j, row);
                    }
                    for i0 in (0..m).step_by(tile::MR) {
                        let mr = (m - i0).min(tile::MR);
                        tile::dots(&x[i0 * k..], k, mr, &s, k, nr, k, &mut o);
                        for (i, oi) in o[..mr].iter().enumerate() {
                            for (j, v) in oi[..nr].iter().enumerate() {
                                put(i0 + i, c0 + j, *v);
                            }
                        }
                    }
                }
            });
            return;
        }
        // Block formats, quantized activations: each part's share of j0..j1
        // against each row of x, one kernel call for all its rows.
        if quantized {
            let mut o = [0f32; 64];
            for &(first, p, _) in &parts {
                let (a, b) = (j0.max(first), j1.min(first + p.rows));
                for c0 in (a..b).step_by(o.len()) {
                    let c1 = (c0 + o.len()).min(b);
                    for i in 0..m {
                        let xi = &x[i * k..(i + 1) * k];
                        let o = &mut o[..c1 - c0];
                        match &p.data {
                            WeightData::Blocks(ty, wd) => {
                                let (rb, r0) = (p.data.row_bytes(k), c0 - first);
                                let rows = &wd[r0 * rb..(r0 + o.len()) * rb];
                                match act {
                                    ActQuant::Int8 => quant::rows_dot(*ty, rows, rb, &xq8[i * kb..(i + 1) * kb], o),
                                    _ => quant::rows_dot(*ty, rows, rb, &xq16[i * kb..(i + 1) * kb], o),
                                }
                            }
                            _ => o.iter_mut().zip(c0..c1).for_each(|(o, j)| *o = p.dot_row(j - first, xi)),
                        }
                        for (j, v) in (c0..c1).zip(o.iter()) {
                            put(i, j, *v);
                        }
                    }
                }
            }
            return;
        }
        // Block formats with f32 activations: the row kernels, each weight
        // row meeting MAX_ROWS rows of x per call.
        if !parts.is_empty() {
            let mut o = [0f32; MAX_ROWS];
            // Each part's share of j0..j1, its rows walked in one pass.
            for &(first, p, kernel) in &parts {
                let (a, b) = (j0.max(first), j1.min(first + p.rows));
                if a >= b {
                    continue;
                }
                let Some(kernel) = kernel else {
                    for j in a..b {
                        for i in 0..m {
                            put(i, j, p.dot_row(j - first, &x[i * k..(i + 1) * k]));
                        }
                    }
                    continue;
                };
                let WeightData::Blocks(_, wd) = &p.data else { unreachable!("a kernel is for blocks") };
                let rb = p.data.row_bytes(k);
                for (j, row) in (a..b).zip(wd[(a - first) * rb..(b - first) * rb].chunks_exact(rb)) {
                    for i0 in (0..m).step_by(MAX_ROWS) {
                        let r = (m - i0).min(MAX_ROWS);
                        let xs = xsums.get(i0 * kb..(i0 + r) * kb).unwrap_or(&[]);
                        kernel.dots(&x[i0 * k..(i0 + r) * k], xs, row, &mut o[..r]);
                        for (t, v) in o[..r].iter().enumerate() {
                            put(i0 + t, j, *v);
                        }
                    }
                }
            }
            return;
        }
        // f32 / bf16 weights below GEMM_MIN_M rows.
        for j in j0..j1 {
            for i in 0..m {
                put(i, j, w.dot_row(j, &x[i * k..(i + 1) * k]));
            }
        }
    });
}

/// `matmul_with` for 8-bit activations from `TILE_MIN_M` rows on AVX-512
/// VNNI (`quant_vnni`): x is quantized to 8-bit blocks and transposed into
/// groups of `LANES` rows once; each task unpacks its weight rows `NR` at a
/// time to bytes and runs every group against them.
#[cfg(target_arch = "x86_64")]
fn matmul_vnni(x: &[f32], m: usize, w: &Weight, bias: Option<&[f32]>, y: &mut [f32]) {
    use super::quant_vnni::{ActLanes, WRows, LANES, NR};
    let (n, k) = (w.rows, w.cols);
    let q8: Vec<Act8Block> = quantize_rows(x, k);
    let kb = k / quant::QK;
    let groups: Vec<ActLanes> = (0..m).step_by(LANES).map(|i0| ActLanes::new(&q8[i0 * kb..], (m - i0).min(LANES), k)).collect();
    // Whole tiles per task, enough tasks to balance.
    let block = (n / (super::pool::threads() * 8)).clamp(NR, 256).next_multiple_of(NR);
    let out = SyncPtr(y.as_mut_ptr());
    super::pool::run(n.div_ceil(block), |bi, _| {
        let out = out;
        let (j0, j1) = (bi * block, ((bi + 1) * block).min(n));
        thread_local! { static TILE: std::cell::RefCell<WRows> = std::cell::RefCell::new(WRows::default()); }
        TILE.with(|t| {
            let mut wr = t.borrow_mut();
            let mut o = [[0f32; LANES]; NR];
            for c0 in (j0..j1).step_by(NR) {
                let nr = (j1 - c0).min(NR);
                if let Some((ty, rows)) = w.block_run(c0, nr) {
                    wr.reset(k, quant::scale_block(ty), nr);
                    for (j, row) in rows.chunks_exact(rows.len() / nr).enumerate() {
                        wr.set_row(j, ty, row);
                    }
                } else {
                    // a tile across parts of a stack
                    let kbs = if (c0..c0 + nr).all(|j| quant::scale_block(w.block_row(j).0) == 32) { 32 } else { 16 };
                    wr.reset(k, kbs, nr);
                    for j in 0..nr {
                        let (ty, row) = w.block_row(c0 + j);
                        wr.set_row(j, ty, row);
                    }
                }
                for (g, lanes) in groups.iter().enumerate() {
                    lanes.tile(&wr, &mut o);
                    for l in 0..lanes.rows {
                        // SAFETY: row g·LANES + l < m, columns c0..c0 + nr
                        // <= n of y; tasks write disjoint columns.
                        let yr = unsafe { std::slice::from_raw_parts_mut(out.ptr().add((g * LANES + l) * n + c0), nr) };
                        for (j, y) in yr.iter_mut().enumerate() {
                            *y = o[j][l] + bias.map_or(0.0, |b| b[c0 + j]);
                        }
                    }
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, b: Option<&[f32]>) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
                y[i * n + j] = s + b.map_or(0.0, |b| b[j] as f64);
            }
        }
        y
    }

    #[test]
    fn matmul_matches_naive_reference() {
        for &(m, n, k) in &[(1, 1, 1), (1, 37, 64), (5, 300, 96), (70, 33, 17), (3, 1024, 576)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 113) as f32 / 56.0 - 1.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let want = reference(&x, m, &w, n, k, Some(&b));
            let mut y = vec![f32::NAN; m * n];
            matmul(&x, m, &Weight::f32(n, k, w.clone()), Some(&b), &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{m}x{n}x{k}: {a} vs {b}");
            }
            let wb = Weight { rows: n, cols: k, data: WeightData::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect()) };
            let wr: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let want = reference(&x, m, &wr, n, k, None);
            matmul(&x, m, &wb, None, &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()));
            }
        }
    }

    #[test]
    fn mixed_block_types_stack_and_match_their_f32_values() {
        use crate::backend::cpu::quant::random_blocks;
        let k = 256;
        let part = |ty: GgmlType, rows: usize, seed| Weight { rows, cols: k, data: WeightData::Blocks(ty, random_blocks(ty, rows * k / 256 * (256 / ty.block_layout().unwrap().0), seed)) };
        let (q, kk, v) = (part(GgmlType::Q4_K, 8, 1), part(GgmlType::Q4_K, 4, 2), part(GgmlType::Q6_K, 4, 3));
        let qkv = Weight::concat_rows(&[&q, &kk, &v]);
        assert!(matches!(qkv.data, WeightData::Stack(_)));
        assert_eq!((qkv.rows, qkv.bytes()), (16, q.bytes() + kk.bytes() + v.bytes()));
        let wf = Weight::f32(16, k, [q.to_f32(), kk.to_f32(), v.to_f32()].concat());
        for m in [1usize, 9] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect();
            let (mut ys, mut yf) = (vec![0.0; m * 16], vec![0.0; m * 16]);
            matmul(&x, m, &wf, None, &mut yf);
            for (act, tol) in [(ActQuant::F32, 1e-4), (ActQuant::Int16, 1e-4), (ActQuant::Int8, 1e-2)] {
                matmul_with(&x, m, &qkv, None, &mut ys, act);
                let wv = wf.to_f32();
                for (r, (a, b)) in ys.iter().zip(&yf).enumerate() {
                    let (i, j) = (r / 16, r % 16);
                    let mag: f32 = x[i * k..(i + 1) * k].iter().zip(&wv[j * k..(j + 1) * k]).map(|(x, w)| (x * w).abs()).sum();
                    assert!((a - b).abs() <= tol * mag, "{act:?} m={m} y[{i},{j}]: {a} vs {b} (sum |x*w| {mag})");
                }
            }
        }
    }

    /// 8-bit activations give the same products at every m: matmuls of 4+
    /// rows (AVX-512 VNNI tiles where the CPU has them) equal the same rows
    /// one at a time (the row kernels), over a stack of parts whose types
    /// change inside a tile (Q4_1 | Q6_K | Q8_0 | Q4_K) and with a bias.
    #[test]
    fn int8_matmuls_of_many_rows_equal_their_rows_one_at_a_time() {
        use crate::backend::cpu::quant::random_blocks;
        let k = 512;
        let part = |ty: GgmlType, rows: usize, seed| Weight { rows, cols: k, data: WeightData::Blocks(ty, random_blocks(ty, rows * k / ty.block_layout().unwrap().0, seed)) };
        let parts = [part(GgmlType::Q4_1, 13, 1), part(GgmlType::Q6_K, 6, 2), part(GgmlType::Q8_0, 21, 3), part(GgmlType::Q4_K, 9, 4)];
        let w = Weight::concat_rows(&parts.iter().collect::<Vec<_>>());
        let n = w.rows;
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 2.0).collect();
        for m in [4usize, 16, 23, 40] {
            let x: Vec<f32> = (0..m * k).map(|i| (((i * 29) % 53) as f32 / 26.0 - 1.0) * if i % 61 == 0 { 9.0 } else { 1.0 }).collect();
            let mut all = vec![f32::NAN; m * n];
            matmul_with(&x, m, &w, Some(&bias), &mut all, ActQuant::Int8);
            let mut one = vec![f32::NAN; n];
            for i in 0..m {
                matmul_with(&x[i * k..(i + 1) * k], 1, &w, Some(&bias), &mut one, ActQuant::Int8);
                let mag: f32 = x[i * k..(i + 1) * k].iter().map(|v| v.abs()).sum();
                for j in 0..n {
                    let (a, b) = (all[i * n + j], one[j]);
                    assert!((a - b).abs() <= 1e-5 * (mag + b.abs()), "m={m} y[{i},{j}]: {a} vs {b} one row at a time");
                }
            }
        }
    }

    #[test]
    fn block_format_weights_match_their_f32_values() {
        use crate::backend::cpu::quant::random_blocks;
        let (n, k) = (70, 512);
        for (ti, ty) in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K].into_iter().enumerate() {
            let (be, _) = ty.block_layout().unwrap();
            let wq = Weight { rows: n, cols: k, data: WeightData::Blocks(ty, random_blocks(ty, n * k / be, 5 + ti as u32)) };
            let wf = Weight::f32(n, k, wq.to_f32());
            for m in [1usize, 2, 4, 7, 40, 64, 96] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 23) as f32 / 11.0 - 1.0).collect();
                let (mut yq, mut yf) = (vec![0.0; m * n], vec![0.0; m * n]);
                matmul(&x, m, &wf, None, &mut yf);
                for (act, tol) in [(ActQuant::F32, 1e-5), (ActQuant::Int16, 1e-4), (ActQuant::Int8, 1e-2)] {
                    matmul_with(&x, m, &wq, None, &mut yq, act);
                    // compared against the sum of |products|
                    for (r, (a, b)) in yq.iter().zip(&yf).enumerate() {
                        let (i, j) = (r / n, r % n);
                        let wr = &wf.to_f32()[j * k..(j + 1) * k];
                        let mag: f32 = x[i * k..(i + 1) * k].iter().zip(wr).map(|(x, w)| (x * w).abs()).sum();
                        assert!((a - b).abs() <= tol * mag.max(1e-3), "{} {act:?} m={m} row {r}: {a} vs {b}", ty.name());
                    }
                }
            }
        }
    }
}
