//! y = x · Wᵀ (+ b): the CPU matmul behind every linear layer.
//!
//! ```text
//! x: [m, k] f32 row-major (m tokens)      W: [n, k] (Hugging Face Linear layout)
//! y: [m, n] f32 row-major
//! ```
//! Work is split over blocks of W's rows (tasks of the CPU `pool`, handed
//! out one at a time, so the 49152-row output projection is shared by rows); inside a block, x is walked
//! in tiles of rows so a tile stays in cache while the block's weight rows
//! stream past. Each task writes a disjoint set of columns of y.

use super::quant::{self, quantize_rows, vec_dot, ActBlock};
use super::quant_f32::{block_sums, dot_f32_blocks, row_kernel};
use super::simd::{dot_bf16, dot_f32};
use crate::model::dequant::{dequantize_into, GgmlType};
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
    fn has_blocks(&self) -> bool {
        match self {
            WeightData::Blocks(..) => true,
            WeightData::Stack(parts) => parts.iter().any(|p| p.data.has_blocks()),
            _ => false,
        }
    }

    /// Whether any rows are Q4_1 blocks (whose f32 dot wants x's block sums).
    fn has_q4_1(&self) -> bool {
        match self {
            WeightData::Blocks(ty, _) => *ty == GgmlType::Q4_1,
            WeightData::Stack(parts) => parts.iter().any(|p| p.data.has_q4_1()),
            _ => false,
        }
    }
}

/// How the activations of a matmul of fewer than `GEMM_MIN_M` rows meet
/// block-format weights (`kiln … --cpu-activations`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ActQuant {
    /// f32 activations, weights widened in registers: equal to the f32 dot
    /// with the dequantized weights up to summation order (transformers').
    #[default]
    F32,
    /// Activations quantized once per matmul to 16-bit blocks, integer dots
    /// (`quant`): fewer instructions per weight, logits within ~1e-3 of f32.
    Int16,
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

    /// x · row r; `xq` holds x as activation blocks (block formats with
    /// `ActQuant::Int16`), `xsum` its 32-wide sums (Q4_1 with `ActQuant::F32`).
    #[inline]
    fn dot_row(&self, r: usize, x: &[f32], xsum: &[f32], xq: &[ActBlock]) -> f32 {
        let (a, b) = (r * self.cols, (r + 1) * self.cols);
        match &self.data {
            WeightData::F32(w) => dot_f32(x, &w[a..b]),
            WeightData::Bf16(w) => dot_bf16(x, &w[a..b]),
            WeightData::Blocks(ty, w) => {
                let rb = self.data.row_bytes(self.cols);
                let row = &w[r * rb..(r + 1) * rb];
                if xq.is_empty() {
                    dot_f32_blocks(*ty, x, xsum, row)
                } else {
                    vec_dot(*ty, row, xq)
                }
            }
            WeightData::Stack(parts) => {
                let (p, r) = Self::part(parts, r);
                p.dot_row(r, x, xsum, xq)
            }
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

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let (a, b) = (r * self.cols, (r + 1) * self.cols);
        match &self.data {
            WeightData::F32(w) => out.copy_from_slice(&w[a..b]),
            WeightData::Bf16(w) => out.iter_mut().zip(&w[a..b]).for_each(|(o, v)| *o = v.to_f32()),
            WeightData::Blocks(ty, w) => {
                let rb = self.data.row_bytes(self.cols);
                dequantize_into(*ty, &w[r * rb..(r + 1) * rb], out)
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

const X_TILE: usize = 32;
/// Rows of x from which the matmul runs as a GEMM.
const GEMM_MIN_M: usize = 8;

/// y[m, n] = x[m, k] · Wᵀ + bias, exact f32 activations.
pub fn matmul(x: &[f32], m: usize, w: &Weight, bias: Option<&[f32]>, y: &mut [f32]) {
    matmul_with(x, m, w, bias, y, ActQuant::F32)
}

/// y[m, n] = x[m, k] · Wᵀ + bias; `act` chooses how activations meet
/// block-format weights below `GEMM_MIN_M` rows.
pub fn matmul_with(x: &[f32], m: usize, w: &Weight, bias: Option<&[f32]>, y: &mut [f32], act: ActQuant) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: x is not [m, k]");
    assert_eq!(y.len(), m * n, "matmul: y is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
    let threads = super::pool::threads();
    // Enough blocks to balance, few enough to amortise task overhead.
    let block = (n / (threads * 8)).clamp(4, 256);
    // Block-format weights: x quantized once, here, for every task.
    let (xq, xsums): (Vec<ActBlock>, Vec<f32>) = match (&w.data, act) {
        (d, ActQuant::Int16) if m < GEMM_MIN_M && d.has_blocks() => (quantize_rows(x, k), Vec::new()),
        (d, ActQuant::F32) if m < GEMM_MIN_M && d.has_q4_1() => (Vec::new(), x.chunks(k).flat_map(block_sums).collect()),
        _ => (Vec::new(), Vec::new()),
    };
    let kb = k.div_ceil(quant::QK);
    let out = SyncPtr(y.as_mut_ptr());
    // With several rows of x the work is a real GEMM: the task's block of
    // weight rows (widened to f32 once when stored otherwise) goes through
    // the `gemm` crate's register-blocked kernels.
    let use_gemm = m >= GEMM_MIN_M;
    super::pool::run(n.div_ceil(block), |bi, _| {
        let out = out;
        let (j0, j1) = (bi * block, ((bi + 1) * block).min(n));
        if use_gemm {
            let widened;
            let wb: &[f32] = match &w.data {
                WeightData::F32(d) => &d[j0 * k..j1 * k],
                _ => {
                    let mut v = vec![0f32; (j1 - j0) * k];
                    for (j, row) in (j0..j1).zip(v.chunks_mut(k)) {
                        w.row_into(j, row);
                    }
                    widened = v;
                    &widened
                }
            };
            // SAFETY: y[i, j0..j1] for all i is this task's own region of the
            // [m, n] buffer; x is [m, k] and wb is [j1-j0, k], read as its
            // transpose [k, j1-j0] (row stride 1, column stride k).
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
            if let Some(b) = bias {
                for i in 0..m {
                    // SAFETY: as above.
                    let yr = unsafe { std::slice::from_raw_parts_mut(out.0.add(i * n + j0), j1 - j0) };
                    yr.iter_mut().zip(&b[j0..j1]).for_each(|(y, b)| *y += b);
                }
            }
            return;
        }
        // The common decode case (one block type, f32 activations, a fast
        // kernel): the kernel and row size picked once for the whole task.
        if let (WeightData::Blocks(ty, wd), true) = (&w.data, xq.is_empty()) {
            if let Some(kernel) = row_kernel(*ty) {
                let rb = w.data.row_bytes(k);
                for j in j0..j1 {
                    let row = &wd[j * rb..(j + 1) * rb];
                    for i in 0..m {
                        let xs = xsums.get(i * kb..(i + 1) * kb).unwrap_or(&[]);
                        let v = kernel(&x[i * k..(i + 1) * k], xs, row) + bias.map_or(0.0, |b| b[j]);
                        // SAFETY: (i, j) is in bounds and column j belongs to this task only.
                        unsafe { *out.0.add(i * n + j) = v };
                    }
                }
                return;
            }
        }
        let put = |i: usize, j: usize, v: f32| {
            // SAFETY: (i, j) is in bounds and column j belongs to this task only.
            unsafe { *out.0.add(i * n + j) = v + bias.map_or(0.0, |b| b[j]) };
        };
        for i0 in (0..m).step_by(X_TILE) {
            let i1 = (i0 + X_TILE).min(m);
            for j in j0..j1 {
                for i in i0..i1 {
                    let xq = xq.get(i * kb..(i + 1) * kb).unwrap_or(&[]);
                    let xs = xsums.get(i * kb..(i + 1) * kb).unwrap_or(&[]);
                    put(i, j, w.dot_row(j, &x[i * k..(i + 1) * k], xs, xq));
                }
            }
        }
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
            for act in [ActQuant::F32, ActQuant::Int16] {
                matmul_with(&x, m, &qkv, None, &mut ys, act);
                let wv = wf.to_f32();
                for (r, (a, b)) in ys.iter().zip(&yf).enumerate() {
                    let (i, j) = (r / 16, r % 16);
                    let mag: f32 = x[i * k..(i + 1) * k].iter().zip(&wv[j * k..(j + 1) * k]).map(|(x, w)| (x * w).abs()).sum();
                    assert!((a - b).abs() <= 1e-4 * mag, "{act:?} m={m} y[{i},{j}]: {a} vs {b} (sum |x*w| {mag})");
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
            for m in [1usize, 2, 4, 40] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 23) as f32 / 11.0 - 1.0).collect();
                let (mut yq, mut yf) = (vec![0.0; m * n], vec![0.0; m * n]);
                matmul(&x, m, &wf, None, &mut yf);
                for (act, tol) in [(ActQuant::F32, 1e-5), (ActQuant::Int16, 1e-4)] {
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
