//! 8-bit activation tiles on AVX-512 VNNI: every matmul of 4 or more rows
//! of x against GGUF block weights under `--cpu-activations int8` (decode
//! steps of several sequences, prefill).
//!
//! Lanes are rows of x. Up to `LANES` (16) rows of x, quantized to
//! `Act8Block`s, are transposed once per matmul so that one zmm register
//! holds 4 consecutive k-values of each of the 16 rows (`ActLanes`). A tile
//! of `NR` (8) weight rows is unpacked from its blocks to bytes (value + 128,
//! unsigned) with a scale and an offset per block of `kb` = 32 or 16 values
//! (`WRows`, `quant::unpack_bytes`), and each weight row is broadcast 4 bytes
//! at a time into `vpdpbusd`, which adds 4 byte products per i32 lane: the
//! same weight row against all 16 rows of x at once.
//!
//! ```text
//! per block b of kb values, weight row j:
//!   acc  = -128·Σq(x block)                      (i32 x 16 lanes: undoes the +128)
//!   acc += Σ u[j, 4c..4c+4] · q[lanes, 4c..4c+4] (kb/4 vpdpbusd)
//!   y[lanes, j] += f32(acc) · s[j,b] · d(x block) + mn[j,b] · Σx(x block)
//! ```
//! Per 512 products that is 8 `vpdpbusd` and 3 float ops, where the f32
//! tiles (`tile`) spend 32 8-wide FMAs after widening the weights to f32.
//! The integer sums are exact, so the result equals `quant::dot_generic`
//! with `Act8Block`s up to f32 summation order (tested below). A weight tile
//! is unpacked once and meets every 16-row group of x. llama.cpp's x86
//! kernels use the same instruction for one weight row against one row of x
//! at a time (ggml-cpu `quants.c`); lanes-as-rows is kiln's own layout.

use super::quant::{scale_block, unpack_bytes, Act8Block, QK};
use super::quant_x86::{f16_at, nibbles, q6_k_quarter};
use crate::model::dequant::{q4_k_scale_min, GgmlType};
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Rows of x per tile (zmm i32 lanes).
pub const LANES: usize = 16;
/// Weight rows per tile.
pub const NR: usize = 8;

/// AVX-512F/BW/VNNI with AVX2, FMA and F16C, checked once;
/// `KILN_NO_AVX512=1` turns it off (as for the f32 paths).
pub fn available() -> bool {
    static FLAG: OnceLock<bool> = OnceLock::new();
    *FLAG.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && super::simd::has_avx2_fma()
            && std::env::var_os("KILN_NO_AVX512").is_none()
    })
}

/// Up to `LANES` rows of x, 8-bit quantized and transposed so that lanes
/// are rows. Rows past `rows` are zero (scale 0: they add nothing).
pub struct ActLanes {
    /// Rows of x held (1..=LANES).
    pub rows: usize,
    k: usize,
    /// [k/4][LANES]: the 4 quantized values 4c..4c+4 of each row as one i32.
    q: Vec<i32>,
    /// [k/32][LANES] per 32-block, [k/16][LANES] per 16-half: the block's
    /// scale d, exact Σx, and -128·Σq.
    d32: Vec<f32>,
    s32: Vec<f32>,
    n32: Vec<i32>,
    d16: Vec<f32>,
    s16: Vec<f32>,
    n16: Vec<i32>,
}

impl ActLanes {
    /// `rows` (≤ LANES) consecutive rows of `k` values (k a multiple of 32),
    /// given as their `Act8Block`s (`rows * k / 32` of them, row-major).
    pub fn new(blocks: &[Act8Block], rows: usize, k: usize) -> ActLanes {
        assert!((1..=LANES).contains(&rows) && k % QK == 0 && blocks.len() >= rows * k / QK, "ActLanes: shapes");
        let kb = k / QK;
        let mut a = ActLanes {
            rows,
            k,
            q: vec![0; k / 4 * LANES],
            d32: vec![0.0; kb * LANES],
            s32: vec![0.0; kb * LANES],
            n32: vec![0; kb * LANES],
            d16: vec![0.0; 2 * kb * LANES],
            s16: vec![0.0; 2 * kb * LANES],
            n16: vec![0; 2 * kb * LANES],
        };
        for l in 0..rows {
            for (b, x) in blocks[l * kb..(l + 1) * kb].iter().enumerate() {
                for c in 0..QK / 4 {
                    let v = &x.q[4 * c..4 * c + 4];
                    a.q[(b * QK / 4 + c) * LANES + l] = i32::from_le_bytes([v[0] as u8, v[1] as u8, v[2] as u8, v[3] as u8]);
                }
                a.d32[b * LANES + l] = x.d;
                a.s32[b * LANES + l] = x.sum32;
                a.n32[b * LANES + l] = -128 * (x.qsum[0] as i32 + x.qsum[1] as i32);
                for h in 0..2 {
                    a.d16[(2 * b + h) * LANES + l] = x.d;
                    a.s16[(2 * b + h) * LANES + l] = x.sum[h];
                    a.n16[(2 * b + h) * LANES + l] = -128 * x.qsum[h] as i32;
                }
            }
        }
        a
    }

    /// `out[j][l]` = weight row j of `w` · row l of x, for j < NR, l < LANES
    /// (rows past `self.rows`, and weight rows past those set, give 0).
    pub fn tile(&self, w: &WRows, out: &mut [[f32; LANES]; NR]) {
        assert_eq!(self.k, w.k, "ActLanes::tile: k");
        assert!(available(), "ActLanes::tile: needs AVX-512 VNNI");
        // SAFETY: the features were checked; all indices are within the
        // buffers, whose sizes follow from k (asserted equal).
        unsafe {
            if w.kb == 32 {
                tile::<32>(self, w, out)
            } else {
                tile::<16>(self, w, out)
            }
        }
    }
}

/// `NR` weight rows unpacked to bytes (`quant::unpack_bytes`), scales and
/// offsets per `kb` values; reused from tile to tile.
#[derive(Default)]
pub struct WRows {
    k: usize,
    kb: usize,
    /// [NR][k]: value + 128.
    u: Vec<u8>,
    /// [NR][k/kb]: weight = s·value + mn.
    s: Vec<f32>,
    mn: Vec<f32>,
    /// Whether any row set has a nonzero offset.
    has_min: bool,
}

impl WRows {
    /// Prepares the tile for `nr` (≤ NR) rows of `k` values with a scale per
    /// `kb` (16 or 32; 16 when any row's type has scales per 16,
    /// `quant::scale_block`); rows from `nr` on are zero.
    pub fn reset(&mut self, k: usize, kb: usize, nr: usize) {
        assert!((kb == 16 || kb == 32) && k % kb == 0 && nr <= NR);
        if (self.k, self.kb) != (k, kb) {
            (self.k, self.kb) = (k, kb);
            self.u.resize(NR * k, 128);
            self.s.resize(NR * k / kb, 0.0);
            self.mn.resize(NR * k / kb, 0.0);
        }
        self.s[nr * k / kb..].fill(0.0);
        self.mn[nr * k / kb..].fill(0.0);
        self.has_min = false;
    }

    /// Unpacks `row` (k values in `ty` blocks) into slot `j` (< the `nr` of
    /// `reset`).
    pub fn set_row(&mut self, j: usize, ty: GgmlType, row: &[u8]) {
        let (k, kb) = (self.k, self.kb);
        assert!(j < NR && kb <= scale_block(ty));
        let u = &mut self.u[j * k..(j + 1) * k];
        let (s, mn) = (&mut self.s[j * k / kb..(j + 1) * k / kb], &mut self.mn[j * k / kb..(j + 1) * k / kb]);
        let (n, bytes) = ty.block_layout().expect("a block type");
        assert_eq!(row.len(), k / n * bytes, "WRows::set_row: row length");
        // SAFETY: AVX2 is part of `available()`; the row holds k values
        // (asserted) and u, s, mn hold k, k/kb, k/kb.
        let done = unsafe {
            match ty {
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => unpack_32(ty, row, kb, u, s, mn),
                GgmlType::Q4_K => unpack_q4_k(row, kb, u, s, mn),
                GgmlType::Q6_K => unpack_q6_k(row, u, s, mn),
                _ => false,
            }
        };
        if !done {
            unpack_bytes(ty, row, kb, u, s, mn);
        }
        use GgmlType::*;
        self.has_min |= matches!(ty, Q4_1 | Q5_1 | Q2_K | Q4_K | Q5_K);
    }
}

/// Q4_0, Q4_1 and Q8_0 rows: one 32-block at a time, 32 bytes out.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_32(ty: GgmlType, row: &[u8], kb: usize, u: &mut [u8], s: &mut [f32], mn: &mut [f32]) -> bool {
    let (_, bytes) = ty.block_layout().expect("a block type");
    let blocks = row.len() / bytes;
    debug_assert!(u.len() >= QK * blocks && s.len() >= blocks * QK / kb && mn.len() >= blocks * QK / kb);
    let (p, up, sp, mp) = (row.as_ptr(), u.as_mut_ptr(), s.as_mut_ptr(), mn.as_mut_ptr());
    let top = _mm256_set1_epi8(-128);
    for bi in 0..blocks {
        let b = p.add(bi * bytes);
        // [d, m] (Q4_1) or [d, _]: both f16s at once
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
        let (d, m) = (_mm_cvtss_f32(dm), if ty == GgmlType::Q4_1 { _mm_cvtss_f32(_mm_movehdup_ps(dm)) } else { 0.0 });
        let v = match ty {
            // nib - 8 + 128
            GgmlType::Q4_0 => _mm256_add_epi8(nibbles(b.add(2)), _mm256_set1_epi8(120)),
            GgmlType::Q4_1 => _mm256_xor_si256(nibbles(b.add(4)), top),
            _ => _mm256_xor_si256(_mm256_loadu_si256(b.add(2) as *const __m256i), top),
        };
        _mm256_storeu_si256(up.add(QK * bi) as *mut __m256i, v);
        if kb == QK {
            (*sp.add(bi), *mp.add(bi)) = (d, m);
        } else {
            (*sp.add(2 * bi), *sp.add(2 * bi + 1), *mp.add(2 * bi), *mp.add(2 * bi + 1)) = (d, d, m, m);
        }
    }
    true
}

/// Q4_K rows: per super-block of 256, sub-block g's nibbles (low for even
/// g, high for odd) + 128, scale d·sc and offset -dmin·m per 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4_k(row: &[u8], kb: usize, u: &mut [u8], s: &mut [f32], mn: &mut [f32]) -> bool {
    let mask = _mm256_set1_epi8(0x0f);
    let top = _mm256_set1_epi8(-128);
    let per = QK / kb;
    debug_assert!(u.len() >= row.len() / 144 * 256 && s.len() >= row.len() / 144 * 8 * per && mn.len() >= s.len());
    for (bi, b) in row.chunks_exact(144).enumerate() {
        let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
        for g in 0..4 {
            let raw = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g) as *const __m256i);
            let lo = _mm256_or_si256(_mm256_and_si256(raw, mask), top);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), mask), top);
            let o = u.as_mut_ptr().add(256 * bi + 64 * g);
            _mm256_storeu_si256(o as *mut __m256i, lo);
            _mm256_storeu_si256(o.add(32) as *mut __m256i, hi);
        }
        for sub in 0..8 {
            let (sc, m) = q4_k_scale_min(sub, scales);
            let at = (8 * bi + sub) * per;
            for t in at..at + per {
                *s.get_unchecked_mut(t) = d * sc as f32;
                *mn.get_unchecked_mut(t) = -dmin * m as f32;
            }
        }
    }
    true
}

/// Q6_K rows (scales per 16): values v + 32 (0..64) from `q6_k_quarter`,
/// + 96 more; scale d·sc per 16, no offset.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6_k(row: &[u8], u: &mut [u8], s: &mut [f32], mn: &mut [f32]) -> bool {
    mn.fill(0.0);
    let add = _mm256_set1_epi8(96);
    for (bi, b) in row.chunks_exact(210).enumerate() {
        let d = f16_at(b, 208);
        let p = b.as_ptr();
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            for k in 0..4 {
                let v = _mm256_add_epi8(q6_k_quarter(ql0, ql1, qh, k), add);
                _mm256_storeu_si256(u.as_mut_ptr().add(256 * bi + 128 * h + 32 * k) as *mut __m256i, v);
            }
        }
        for (g, &c) in b[192..208].iter().enumerate() {
            s[16 * bi + g] = d * (c as i8) as f32;
        }
    }
    true
}

/// The tile kernel (module docs), for scale blocks of `KB` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const KB: usize>(a: &ActLanes, w: &WRows, out: &mut [[f32; LANES]; NR]) {
    let k = a.k;
    let nb = k / KB;
    let (d, sx, nq) = if KB == 32 { (&a.d32, &a.s32, &a.n32) } else { (&a.d16, &a.s16, &a.n16) };
    let (up, sp, mp, qp) = (w.u.as_ptr(), w.s.as_ptr(), w.mn.as_ptr(), a.q.as_ptr());
    let mut f = [_mm512_setzero_ps(); NR];
    let mut xq = [_mm512_setzero_si512(); 8];
    for b in 0..nb {
        let da = _mm512_loadu_ps(d.as_ptr().add(b * LANES));
        let n0 = _mm512_loadu_si512(nq.as_ptr().add(b * LANES) as *const __m512i);
        for (c, v) in xq[..KB / 4].iter_mut().enumerate() {
            *v = _mm512_loadu_si512(qp.add((b * KB / 4 + c) * LANES) as *const __m512i);
        }
        for (j, fj) in f.iter_mut().enumerate() {
            let wj = up.add(j * k + b * KB);
            let mut acc = n0;
            for (c, v) in xq[..KB / 4].iter().enumerate() {
                let w4 = _mm512_set1_epi32((wj.add(4 * c) as *const i32).read_unaligned());
                acc = _mm512_dpbusd_epi32(acc, w4, *v);
            }
            let sc = _mm512_mul_ps(da, _mm512_set1_ps(*sp.add(j * nb + b)));
            *fj = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), sc, *fj);
        }
        if w.has_min {
            let xs = _mm512_loadu_ps(sx.as_ptr().add(b * LANES));
            for (j, fj) in f.iter_mut().enumerate() {
                *fj = _mm512_fmadd_ps(xs, _mm512_set1_ps(*mp.add(j * nb + b)), *fj);
            }
        }
    }
    for (o, fj) in out.iter_mut().zip(f) {
        _mm512_storeu_ps(o.as_mut_ptr(), fj);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::{dot_generic, quantize_rows, random_blocks, tests::TYPES};

    /// Every block type, both scale granularities, ragged rows of x and
    /// weights: the tile equals the portable 8-bit dot (same integer
    /// products, exact sums) up to f32 rounding.
    #[test]
    fn tiles_equal_the_portable_8_bit_dots() {
        if !available() {
            eprintln!("no AVX-512 VNNI here: the VNNI tiles are not used, nothing to compare");
            return;
        }
        let k = 512;
        for (ti, ty) in TYPES.into_iter().enumerate() {
            let (n, _) = ty.block_layout().unwrap();
            let rows = 5;
            let w = random_blocks(ty, rows * k / n, 11 + ti as u32);
            let rb = w.len() / rows;
            for m in [1usize, 3, 16] {
                let x: Vec<f32> = (0..m * k).map(|i| (((i * 37 + ti * 5) % 41) as f32 / 20.0 - 1.0) * if i % 97 == 0 { 8.0 } else { 1.0 }).collect();
                let q8: Vec<Act8Block> = quantize_rows(&x, k);
                let lanes = ActLanes::new(&q8, m, k);
                for kb in [16, 32] {
                    if kb > scale_block(ty) {
                        continue;
                    }
                    let mut wr = WRows::default();
                    wr.reset(k, kb, rows);
                    for j in 0..rows {
                        wr.set_row(j, ty, &w[j * rb..(j + 1) * rb]);
                    }
                    let mut o = [[f32::NAN; LANES]; NR];
                    lanes.tile(&wr, &mut o);
                    for j in 0..NR {
                        for l in 0..LANES {
                            let got = o[j][l];
                            if j >= rows || l >= m {
                                assert_eq!(got, 0.0, "{} padding [{j}][{l}]", ty.name());
                                continue;
                            }
                            let want = dot_generic(ty, &w[j * rb..(j + 1) * rb], &q8[l * k / QK..(l + 1) * k / QK]);
                            let mag: f32 = (0..k).map(|t| x[l * k + t].abs()).sum::<f32>() * 4.0;
                            assert!((got - want).abs() <= 1e-5 * mag, "{} kb={kb} m={m} [{j}][{l}]: {got} vs {want}", ty.name());
                        }
                    }
                }
            }
        }
    }

    /// The SIMD unpacking writes what the portable one does.
    #[test]
    fn simd_unpacking_equals_the_portable_unpacking() {
        if !super::super::simd::has_avx2_fma() {
            return;
        }
        let k = 512;
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let (n, _) = ty.block_layout().unwrap();
            let row = random_blocks(ty, k / n, 3);
            for kb in [16, 32] {
                if kb > scale_block(ty) {
                    continue;
                }
                let (mut u0, mut s0, mut m0) = (vec![0u8; k], vec![0f32; k / kb], vec![0f32; k / kb]);
                let (mut u1, mut s1, mut m1) = (vec![0u8; k], vec![0f32; k / kb], vec![0f32; k / kb]);
                unpack_bytes(ty, &row, kb, &mut u0, &mut s0, &mut m0);
                // SAFETY: AVX2 checked above; buffers sized for k values.
                let done = unsafe {
                    match ty {
                        GgmlType::Q4_K => unpack_q4_k(&row, kb, &mut u1, &mut s1, &mut m1),
                        GgmlType::Q6_K => unpack_q6_k(&row, &mut u1, &mut s1, &mut m1),
                        _ => unpack_32(ty, &row, kb, &mut u1, &mut s1, &mut m1),
                    }
                };
                assert!(done);
                assert_eq!(u0, u1, "{} kb={kb} bytes", ty.name());
                assert_eq!(s0, s1, "{} kb={kb} scales", ty.name());
                assert_eq!(m0, m1, "{} kb={kb} offsets", ty.name());
            }
        }
    }
}
