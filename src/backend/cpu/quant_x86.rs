//! AVX2 block dots for the common GGUF types (see `quant` for the scheme).
//! 16-bit activations (`rows_dot16`): weight values are widened to 16-bit lanes
//! and multiplied by `vpmaddwd` (16 products summed in pairs into 8 i32
//! lanes). 8-bit activations (`rows_dot8`): weight bytes (unsigned, or made
//! so with `vpsignb`) meet the activation bytes in `vpmaddubsw` (32 products
//! summed in pairs into 16 i16 lanes, which cannot saturate: |v| ≤ 128 and
//! |q| ≤ 127, or v ≤ 63 for Q6_K), then `vpmaddwd` by ones (or by the group
//! scales) into 8 i32 lanes. Either way each 16- or 32-value group's i32
//! lanes go to f32 once, times its scale.
//! AVX-512 VNNI (`vpdpwssd`) would fuse the multiply and the add; the CPUs
//! kiln is measured on have no AVX-512, so it is not written yet.

use super::quant::{Act8Block, ActBlock};
use crate::model::dequant::{q4_k_scale_min, GgmlType};
use std::arch::x86_64::*;


/// The little-endian f16 at b[i..i+2] as f32 (F16C; `half`'s conversion
/// checks CPU features on every call).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([*b.get_unchecked(i), *b.get_unchecked(i + 1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The sum of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// The lane sums of four vectors, `[Σa, Σb, Σc, Σd]`: two rounds of
/// `hadd` and one cross-lane add, 5 shuffles and adds where four `hsum`s
/// take 16 (register tiles finish 12 accumulators at a time).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    // [a01 a23 b01 b23 | a45 a67 b45 b67], then [Σa0123 Σb.. Σc.. Σd.. | Σa4567 ..]
    let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// The sum of the 8 i32 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b00_00_00_01)))
}

/// `Act8Block::quantize` of the 32 values of `x`: d = max|x| / 127, q =
/// x · 127 / max|x| rounded to nearest even (`vcvtps2dq` under the default
/// MXCSR), the exact half sums and Σq per half.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize8(x: &[f32]) -> Act8Block {
    debug_assert_eq!(x.len(), 32);
    let p = x.as_ptr();
    let v = [0, 1, 2, 3].map(|i| _mm256_loadu_ps(p.add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    let a = v.map(|v| _mm256_andnot_ps(sign, v));
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let q = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, id)));
    // i32 -> i16 -> i8 packs work per 128-bit lane: dwords come out as
    // [q0 0-3, q1 0-3, q2 0-3, q3 0-3 | q0 4-7, q1 4-7, ...]
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut b = Act8Block { d: amax / 127.0, ..Default::default() };
    _mm256_storeu_si256(b.q.as_mut_ptr() as *mut __m256i, packed);
    b.sum = [hsum(_mm256_add_ps(v[0], v[1])), hsum(_mm256_add_ps(v[2], v[3]))];
    b.sum32 = b.sum[0] + b.sum[1];
    b.qsum = [hsum_i32(_mm256_add_epi32(q[0], q[1])) as i16, hsum_i32(_mm256_add_epi32(q[2], q[3])) as i16];
    b
}

/// Σ w[i] * q[i] over 16 lanes, as 8 i32 lanes (pairs summed).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn madd16(w: __m256i, q: *const i16) -> __m256i {
    _mm256_madd_epi16(w, _mm256_loadu_si256(q as *const __m256i))
}

/// The 32 products of one activation block with 32 weight values given as
/// 16 + 16 i16 lanes, as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot32(w0: __m256i, w1: __m256i, a: &ActBlock) -> __m256i {
    let q = a.q.as_ptr();
    _mm256_add_epi32(madd16(w0, q), madd16(w1, q.add(16)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(row: &[u8], x: &[ActBlock]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, a) in row.chunks_exact(34).zip(x) {
        let p = b.as_ptr().add(2);
        let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i));
        let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i));
        let s = _mm256_cvtepi32_ps(dot32(w0, w1, a));
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16_at(b, 0) * a.d), acc);
    }
    hsum(acc)
}

/// Q4_0 (`with_min` false: values nib - 8) and Q4_1 (true: d * nib + m).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4(row: &[u8], x: &[ActBlock], with_min: bool) -> f32 {
    let (bytes, qs_at) = if with_min { (20, 4) } else { (18, 2) };
    let mask = _mm_set1_epi8(0x0f);
    let off = _mm256_set1_epi16(if with_min { 0 } else { 8 });
    let mut acc = _mm256_setzero_ps();
    let mut macc = 0f32;
    for (b, a) in row.chunks_exact(bytes).zip(x) {
        let raw = _mm_loadu_si128(b.as_ptr().add(qs_at) as *const __m128i);
        let lo = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(raw, mask)), off);
        let hi = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), mask)), off);
        let s = _mm256_cvtepi32_ps(dot32(lo, hi, a));
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16_at(b, 0) * a.d), acc);
        if with_min {
            macc += f16_at(b, 2) * (a.sum[0] + a.sum[1]);
        }
    }
    hsum(acc) + macc
}

/// The low and high 16 bytes of `v` widened to i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_u8(v: __m256i) -> (__m256i, __m256i) {
    (_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(row: &[u8], x: &[ActBlock]) -> f32 {
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut macc = 0f32;
    for (b, xs) in row.chunks_exact(144).zip(x.chunks_exact(8)) {
        let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
        for g in 0..4 {
            let raw = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g) as *const __m256i);
            for (j, nib) in [_mm256_and_si256(raw, mask), _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask)].into_iter().enumerate() {
                let sub = 2 * g + j;
                let (sc, m) = q4_k_scale_min(sub, scales);
                let a = &xs[sub];
                let (w0, w1) = widen_u8(nib);
                let s = _mm256_cvtepi32_ps(dot32(w0, w1, a));
                acc = _mm256_fmadd_ps(s, _mm256_set1_ps(d * sc as f32 * a.d), acc);
                macc += dmin * m as f32 * (a.sum[0] + a.sum[1]);
            }
        }
    }
    hsum(acc) - macc
}

/// The 32 values (0..64, i.e. v + 32) of quarter `k` of a Q6_K half from
/// its low-bit bytes `ql0`, `ql1` and high bits `qh`: low or high nibbles
/// of ql0 / ql1, and bits 2k, 2k+1 of qh.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k_quarter(ql0: __m256i, ql1: __m256i, qh: __m256i, k: usize) -> __m256i {
    let (m4, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    let ql = if k % 2 == 0 { ql0 } else { ql1 };
    let lo = if k < 2 { _mm256_and_si256(ql, m4) } else { _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) };
    let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), m2);
    _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(row: &[u8], x: &[ActBlock]) -> f32 {
    let off = _mm256_set1_epi16(32);
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in row.chunks_exact(210).zip(x.chunks_exact(8)) {
        let d = f16_at(b, 208);
        let p = b.as_ptr();
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            // quarter k of this half: 32 values 128h + 32k .. from ql (low or
            // high nibbles of ql0 / ql1) and bits 2k, 2k+1 of qh
            for k in 0..4 {
                let (w0, w1) = widen_u8(q6_k_quarter(ql0, ql1, qh, k));
                let a = &xs[4 * h + k];
                let q = a.q.as_ptr();
                let s0 = _mm256_cvtepi32_ps(madd16(_mm256_sub_epi16(w0, off), q));
                let s1 = _mm256_cvtepi32_ps(madd16(_mm256_sub_epi16(w1, off), q.add(16)));
                let sc = 8 * h + 2 * k;
                let (c0, c1) = (*b.get_unchecked(192 + sc) as i8, *b.get_unchecked(193 + sc) as i8);
                acc = _mm256_fmadd_ps(s0, _mm256_set1_ps(d * c0 as f32 * a.d), acc);
                acc = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * c1 as f32 * a.d), acc);
            }
        }
    }
    hsum(acc)
}

/// out[r] = row r of `rows` (rows of `rb` bytes, as many as `out` holds) ·
/// `x`, one kernel for all rows (`quant::rows_dot`).
pub type RowsDot<A> = unsafe fn(rows: &[u8], rb: usize, x: &[A], out: &mut [f32]);

/// Defines a `RowsDot` over a single-row kernel, inlined into the loop.
macro_rules! rows_dot {
    ($name:ident, $act:ty, $dot:ident $(, $arg:expr)?) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(rows: &[u8], rb: usize, x: &[$act], out: &mut [f32]) {
            for (row, o) in rows.chunks_exact(rb).zip(out) {
                *o = $dot(row, x $(, $arg)?);
            }
        }
    };
}
rows_dot!(rows_q8_0, ActBlock, dot_q8_0);
rows_dot!(rows_q4_0, ActBlock, dot_q4, false);
rows_dot!(rows_q4_1, ActBlock, dot_q4, true);
rows_dot!(rows_q4_k, ActBlock, dot_q4_k);
rows_dot!(rows_q6_k, ActBlock, dot_q6_k);
rows_dot!(rows8_q8_0, Act8Block, dot8_q8_0);
rows_dot!(rows8_q4_0, Act8Block, dot8_q4, false);
rows_dot!(rows8_q4_1, Act8Block, dot8_q4, true);
rows_dot!(rows8_q4_k, Act8Block, dot8_q4_k);
rows_dot!(rows8_q6_k, Act8Block, dot8_q6_k);

/// The 16-bit activation `RowsDot` for `ty`, None where there is none.
pub fn rows_dot16(ty: GgmlType) -> Option<RowsDot<ActBlock>> {
    Some(match ty {
        GgmlType::Q8_0 => rows_q8_0,
        GgmlType::Q4_0 => rows_q4_0,
        GgmlType::Q4_1 => rows_q4_1,
        GgmlType::Q4_K => rows_q4_k,
        GgmlType::Q6_K => rows_q6_k,
        _ => return None,
    })
}

/// The 8-bit activation `RowsDot` for `ty`, None where there is none.
pub fn rows_dot8(ty: GgmlType) -> Option<RowsDot<Act8Block>> {
    Some(match ty {
        GgmlType::Q8_0 => rows8_q8_0,
        GgmlType::Q4_0 => rows8_q4_0,
        GgmlType::Q4_1 => rows8_q4_1,
        GgmlType::Q4_K => rows8_q4_k,
        GgmlType::Q6_K => rows8_q6_k,
        _ => return None,
    })
}


/// Σ u[i] * q[i] over the 32 bytes of `u` (unsigned, ≤ 128) and of the
/// activation block, as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8(u: __m256i, a: &Act8Block) -> __m256i {
    let q = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_q8_0(row: &[u8], x: &[Act8Block]) -> f32 {
    let step = |b: *const u8, a: &Act8Block, acc: &mut __m256| {
        let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
        let q = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
        // w * q = |w| * (q with w's sign), the unsigned operand first
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
        let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const u16).read_unaligned() as i32));
        let d = _mm_mul_ss(d, _mm_load_ss(&a.d));
        *acc = _mm256_fmadd_ps(s, _mm256_broadcastss_ps(d), *acc);
    };
    // two blocks per step into two accumulators, as in `dot8_q4`
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let blocks = row.len() / 34;
    let (x, p) = (&x[..blocks], row.as_ptr());
    for t in (0..blocks - blocks % 2).step_by(2) {
        step(p.add(t * 34), &x[t], &mut acc0);
        step(p.add((t + 1) * 34), &x[t + 1], &mut acc1);
    }
    if blocks % 2 == 1 {
        step(p.add((blocks - 1) * 34), &x[blocks - 1], &mut acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// The 32 nibbles of a Q4 block's 16 bytes at `p` as bytes: low nibbles
/// (values 0..16) then high nibbles (values 16..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask))
}

/// Q4_0 (`with_min` false: values nib - 8, the 8 taken off through Σq) and
/// Q4_1 (true: d * nib + m, the m through the exact Σx). Two blocks per
/// step into two accumulators (an FMA's latency exceeds a block's work);
/// Q4_1's f16 d and m convert together and meet the activations' (d, Σx)
/// in one multiply.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_q4(row: &[u8], x: &[Act8Block], with_min: bool) -> f32 {
    let (bytes, qs_at) = if with_min { (20, 4) } else { (18, 2) };
    // One block into (acc, macc): lane 0 of macc sums d * dx * Σq (Q4_0,
    // times -8 at the end), lane 1 sums m * Σx (Q4_1).
    let step = |b: *const u8, a: &Act8Block, acc: &mut __m256, macc: &mut __m128| {
        let s = _mm256_cvtepi32_ps(dot8(nibbles(b.add(qs_at)), a));
        // [d, m] (Q4_1) or [d, _] (Q4_0) of the weights, times [dx, Σx]
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
        let p = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(&a.d as *const f32 as *const f64)));
        *acc = _mm256_fmadd_ps(s, _mm256_broadcastss_ps(p), *acc);
        *macc = _mm_add_ps(*macc, if with_min { p } else { _mm_mul_ps(p, _mm_set1_ps((a.qsum[0] + a.qsum[1]) as f32)) });
    };
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut m0, mut m1) = (_mm_setzero_ps(), _mm_setzero_ps());
    let blocks = row.len() / bytes;
    let x = &x[..blocks];
    let p = row.as_ptr();
    for t in (0..blocks - blocks % 2).step_by(2) {
        step(p.add(t * bytes), &x[t], &mut acc0, &mut m0);
        step(p.add((t + 1) * bytes), &x[t + 1], &mut acc1, &mut m1);
    }
    if blocks % 2 == 1 {
        step(p.add((blocks - 1) * bytes), &x[blocks - 1], &mut acc0, &mut m0);
    }
    let m = _mm_add_ps(m0, m1);
    hsum(_mm256_add_ps(acc0, acc1)) + if with_min { _mm_cvtss_f32(_mm_movehdup_ps(m)) } else { -8.0 * _mm_cvtss_f32(m) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_q4_k(row: &[u8], x: &[Act8Block]) -> f32 {
    let mask = _mm256_set1_epi8(0x0f);
    // even and odd sub-blocks into their own accumulators
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut macc = 0f32;
    for (b, xs) in row.chunks_exact(144).zip(x.chunks_exact(8)) {
        let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
        let mut mins = 0f32;
        for g in 0..4 {
            let raw = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g) as *const __m256i);
            let (sc0, m0) = q4_k_scale_min(2 * g, scales);
            let (sc1, m1) = q4_k_scale_min(2 * g + 1, scales);
            let (a0, a1) = (&xs[2 * g], &xs[2 * g + 1]);
            let s0 = _mm256_cvtepi32_ps(dot8(_mm256_and_si256(raw, mask), a0));
            let s1 = _mm256_cvtepi32_ps(dot8(_mm256_and_si256(_mm256_srli_epi16(raw, 4), mask), a1));
            acc0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(d * sc0 as f32 * a0.d), acc0);
            acc1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * sc1 as f32 * a1.d), acc1);
            mins += m0 as f32 * a0.sum32 + m1 as f32 * a1.sum32;
        }
        macc += dmin * mins;
    }
    hsum(_mm256_add_ps(acc0, acc1)) - macc
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_q6_k(row: &[u8], x: &[Act8Block]) -> f32 {
    // even and odd quarters into their own accumulators
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut corr = 0f32;
    for (b, xs) in row.chunks_exact(210).zip(x.chunks_exact(8)) {
        let d = f16_at(b, 208);
        let p = b.as_ptr();
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            // quarter k of this half, as in `dot_q6_k`; values v + 32 in 0..64
            for k in 0..4 {
                let u = q6_k_quarter(ql0, ql1, qh, k);
                let a = &xs[4 * h + k];
                let q = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
                let sc = 8 * h + 2 * k;
                let (c0, c1) = (*b.get_unchecked(192 + sc) as i8 as i16, *b.get_unchecked(193 + sc) as i8 as i16);
                // pairs of the first 16 values times c0, of the last 16 times c1
                let cs = _mm256_setr_m128i(_mm_set1_epi16(c0), _mm_set1_epi16(c1));
                let s = _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), cs);
                let scale = d * a.d;
                acc[k % 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale), acc[k % 2]);
                corr += scale * (32 * (c0 as i32 * a.qsum[0] as i32 + c1 as i32 * a.qsum[1] as i32)) as f32;
            }
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1])) - corr
}
