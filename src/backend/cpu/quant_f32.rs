//! Exact dot products of f32 activations with GGUF blocks (the default
//! `ActQuant::F32` path): weights widened in registers, products in f32, so
//! results equal the f32 dot with the dequantized weights up to summation
//! order. A kernel takes one weight row and up to `MAX_ROWS` activation rows:
//! each weight value is widened once and meets every row, so a decode step of
//! several sequences pays the widening once per row group, not per sequence.
//!
//! Fast kernels (AVX2 + FMA + F16C) for Q8_0, Q4_0, Q4_1, Q4_K and Q6_K;
//! other types, and CPUs without AVX2, dequantize the weight row once into a
//! scratch buffer and take `simd::dot_f32` with each activation row.
//!
//! ```text
//! Q8_0 block (34 B): d f16 | q i8[32]             w = d*q
//! Q4_0 block (18 B): d f16 | nib u8[16]           w = d*(nib - 8)
//! Q4_1 block (20 B): d f16 | m f16 | nib u8[16]   w = d*nib + m  (w[j]: low nibble of
//!                                                   byte j, w[j+16]: its high nibble)
//! dot(x, Q4_1 block) = d * sum(x*nib) + m * sum(x)    -- sum(x) per 32 values is
//!                                                        computed once per activation row
//! Q4_K block (144 B): 8 sub-blocks of 32, w = (d*sc)*nib - dmin*mn
//! dot(x, Q4_K sub-block) = d*sc * sum(x*nib) - dmin*mn * sum(x)
//! Q6_K block (210 B): 16 groups of 16, w = (d*sc)*(q6 - 32), q6 - 32 kept signed in i8
//! ```
//! (Layouts in detail: `model::dequant`.)

use super::quant::{Q4_1_BYTES, Q8_0_BYTES, QK};
use super::simd::dot_f32;
use crate::model::dequant::{dequantize_into, GgmlType};
use std::cell::RefCell;

/// Most activation rows one kernel call multiplies with a weight row (AVX2's
/// 16 registers hold the 4 widened weight vectors, 4 accumulators and the
/// temporaries).
pub const MAX_ROWS: usize = 4;

/// `out[r] = x[r*k .. (r+1)*k] · row` for `r < out.len()` (1 ..= `MAX_ROWS`),
/// `k` = the row's values; `xsum` = `block_sums` of those x rows, concatenated
/// (read only by kernels with `needs_sums`).
pub type DotsFn = fn(x: &[f32], xsum: &[f32], row: &[u8], out: &mut [f32]);

/// The dots of one weight row of a block type with 1 ..= `MAX_ROWS`
/// activation rows, chosen once for this CPU so that a matmul dispatches
/// neither on the type nor on the CPU's features per row.
#[derive(Clone, Copy)]
pub struct RowKernel {
    ty: GgmlType,
    /// (values, bytes) of one block of `ty`.
    block: (usize, usize),
    /// `fast[r - 1]` takes r rows; None: dequantize into scratch.
    fast: Option<[DotsFn; MAX_ROWS]>,
    /// Whether `dots` reads `xsum` (Q4_1, Q4_K).
    pub needs_sums: bool,
}

macro_rules! avx2_fns {
    ($f:ident) => {
        [
            |x, s, r, o| unsafe { x86::$f::<1>(x, s, r, o) },
            |x, s, r, o| unsafe { x86::$f::<2>(x, s, r, o) },
            |x, s, r, o| unsafe { x86::$f::<3>(x, s, r, o) },
            |x, s, r, o| unsafe { x86::$f::<4>(x, s, r, o) },
        ]
    };
}

impl RowKernel {
    /// The kernel for rows of `ty` blocks on this CPU.
    pub fn new(ty: GgmlType) -> RowKernel {
        let needs_sums = matches!(ty, GgmlType::Q4_1 | GgmlType::Q4_K);
        #[allow(unused_mut)]
        let mut fast: Option<[DotsFn; MAX_ROWS]> = None;
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY (every closure below): avx2, fma and f16c were checked.
            fast = match ty {
                GgmlType::Q8_0 => Some(avx2_fns!(q8_0)),
                GgmlType::Q4_0 => Some(avx2_fns!(q4_0)),
                GgmlType::Q4_1 => Some(avx2_fns!(q4_1)),
                GgmlType::Q4_K => Some(avx2_fns!(q4_k)),
                GgmlType::Q6_K => Some(avx2_fns!(q6_k)),
                _ => None,
            };
            if has_avx512() {
                // One row: the 512-bit kernels (the issue's AVX-512 machine).
                match (ty, fast.as_mut()) {
                    // SAFETY: avx512f and f16c were checked.
                    (GgmlType::Q8_0, Some(f)) => f[0] = |x, _, r, o| o[0] = unsafe { x86::dot_q8_0_512(x, r) },
                    // SAFETY: as above.
                    (GgmlType::Q4_1, Some(f)) => f[0] = |x, s, r, o| o[0] = unsafe { x86::dot_q4_1_512(x, s, r) },
                    _ => {}
                }
            }
        }
        let block = ty.block_layout().expect("RowKernel: a block type");
        RowKernel { ty, block, fast, needs_sums: needs_sums && fast.is_some() }
    }

    /// Whether this CPU has a widening kernel for the type (else scratch).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// `out[r] = x[r*k .. (r+1)*k] · row` for every `r < out.len()`
    /// (1 ..= `MAX_ROWS`); `xsum` = `block_sums` of those rows when
    /// `needs_sums`, else ignored.
    #[inline]
    pub fn dots(&self, x: &[f32], xsum: &[f32], row: &[u8], out: &mut [f32]) {
        let rows = out.len();
        debug_assert!((1..=MAX_ROWS).contains(&rows) && x.len() % rows == 0);
        match &self.fast {
            Some(f) => {
                // Multiplications, not divisions: this runs once per weight row.
                let k = x.len() / rows;
                let (n, bytes) = self.block;
                assert!(k * rows == x.len() && row.len() * n == k * bytes, "row_kernel: row is not k values");
                assert!(!self.needs_sums || xsum.len() >= rows * k / QK, "row_kernel: xsum is short");
                f[rows - 1](x, xsum, row, out)
            }
            None => dequantized_dots(self.ty, x, row, out),
        }
    }
}

/// The row dequantized once into per-thread scratch, then dotted with each
/// of the `out.len()` rows of x.
fn dequantized_dots(ty: GgmlType, x: &[f32], row: &[u8], out: &mut [f32]) {
    thread_local! { static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) }; }
    let k = x.len() / out.len();
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.resize(k, 0.0);
        dequantize_into(ty, row, &mut s);
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot_f32(&x[r * k..(r + 1) * k], &s);
        }
    })
}

/// `out` = the row of `ty` blocks as f32, bit-identical to
/// `dequant::dequantize_into` (the same f32 operations in the same order),
/// 8 lanes at a time for the types with fast kernels on AVX2 CPUs.
pub fn widen_into(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        let (n, bytes) = ty.block_layout().expect("a block type");
        assert!(out.len() % n == 0 && row.len() == out.len() / n * bytes, "widen_into: row is not out.len() values");
        // SAFETY: avx2, fma and f16c were checked; the sizes above.
        let done = unsafe {
            match ty {
                GgmlType::Q8_0 => x86::widen_q8_0(row, out),
                GgmlType::Q4_0 => x86::widen_q4_0(row, out),
                GgmlType::Q4_1 => x86::widen_q4_1(row, out),
                GgmlType::Q4_K => x86::widen_q4_k(row, out),
                GgmlType::Q6_K => x86::widen_q6_k(row, out),
                _ => false,
            }
        };
        if done {
            return;
        }
    }
    dequantize_into(ty, row, out)
}

/// AVX-512F (with F16C), checked once; KILN_NO_AVX512=1 turns it off.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && super::simd::has_avx2_fma()
            && std::env::var_os("KILN_NO_AVX512").is_none()
    })
}

/// Sums of each 32-wide block of `x` (for the Q4_1 / Q4_K min terms).
pub fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks(QK).map(|c| c.iter().sum()).collect()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::quant_x86::{f16_at, hsum};
    use super::{Q4_1_BYTES, Q8_0_BYTES, QK};
    use crate::model::dequant::q4_k_scale_min;
    use std::arch::x86_64::*;

    const Q4_0_BYTES: usize = 18;
    const Q4_K_BYTES: usize = 144;
    const Q6_K_BYTES: usize = 210;

    /// 8 signed bytes (the low 8 of v) -> f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn i8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
    }
    /// 8 unsigned bytes (the low 8 of v) -> f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// 32 bytes (16 in `a`, 16 in `b`) widened to 4 x 8 f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen32(a: __m128i, b: __m128i, signed: bool) -> [__m256; 4] {
        if signed {
            [i8x8(a), i8x8(_mm_srli_si128(a, 8)), i8x8(b), i8x8(_mm_srli_si128(b, 8))]
        } else {
            [u8x8(a), u8x8(_mm_srli_si128(a, 8)), u8x8(b), u8x8(_mm_srli_si128(b, 8))]
        }
    }

    /// Lane sums of w · x[0..32].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot32(w: &[__m256; 4], xp: *const f32) -> __m256 {
        let mut v = _mm256_mul_ps(w[0], _mm256_loadu_ps(xp));
        v = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp.add(8)), v);
        v = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp.add(16)), v);
        _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp.add(24)), v)
    }

    /// Writes the lane sums of `acc` (+ `extra`) to `out`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish<const R: usize>(acc: &[__m256; R], extra: &[f32; R], out: &mut [f32]) {
        for r in 0..R {
            out[r] = hsum(acc[r]) + extra[r];
        }
    }

    /// Block types whose 32 values are `d * q`: Q8_0 (q i8) and Q4_0
    /// (q = nibble - 8), and Q4_1 (`d * nibble + m`), by ggml type id.
    const Q4_0: u8 = 2;
    const Q4_1: u8 = 3;
    const Q8_0: u8 = 8;

    /// Bytes of one block of the 32-value type `TY`.
    const fn bytes32<const TY: u8>() -> usize {
        match TY {
            Q4_0 => Q4_0_BYTES,
            Q4_1 => Q4_1_BYTES,
            _ => Q8_0_BYTES,
        }
    }

    /// The 32 quants of a block of `TY` (Q8_0, Q4_0: signed q; Q4_1: the
    /// unsigned nibbles) as 4 x 8 f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack32<const TY: u8>(b: &[u8]) -> [__m256; 4] {
        let mask = _mm_set1_epi8(0x0F);
        match TY {
            Q8_0 => {
                let q = b.as_ptr().add(2);
                widen32(_mm_loadu_si128(q as *const __m128i), _mm_loadu_si128(q.add(16) as *const __m128i), true)
            }
            Q4_0 => {
                let raw = _mm_loadu_si128(b.as_ptr().add(2) as *const __m128i);
                let eight = _mm_set1_epi8(8);
                let lo = _mm_sub_epi8(_mm_and_si128(raw, mask), eight);
                let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), eight);
                widen32(lo, hi, true)
            }
            _ => {
                let raw = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
                widen32(_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask), false)
            }
        }
    }

    /// Dots of a row of 32-value blocks of type `TY` with R rows of x; Q4_1's
    /// `m` term is `m * sum(x)` over the block, from `xsum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn blocks32<const R: usize, const TY: u8>(x: &[f32], xsum: &[f32], row: &[u8], out: &mut [f32]) {
        let k = x.len() / R;
        let kb = k / QK;
        let px = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); R];
        let mut macc = [0f32; R];
        for (bi, b) in row.chunks_exact(bytes32::<TY>()).enumerate() {
            let w = unpack32::<TY>(b);
            let d = _mm256_set1_ps(f16_at(b, 0));
            let m = if TY == Q4_1 { f16_at(b, 2) } else { 0.0 };
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(d, dot32(&w, px.add(r * k + bi * QK)), acc[r]);
                if TY == Q4_1 {
                    macc[r] += m * *xsum.get_unchecked(r * kb + bi);
                }
            }
        }
        finish(&acc, &macc, out)
    }

    pub unsafe fn q8_0<const R: usize>(x: &[f32], s: &[f32], row: &[u8], out: &mut [f32]) {
        blocks32::<R, Q8_0>(x, s, row, out)
    }
    pub unsafe fn q4_0<const R: usize>(x: &[f32], s: &[f32], row: &[u8], out: &mut [f32]) {
        blocks32::<R, Q4_0>(x, s, row, out)
    }
    pub unsafe fn q4_1<const R: usize>(x: &[f32], s: &[f32], row: &[u8], out: &mut [f32]) {
        blocks32::<R, Q4_1>(x, s, row, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_k<const R: usize>(x: &[f32], xsum: &[f32], row: &[u8], out: &mut [f32]) {
        let k = x.len() / R;
        let kb = k / QK;
        let px = x.as_ptr();
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut macc = [0f32; R];
        for (bi, b) in row.chunks_exact(Q4_K_BYTES).enumerate() {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            // 32 bytes of nibbles per 64 values: low nibbles are sub-block
            // 2g, high nibbles sub-block 2g + 1.
            for g in 0..4 {
                let raw = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g) as *const __m256i);
                let halves = [_mm256_and_si256(raw, mask), _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask)];
                for (h, q) in halves.into_iter().enumerate() {
                    let sub = 2 * g + h;
                    let (sc, mn) = q4_k_scale_min(sub, scales);
                    let w = widen32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q), false);
                    let (ds, dm) = (_mm256_set1_ps(d * sc as f32), dmin * mn as f32);
                    let at = bi * 256 + 32 * sub;
                    for r in 0..R {
                        acc[r] = _mm256_fmadd_ps(ds, dot32(&w, px.add(r * k + at)), acc[r]);
                        macc[r] -= dm * *xsum.get_unchecked(r * kb + at / QK);
                    }
                }
            }
        }
        finish(&acc, &macc, out)
    }

    /// Half `h` (0, 1) of a Q6_K block: 128 values as q6 - 32 in i8, 32
    /// each in `[t]` (values 32t .. 32t+32 of the half), from 64 bytes of ql
    /// (low 4 bits) and 32 of qh (high 2 bits).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_half(b: &[u8], h: usize) -> [__m256i; 4] {
        let (m4, m2, off) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
        let p = b.as_ptr();
        let l0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
        let l1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
        let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
        let high = |v: __m256i| _mm256_slli_epi16(_mm256_and_si256(v, m2), 4);
        [
            _mm256_or_si256(_mm256_and_si256(l0, m4), high(qh)),
            _mm256_or_si256(_mm256_and_si256(l1, m4), high(_mm256_srli_epi16(qh, 2))),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), high(_mm256_srli_epi16(qh, 4))),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), high(_mm256_srli_epi16(qh, 6))),
        ]
        .map(|q| _mm256_sub_epi8(q, off))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6_k<const R: usize>(x: &[f32], _: &[f32], row: &[u8], out: &mut [f32]) {
        let k = x.len() / R;
        let px = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); R];
        for (bi, b) in row.chunks_exact(Q6_K_BYTES).enumerate() {
            let d = f16_at(b, 208);
            for h in 0..2 {
                let q = q6_k_half(b, h);
                for (t, qt) in q.into_iter().enumerate() {
                    for (half, v) in [_mm256_castsi256_si128(qt), _mm256_extracti128_si256::<1>(qt)].into_iter().enumerate() {
                        let (w0, w1) = (i8x8(v), i8x8(_mm_srli_si128(v, 8)));
                        let s = _mm256_set1_ps(d * (*b.get_unchecked(192 + 8 * h + 2 * t + half) as i8) as f32);
                        let at = bi * 256 + 128 * h + 32 * t + 16 * half;
                        for (r, a) in acc.iter_mut().enumerate() {
                            let xp = px.add(r * k + at);
                            let v = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), _mm256_mul_ps(w0, _mm256_loadu_ps(xp)));
                            *a = _mm256_fmadd_ps(s, v, *a);
                        }
                    }
                }
            }
        }
        finish(&acc, &[0.0; R], out)
    }

    /// Stores w[0..4] * d (+ m) at o (32 values).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store32(w: &[__m256; 4], d: __m256, m: Option<__m256>, o: *mut f32) {
        for (t, v) in w.iter().enumerate() {
            let v = _mm256_mul_ps(d, *v);
            _mm256_storeu_ps(o.add(8 * t), m.map_or(v, |m| _mm256_add_ps(v, m)));
        }
    }

    /// `widen_into` for the 32-value types (`blocks32`'s `TY`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen32_blocks<const TY: u8>(row: &[u8], out: &mut [f32]) -> bool {
        for (b, o) in row.chunks_exact(bytes32::<TY>()).zip(out.chunks_exact_mut(QK)) {
            let m = (TY == Q4_1).then(|| _mm256_set1_ps(f16_at(b, 2)));
            store32(&unpack32::<TY>(b), _mm256_set1_ps(f16_at(b, 0)), m, o.as_mut_ptr());
        }
        true
    }
    pub unsafe fn widen_q8_0(row: &[u8], out: &mut [f32]) -> bool {
        widen32_blocks::<Q8_0>(row, out)
    }
    pub unsafe fn widen_q4_0(row: &[u8], out: &mut [f32]) -> bool {
        widen32_blocks::<Q4_0>(row, out)
    }
    pub unsafe fn widen_q4_1(row: &[u8], out: &mut [f32]) -> bool {
        widen32_blocks::<Q4_1>(row, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q4_k(row: &[u8], out: &mut [f32]) -> bool {
        let mask = _mm256_set1_epi8(0x0F);
        for (b, o) in row.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(256)) {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            for g in 0..4 {
                let raw = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g) as *const __m256i);
                let halves = [_mm256_and_si256(raw, mask), _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask)];
                for (h, q) in halves.into_iter().enumerate() {
                    let sub = 2 * g + h;
                    let (sc, mn) = q4_k_scale_min(sub, &b[4..16]);
                    let w = widen32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q), false);
                    // x = d1 * nib - min1, as the reference: (d*sc)*nib + (-(dmin*mn)).
                    let neg_min = _mm256_set1_ps(-(dmin * mn as f32));
                    store32(&w, _mm256_set1_ps(d * sc as f32), Some(neg_min), o.as_mut_ptr().add(32 * sub));
                }
            }
        }
        true
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q6_k(row: &[u8], out: &mut [f32]) -> bool {
        for (b, o) in row.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(256)) {
            let d = f16_at(b, 208);
            for h in 0..2 {
                let q = q6_k_half(b, h);
                for (t, qt) in q.into_iter().enumerate() {
                    for (half, v) in [_mm256_castsi256_si128(qt), _mm256_extracti128_si256::<1>(qt)].into_iter().enumerate() {
                        let s = _mm256_set1_ps(d * (*b.get_unchecked(192 + 8 * h + 2 * t + half) as i8) as f32);
                        let at = o.as_mut_ptr().add(128 * h + 32 * t + 16 * half);
                        _mm256_storeu_ps(at, _mm256_mul_ps(s, i8x8(v)));
                        _mm256_storeu_ps(at.add(8), _mm256_mul_ps(s, i8x8(_mm_srli_si128(v, 8))));
                    }
                }
            }
        }
        true
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn hsum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// 16 bytes -> 16 f32 lanes (unsigned).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn u8x16(v: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_512(x: &[f32], row: &[u8]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 2];
        let px = x.as_ptr();
        for (bi, b) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            let xp = px.add(bi * QK);
            let q = b.as_ptr().add(2);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16) as *const __m128i)));
            let v = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xp.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xp)));
            acc[bi & 1] = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b, 0)), v, acc[bi & 1]);
        }
        hsum512(_mm512_add_ps(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_q4_1_512(x: &[f32], xsum: &[f32], row: &[u8]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut macc = 0.0f32;
        let px = x.as_ptr();
        let mask = _mm_set1_epi8(0x0F);
        for (bi, b) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            let xp = px.add(bi * QK);
            let raw = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
            let lo = u8x16(_mm_and_si128(raw, mask));
            let hi = u8x16(_mm_and_si128(_mm_srli_epi16(raw, 4), mask));
            let v = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xp.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xp)));
            acc[bi & 1] = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b, 0)), v, acc[bi & 1]);
            macc += f16_at(b, 2) * *xsum.get_unchecked(bi);
        }
        hsum512(_mm512_add_ps(acc[0], acc[1])) + macc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::random_blocks;
    use crate::model::dequant::dequantize;

    /// Every block type, every row count, every k: the kernel against the
    /// f64 dot with the dequantized row (ggml's reference dequantization).
    #[test]
    fn row_kernels_equal_dequantized_dots_for_every_type_and_row_count() {
        use crate::backend::cpu::quant::tests::TYPES;
        for k in [256usize, 512, 1536] {
            for (ti, ty) in TYPES.into_iter().enumerate() {
                let (per, _) = ty.block_layout().unwrap();
                let row = random_blocks(ty, k / per, 11 + ti as u32);
                let w = dequantize(ty, &row, k).unwrap();
                let kernel = RowKernel::new(ty);
                let scratch = RowKernel { fast: None, needs_sums: false, ..kernel };
                for rows in 1..=MAX_ROWS {
                    let x: Vec<f32> = (0..rows * k).map(|i| ((i * 31 % 17) as f32 - 8.0) / 7.0 + (i % 5) as f32 * 0.013).collect();
                    let sums: Vec<f32> = x.chunks(k).flat_map(block_sums).collect();
                    for (name, kern) in [("fast", kernel), ("scratch", scratch)] {
                        let mut out = vec![f32::NAN; rows];
                        kern.dots(&x, &sums, &row, &mut out);
                        for r in 0..rows {
                            let xr = &x[r * k..(r + 1) * k];
                            let want: f64 = xr.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let mag: f64 = xr.iter().zip(&w).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                            let got = out[r] as f64;
                            assert!((got - want).abs() <= 1e-5 * mag.max(1.0), "{name} {} k={k} rows={rows} r={r}: {got} vs {want}", ty.name());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn widening_is_bit_identical_to_dequantization() {
        use crate::backend::cpu::quant::tests::TYPES;
        for (ti, ty) in TYPES.into_iter().enumerate() {
            let (per, _) = ty.block_layout().unwrap();
            let row = random_blocks(ty, 1024 / per, 40 + ti as u32);
            let mut got = vec![f32::NAN; 1024];
            widen_into(ty, &row, &mut got);
            let want = dequantize(ty, &row, 1024).unwrap();
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}", ty.name());
        }
    }

    #[test]
    fn fast_kernels_cover_the_common_types_on_avx2() {
        if !crate::backend::cpu::simd::has_avx2_fma() {
            eprintln!("SKIP: no AVX2/FMA");
            return;
        }
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K] {
            assert!(RowKernel::new(ty).is_fast(), "{}", ty.name());
        }
    }
}
