//! Element-wise and row-wise CPU ops of the transformer block, in f32.

use super::pool::for_each_chunk_mut;

/// Below this many elements an op runs on the calling thread: a decode step
/// of one sequence (a few hundred values per op) costs less than waking the
/// pool's workers for it.
const PAR_MIN: usize = 1 << 14;

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * w, for each row of width `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    if x.len() < PAR_MIN {
        out.chunks_mut(d).zip(x.chunks(d)).for_each(|(o, x)| rms_norm_row(x, w, eps, o));
    } else {
        for_each_chunk_mut(out, d, |i, o| rms_norm_row(&x[i * d..(i + 1) * d], w, eps, o));
    }
}

#[inline]
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * inv);
    }
}

/// RMSNorm applied in place to every `w.len()`-wide head of every row (Qwen3 q/k norm).
pub fn rms_norm_heads_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    let norm = |h: &mut [f32]| {
        let src: Vec<f32> = h.to_vec();
        rms_norm_row(&src, w, eps, h);
    };
    if x.len() < PAR_MIN {
        x.chunks_mut(d).for_each(norm);
    } else {
        for_each_chunk_mut(x, d, |_, h| norm(h));
    }
}

/// Rotary embedding, Hugging Face half-rotation layout, in place on
/// `x: [tokens, heads, head_dim]`:
/// (x_i, x_{i+d/2}) <- (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin),
/// angle = position * inv_freq[i].
pub fn rotary_inplace(x: &mut [f32], positions: &[u32], heads: usize, inv_freq: &[f32]) {
    let half = inv_freq.len();
    let d = 2 * half;
    let rotate = |(row, &pos): (&mut [f32], &u32)| {
        let (sin, cos): (Vec<f32>, Vec<f32>) = inv_freq.iter().map(|&f| (pos as f32 * f).sin_cos()).unzip();
        for h in row.chunks_mut(d) {
            for i in 0..half {
                let (a, b) = (h[i], h[i + half]);
                h[i] = a * cos[i] - b * sin[i];
                h[i + half] = b * cos[i] + a * sin[i];
            }
        }
    };
    if x.len() < PAR_MIN {
        x.chunks_mut(heads * d).zip(positions).for_each(rotate);
    } else {
        for_each_chunk_mut(x, heads * d, |i, row| rotate((row, &positions[i])));
    }
}

/// out[t, i] = silu(gu[t, i]) * gu[t, inter + i] for `gu: [tokens, 2*inter]`
/// (gate and up projections stacked).
pub fn silu_and_mul(gu: &[f32], inter: usize, out: &mut [f32]) {
    let row = |(o, gu): (&mut [f32], &[f32])| {
        let (g, u) = gu.split_at(inter);
        super::simd::silu_mul(g, u, o);
    };
    if out.len() < PAR_MIN {
        out.chunks_mut(inter).zip(gu.chunks(2 * inter)).for_each(row);
    } else {
        for_each_chunk_mut(out, inter, |i, o| row((o, &gu[i * 2 * inter..(i + 1) * 2 * inter])));
    }
}

/// x += y
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    if x.len() < PAR_MIN {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    } else {
        for_each_chunk_mut(x, PAR_MIN / 4, |i, c| {
            c.iter_mut().zip(&y[i * (PAR_MIN / 4)..]).for_each(|(a, b)| *a += b)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut o = [0f32; 4];
        rms_norm(&x, &[1.0, 2.0, 1.0, 1.0], 0.0, &mut o);
        // mean square = 25/4 -> rms 2.5
        assert_eq!(o, [1.2, 3.2, 0.0, 0.0]);
    }

    #[test]
    fn rotary_at_position_zero_is_identity_and_preserves_norm() {
        let inv = [1.0f32, 0.1];
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        rotary_inplace(&mut x, &[0], 1, &inv);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
        rotary_inplace(&mut x, &[7], 1, &inv);
        let n: f32 = x.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-4);
        let (s, c) = 7.0f32.sin_cos();
        assert!((x[0] - (1.0 * c - 3.0 * s)).abs() < 1e-6);
    }

    #[test]
    fn silu_mul() {
        let gu = [0.0f32, 1.0, 2.0, 3.0];
        let mut o = [0f32; 2];
        silu_and_mul(&gu, 2, &mut o);
        assert_eq!(o[0], 0.0);
        assert!((o[1] - 1.0 / (1.0 + (-1.0f32).exp()) * 3.0).abs() < 1e-6);
    }
}
