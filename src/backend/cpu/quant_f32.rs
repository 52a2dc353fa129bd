//! Exact dot products of f32 activations with GGUF blocks (the default
//! `ActQuant::F32` path): weights widened in registers, products in f32, so
//! results equal the f32 dot with the dequantized weights up to summation
//! order. Fast kernels for Q8_0 and Q4_1; other types are dequantized a row
//! at a time into a scratch buffer and multiplied with `simd::dot_f32`.
//!
//! ```text
//! Q8_0 block (34 B): d f16 | q i8[32]             w = d*q
//! Q4_1 block (20 B): d f16 | m f16 | nib u8[16]   w = d*nib + m  (w[j]: low nibble of
//!                                                   byte j, w[j+16]: its high nibble)
//! dot(x, Q4_1 block) = d * sum(x*nib) + m * sum(x)   -- sum(x) per block is computed
//!                                                       once per activation row
//! ```

use super::quant::{Q4_1_BYTES, Q8_0_BYTES, QK};
use crate::model::dequant::{dequantize_into, GgmlType};
use half::f16;
use std::cell::RefCell;

/// x · row for a row of `ty` blocks; `xsum` = block_sums(x) (Q4_1 only).
pub fn dot_f32_blocks(ty: GgmlType, x: &[f32], xsum: &[f32], row: &[u8]) -> f32 {
    match ty {
        GgmlType::Q8_0 => dot_q8_0(x, row),
        GgmlType::Q4_1 => dot_q4_1(x, xsum, row),
        _ => {
            thread_local! { static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) }; }
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                s.resize(x.len(), 0.0);
                dequantize_into(ty, row, &mut s);
                super::simd::dot_f32(x, &s)
            })
        }
    }
}

/// The dot `x · row` of `dot_f32_blocks` for rows of `ty`, chosen once for
/// this CPU (so a matmul does not re-dispatch on the type and the CPU's
/// features at every row); `None` for types without a fast kernel. Called as
/// `kernel(x, xsum, row)`, `xsum` = `block_sums(x)` (Q4_1; ignored by Q8_0).
pub fn row_kernel(ty: GgmlType) -> Option<fn(&[f32], &[f32], &[u8]) -> f32> {
    match ty {
        GgmlType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                return Some(|x, _, r| {
                    // SAFETY: avx512f and f16c were checked.
                    unsafe { x86::dot_q8_0_512(x, r) }
                });
            }
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx2_fma() {
                return Some(|x, _, r| {
                    // SAFETY: avx2, fma and f16c were checked.
                    unsafe { x86::dot_q8_0(x, r) }
                });
            }
            Some(|x, _, r| dot_q8_0_portable(x, r))
        }
        GgmlType::Q4_1 => {
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                return Some(|x, s, r| {
                    // SAFETY: avx512f and f16c were checked.
                    unsafe { x86::dot_q4_1_512(x, s, r) }
                });
            }
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx2_fma() {
                return Some(|x, s, r| {
                    // SAFETY: avx2, fma and f16c were checked.
                    unsafe { x86::dot_q4_1(x, s, r) }
                });
            }
            Some(dot_q4_1_portable)
        }
        _ => None,
    }
}

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
fn dot_q8_0(x: &[f32], row: &[u8]) -> f32 {
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
fn dot_q4_1(x: &[f32], xsum: &[f32], row: &[u8]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::quant_x86::{f16_at, hsum};
    use super::{Q4_1_BYTES, Q8_0_BYTES, QK};
    use std::arch::x86_64::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::random_blocks;
    use crate::model::dequant::dequantize;

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
    fn f32_block_dots_equal_dequantized_dots() {
        for k in [256usize, 576, 1536] {
            let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 17) as f32 - 8.0) / 7.0).collect();
            let want = |ty: GgmlType, r: &[u8]| -> f64 {
                let w = dequantize(ty, r, k).unwrap();
                x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let (r8, r4) = (random_blocks(GgmlType::Q8_0, k / QK, 1), random_blocks(GgmlType::Q4_1, k / QK, 2));
            let (want8, want4) = (want(GgmlType::Q8_0, &r8), want(GgmlType::Q4_1, &r4));
            for (name, q8, q4) in implementations() {
                let (g8, g4) = (q8(&x, &r8) as f64, q4(&x, &block_sums(&x), &r4) as f64);
                assert!((g8 - want8).abs() < 1e-4 * (1.0 + want8.abs()), "{name} q8_0 k={k}: {g8} vs {want8}");
                assert!((g4 - want4).abs() < 1e-4 * (1.0 + want4.abs()), "{name} q4_1 k={k}: {g4} vs {want4}");
            }
            if k % 256 == 0 {
                let r = random_blocks(GgmlType::Q6_K, k / 256, 3);
                let (g, w) = (dot_f32_blocks(GgmlType::Q6_K, &x, &[], &r) as f64, want(GgmlType::Q6_K, &r));
                assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "q6_k k={k}: {g} vs {w}");
            }
        }
    }
}
