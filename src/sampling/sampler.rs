//! One sampling step over one row of logits:
//!
//! logits -> logit_bias -> repetition/frequency/presence penalties
//!        -> allowed-token mask (constrained decoding: others become -inf)
//!        -> [logprobs taken here] -> greedy argmax, or
//!           temperature -> top-k -> top-p -> min-p -> draw with the sequence's RNG

use super::SamplingParams;
use crate::engine::TokenLogprob;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// The RNG of one sequence: seeded from the request (plus the sequence's
/// index for n > 1) or from the OS.
pub fn seeded_rng(seed: Option<u64>, index: usize) -> ChaCha8Rng {
    match seed {
        Some(s) => ChaCha8Rng::seed_from_u64(s.wrapping_add(index as u64)),
        None => ChaCha8Rng::from_entropy(),
    }
}

/// Applies logit bias and the penalties in place.
pub fn apply_processors(logits: &mut [f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) {
    for &(id, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += b;
        }
    }
    if p.repetition_penalty != 1.0 {
        let rp = p.repetition_penalty;
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                if !*s {
                    *s = true;
                    let l = &mut logits[t as usize];
                    *l = if *l > 0.0 { *l / rp } else { *l * rp };
                }
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

/// log-softmax of a row (f64 accumulation).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The log-softmax of `logits` at `chosen`, with the `top` most likely
/// tokens, best first (ties by lower id). Also used for prompt logprobs.
pub fn logprob_of(logits: &[f32], chosen: u32, top: u32) -> TokenLogprob {
    let lp = log_softmax(logits);
    let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
    let k = (top as usize).min(idx.len());
    let by_lp = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_lp);
    }
    idx.truncate(k);
    idx.sort_by(by_lp);
    TokenLogprob { token_id: chosen, logprob: lp[chosen as usize], top: idx.iter().map(|&i| (i, lp[i as usize])).collect() }
}

/// Picks the next token of one sequence. `logits` is modified.
pub fn sample(
    logits: &mut [f32],
    p: &SamplingParams,
    rng: &mut ChaCha8Rng,
    prompt: &[u32],
    output: &[u32],
) -> (u32, Option<TokenLogprob>) {
    sample_masked(logits, p, rng, prompt, output, None)
}

/// `sample` restricted to the tokens of a packed allowed-token mask (see
/// `mask`); the mask is applied after the penalties, so logprobs are those
/// of the constrained distribution. A mask allowing no token is ignored.
pub fn sample_masked(
    logits: &mut [f32],
    p: &SamplingParams,
    rng: &mut ChaCha8Rng,
    prompt: &[u32],
    output: &[u32],
    allowed: Option<&[u32]>,
) -> (u32, Option<TokenLogprob>) {
    apply_processors(logits, p, prompt, output);
    if let Some(mask) = allowed {
        super::mask::apply_mask(logits, mask);
    }
    let id = if p.temperature <= 0.0 { argmax(logits) as u32 } else { draw(logits, p, rng) };
    let lp = p.logprobs.map(|k| logprob_of(logits, id, k));
    (id, lp)
}

/// Samples from the filtered, temperature-scaled distribution. Tokens at
/// minus infinity (masked out) are never candidates.
fn draw(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    let inv_t = 1.0 / p.temperature;
    let mut cand: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, l)| **l != f32::NEG_INFINITY).map(|(i, &l)| (i as u32, l * inv_t)).collect();
    if cand.is_empty() {
        return 0;
    }
    let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if p.top_k > 0 && (p.top_k as usize) < cand.len() {
        cand.select_nth_unstable_by(p.top_k as usize - 1, desc);
        cand.truncate(p.top_k as usize);
    }
    let needs_order = p.top_p < 1.0;
    if needs_order {
        cand.sort_by(desc);
    }
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    let mut keep = probs.len();
    if needs_order {
        let mut cum = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            cum += pr;
            if cum >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let floor = if p.min_p > 0.0 { p.min_p as f64 * probs.iter().cloned().fold(0.0, f64::max) } else { 0.0 };
    let mass: f64 = probs[..keep].iter().filter(|&&x| x >= floor).sum();
    let mut u = rng.gen::<f64>() * mass;
    let mut last = cand[0].0;
    for (c, &pr) in cand[..keep].iter().zip(&probs[..keep]) {
        if pr < floor {
            continue;
        }
        last = c.0;
        if u < pr {
            return c.0;
        }
        u -= pr;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams { temperature: t, ..Default::default() }
    }

    #[test]
    fn greedy_is_argmax_and_first_on_ties() {
        let mut rng = seeded_rng(Some(1), 0);
        let mut l = vec![0.5, 2.0, 2.0, -1.0];
        assert_eq!(sample(&mut l, &params(0.0), &mut rng, &[], &[]).0, 1);
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_softmax() {
        let logits = vec![1.0f32, 2.0, 0.0, 1.5];
        let draw_n = |seed| {
            let mut rng = seeded_rng(Some(seed), 0);
            (0..20000).map(|_| sample(&mut logits.clone(), &params(1.0), &mut rng, &[], &[]).0).collect::<Vec<_>>()
        };
        let a = draw_n(7);
        assert_eq!(a, draw_n(7));
        assert_ne!(a, draw_n(8));
        let lp = log_softmax(&logits);
        for t in 0..4u32 {
            let f = a.iter().filter(|&&x| x == t).count() as f64 / a.len() as f64;
            assert!((f - (lp[t as usize] as f64).exp()).abs() < 0.015, "token {t}: {f}");
        }
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_support() {
        let logits = vec![3.0f32, 2.9, 0.0, -1.0, -2.0];
        let mut rng = seeded_rng(Some(3), 0);
        let run = |p: &SamplingParams, rng: &mut ChaCha8Rng| {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..3000 {
                seen.insert(sample(&mut logits.clone(), p, rng, &[], &[]).0);
            }
            seen.into_iter().collect::<Vec<_>>()
        };
        assert_eq!(run(&SamplingParams { top_k: 2, ..params(1.0) }, &mut rng), vec![0, 1]);
        assert_eq!(run(&SamplingParams { top_k: 1, ..params(1.0) }, &mut rng), vec![0]);
        // p(0) ~ 0.49, p(1) ~ 0.44: 0.9 of the mass needs both, 0.4 only the first.
        assert_eq!(run(&SamplingParams { top_p: 0.9, ..params(1.0) }, &mut rng), vec![0, 1]);
        assert_eq!(run(&SamplingParams { top_p: 0.4, ..params(1.0) }, &mut rng), vec![0]);
        // exp(0 - 3) = 0.05 of the max: min_p 0.1 drops 2, 3, 4.
        assert_eq!(run(&SamplingParams { min_p: 0.1, ..params(1.0) }, &mut rng), vec![0, 1]);
        assert_eq!(run(&params(1.0), &mut rng), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn penalties_and_bias_follow_their_formulas() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            logit_bias: vec![(3, -100.0)],
            ..params(0.0)
        };
        let mut l = vec![4.0f32, -4.0, 1.0, 10.0];
        apply_processors(&mut l, &p, &[0], &[1, 1, 2]);
        assert_eq!(l, vec![2.0, -8.0 - 1.0 - 0.25, 0.5 - 0.5 - 0.25, -90.0]);
    }

    #[test]
    fn mask_restricts_greedy_and_sampled_choices() {
        let mut mask = vec![0u32; 1];
        mask[0] |= 1 << 1 | 1 << 3;
        let logits = vec![9.0f32, 1.0, 8.0, 0.5];
        let mut rng = seeded_rng(Some(5), 0);
        let (g, _) = sample_masked(&mut logits.clone(), &params(0.0), &mut rng, &[], &[], Some(&mask));
        assert_eq!(g, 1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            seen.insert(sample_masked(&mut logits.clone(), &params(1.5), &mut rng, &[], &[], Some(&mask)).0);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
        // Logprobs are those of the constrained distribution.
        let p = SamplingParams { logprobs: Some(1), ..params(0.0) };
        let (_, lp) = sample_masked(&mut logits.clone(), &p, &mut rng, &[], &[], Some(&mask));
        let want = log_softmax(&[1.0, 0.5])[0];
        assert!((lp.unwrap().logprob - want).abs() < 1e-6);
    }

    #[test]
    fn logprobs_report_chosen_and_sorted_top() {
        let p = SamplingParams { logprobs: Some(2), ..params(0.0) };
        let mut rng = seeded_rng(Some(0), 0);
        let mut l = vec![0.0f32, 1.0, 3.0];
        let (id, lp) = sample(&mut l, &p, &mut rng, &[], &[]);
        let lp = lp.unwrap();
        let want = log_softmax(&[0.0, 1.0, 3.0]);
        assert_eq!((id, lp.token_id, lp.logprob), (2, 2, want[2]));
        assert_eq!(lp.top, vec![(2, want[2]), (1, want[1])]);
    }
}
