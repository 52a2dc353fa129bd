//! The emulated device's stand-in for cuBLAS: y[m, n] = x[m, k] · W[n, k]ᵀ
//! with bf16 operands and f32 accumulation, in the layouts of gemm.rs (all
//! row-major, as in Hugging Face), y rounded to bf16 (nearest even) or kept
//! in f32. Each output is one sequential f32 sum over k, so the result is
//! deterministic (a replayed graph gives the same bits). Work is split over
//! (row, column chunk) with rayon.

use crate::backend::cuda::device::Out;
use rayon::prelude::*;

/// Output columns per rayon task.
const COLS_PER_TASK: usize = 64;

fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Runs the GEMM over host memory.
///
/// # Safety
/// `x` must hold m*k bf16, `w` n*k bf16 and `y` m*n values of `out`'s type,
/// all readable (y writable) and `y` disjoint from `x` and `w`.
pub unsafe fn linear(y: u64, out: Out, x: u64, w: u64, [m, n, k]: [usize; 3]) {
    if m == 0 || n == 0 {
        return;
    }
    let xs = std::slice::from_raw_parts(x as *const u16, m * k);
    let ws = std::slice::from_raw_parts(w as *const u16, n * k);
    let chunks = n.div_ceil(COLS_PER_TASK);
    // Each task computes its (row, chunk) into a local buffer; results are
    // written to `y` by the task itself (disjoint ranges).
    (0..m * chunks).into_par_iter().for_each(|task| {
        let (row, chunk) = (task / chunks, task % chunks);
        let xr: Vec<f32> = xs[row * k..(row + 1) * k].iter().map(|&b| bf16_to_f32(b)).collect();
        let cols = chunk * COLS_PER_TASK..((chunk + 1) * COLS_PER_TASK).min(n);
        for col in cols {
            let wr = &ws[col * k..(col + 1) * k];
            let mut acc = 0f32;
            for (a, &b) in xr.iter().zip(wr) {
                acc += a * bf16_to_f32(b);
            }
            let at = row * n + col;
            // SAFETY: `at` < m*n and every task writes distinct indices.
            match out {
                Out::F32 => *(y as *mut f32).add(at) = acc,
                Out::Bf16 => *(y as *mut u16).add(at) = half::bf16::from_f32(acc).to_bits(),
            }
        }
    });
}

/// The f32 GEMM (`Device::linear_f32`): y[m, n] = x[m, k] · W[n, k]ᵀ, all
/// f32, one sequential f32 sum per output (deterministic).
///
/// # Safety
/// `x` must hold m*k f32, `w` n*k f32 and `y` m*n f32, all readable (y
/// writable), `y` disjoint from `x` and `w`.
pub unsafe fn linear_f32(y: u64, x: u64, w: u64, [m, n, k]: [usize; 3]) {
    if m == 0 || n == 0 {
        return;
    }
    let xs = std::slice::from_raw_parts(x as *const f32, m * k);
    let ws = std::slice::from_raw_parts(w as *const f32, n * k);
    let chunks = n.div_ceil(COLS_PER_TASK);
    (0..m * chunks).into_par_iter().for_each(|task| {
        let (row, chunk) = (task / chunks, task % chunks);
        let xr = &xs[row * k..(row + 1) * k];
        for col in chunk * COLS_PER_TASK..((chunk + 1) * COLS_PER_TASK).min(n) {
            let acc = xr.iter().zip(&ws[col * k..(col + 1) * k]).fold(0f32, |a, (&p, &q)| a + p * q);
            // SAFETY: row * n + col < m*n and every task writes distinct indices.
            *(y as *mut f32).add(row * n + col) = acc;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn to_f32s(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|b| b.to_f32()).collect()
    }

    #[test]
    fn matches_a_plain_triple_loop_and_rounds_to_nearest_even() {
        let (m, n, k) = (3, 130, 37);
        let x: Vec<bf16> = (0..m * k).map(|i| bf16::from_f32(((i * 7 % 13) as f32 - 6.0) / 8.0)).collect();
        let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(((i * 5 % 11) as f32 - 5.0) / 3.0)).collect();
        let mut y32 = vec![0f32; m * n];
        let mut y16 = vec![0u16; m * n];
        // SAFETY: sizes as documented.
        unsafe {
            linear(y32.as_mut_ptr() as u64, Out::F32, x.as_ptr() as u64, w.as_ptr() as u64, [m, n, k]);
            linear(y16.as_mut_ptr() as u64, Out::Bf16, x.as_ptr() as u64, w.as_ptr() as u64, [m, n, k]);
        }
        for r in 0..m {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i].to_f32() * w[c * k + i].to_f32()).sum();
                assert_eq!(y32[r * n + c], want, "({r}, {c})");
                assert_eq!(y16[r * n + c], bf16::from_f32(want).to_bits());
            }
        }
        // The f32 GEMM on the same values (exact in f32: small sums of bf16 products).
        let (xf, wf) = (to_f32s(&x), to_f32s(&w));
        let mut yf = vec![0f32; m * n];
        // SAFETY: sizes as documented.
        unsafe { linear_f32(yf.as_mut_ptr() as u64, xf.as_ptr() as u64, wf.as_ptr() as u64, [m, n, k]) };
        assert_eq!(yf, y32);
        // Sums halfway between two bf16 values go to the even one.
        for (x1, want) in [(1.0f32, 1.0f32), (1.0 + 1.0 / 128.0, 1.0 + 2.0 / 128.0)] {
            let x = [bf16::from_f32(x1), bf16::from_f32(1.0 / 256.0)];
            let w = [bf16::ONE, bf16::ONE];
            let mut y = [0u16];
            // SAFETY: sizes as documented.
            unsafe { linear(y.as_mut_ptr() as u64, Out::Bf16, x.as_ptr() as u64, w.as_ptr() as u64, [1, 1, 2]) };
            assert_eq!(bf16::from_bits(y[0]).to_f32(), want, "{x1} + 2^-8");
        }
    }
}
