//! CPU ops of encoder (BERT-family) models, in f32: LayerNorm, the exact
//! GELU, and bidirectional attention over a batch of packed sequences.
//!
//! ```text
//! packed batch: tokens of sequence 0, then of sequence 1, ... (no padding)
//! seqs[i] = (start, len): sequence i owns rows start..start+len
//! ```
//! A token attends to every token of its own sequence and to nothing else,
//! so no mask or padding is needed.

use super::pool::for_each_chunk_mut;

/// out[r] = (x[r] - mean) / sqrt(var + eps) * w + b, per row of width
/// `w.len()` (biased variance, as torch.nn.LayerNorm).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for_each_chunk_mut(out, d, |i, o| {
        let x = &x[i * d..(i + 1) * d];
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (((o, &v), &g), &bb) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = ((v as f64 - mean) * inv) as f32 * g + bb;
        }
    });
}

/// x <- x * Φ(x) = 0.5 x (1 + erf(x / √2)): transformers' "gelu" (not the
/// tanh approximation), with `erf_f32`.
pub fn gelu_erf_inplace(x: &mut [f32]) {
    for_each_chunk_mut(x, 4096, |_, c| c.iter_mut().for_each(|v| *v = 0.5 * *v * (1.0 + erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2))));
}

/// erf(x) in f32 by Abramowitz and Stegun's 7.1.26 (Handbook of
/// Mathematical Functions, 1964): 1 - (a1 t + ... + a5 t^5) e^(-x^2),
/// t = 1 / (1 + p |x|), odd in x; absolute error 1.5e-7 in exact
/// arithmetic, 5.4e-7 measured in f32 (a few f32 ulps of GELU's result).
/// About 2.8 times faster than libm's f64 erf on one core (2048 x 1536
/// values: 0.134 s -> 0.048 s), which cost an encoder layer about 12%.
pub fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

/// Bidirectional scaled dot-product attention of packed sequences.
/// `qkv: [tokens, 3 * heads * head_dim]` (q, k, v side by side in each row),
/// `seqs`: (first row, rows) of each sequence; returns `[tokens, heads * head_dim]`.
pub fn packed_attention(qkv: &[f32], seqs: &[(usize, usize)], heads: usize, head_dim: usize) -> Vec<f32> {
    let width = heads * head_dim;
    let tokens = qkv.len() / (3 * width);
    let mut owner = vec![(0usize, 0usize); tokens];
    for &(start, len) in seqs {
        owner[start..start + len].fill((start, len));
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0.0f32; tokens * width];
    for_each_chunk_mut(&mut out, head_dim, |idx, o| {
        let (t, h) = (idx / heads, idx % heads);
        let (start, len) = owner[t];
        let row = |p: usize, part: usize| {
            let a = p * 3 * width + part * width + h * head_dim;
            &qkv[a..a + head_dim]
        };
        let q = row(t, 0);
        let mut scores: Vec<f32> = (start..start + len).map(|p| super::simd::dot_f32(q, row(p, 1)) * scale).collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, &s) in scores.iter().enumerate() {
            super::simd::axpy(o, s / sum, row(start + j, 2));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_f32_is_libm_erf_to_f32_precision() {
        let worst = (-6000..=6000).map(|i| i as f64 / 1000.0).map(|x| (erf_f32(x as f32) as f64 - libm::erf(x)).abs()).fold(0f64, f64::max);
        assert!(worst < 1e-6, "max |erf_f32 - erf| = {worst}");
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut o = [0f32; 4];
        layer_norm(&x, &[1.0; 4], &[0.5; 4], 0.0, &mut o);
        // mean 2.5, biased variance 1.25
        let s = 1.25f32.sqrt();
        for (o, x) in o.iter().zip(x) {
            assert!((o - ((x - 2.5) / s + 0.5)).abs() < 1e-6);
        }
    }

    #[test]
    fn gelu_matches_known_values() {
        // 0.5 x (1 + erf(x/sqrt 2)) at 1 and -2 (values from the normal CDF).
        let mut x = [0.0f32, 1.0, -2.0];
        gelu_erf_inplace(&mut x);
        assert_eq!(x[0], 0.0);
        assert!((x[1] - 0.841_344_7).abs() < 1e-6);
        assert!((x[2] + 2.0 * 0.022_750_13).abs() < 1e-6);
    }

    #[test]
    fn packed_sequences_do_not_see_each_other() {
        // One head of width 1. Sequence A = rows 0..2, sequence B = row 2.
        // q = k = 0 gives uniform weights: each output is its sequence's mean v.
        let row = |v: f32| [0.0f32, 0.0, v];
        let qkv: Vec<f32> = [row(1.0), row(3.0), row(10.0)].concat();
        let out = packed_attention(&qkv, &[(0, 2), (2, 1)], 1, 1);
        assert_eq!(out, vec![2.0, 2.0, 10.0]);
    }
}
