//! The greedy-agreement bar of the GPU test suite (tests/cuda_gpu/model.rs):
//! a bf16 run and its reference (the f32 CPU backend, or transformers) may
//! pick different tokens wherever the reference's top-two logits are closer
//! than the numeric difference between the two runs; once one token differs
//! the continuations are unrelated. So tokens are compared up to the first
//! step whose reference margin (top-1 minus top-2 logit) is below a floor,
//! and a mismatch before it is a real divergence.

/// A mismatch at a step where the reference was clear.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub step: usize,
    pub got: u32,
    pub want: u32,
    /// The reference's top-1 minus top-2 logit at `step`.
    pub margin: f32,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: token {} where the reference chose {} by a margin of {:.4}", self.step, self.got, self.want, self.margin)
    }
}

/// Compares `got` with the reference tokens `want` up to the first step whose
/// margin (`want_margins`, one per reference step) is below `min_margin`.
/// Returns how many steps were compared (0..=want.len()), or the first
/// divergence. A run shorter than the compared prefix diverges at its end.
pub fn greedy_agreement(got: &[u32], want: &[u32], want_margins: &[f32], min_margin: f32) -> Result<usize, Divergence> {
    let clear = want_margins.iter().take(want.len()).position(|&m| m < min_margin).unwrap_or(want.len().min(want_margins.len()));
    for step in 0..clear {
        if got.get(step) != Some(&want[step]) {
            return Err(Divergence { step, got: got.get(step).copied().unwrap_or(u32::MAX), want: want[step], margin: want_margins[step] });
        }
    }
    Ok(clear)
}

/// Top-1 minus top-2 of a logits row (0 for fewer than two entries).
pub fn top2_margin(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    if b.is_finite() { a - b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_at_a_thin_step_is_not_a_divergence() {
        // The reference hesitated at step 3 (margin 0.01): the bf16 run took the
        // other token there and continued differently.
        let want = [5, 9, 9, 4, 7, 1];
        let got = [5, 9, 9, 8, 2, 2];
        let margins = [1.2, 0.8, 0.3, 0.01, 2.0, 2.0];
        assert_eq!(greedy_agreement(&got, &want, &margins, 0.05), Ok(3));
        // Everything clear and equal: every step compared.
        assert_eq!(greedy_agreement(&want, &want, &[1.0; 6], 0.05), Ok(6));
    }

    #[test]
    fn a_mismatch_where_the_reference_was_clear_fails() {
        let want = [5, 9, 9, 4, 7, 1];
        let got = [5, 9, 3, 4, 7, 1];
        let margins = [1.2, 0.8, 0.3, 0.01, 2.0, 2.0];
        let e = greedy_agreement(&got, &want, &margins, 0.05).unwrap_err();
        assert_eq!(e, Divergence { step: 2, got: 3, want: 9, margin: 0.3 });
        assert!(e.to_string().contains("step 2"));
        // A run that stopped early diverges where it stopped.
        assert_eq!(greedy_agreement(&want[..2], &want, &margins, 0.05).unwrap_err().step, 2);
    }

    #[test]
    fn margins() {
        assert_eq!(top2_margin(&[0.5, 3.0, 2.0, -1.0]), 1.0);
        assert_eq!(top2_margin(&[2.0, 2.0]), 0.0);
        assert_eq!(top2_margin(&[1.0]), 0.0);
    }
}
