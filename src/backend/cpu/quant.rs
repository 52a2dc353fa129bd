//! Dot products straight from GGUF blocks, so quantized models keep their
//! weights as stored (the exact values transformers dequantizes) and decode
//! reads 4-8x fewer bytes than with f32 weights.
//!
//! ```text
//! Q8_0 block (34 B): d f16 | q i8[32]             w = d*q
//! Q4_1 block (20 B): d f16 | m f16 | nib u8[16]   w = d*nib + m  (w[j]: low nibble of
//!                                                   byte j, w[j+16]: its high nibble)
//! dot(x, Q4_1 block) = d * sum(x*nib) + m * sum(x)   -- sum(x) per block is computed
//!                                                       once per activation row
//! ```

use half::f16;

pub const QK: usize = 32;
pub const Q8_0_BYTES: usize = 34;
pub const Q4_1_BYTES: usize = 20;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
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

/// Sums of each 32-wide block of `x` (for Q4_1's `m` term).
pub fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks(QK).map(|c| c.iter().sum()).collect()
}

/// x · row, row = k/32 Q8_0 blocks.
#[inline]
pub fn dot_q8_0(x: &[f32], row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: avx512f and f16c are present.
        return unsafe { x86::dot_q8_0_512(x, row) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: avx2, fma and f16c are present.
        return unsafe { x86::dot_q8_0(x, row) };
    }
    dot_q8_0_portable(x, row)
}

fn dot_q8_0_portable(x: &[f32], row: &[u8]) -> f32 {
    let mut s = 0.0;
    for (xb, b) in x.chunks_exact(QK).zip(row.chunks_exact(Q8_0_BYTES)) {
        let d = f16_at(b, 0);
        let acc: f32 = xb.iter().zip(&b[2..]).map(|(x, &q)| x * (q as i8) as f32).sum();
        s += d * acc;
    }
    s
}

/// x · row, row = k/32 Q4_1 blocks; `xsum` = block_sums(x).
#[inline]
pub fn dot_q4_1(x: &[f32], xsum: &[f32], row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: avx512f and f16c are present.
        return unsafe { x86::dot_q4_1_512(x, xsum, row) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: avx2, fma and f16c are present.
        return unsafe { x86::dot_q4_1(x, xsum, row) };
    }
    dot_q4_1_portable(x, xsum, row)
}

fn dot_q4_1_portable(x: &[f32], xsum: &[f32], row: &[u8]) -> f32 {
    let mut s = 0.0;
    for ((xb, b), &xs) in x.chunks_exact(QK).zip(row.chunks_exact(Q4_1_BYTES)).zip(xsum) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let mut acc = 0.0;
        for j in 0..16 {
            acc += xb[j] * (b[4 + j] & 0xF) as f32 + xb[j + 16] * (b[4 + j] >> 4) as f32;
        }
        s += d * acc + m * xs;
    }
    s
}

/// Dequantizes one row into `out` (embedding lookup).
pub fn row_q8_0(row: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(Q8_0_BYTES)) {
        let d = f16_at(b, 0);
        o.iter_mut().zip(&b[2..]).for_each(|(o, &q)| *o = d * (q as i8) as f32);
    }
}

pub fn row_q4_1(row: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(Q4_1_BYTES)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for j in 0..16 {
            o[j] = d * (b[4 + j] & 0xF) as f32 + m;
            o[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q4_1_BYTES, Q8_0_BYTES, QK};
    use std::arch::x86_64::*;

    /// The little-endian f16 at b[i..i+2] as f32 (F16C).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([*b.get_unchecked(i), *b.get_unchecked(i + 1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// 8 bytes at p (as i32 lanes, signed or not) -> f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn i8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
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

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(x: &[f32], row: &[u8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let px = x.as_ptr();
        for (bi, b) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            let xp = px.add(bi * QK);
            let q = b.as_ptr().add(2);
            let lo = _mm_loadu_si128(q as *const __m128i);
            let hi = _mm_loadu_si128(q.add(16) as *const __m128i);
            let mut v = _mm256_mul_ps(i8x8(lo), _mm256_loadu_ps(xp));
            v = _mm256_fmadd_ps(i8x8(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xp.add(8)), v);
            v = _mm256_fmadd_ps(i8x8(hi), _mm256_loadu_ps(xp.add(16)), v);
            v = _mm256_fmadd_ps(i8x8(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xp.add(24)), v);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0)), v, acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(x: &[f32], xsum: &[f32], row: &[u8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut macc = 0.0f32;
        let px = x.as_ptr();
        let mask = _mm_set1_epi8(0x0F);
        for (bi, b) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            let xp = px.add(bi * QK);
            let raw = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            let mut v = _mm256_mul_ps(u8x8(lo), _mm256_loadu_ps(xp));
            v = _mm256_fmadd_ps(u8x8(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xp.add(8)), v);
            v = _mm256_fmadd_ps(u8x8(hi), _mm256_loadu_ps(xp.add(16)), v);
            v = _mm256_fmadd_ps(u8x8(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xp.add(24)), v);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0)), v, acc);
            macc += f16_at(b, 2) * *xsum.get_unchecked(bi);
        }
        hsum(acc) + macc
    }
}

/// Random blocks with finite, moderate scales (tests).
#[cfg(test)]
pub(crate) fn random_blocks(n: usize, bytes: usize, seed: u32) -> Vec<u8> {
    tests::blocks(n, bytes, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn blocks(n: usize, bytes: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        let mut v: Vec<u8> = (0..n * bytes)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 24) as u8
            })
            .collect();
        for b in v.chunks_exact_mut(bytes) {
            // finite, moderate f16 scales
            let (d, m) = (0.01 + b[4] as f32 * 1e-4, -0.05 + b[5] as f32 * 1e-4);
            b[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            if bytes == Q4_1_BYTES {
                b[2..4].copy_from_slice(&f16::from_f32(m).to_bits().to_le_bytes());
            }
        }
        v
    }

    type Q8 = Box<dyn Fn(&[f32], &[u8]) -> f32>;
    type Q4 = Box<dyn Fn(&[f32], &[f32], &[u8]) -> f32>;

    /// Every implementation this CPU can run, by name.
    fn implementations() -> Vec<(&'static str, Q8, Q4)> {
        let mut v: Vec<(&'static str, Q8, Q4)> =
            vec![("portable", Box::new(dot_q8_0_portable), Box::new(dot_q4_1_portable))];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::backend::cpu::simd::has_avx2_fma() {
                // SAFETY: the features were checked.
                v.push(("avx2", Box::new(|x, r| unsafe { x86::dot_q8_0(x, r) }), Box::new(|x, s, r| unsafe { x86::dot_q4_1(x, s, r) })));
            }
            if has_avx512() {
                // SAFETY: the features were checked.
                v.push(("avx512", Box::new(|x, r| unsafe { x86::dot_q8_0_512(x, r) }), Box::new(|x, s, r| unsafe { x86::dot_q4_1_512(x, s, r) })));
            }
        }
        v
    }

    #[test]
    fn quantized_dots_equal_dequantized_dots() {
        for k in [32usize, 64, 576, 1536] {
            let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 17) as f32 - 8.0) / 7.0).collect();
            let (r8, r4) = (blocks(k / QK, Q8_0_BYTES, 1), blocks(k / QK, Q4_1_BYTES, 2));
            let (mut w8, mut w4) = (vec![0f32; k], vec![0f32; k]);
            row_q8_0(&r8, &mut w8);
            row_q4_1(&r4, &mut w4);
            let want = |w: &[f32]| -> f64 { x.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum() };
            let (want8, want4) = (want(&w8), want(&w4));
            for (name, q8, q4) in implementations() {
                let (g8, g4) = (q8(&x, &r8) as f64, q4(&x, &block_sums(&x), &r4) as f64);
                assert!((g8 - want8).abs() < 1e-4 * (1.0 + want8.abs()), "{name} q8_0 k={k}: {g8} vs {want8}");
                assert!((g4 - want4).abs() < 1e-4 * (1.0 + want4.abs()), "{name} q4_1 k={k}: {g4} vs {want4}");
            }
        }
    }

    #[test]
    fn row_dequant_matches_ggml_dequant() {
        use crate::model::dequant::dequantize;
        use crate::model::gguf::GgmlType;
        for (ty, bytes) in [(GgmlType::Q8_0, Q8_0_BYTES), (GgmlType::Q4_1, Q4_1_BYTES)] {
            let row = blocks(4, bytes, 9);
            let want = dequantize(ty, &row, 4 * QK).unwrap();
            let mut got = vec![0f32; 4 * QK];
            if bytes == Q8_0_BYTES { row_q8_0(&row, &mut got) } else { row_q4_1(&row, &mut got) }
            assert_eq!(got, want);
        }
    }
}
