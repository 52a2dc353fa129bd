//! y = x · Wᵀ (+ b): the CPU matmul behind every linear layer.
//!
//! ```text
//! x: [m, k] f32 row-major (m tokens)      W: [n, k] (Hugging Face Linear layout)
//! y: [m, n] f32 row-major
//! ```
//! Work is split over blocks of W's rows (rayon); inside a block, x is walked
//! in tiles of rows so a tile stays in cache while the block's weight rows
//! stream past. Each task writes a disjoint set of columns of y.

use super::simd::{dot_bf16, dot_f32};
use half::bf16;
use rayon::prelude::*;

/// Weight storage of a matrix. bf16 weights are widened exactly in the dot product.
#[derive(Clone, Debug)]
pub enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
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

    #[inline]
    fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let (a, b) = (r * self.cols, (r + 1) * self.cols);
        match &self.data {
            WeightData::F32(w) => dot_f32(x, &w[a..b]),
            WeightData::Bf16(w) => dot_bf16(x, &w[a..b]),
        }
    }

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let (a, b) = (r * self.cols, (r + 1) * self.cols);
        match &self.data {
            WeightData::F32(w) => out.copy_from_slice(&w[a..b]),
            WeightData::Bf16(w) => out.iter_mut().zip(&w[a..b]).for_each(|(o, v)| *o = v.to_f32()),
        }
    }

    /// Stacks matrices with the same number of columns (e.g. q, k, v into qkv).
    /// The result is f32 unless all parts are bf16.
    pub fn concat_rows(parts: &[&Weight]) -> Weight {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols));
        let rows = parts.iter().map(|p| p.rows).sum();
        if parts.iter().all(|p| matches!(p.data, WeightData::Bf16(_))) {
            let mut v = Vec::with_capacity(rows * cols);
            for p in parts {
                if let WeightData::Bf16(d) = &p.data {
                    v.extend_from_slice(d);
                }
            }
            return Weight { rows, cols, data: WeightData::Bf16(v) };
        }
        let mut v = Vec::with_capacity(rows * cols);
        for p in parts {
            match &p.data {
                WeightData::F32(d) => v.extend_from_slice(d),
                WeightData::Bf16(d) => v.extend(d.iter().map(|x| x.to_f32())),
            }
        }
        Weight::f32(rows, cols, v)
    }

    pub fn bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(d) => d.len() * 4,
            WeightData::Bf16(d) => d.len() * 2,
        }
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint elements (their own columns) of the buffer.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

const X_TILE: usize = 32;

/// y[m, n] = x[m, k] · Wᵀ + bias.
pub fn matmul(x: &[f32], m: usize, w: &Weight, bias: Option<&[f32]>, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: x is not [m, k]");
    assert_eq!(y.len(), m * n, "matmul: y is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
    let threads = rayon::current_num_threads().max(1);
    // Enough blocks to balance, few enough to amortise task overhead.
    let block = (n / (threads * 8)).clamp(4, 256);
    let out = SyncPtr(y.as_mut_ptr());
    (0..n.div_ceil(block)).into_par_iter().for_each(|bi| {
        let out = out;
        let (j0, j1) = (bi * block, ((bi + 1) * block).min(n));
        for i0 in (0..m).step_by(X_TILE) {
            let i1 = (i0 + X_TILE).min(m);
            for j in j0..j1 {
                let b = bias.map_or(0.0, |b| b[j]);
                for i in i0..i1 {
                    let v = w.dot_row(j, &x[i * k..(i + 1) * k]) + b;
                    // SAFETY: (i, j) is in bounds and column j belongs to this task only.
                    unsafe { *out.0.add(i * n + j) = v };
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
}
