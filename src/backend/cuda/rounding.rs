//! Rust twins of the kernels' bf16 rounding contracts, for host tests.
//!
//! q/k/v bias (kernels/rotary_cache.cu): transformers' `Linear` adds the bias
//! inside the matmul's f32 accumulation and rounds the sum to bf16 once. The
//! q/k/v GEMM of a biased model therefore writes f32 (forward.rs,
//! memory::qkv_bytes) and the rotary kernel rounds `projection + bias` once.

use half::bf16;

/// What rotary_qkv_cache_bf16 makes of one biased q/k/v element before the
/// rotation: the f32 GEMM output plus the bf16 bias, rounded to nearest even
/// once (`cvt.rn.bf16.f32`).
pub fn qkv_with_bias(projection: f32, bias: bf16) -> bf16 {
    bf16::from_f32(projection + bias.to_f32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{matmul, Weight};
    use rand::{Rng, SeedableRng};

    /// The CPU backend (the reference) computes x·Wᵀ + b in f32; transformers
    /// in bf16 rounds that once. The kernel's arithmetic gives exactly that,
    /// element for element; rounding the GEMM output to bf16 before adding
    /// the bias (the kernel's former contract) does not.
    #[test]
    fn bias_joins_the_f32_projection_before_the_one_rounding() {
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        let mut bf = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| bf16::from_f32(r.gen_range(-scale..scale)).to_f32()).collect() };
        let (m, n, k) = (9, 96, 128);
        let (x, w, b) = (bf(m * k, 1.0), Weight::f32(n, k, bf(n * k, 0.1)), bf(n, 2.0));
        let mut with_bias = vec![0f32; m * n];
        matmul(&x, m, &w, Some(&b), &mut with_bias);
        let mut projection = vec![0f32; m * n];
        matmul(&x, m, &w, None, &mut projection);
        let want: Vec<bf16> = with_bias.iter().map(|&v| bf16::from_f32(v)).collect();
        let bias = |j: usize| bf16::from_f32(b[j % n]);
        let got: Vec<bf16> = projection.iter().enumerate().map(|(j, &p)| qkv_with_bias(p, bias(j))).collect();
        assert_eq!(got, want);
        let twice = projection.iter().enumerate().filter(|&(j, &p)| bf16::from_f32(bf16::from_f32(p).to_f32() + bias(j).to_f32()) != want[j]).count();
        assert!(twice > 0, "double rounding should differ somewhere in {} values", m * n);
    }
}
