//! Register-tiled dot products: `MR` rows of x against `NR` rows of W, both
//! along k, into `MR x NR` results: the inner kernel of matmuls of a few to a
//! few dozen tokens (a decode step of several sequences, short prefills),
//! where `gemm`'s packing does not pay off and one-dot-at-a-time kernels
//! reload each operand for every pair.
//!
//! ```text
//! x: MR rows, stride ldx      w: NR rows, stride ldw      (all f32, k values each)
//! out[i][j] = x_i · w_j
//! ```
//! With MR = 4, NR = 3 the AVX2 kernel keeps 12 accumulators in registers;
//! each k-step of 8 loads 7 vectors for 12 FMAs (one-dot-at-a-time kernels
//! load 2 per FMA). Measured: a 16-row Q4_1 matmul 0.48 ms against 0.96 ms
//! with the row kernels (docs/benchmarks.md).

/// x rows per tile.
pub const MR: usize = 4;
/// W rows per tile.
pub const NR: usize = 3;

/// `out[i][j] = x[i*ldx .. i*ldx+k] · w[j*ldw .. j*ldw+k]` for `i < mr`,
/// `j < nr` (`mr <= MR`, `nr <= NR`). Panics when a row is out of bounds.
pub fn dots(x: &[f32], ldx: usize, mr: usize, w: &[f32], ldw: usize, nr: usize, k: usize, out: &mut [[f32; NR]; MR]) {
    assert!((1..=MR).contains(&mr) && (1..=NR).contains(&nr));
    assert!(x.len() >= (mr - 1) * ldx + k && w.len() >= (nr - 1) * ldw + k, "tile::dots: rows out of bounds");
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        macro_rules! go {
            ($m:literal, $n:literal) => {
                // SAFETY: avx2 and fma were checked; the rows are in bounds (above).
                unsafe { x86::tile::<$m, $n>(x.as_ptr(), ldx, w.as_ptr(), ldw, k, out) }
            };
        }
        match (mr, nr) {
            (4, 3) => go!(4, 3),
            (4, 2) => go!(4, 2),
            (4, 1) => go!(4, 1),
            (3, 3) => go!(3, 3),
            (3, 2) => go!(3, 2),
            (3, 1) => go!(3, 1),
            (2, 3) => go!(2, 3),
            (2, 2) => go!(2, 2),
            (2, 1) => go!(2, 1),
            (1, 3) => go!(1, 3),
            (1, 2) => go!(1, 2),
            _ => go!(1, 1),
        }
        return;
    }
    for i in 0..mr {
        for j in 0..nr {
            out[i][j] = super::simd::dot_f32(&x[i * ldx..i * ldx + k], &w[j * ldw..j * ldw + k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::quant_x86::hsum4;
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 + FMA; x rows `0..M` at stride ldx and w rows `0..N` at stride
    /// ldw hold k values each.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const M: usize, const N: usize>(x: *const f32, ldx: usize, w: *const f32, ldw: usize, k: usize, out: &mut [[f32; NR]; MR]) {
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        let k8 = k / 8 * 8;
        let mut t = 0;
        while t < k8 {
            let mut wv = [_mm256_setzero_ps(); N];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(j * ldw + t));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(i * ldx + t));
                for j in 0..N {
                    a[j] = _mm256_fmadd_ps(xv, wv[j], a[j]);
                }
            }
            t += 8;
        }
        // Lane sums four accumulators at a time (row-major over the tile).
        let mut flat = [_mm256_setzero_ps(); MR * NR];
        for i in 0..M {
            flat[i * N..(i + 1) * N].copy_from_slice(&acc[i]);
        }
        let mut sums = [0f32; MR * NR];
        for q in 0..(M * N).div_ceil(4) {
            let f = &flat[4 * q..];
            _mm_storeu_ps(sums.as_mut_ptr().add(4 * q), hsum4(f[0], f[1], f[2], f[3]));
        }
        for i in 0..M {
            for j in 0..N {
                let mut s = sums[i * N + j];
                for u in k8..k {
                    s += *x.add(i * ldx + u) * *w.add(j * ldw + u);
                }
                out[i][j] = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_shape_matches_f64_dots() {
        for k in [1usize, 7, 8, 33, 576] {
            let x: Vec<f32> = (0..MR * (k + 3)).map(|i| ((i * 37 % 19) as f32 - 9.0) / 5.0).collect();
            let w: Vec<f32> = (0..NR * (k + 5)).map(|i| ((i * 53 % 23) as f32 - 11.0) / 7.0).collect();
            for mr in 1..=MR {
                for nr in 1..=NR {
                    let mut out = [[f32::NAN; NR]; MR];
                    dots(&x, k + 3, mr, &w, k + 5, nr, k, &mut out);
                    for i in 0..mr {
                        for j in 0..nr {
                            let want: f64 = (0..k).map(|u| x[i * (k + 3) + u] as f64 * w[j * (k + 5) + u] as f64).sum();
                            assert!((out[i][j] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "k={k} {mr}x{nr} [{i}][{j}]: {} vs {want}", out[i][j]);
                        }
                    }
                }
            }
        }
    }
}
