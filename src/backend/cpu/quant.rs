//! Dot products straight from GGUF blocks: weights stay in the blocks the file
//! stores (4-8x fewer bytes than f32), activations are quantized once per
//! matmul to integer blocks, and each block's dot is an integer sum scaled
//! once.
//!
//! ```text
//! activations, per 32 values:  ActBlock  { q: i16[32], d, sum: f32[2] }   (16-bit)
//!                              Act8Block { q: i8[32], d, sum: f32[2], qsum: i16[2] } (8-bit)
//!                              x[i] ≈ d * q[i], d = max|x| / 32767 (or / 127);
//!                              sum = exact f32 sums of x[0..16], x[16..32]
//! weights, per 16 values g:    w[i] = scale[g] * v[i] - min[g]   (v small ints)
//! dot = Σ_g scale[g] * d * Σ_{i∈g} v[i]*q[i]  -  Σ_g min[g] * sum_g
//! ```
//! The 8-bit blocks are llama.cpp's numerics (its Q8_0/Q8_1 activations,
//! `vpmaddubsw`: 32 byte products per instruction); the 16-bit ones
//! (`vpmaddwd`, half the integer throughput) keep logits within ~1e-3 of
//! f32. Neither is the default: kiln's f32 activations keep logits within
//! 2e-5 of transformers' f32 reference (tests/default_model.rs). Integer
//! sums cannot overflow: |v| ≤ 63, so a 16-value group sums to at most
//! 16 * 63 * 32767 < 2^25.
//!
//! The block layouts are ggml's (see `crate::model::dequant`). `rows_dot` picks
//! at run time: AVX2 kernels (`quant_x86`) for the common types, the portable
//! `dot_generic` (unpack a block to small ints, then multiply) for the rest
//! and on other CPUs.

use crate::model::dequant::{q3_k_scales, q4_k_scale_min, GgmlType};
use half::f16;

pub const QK: usize = 32;
pub const Q8_0_BYTES: usize = 34;
pub const Q4_1_BYTES: usize = 20;

/// 32 activations as 16-bit integers with one scale: x[i] ≈ d * q[i].
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ActBlock {
    pub q: [i16; QK],
    pub d: f32,
    /// Exact sums of x[0..16] and x[16..32] (for the weights' min terms).
    pub sum: [f32; 2],
}

/// 32 activations as 8-bit integers with one scale: x[i] ≈ d * q[i],
/// d = max|x| / 127, |q| ≤ 127 (llama.cpp's Q8_0 activations, plus sums).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Act8Block {
    pub q: [i8; QK],
    pub d: f32,
    /// The exact sum of all 32 values, beside `d` so that kernels load both
    /// at once (Q4_1's scale and min terms).
    pub sum32: f32,
    /// Exact sums of x[0..16] and x[16..32] (for the weights' min terms).
    pub sum: [f32; 2],
    /// Σ q over each half (for weights stored with an offset: Q4_0, Q6_K).
    pub qsum: [i16; 2],
}

/// A block of 32 quantized activations, as `rows_dot` takes them.
pub trait QuantActs: Copy + Default + Send + Sync {
    /// Largest |q|.
    const QMAX: f32;
    /// Quantizes 32 values (round to nearest, scale from max |x|).
    fn quantize(x: &[f32]) -> Self;
    /// The i-th integer value.
    fn q(&self, i: usize) -> i32;
    /// The scale: x[i] ≈ d * q[i].
    fn d(&self) -> f32;
    /// The exact f32 sum of x[16h..16h+16].
    fn half_sum(&self, h: usize) -> f32;
    /// The AVX2 many-row kernel for `ty`, None where there is none.
    #[cfg(target_arch = "x86_64")]
    fn simd_rows(ty: GgmlType) -> Option<super::quant_x86::RowsDot<Self>>;
}

/// The scale, its inverse and the two half sums of 32 values quantized to
/// integers of at most `qmax`.
fn block_scale(x: &[f32], qmax: f32) -> (f32, f32, [f32; 2]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax > 0.0 { qmax / amax } else { 0.0 };
    (amax / qmax, id, [x[..16].iter().sum(), x[16..].iter().sum()])
}

impl QuantActs for ActBlock {
    const QMAX: f32 = 32767.0;
    fn quantize(x: &[f32]) -> Self {
        let (d, id, sum) = block_scale(x, Self::QMAX);
        let mut b = ActBlock { d, sum, ..Default::default() };
        b.q.iter_mut().zip(x).for_each(|(q, &v)| *q = (v * id).round() as i16);
        b
    }
    #[inline]
    fn q(&self, i: usize) -> i32 {
        self.q[i] as i32
    }
    #[inline]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline]
    fn half_sum(&self, h: usize) -> f32 {
        self.sum[h]
    }
    #[cfg(target_arch = "x86_64")]
    fn simd_rows(ty: GgmlType) -> Option<super::quant_x86::RowsDot<Self>> {
        super::quant_x86::rows_dot16(ty)
    }
}

impl QuantActs for Act8Block {
    const QMAX: f32 = 127.0;
    /// Rounds to nearest, ties to even (as the AVX2 path, which does the
    /// same arithmetic: `quant_x86::quantize8`).
    fn quantize(x: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if x.len() == QK && super::simd::has_avx2_fma() {
            // SAFETY: AVX2/FMA/F16C checked; x holds 32 values.
            return unsafe { super::quant_x86::quantize8(x) };
        }
        let (d, id, sum) = block_scale(x, Self::QMAX);
        let mut b = Act8Block { d, sum, ..Default::default() };
        b.q.iter_mut().zip(x).for_each(|(q, &v)| *q = (v * id).round_ties_even() as i8);
        b.qsum = [0, 1].map(|h| b.q[16 * h..16 * h + 16].iter().map(|&q| q as i16).sum());
        b.sum32 = sum[0] + sum[1];
        b
    }
    #[inline]
    fn q(&self, i: usize) -> i32 {
        self.q[i] as i32
    }
    #[inline]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline]
    fn half_sum(&self, h: usize) -> f32 {
        self.sum[h]
    }
    #[cfg(target_arch = "x86_64")]
    fn simd_rows(ty: GgmlType) -> Option<super::quant_x86::RowsDot<Self>> {
        super::quant_x86::rows_dot8(ty)
    }
}

/// Quantizes `x` (a multiple of 32 long) into `out` (x.len() / 32 blocks).
pub fn quantize_acts<A: QuantActs>(x: &[f32], out: &mut [A]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        *b = A::quantize(xb);
    }
}

/// `x` (rows of `k` values, k a multiple of 32) as activation blocks, row
/// after row.
pub fn quantize_rows<A: QuantActs>(x: &[f32], k: usize) -> Vec<A> {
    let mut out = vec![A::default(); x.len() / QK];
    for (xr, or) in x.chunks(k).zip(out.chunks_mut(k / QK)) {
        quantize_acts(xr, or);
    }
    out
}

/// Whether kiln multiplies blocks of `ty` directly.
pub fn is_block_type(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// One block unpacked: w[i] = scale[i/16] * v[i] - min[i/16].
struct Unpacked {
    v: [i8; 256],
    scale: [f32; 16],
    min: [f32; 16],
}

/// (values per block, bytes per block) of a block type.
fn layout(ty: GgmlType) -> (usize, usize) {
    ty.block_layout().expect("a block type")
}

/// The 5-bit values of a Q5_0/Q5_1 block: `qh` (LE u32 at 0..4) then 16 nibble bytes.
fn q5_values(s: &[u8], v: &mut [i8], offset: i8) {
    let qh = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    for j in 0..16 {
        v[j] = ((s[4 + j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4)) as i8 - offset;
        v[j + 16] = ((s[4 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) as i8 - offset;
    }
}

/// Unpacks one block of `ty` (see `crate::model::dequant` for the layouts).
fn unpack(ty: GgmlType, b: &[u8], u: &mut Unpacked) {
    u.min = [0.0; 16];
    match ty {
        GgmlType::Q8_0 => {
            u.scale[..2].fill(f16_at(b, 0));
            b[2..34].iter().zip(u.v.iter_mut()).for_each(|(&q, v)| *v = q as i8);
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (qs, off) = if ty == GgmlType::Q4_0 { (&b[2..18], 8) } else { (&b[4..20], 0) };
            for j in 0..16 {
                u.v[j] = (qs[j] & 0x0f) as i8 - off;
                u.v[j + 16] = (qs[j] >> 4) as i8 - off;
            }
            u.scale[..2].fill(f16_at(b, 0));
            if ty == GgmlType::Q4_1 {
                u.min[..2].fill(-f16_at(b, 2));
            }
        }
        GgmlType::Q5_0 => {
            q5_values(&b[2..22], &mut u.v, 16);
            u.scale[..2].fill(f16_at(b, 0));
        }
        GgmlType::Q5_1 => {
            q5_values(&b[4..24], &mut u.v, 0);
            u.scale[..2].fill(f16_at(b, 0));
            u.min[..2].fill(-f16_at(b, 2));
        }
        GgmlType::Q2_K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for i in 0..256 {
                let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
                u.v[i] = ((qs[32 * h + l] >> (2 * g)) & 3) as i8;
            }
            for (g, &sc) in scales.iter().enumerate() {
                u.scale[g] = d * (sc & 0x0f) as f32;
                u.min[g] = dmin * (sc >> 4) as f32;
            }
        }
        GgmlType::Q3_K => {
            let (hmask, qs) = (&b[0..32], &b[32..96]);
            let d = f16_at(b, 108);
            for i in 0..256 {
                let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
                let hi = if hmask[l] & (1 << (4 * h + g)) != 0 { 0 } else { 4 };
                u.v[i] = ((qs[32 * h + l] >> (2 * g)) & 3) as i8 - hi;
            }
            for (s, sc) in u.scale.iter_mut().zip(q3_k_scales(&b[96..108])) {
                *s = d * sc as f32;
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
            let (qh, qs) = if ty == GgmlType::Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for i in 0..256 {
                let (g, l) = (i / 64, i % 64);
                let byte = qs[32 * g + l % 32];
                let mut q = if l < 32 { byte & 0x0f } else { byte >> 4 };
                if let Some(qh) = qh {
                    q |= ((qh[l % 32] >> (i / 32)) & 1) << 4;
                }
                u.v[i] = q as i8;
            }
            for j in 0..8 {
                let (sc, m) = q4_k_scale_min(j, scales);
                u.scale[2 * j..2 * j + 2].fill(d * sc as f32);
                u.min[2 * j..2 * j + 2].fill(dmin * m as f32);
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for i in 0..256 {
                let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
                let lo = ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2)) & 0x0f;
                let hi = (qh[32 * h + l] >> (2 * k)) & 3;
                u.v[i] = (lo | (hi << 4)) as i8 - 32;
            }
            for (s, &c) in u.scale.iter_mut().zip(sc) {
                *s = d * (c as i8) as f32;
            }
        }
        other => panic!("{} is not a block type", other.name()),
    }
}

/// Scale granularity of `ty` for byte unpacking (`unpack_bytes`): 16 for
/// the types with a scale per 16 values (Q2_K, Q3_K, Q6_K), else 32.
pub fn scale_block(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => 16,
        _ => 32,
    }
}

/// One row of `ty` blocks unpacked to bytes for the 8-bit activation tiles
/// (`quant_vnni`): `u[i]` = integer value + 128 (unsigned), and per `kb`
/// values (16, or 32 where `scale_block(ty)` is 32) a scale `s` and an
/// offset `mn`, so that weight i = s·(u[i] - 128) + mn. `u` holds the row's
/// values, `s` and `mn` its values / kb. The portable path; the AVX2 one
/// (`quant_vnni`) writes the same bytes for the common types.
pub fn unpack_bytes(ty: GgmlType, row: &[u8], kb: usize, u: &mut [u8], s: &mut [f32], mn: &mut [f32]) {
    let (n, bytes) = layout(ty);
    assert!(kb == 16 || (kb == 32 && scale_block(ty) == 32), "unpack_bytes: {} has no scale per {kb}", ty.name());
    let mut up = Unpacked { v: [0; 256], scale: [0.0; 16], min: [0.0; 16] };
    for (bi, b) in row.chunks_exact(bytes).enumerate() {
        unpack(ty, b, &mut up);
        for (o, &v) in u[bi * n..(bi + 1) * n].iter_mut().zip(&up.v[..n]) {
            *o = (v as i16 + 128) as u8;
        }
        for g in 0..n / kb {
            s[bi * n / kb + g] = up.scale[g * kb / 16];
            mn[bi * n / kb + g] = -up.min[g * kb / 16];
        }
    }
}

/// out[r] = row r of `rows` · x (whole rows of `rb` bytes, as many
/// as `out` holds) with `x`, the kernel picked once for all rows (a decode
/// matmul's rows are short: 18 blocks at k = 576).
pub fn rows_dot<A: QuantActs>(ty: GgmlType, rows: &[u8], rb: usize, x: &[A], out: &mut [f32]) {
    assert!(rows.len() >= rb * out.len() && x.len() * QK >= rb / layout(ty).1 * layout(ty).0, "rows_dot: sizes");
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        if let Some(kernel) = A::simd_rows(ty) {
            // SAFETY: avx2, fma and f16c are present (checked above); the
            // sizes were checked.
            return unsafe { kernel(rows, rb, x, out) };
        }
    }
    for (row, o) in rows.chunks_exact(rb).zip(out) {
        *o = dot_generic(ty, row, x);
    }
}

/// Portable dot of one row with `x`: unpack each block, integer sums per 16 values.
pub fn dot_generic<A: QuantActs>(ty: GgmlType, row: &[u8], x: &[A]) -> f32 {
    let (n, bytes) = layout(ty);
    let mut u = Unpacked { v: [0; 256], scale: [0.0; 16], min: [0.0; 16] };
    let mut acc = 0f32;
    for (bi, b) in row.chunks_exact(bytes).enumerate() {
        unpack(ty, b, &mut u);
        let xs = &x[bi * n / QK..(bi + 1) * n / QK];
        for g in 0..n / 16 {
            let a = &xs[g / 2];
            let half = g % 2;
            let s: i32 = (0..16).map(|i| u.v[16 * g + i] as i32 * a.q(16 * half + i)).sum();
            acc += u.scale[g] * a.d() * s as f32 - u.min[g] * a.half_sum(half);
        }
    }
    acc
}

/// Dequantizes one Q8_0 row into `out` (as `crate::model::dequant` does).
pub fn row_q8_0(row: &[u8], out: &mut [f32]) {
    crate::model::dequant::dequantize_into(GgmlType::Q8_0, row, out)
}

/// Dequantizes one Q4_1 row into `out`.
pub fn row_q4_1(row: &[u8], out: &mut [f32]) {
    crate::model::dequant::dequantize_into(GgmlType::Q4_1, row, out)
}

/// Random blocks of `ty` with finite, moderate scales (tests).
#[cfg(test)]
pub(crate) fn random_blocks(ty: GgmlType, n: usize, seed: u32) -> Vec<u8> {
    let (_, bytes) = layout(ty);
    let mut s = seed;
    let mut v: Vec<u8> = (0..n * bytes)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 24) as u8
        })
        .collect();
    // byte offsets of the f16 scales in each block
    let at: &[usize] = match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for b in v.chunks_exact_mut(bytes) {
        for (j, &i) in at.iter().enumerate() {
            let val = 0.01 + b[i] as f32 * 1e-4 - j as f32 * 0.02;
            b[i..i + 2].copy_from_slice(&f16::from_f32(val).to_bits().to_le_bytes());
        }
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::dequant::dequantize;

    pub(crate) const TYPES: [GgmlType; 10] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    fn acts(k: usize, seed: usize) -> Vec<f32> {
        (0..k).map(|i| ((i * 31 + seed * 7) % 17) as f32 / 7.0 - 1.1 + if i % 97 == 5 { 9.0 } else { 0.0 }).collect()
    }

    /// The activations' quantized values, block after block.
    fn dequantized<A: QuantActs>(a: &[A]) -> Vec<f64> {
        a.iter().flat_map(|b| (0..QK).map(move |i| b.q(i) as f64 * b.d() as f64)).collect()
    }

    /// Every block dot, generic and SIMD, one row and many, against the f64
    /// dot of the dequantized weights with the activations as quantized (or
    /// as given, for the min terms, which use exact sums); and the error of
    /// quantizing the activations within its bound: Σ |w| * d / 2.
    fn check_block_dots<A: QuantActs>() {
        for ty in TYPES {
            let (n, bytes) = layout(ty);
            for k in [256usize, 512, 1536] {
                let nb = k / n;
                let rows = random_blocks(ty, 3 * nb, 7 + k as u32);
                let x = acts(k, 3);
                let a: Vec<A> = quantize_rows(&x, k);
                let xq = dequantized(&a);
                let mut many = [0f32; 3];
                rows_dot(ty, &rows, nb * bytes, &a, &mut many);
                for (r, row) in rows.chunks_exact(nb * bytes).enumerate() {
                    let w = dequantize(ty, row, k).unwrap();
                    let want: f64 = w.iter().zip(&xq).map(|(w, x)| *w as f64 * x).sum();
                    let exact: f64 = w.iter().zip(&x).map(|(w, x)| *w as f64 * *x as f64).sum();
                    let mag: f64 = w.iter().zip(&x).map(|(w, x)| (*w as f64 * *x as f64).abs()).sum();
                    // the sums of x used for the min terms are exact: compare those
                    // types against the exact dot where the q·x part is 1e-5 off
                    let uses_min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::Q5_K);
                    let (target, tol) = if uses_min && A::QMAX > 127.0 { (exact, 1e-4) } else { (want, 1e-5) };
                    let tol = tol * mag.max(1.0);
                    // min terms meet x exactly, not as quantized: take them off
                    // the 8-bit reference through the weights' f32 values
                    let target = if uses_min && A::QMAX <= 127.0 { min_corrected(ty, row, &x, &xq, want) } else { target };
                    let name = ty.name();
                    let g = dot_generic(ty, row, &a) as f64;
                    assert!((g - target).abs() <= tol, "{name} k={k} generic: {g} vs {target}");
                    let mut one = [0f32];
                    rows_dot(ty, row, row.len(), &a, &mut one);
                    let v = one[0] as f64;
                    assert!((v - target).abs() <= tol, "{name} k={k} rows_dot one row: {v} vs {target}");
                    assert!((many[r] as f64 - target).abs() <= tol, "{name} k={k} rows_dot row {r}: {} vs {target}", many[r]);
                    // quantizing x moves each value by at most half a step
                    let bound: f64 = w.iter().enumerate().map(|(i, w)| (*w as f64).abs() * a[i / QK].d() as f64 / 2.0).sum();
                    assert!((v - exact).abs() <= bound * 1.001 + 1e-5 * mag, "{name} k={k}: {v} vs exact {exact} (bound {bound})");
                }
            }
        }
    }

    /// `want` (Σ w * xq) with each min term -min_g * Σ_g xq replaced by the
    /// kernels' -min_g * Σ_g x.
    fn min_corrected(ty: GgmlType, row: &[u8], x: &[f32], xq: &[f64], want: f64) -> f64 {
        let (n, bytes) = layout(ty);
        let mut u = Unpacked { v: [0; 256], scale: [0.0; 16], min: [0.0; 16] };
        let mut out = want;
        for (bi, b) in row.chunks_exact(bytes).enumerate() {
            unpack(ty, b, &mut u);
            for g in 0..n / 16 {
                let at = bi * n + 16 * g;
                let (sx, sq): (f64, f64) = (x[at..at + 16].iter().map(|&v| v as f64).sum(), xq[at..at + 16].iter().sum());
                out -= u.min[g] as f64 * (sx - sq);
            }
        }
        out
    }

    #[test]
    fn block_dots_equal_dequantized_dots_16_bit() {
        check_block_dots::<ActBlock>();
    }

    #[test]
    fn block_dots_equal_dequantized_dots_8_bit() {
        check_block_dots::<Act8Block>();
    }

    /// The AVX2 8-bit quantization writes the portable one's values (ties
    /// included: both round to even), scale and Σq; half sums to f32
    /// rounding.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_8_bit_quantization_equals_the_portable_one() {
        if !crate::backend::cpu::simd::has_avx2_fma() {
            return;
        }
        let mut x = acts(1024, 5);
        // exact ties at x·127/max = ±0.5, ±1.5, ±2.5 and an all-zero block
        x[..4].copy_from_slice(&[127.0, 0.5, -1.5, 2.5]);
        x[32..64].fill(0.0);
        for xb in x.chunks(QK) {
            let simd = unsafe { super::super::quant_x86::quantize8(xb) };
            let (d, id, sum) = block_scale(xb, 127.0);
            let q: Vec<i8> = xb.iter().map(|&v| (v * id).round_ties_even() as i8).collect();
            assert_eq!((simd.d, &simd.q[..]), (d, &q[..]));
            let qsum = [0, 1].map(|h| q[16 * h..16 * h + 16].iter().map(|&q| q as i16).sum::<i16>());
            assert_eq!(simd.qsum, qsum);
            for h in 0..2 {
                assert!((simd.sum[h] - sum[h]).abs() <= 1e-6 * (1.0 + sum[h].abs()), "{} vs {}", simd.sum[h], sum[h]);
            }
        }
        assert_eq!(&Act8Block::quantize(&x[..32]).q[..4], &[127, 0, -2, 2]);
    }

    #[test]
    fn activation_quantization_error_is_below_half_a_step() {
        let x = acts(512, 1);
        let mut a = vec![ActBlock::default(); 16];
        quantize_acts(&x, &mut a);
        for (xb, b) in x.chunks(QK).zip(&a) {
            for (v, q) in xb.iter().zip(b.q) {
                assert!((v - b.d * q as f32).abs() <= 0.5001 * b.d, "{v} vs {}", b.d * q as f32);
            }
            assert_eq!(b.sum[0], xb[..16].iter().sum::<f32>());
        }
        let mut z = [ActBlock::default()];
        quantize_acts(&[0.0; 32], &mut z);
        assert_eq!((z[0].d, z[0].q), (0.0, [0; 32]));
    }
}
