//! The CPU backend's vector loops: dot products (the inner loop of every
//! matmul), softmax, attention's value sums (`weighted_rows`) and the gated
//! MLP's SiLU. AVX2+FMA(+F16C) when the CPU has them (checked once at run
//! time), portable code otherwise.

use half::bf16;
use std::sync::OnceLock;

pub(crate) fn has_avx2_fma() -> bool {
    static FLAG: OnceLock<bool> = OnceLock::new();
    *FLAG.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// sum_i a[i] * b[i]; `a.len() == b.len()`.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        return unsafe { x86::dot_f32(a, b) };
    }
    dot_f32_portable(a, b)
}

/// sum_i a[i] * f32(b[i]); bf16 -> f32 is exact, so this equals `dot_f32`
/// on the widened weights.
#[inline]
pub fn dot_bf16(a: &[f32], b: &[bf16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        return unsafe { x86::dot_bf16(a, b) };
    }
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y.to_f32();
    }
    s
}

fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// y[i] += alpha * x[i]
#[inline]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += alpha * b;
    }
}

/// Attention's value sum for a group of heads over rows gathered from the
/// paged cache: `o[g*hd + c] = Σ_p s[g*n + p] * v[offs[p] + c]` for every
/// head `g < heads` and `c < hd`, `n = offs.len()`.
///
/// With AVX2 the outputs of up to 3 heads x 32 columns stay in 12 registers
/// while the rows stream past, so each V row is loaded once per 32 columns
/// for all heads (one `axpy` per head and row loads and stores `o` every
/// time). Panics when a slice is short.
pub fn weighted_rows(o: &mut [f32], heads: usize, hd: usize, s: &[f32], v: &[f32], offs: &[usize]) {
    let n = offs.len();
    assert!(o.len() == heads * hd && s.len() >= heads * n, "weighted_rows: o or s is short");
    assert!(offs.iter().all(|&a| a + hd <= v.len()), "weighted_rows: a row is out of bounds");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: avx2 and fma were checked; every row and output is in bounds (above).
        unsafe { x86::weighted_rows(o, heads, hd, s, v, offs) };
        return;
    }
    o.fill(0.0);
    for (p, &a) in offs.iter().enumerate() {
        for (g, og) in o.chunks_mut(hd).enumerate() {
            axpy(og, s[g * n + p], &v[a..a + hd]);
        }
    }
}

/// `o[i] = silu(g[i]) * u[i]`, silu(x) = x / (1 + e^-x) (the gated MLP of
/// Llama-family models). With AVX2 e^-x is `x86::exp8`'s (within a few ulp
/// of `f32::exp`).
pub fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
    assert!(g.len() == o.len() && u.len() == o.len(), "silu_mul: lengths differ");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: avx2 and fma were checked; the lengths are equal (above).
        done = unsafe { x86::silu_mul(g, u, o) };
    }
    for ((o, &g), &u) in o[done..].iter_mut().zip(&g[done..]).zip(&u[done..]) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Softmax of `v` in place: `v[i] = exp(v[i] - max) / sum`. With AVX2 the
/// exponential is evaluated 8 lanes at a time (`x86::exp8`, relative error
/// within a few ulp of `f32::exp`; inputs below -87.3 give ~1e-38, not 0).
pub fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        unsafe { x86::softmax_tail(v, max) };
        return;
    }
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::bf16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    /// e^x in 8 lanes, by the classic range reduction: x = n ln2 + r with
    /// |r| <= ln2/2 (ln2 split in two parts so n ln2 is exact enough), e^r
    /// by a degree-7 polynomial (the coefficients of Cephes' `expf`), and
    /// 2^n put straight into the exponent bits. x is clamped to
    /// [-87.33654, 88.37626], where e^x stays a normal f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654)), _mm256_set1_ps(88.37626));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }

    /// `softmax_in_place` given the maximum of `v`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_tail(v: &mut [f32], max: f32) {
        let (p, n) = (v.as_mut_ptr(), v.len());
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        while i < n {
            *p.add(i) = (*p.add(i) - max).exp();
            sum += *p.add(i);
            i += 1;
        }
        let s = _mm256_set1_ps(sum);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_div_ps(_mm256_loadu_ps(p.add(i)), s));
            i += 8;
        }
        while i < n {
            *p.add(i) /= sum;
            i += 1;
        }
    }

    /// `super::silu_mul` over whole groups of 8; returns how many it wrote.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) -> usize {
        let n = o.len() / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let y = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(o.as_mut_ptr().add(i), _mm256_mul_ps(y, _mm256_loadu_ps(u.as_ptr().add(i))));
        }
        n
    }

    /// `super::weighted_rows`: heads in groups of up to 3, columns in
    /// chunks of 32 then 8, each chunk's sums held in registers over all rows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_rows(o: &mut [f32], heads: usize, hd: usize, s: &[f32], v: &[f32], offs: &[usize]) {
        let n = offs.len();
        for g0 in (0..heads).step_by(3) {
            let gn = (heads - g0).min(3);
            let (po, ps) = (o.as_mut_ptr().add(g0 * hd), s.as_ptr().add(g0 * n));
            let mut c = 0;
            macro_rules! chunk {
                ($w:literal) => {
                    match gn {
                        1 => rows_chunk::<1, $w>(po, hd, ps, n, v.as_ptr(), offs, c),
                        2 => rows_chunk::<2, $w>(po, hd, ps, n, v.as_ptr(), offs, c),
                        _ => rows_chunk::<3, $w>(po, hd, ps, n, v.as_ptr(), offs, c),
                    }
                };
            }
            while c + 32 <= hd {
                chunk!(4);
                c += 32;
            }
            while c + 8 <= hd {
                chunk!(1);
                c += 8;
            }
            for c in c..hd {
                for g in 0..gn {
                    let mut acc = 0.0;
                    for (p, &a) in offs.iter().enumerate() {
                        acc += *ps.add(g * n + p) * *v.as_ptr().add(a + c);
                    }
                    *po.add(g * hd + c) = acc;
                }
            }
        }
    }

    /// Columns `c .. c + 8W` of G heads' outputs (head stride `hd`), summed
    /// over the rows at `offs` with weights `s[g*n + p]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_chunk<const G: usize, const W: usize>(o: *mut f32, hd: usize, s: *const f32, n: usize, v: *const f32, offs: &[usize], c: usize) {
        let mut acc = [[_mm256_setzero_ps(); W]; G];
        for (p, &a) in offs.iter().enumerate() {
            let mut row = [_mm256_setzero_ps(); W];
            for (w, r) in row.iter_mut().enumerate() {
                *r = _mm256_loadu_ps(v.add(a + c + 8 * w));
            }
            for (g, acc) in acc.iter_mut().enumerate() {
                let sg = _mm256_broadcast_ss(&*s.add(g * n + p));
                for (a, r) in acc.iter_mut().zip(&row) {
                    *a = _mm256_fmadd_ps(sg, *r, *a);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            for (w, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(g * hd + c + 8 * w), *a);
            }
        }
    }

    /// Widens 8 bf16 to 8 f32 (bf16 is the high half of an f32).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16x8(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        let w = _mm256_cvtepu16_epi32(h);
        _mm256_castsi256_ps(_mm256_slli_epi32(w, 16))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16(a: &[f32], b: &[bf16]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = load_bf16x8(pb.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load_bf16x8(pb.add(i)), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += *pa.add(i) * (*pb.add(i)).to_f32();
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_f64_reference() {
        for n in [1usize, 7, 8, 9, 64, 513] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 3.0 - if i % 7 == 3 { 60.0 } else { 0.0 }).collect();
            // x - max rounds in f32 on both sides; the reference takes it from there.
            let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = v.iter().map(|&x| ((x - max) as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut got = v.clone();
            softmax_in_place(&mut got);
            for (g, w) in got.iter().zip(&e) {
                let w = w / sum;
                assert!((*g as f64 - w).abs() <= 1e-6 * w + 1e-30, "n={n}: {g} vs {w}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // e^x lane by lane over the range attention feeds it.
            let xs: Vec<f32> = (0..8000).map(|i| -80.0 + i as f32 * 0.01).collect();
            for c in xs.chunks_exact(8) {
                let mut out = [0f32; 8];
                // SAFETY: avx2 and fma were checked.
                unsafe { std::arch::x86_64::_mm256_storeu_ps(out.as_mut_ptr(), x86::exp8(std::arch::x86_64::_mm256_loadu_ps(c.as_ptr()))) };
                for (x, g) in c.iter().zip(out) {
                    let w = (*x as f64).exp();
                    assert!((g as f64 - w).abs() <= 4e-7 * w, "exp({x}): {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn weighted_rows_match_f64_reference() {
        for (heads, hd) in [(1usize, 64usize), (3, 64), (4, 80), (7, 13), (2, 128)] {
            let rows = 37;
            let v: Vec<f32> = (0..(rows + 5) * hd).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            // Rows gathered out of order, as a block table does.
            let offs: Vec<usize> = (0..rows).map(|p| ((p * 11) % (rows + 5)) * hd).collect();
            let s: Vec<f32> = (0..heads * rows).map(|i| ((i * 53 % 89) as f32) / 89.0).collect();
            let mut o = vec![f32::NAN; heads * hd];
            weighted_rows(&mut o, heads, hd, &s, &v, &offs);
            for g in 0..heads {
                for c in 0..hd {
                    let want: f64 = offs.iter().enumerate().map(|(p, &a)| s[g * rows + p] as f64 * v[a + c] as f64).sum();
                    let got = o[g * hd + c] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{heads}x{hd} [{g}][{c}]: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn silu_mul_matches_f64_reference() {
        let g: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.37).collect();
        let u: Vec<f32> = (0..203).map(|i| ((i * 29 % 31) as f32 - 15.0) / 7.0).collect();
        let mut o = vec![f32::NAN; g.len()];
        silu_mul(&g, &u, &mut o);
        for i in 0..g.len() {
            let x = g[i] as f64;
            let want = x / (1.0 + (-x).exp()) * u[i] as f64;
            assert!((o[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "silu({x}) * {}: {} vs {want}", u[i], o[i]);
        }
    }

    #[test]
    fn dots_match_f64_reference() {
        for n in [1usize, 7, 8, 31, 32, 33, 100, 576] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0).collect();
            let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
            let r: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let rb: f64 = a.iter().zip(&bb).map(|(&x, &y)| x as f64 * y.to_f64()).sum();
            assert!((dot_f32(&a, &b) as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()), "n={n}");
            assert!((dot_f32_portable(&a, &b) as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()), "n={n}");
            assert!((dot_bf16(&a, &bb) as f64 - rb).abs() <= 1e-4 * (1.0 + rb.abs()), "n={n}");
        }
    }
}
