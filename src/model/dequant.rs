//! ggml block formats dequantized to f32, as ggml defines them
//! (`dequantize_row_*` in ggml-quants.c). All scales are little-endian f16.
//!
//! ```text
//! Q8_0  32 values, 34 B: d f16 | qs i8[32]              x[i] = d * qs[i]
//! Q4_0  32 values, 18 B: d f16 | qs u8[16]              x[i] = d * (nib - 8)
//! Q4_1  32 values, 20 B: d f16 | m f16 | qs u8[16]      x[i] = d * nib + m
//!       (Q4_0/Q4_1: x[j] uses the low nibble of qs[j], x[j+16] the high one)
//! Q4_K 256 values, 144 B: d f16 | dmin f16 | scales u8[12] | qs u8[128]
//!       8 sub-blocks of 32 with 6-bit scale sc and min m packed in `scales`;
//!       x = (d*sc) * nib - (dmin*m); each 32 bytes of qs feed two sub-blocks
//!       (low nibbles, then high nibbles)
//! Q6_K 256 values, 210 B: ql u8[128] | qh u8[64] | scales i8[16] | d f16
//!       6-bit q = low 4 bits from ql, high 2 bits from qh; x = (d*sc) * (q - 32)
//! Q5_0  32 values, 22 B: d f16 | qh u32 | qs u8[16]     x[i] = d * (q5 - 16)
//! Q5_1  32 values, 24 B: d f16 | m f16 | qh u32 | qs u8[16]   x[i] = d * q5 + m
//!       (Q5_*: nibbles as Q4_*, bit i of qh is the fifth bit of value i)
//! Q2_K 256 values, 84 B: scales u8[16] | qs u8[64] | d f16 | dmin f16
//!       16 sub-blocks of 16, scale = low nibble, min = high nibble of scales[i];
//!       x = (d*sc) * q2 - (dmin*m); each 32 bytes of qs hold 4 x 32 values,
//!       2 bits each (shift 0, 2, 4, 6)
//! Q3_K 256 values, 110 B: hmask u8[32] | qs u8[64] | scales u8[12] | d f16
//!       16 signed 6-bit scales (stored + 32); q3 = 2 low bits from qs (as Q2_K)
//!       and a high bit from hmask (bit g of hmask[l] for the g-th 32-group);
//!       x = (d*(sc-32)) * (q3 - 4)
//! Q5_K 256 values, 176 B: d f16 | dmin f16 | scales u8[12] | qh u8[32] | qs u8[128]
//!       as Q4_K with a fifth bit: bit g of qh[l] for the g-th 32-group
//! ```
//! The order of f32 operations follows ggml's reference, so results are
//! bit-identical to it (and to the `gguf` Python package).

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml tensor element type. Ids are ggml's `enum ggml_type`.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    /// Any type kiln cannot dequantize (named by `name()` where known).
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// ggml's name for the type, for messages ("Q5_K", "IQ2_XS", "type 99").
    pub fn name(self) -> String {
        let known = match self.id() {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            id => return format!("type {id}"),
        };
        known.to_string()
    }

    /// (elements per block, bytes per block) for the types kiln reads; None otherwise.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q5_0 => Some((32, 22)),
            GgmlType::Q5_1 => Some((32, 24)),
            GgmlType::Q2_K => Some((256, 84)),
            GgmlType::Q3_K => Some((256, 110)),
            GgmlType::Q4_K => Some((256, 144)),
            GgmlType::Q5_K => Some((256, 176)),
            GgmlType::Q6_K => Some((256, 210)),
            GgmlType::Other(_) => None,
        }
    }
}

/// The names of the types kiln dequantizes, for messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DequantError {
    #[error("ggml type {0} cannot be dequantized by kiln")]
    Unsupported(String),
    #[error("{ty}: {n} elements need {expected} bytes, got {got}")]
    SizeMismatch { ty: String, n: usize, expected: usize, got: usize },
}

/// Elements decoded per parallel task (a multiple of every block size).
const CHUNK_ELEMS: usize = 16 * 1024;

/// Dequantizes `n` elements of type `ty` stored in `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, DequantError> {
    let (block_elems, block_bytes) = ty.block_layout().ok_or_else(|| DequantError::Unsupported(ty.name()))?;
    let expected = (n / block_elems) * block_bytes;
    if n % block_elems != 0 || src.len() != expected {
        return Err(DequantError::SizeMismatch { ty: ty.name(), n, expected, got: src.len() });
    }
    let decode = block_decoder(ty).ok_or_else(|| DequantError::Unsupported(ty.name()))?;
    let mut out = vec![0f32; n];
    let chunk_bytes = CHUNK_ELEMS / block_elems * block_bytes;
    out.par_chunks_mut(CHUNK_ELEMS).zip(src.par_chunks(chunk_bytes)).for_each(|(dst, src)| {
        for (d, s) in dst.chunks_exact_mut(block_elems).zip(src.chunks_exact(block_bytes)) {
            decode(s, d);
        }
    });
    Ok(out)
}

/// The function that decodes one block of `ty` (None for `Other`).
pub fn block_decoder(ty: GgmlType) -> Option<fn(&[u8], &mut [f32])> {
    Some(match ty {
        GgmlType::F32 => f32_block,
        GgmlType::F16 => f16_block,
        GgmlType::BF16 => bf16_block,
        GgmlType::Q8_0 => q8_0_block,
        GgmlType::Q4_0 => q4_0_block,
        GgmlType::Q4_1 => q4_1_block,
        GgmlType::Q5_0 => q5_0_block,
        GgmlType::Q5_1 => q5_1_block,
        GgmlType::Q2_K => q2_k_block,
        GgmlType::Q3_K => q3_k_block,
        GgmlType::Q4_K => q4_k_block,
        GgmlType::Q5_K => q5_k_block,
        GgmlType::Q6_K => q6_k_block,
        GgmlType::Other(_) => return None,
    })
}

/// Decodes whole blocks of `ty` from `src` into `out` (`out.len()` values;
/// `src` holds exactly their blocks). Panics on other types.
pub fn dequantize_into(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    let (elems, bytes) = ty.block_layout().expect("a readable ggml type");
    let decode = block_decoder(ty).expect("a readable ggml type");
    for (d, s) in out.chunks_exact_mut(elems).zip(src.chunks_exact(bytes)) {
        decode(s, d);
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn f32_block(s: &[u8], d: &mut [f32]) {
    d[0] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
}

fn f16_block(s: &[u8], d: &mut [f32]) {
    d[0] = f16_at(s, 0);
}

fn bf16_block(s: &[u8], d: &mut [f32]) {
    d[0] = bf16::from_le_bytes([s[0], s[1]]).to_f32();
}

fn q8_0_block(s: &[u8], out: &mut [f32]) {
    let d = f16_at(s, 0);
    for (o, &q) in out.iter_mut().zip(&s[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

fn q4_0_block(s: &[u8], out: &mut [f32]) {
    let d = f16_at(s, 0);
    let qs = &s[2..18];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
        out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

fn q4_1_block(s: &[u8], out: &mut [f32]) {
    let d = f16_at(s, 0);
    let m = f16_at(s, 2);
    let qs = &s[4..20];
    for j in 0..16 {
        out[j] = d * (qs[j] & 0x0f) as f32 + m;
        out[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// The 5-bit values of a Q5_0 / Q5_1 block: `qh` (LE u32 at 0..4) then 16 nibble bytes.
#[inline]
fn q5_values(s: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (s[4 + j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (s[4 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

fn q5_0_block(s: &[u8], out: &mut [f32]) {
    let d = f16_at(s, 0);
    for (o, &q) in out.iter_mut().zip(&q5_values(&s[2..22])) {
        *o = d * (q as i32 - 16) as f32;
    }
}

fn q5_1_block(s: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(s, 0), f16_at(s, 2));
    for (o, &q) in out.iter_mut().zip(&q5_values(&s[4..24])) {
        *o = d * q as f32 + m;
    }
}

fn q2_k_block(s: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&s[0..16], &s[16..80]);
    let (d, dmin) = (f16_at(s, 80), f16_at(s, 82));
    // out[128h + 32g + l] uses bits 2g.. of qs[32h + l], sub-block 8h + 2g + l/16.
    for h in 0..2 {
        for g in 0..4 {
            for l in 0..32 {
                let sc = scales[8 * h + 2 * g + l / 16];
                let q = (qs[32 * h + l] >> (2 * g)) & 3;
                out[128 * h + 32 * g + l] = d * (sc & 0x0f) as f32 * q as f32 - dmin * (sc >> 4) as f32;
            }
        }
    }
}

/// Q3_K's 16 scales (stored + 32) from its 12 packed bytes: low 4 bits from
/// byte j (j < 8) or the high nibble of byte j-8; top 2 bits from byte 8 + j%4.
#[inline]
pub(crate) fn q3_k_scales(b: &[u8]) -> [i8; 16] {
    let mut sc = [0i8; 16];
    for (j, s) in sc.iter_mut().enumerate() {
        let lo = if j < 8 { b[j] & 0x0f } else { b[j - 8] >> 4 };
        let hi = (b[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = ((lo | (hi << 4)) as i32 - 32) as i8;
    }
    sc
}

fn q3_k_block(s: &[u8], out: &mut [f32]) {
    let (hmask, qs) = (&s[0..32], &s[32..96]);
    let sc = q3_k_scales(&s[96..108]);
    let d = f16_at(s, 108);
    for h in 0..2 {
        for g in 0..4 {
            let bit = 1u8 << (4 * h + g);
            for l in 0..32 {
                let dl = d * sc[8 * h + 2 * g + l / 16] as f32;
                let q = ((qs[32 * h + l] >> (2 * g)) & 3) as i32 - if hmask[l] & bit != 0 { 0 } else { 4 };
                out[128 * h + 32 * g + l] = dl * q as f32;
            }
        }
    }
}

fn q5_k_block(s: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(s, 0), f16_at(s, 2));
    let (scales, qh, qs) = (&s[4..16], &s[16..48], &s[48..176]);
    for g in 0..4 {
        let (sc1, m1) = q4_k_scale_min(2 * g, scales);
        let (sc2, m2) = q4_k_scale_min(2 * g + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let (b1, b2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let q = &qs[32 * g..32 * g + 32];
        let o = &mut out[64 * g..64 * g + 64];
        for l in 0..32 {
            let hi1 = if qh[l] & b1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & b2 != 0 { 16 } else { 0 };
            o[l] = d1 * ((q[l] & 0x0f) + hi1) as f32 - min1;
            o[l + 32] = d2 * ((q[l] >> 4) + hi2) as f32 - min2;
        }
    }
}

/// Q4_K's 6-bit (scale, min) of sub-block `j` (0..8) from the 12 packed bytes:
/// sub-blocks 0..4 use the low 6 bits of bytes j and j+4; 4..8 take 4 bits
/// from byte j+4 and their top 2 bits from the spare bits of bytes j-4 and j.
#[inline]
pub(crate) fn q4_k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn q4_k_block(s: &[u8], out: &mut [f32]) {
    let d = f16_at(s, 0);
    let dmin = f16_at(s, 2);
    let scales = &s[4..16];
    let qs = &s[16..144];
    // Four groups of 64 outputs; each reads 32 bytes of qs (low nibbles then high).
    for g in 0..4 {
        let (sc1, m1) = q4_k_scale_min(2 * g, scales);
        let (sc2, m2) = q4_k_scale_min(2 * g + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        let o = &mut out[64 * g..64 * g + 64];
        for l in 0..32 {
            o[l] = d1 * (q[l] & 0x0f) as f32 - min1;
            o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

fn q6_k_block(s: &[u8], out: &mut [f32]) {
    let (ql, qh, sc) = (&s[0..128], &s[128..192], &s[192..208]);
    let d = f16_at(s, 208);
    // Two halves of 128 outputs; each uses 64 bytes of ql, 32 of qh, 8 scales.
    for h in 0..2 {
        let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..]);
        let o = &mut out[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |k: usize| d * (sc[is + k] as i8) as f32;
            o[l] = scale(0) * q1 as f32;
            o[l + 32] = scale(2) * q2 as f32;
            o[l + 64] = scale(4) * q3 as f32;
            o[l + 96] = scale(6) * q4 as f32;
        }
    }
}

/// Restores Hugging Face row order of a llama-arch GGUF `attn_q` / `attn_k`
/// weight (`rows x cols`, row-major), undoing llama.cpp's converter permute.
///
/// The converter views each head's rows as (2, head_dim/2) — HF's
/// rotate-half halves — and stores them transposed as (head_dim/2, 2), i.e.
/// interleaved pairs. So HF row `h*hd + i*hd/2 + j` is GGUF row `h*hd + 2*j + i`.
/// Use `n_head` = num_heads for q and num_kv_heads for k. Only llama-arch GGUFs
/// are permuted: transformers' GGUF loader applies its reverse permute only
/// for `general.architecture == "llama"` (which includes Mistral and SmolLM2);
/// qwen2/qwen3 GGUFs keep HF order (llama.cpp runs them with NEOX rope).
/// `cols` = 1 handles a bias vector. Generic over the element so raw
/// quantized rows (bytes, `cols` = bytes per row) permute the same way.
pub fn unpermute_qk_rows<T: Copy + Default + Send + Sync>(w: &[T], n_head: usize, rows: usize, cols: usize) -> Vec<T> {
    assert_eq!(w.len(), rows * cols, "unpermute_qk_rows: w is not rows x cols");
    assert!(n_head > 0 && rows % (2 * n_head) == 0, "unpermute_qk_rows: rows {rows} not divisible by 2*n_head {n_head}");
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![T::default(); w.len()];
    out.par_chunks_mut(cols).enumerate().for_each(|(r, dst)| {
        let (h, k) = (r / hd, r % hd);
        let (i, j) = (k / half, k % half);
        let src = h * hd + 2 * j + i;
        dst.copy_from_slice(&w[src * cols..(src + 1) * cols]);
    });
    out
}
