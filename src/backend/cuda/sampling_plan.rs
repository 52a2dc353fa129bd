//! Host side of GPU sampling: packs the step's sampling requests into the
//! flat arrays apply_penalties_f32 / apply_token_mask_f32 / sample_f32 read,
//! and the Rust twin of the kernels' Philox4x32-10.
//!
//! Semantics match `crate::sampling::sample_masked` (bias, then repetition
//! penalty over prompt and output, then frequency/presence over output
//! counts, then the allowed-token mask of constrained rows; logprobs from
//! the processed logits before temperature).
//!
//! The draw of a row is keyed by (seed, step): the Philox key is the first
//! u64 of the sequence's RNG (ChaCha8 seeded from the request's seed and the
//! sequence's index, `sampling::seeded_rng`; the RNG is read from a clone and
//! never advanced), the counter is the number of tokens the sequence has
//! generated so far. So a token depends on the seed, its position and the
//! logits only: not on the batch, on preemption and recomputation, or on the
//! run.
//!
//! What is not guaranteed: the same tokens as the CPU backend for a seed.
//! The CPU sampler draws its uniform from the advancing ChaCha8 stream in f64
//! and walks the kept tokens in sorted order, the kernel draws a 24-bit
//! Philox uniform and walks them in its thread order with 32.32 fixed-point
//! masses, and the logits themselves differ in their last bits (bf16 GEMMs
//! against f32). Matching the uniform alone would not make the tokens equal,
//! so each backend keeps the draw that suits it; both are reproducible for a
//! seed on their own, and greedy decoding (temperature 0) agrees wherever the
//! top-two margin exceeds the numeric difference (backend::cuda::agreement).

use crate::runner::SampleRequest;
use rand::RngCore;
use std::collections::BTreeMap;

/// Philox4x32-10: counter (4 words) and key (2 words) to 4 random words.
/// Bit-identical to `philox4x32_10` in kernels/common.cuh.
pub fn philox4x32_10(mut c: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u32 = 0xD251_1F53;
    const M1: u32 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut k0, mut k1) = (key[0], key[1]);
    for r in 0..10 {
        if r > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k0, p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k1, p0 as u32];
    }
    c
}

/// The uniform in [0, 1) the kernel draws for (seed, step): top 24 bits of
/// the first word.
pub fn philox_uniform(seed: u64, step: u64) -> f32 {
    let r = philox4x32_10([step as u32, (step >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32]);
    (r[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The arrays of one step's sampling, one entry (or CSR row) per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingBatch {
    pub temperature: Vec<f32>,
    pub top_k: Vec<i32>,
    pub top_p: Vec<f32>,
    pub min_p: Vec<f32>,
    pub seeds: Vec<u64>,
    pub steps: Vec<u64>,
    pub repetition: Vec<f32>,
    pub frequency: Vec<f32>,
    pub presence: Vec<f32>,
    pub pen_offsets: Vec<i32>,
    pub pen_ids: Vec<u32>,
    pub pen_counts: Vec<f32>,
    pub bias_offsets: Vec<i32>,
    pub bias_ids: Vec<u32>,
    pub bias_values: Vec<f32>,
    /// Per row: Some(n) when the request wants logprobs (n alternatives).
    pub logprobs: Vec<Option<u32>>,
    /// Per row: the row of `masks` holding its allowed-token mask
    /// (constrained decoding), or -1 (unconstrained).
    pub mask_index: Vec<i32>,
    /// [masked rows, width] packed allowed-token masks (`sampling::mask`),
    /// empty until `wait_masks`.
    pub masks: Vec<u32>,
}

impl SamplingBatch {
    pub fn build(reqs: &mut [SampleRequest<'_>]) -> SamplingBatch {
        let mut b = SamplingBatch { pen_offsets: vec![0], bias_offsets: vec![0], ..Default::default() };
        for r in reqs.iter_mut() {
            let p = r.params;
            b.temperature.push(p.temperature.max(0.0));
            b.top_k.push(p.top_k);
            b.top_p.push(p.top_p);
            b.min_p.push(p.min_p);
            b.seeds.push(if p.temperature > 0.0 { r.rng.clone().next_u64() } else { 0 });
            b.steps.push(r.output.len() as u64);
            b.repetition.push(p.repetition_penalty);
            b.frequency.push(p.frequency_penalty);
            b.presence.push(p.presence_penalty);
            b.logprobs.push(p.logprobs);
            for (id, count) in penalty_entries(p, r.prompt, r.output) {
                b.pen_ids.push(id);
                b.pen_counts.push(count as f32);
            }
            b.pen_offsets.push(b.pen_ids.len() as i32);
            let mut bias: BTreeMap<u32, f32> = BTreeMap::new();
            for &(id, v) in &p.logit_bias {
                *bias.entry(id).or_default() += v;
            }
            b.bias_ids.extend(bias.keys());
            b.bias_values.extend(bias.values());
            b.bias_offsets.push(b.bias_ids.len() as i32);
            let masked = b.masked_rows() as i32;
            b.mask_index.push(if r.allowed_tokens.is_some() { masked } else { -1 });
        }
        b
    }

    /// Rows with an allowed-token mask.
    pub fn masked_rows(&self) -> usize {
        self.mask_index.iter().filter(|&&k| k >= 0).count()
    }

    /// Waits for the mask of every constrained request of `reqs` (the rows
    /// `build` saw, in order) and packs them into `masks`, each `width`
    /// words: a shorter mask is padded with zeros (tokens it does not name
    /// are not allowed), a longer one cut. Unconstrained rows never wait.
    pub fn wait_masks(&mut self, reqs: &[SampleRequest<'_>], width: usize) {
        self.masks.clear();
        for mask in reqs.iter().filter_map(|r| r.allowed_tokens) {
            let mut words = mask.wait();
            words.resize(width, 0);
            self.masks.extend_from_slice(&words);
        }
    }

    pub fn rows(&self) -> usize {
        self.temperature.len()
    }

    /// Whether apply_penalties_f32 has anything to do.
    pub fn any_processor(&self) -> bool {
        !self.pen_ids.is_empty() || !self.bias_ids.is_empty()
    }

    /// The largest number of alternatives any row asks for (0: none).
    pub fn max_top_logprobs(&self) -> usize {
        self.logprobs.iter().flatten().map(|&n| n as usize).max().unwrap_or(0)
    }
}

/// Distinct tokens a penalty touches, sorted, with their output counts.
/// Prompt-only tokens matter only to the repetition penalty.
fn penalty_entries(p: &crate::sampling::SamplingParams, prompt: &[u32], output: &[u32]) -> Vec<(u32, u32)> {
    let rep = p.repetition_penalty != 1.0;
    let counts = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
    if !rep && !counts {
        return Vec::new();
    }
    let mut m: BTreeMap<u32, u32> = BTreeMap::new();
    if rep {
        for &t in prompt {
            m.entry(t).or_default();
        }
    }
    for &t in output {
        *m.entry(t).or_default() += 1;
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Random123 tests/kat_vectors, the three philox4x32 10 lines.
    #[test]
    fn philox_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniforms_are_in_range_and_spread() {
        let u: Vec<f32> = (0..10_000).map(|s| philox_uniform(s, 3)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f32>() / u.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn build_packs_params_penalties_and_bias() {
        let greedy = SamplingParams { logit_bias: vec![(5, 1.0), (2, -1.0), (5, 0.5)], ..SamplingParams::greedy() };
        let pen = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            repetition_penalty: 1.2,
            frequency_penalty: 0.5,
            logprobs: Some(3),
            ..Default::default()
        };
        let (mut r0, mut r1) = (ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(2));
        let mut expect_rng = ChaCha8Rng::seed_from_u64(2);
        let mut reqs = vec![
            SampleRequest { params: &greedy, rng: &mut r0, prompt: &[1, 2], output: &[], allowed_tokens: None },
            SampleRequest { params: &pen, rng: &mut r1, prompt: &[4, 3, 4], output: &[3, 9, 3], allowed_tokens: None },
        ];
        let b = SamplingBatch::build(&mut reqs);
        assert_eq!(b.rows(), 2);
        assert_eq!(b.temperature, vec![0.0, 0.7]);
        assert_eq!(b.top_k, vec![0, 40]);
        assert_eq!(b.seeds, vec![0, expect_rng.next_u64()]);
        // The counter is the step: tokens generated so far.
        assert_eq!(b.steps, vec![0, 3]);
        assert_eq!(b.pen_offsets, vec![0, 0, 3]);
        assert_eq!(b.pen_ids, vec![3, 4, 9]);
        assert_eq!(b.pen_counts, vec![2.0, 0.0, 1.0]);
        assert_eq!(b.bias_offsets, vec![0, 2, 2]);
        assert_eq!(b.bias_ids, vec![2, 5]);
        assert_eq!(b.bias_values, vec![-1.0, 1.5]);
        assert_eq!(b.max_top_logprobs(), 3);
        assert!(b.any_processor());
    }

    /// One seed, one stream: the key stays the seed's at every step, the
    /// counter moves with the step, so a sequence's draws neither repeat nor
    /// depend on what else is in the batch or how often it was built.
    #[test]
    fn draws_are_keyed_by_seed_and_step() {
        let p = SamplingParams { temperature: 1.0, ..Default::default() };
        let uniform_at = |seed: u64, output: &[u32], neighbours: usize| {
            let mut rngs: Vec<ChaCha8Rng> = (0..=neighbours).map(|i| crate::sampling::seeded_rng(Some(seed), i)).collect();
            let mut reqs: Vec<SampleRequest> = rngs.iter_mut().map(|rng| SampleRequest { params: &p, rng, prompt: &[1], output, allowed_tokens: None }).collect();
            // Build twice: packing must not consume the stream.
            let _ = SamplingBatch::build(&mut reqs);
            let b = SamplingBatch::build(&mut reqs);
            philox_uniform(b.seeds[0], b.steps[0])
        };
        let steps: Vec<f32> = (0..8).map(|n| uniform_at(42, &vec![7; n], 0)).collect();
        assert!(steps.windows(2).all(|w| w[0] != w[1]), "every step draws anew: {steps:?}");
        assert_eq!(uniform_at(42, &[7, 7, 7], 0), steps[3]);
        assert_eq!(uniform_at(42, &[7, 7, 7], 5), steps[3], "the batch does not matter");
        assert_ne!(uniform_at(43, &[7, 7, 7], 0), steps[3]);
    }

    #[test]
    fn masks_are_indexed_per_row_and_padded_to_the_width() {
        let p = SamplingParams::greedy();
        let (m0, m2) = (crate::sampling::TokenMask::filled(vec![5]), crate::sampling::TokenMask::filled(vec![1, 2, 3]));
        let mut rngs: Vec<ChaCha8Rng> = (0..3).map(ChaCha8Rng::seed_from_u64).collect();
        let masks = [Some(&m0), None, Some(&m2)];
        let mut reqs: Vec<SampleRequest> = rngs
            .iter_mut()
            .zip(masks)
            .map(|(rng, m)| SampleRequest { params: &p, rng, prompt: &[], output: &[], allowed_tokens: m })
            .collect();
        let mut b = SamplingBatch::build(&mut reqs);
        assert_eq!((b.mask_index.clone(), b.masked_rows()), (vec![0, -1, 1], 2));
        assert!(b.masks.is_empty());
        b.wait_masks(&reqs, 2);
        assert_eq!(b.masks, vec![5, 0, 1, 2]);
    }

    #[test]
    fn greedy_rows_leave_the_rng_alone() {
        let p = SamplingParams::greedy();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let before = rng.clone();
        SamplingBatch::build(&mut [SampleRequest { params: &p, rng: &mut rng, prompt: &[], output: &[], allowed_tokens: None }]);
        assert_eq!(rng, before);
    }

    /// The packed arrays, applied as the kernel does, give what the CPU
    /// processors give.
    #[test]
    fn packed_penalties_match_the_cpu_processors() {
        let p = SamplingParams {
            repetition_penalty: 1.3,
            frequency_penalty: 0.4,
            presence_penalty: 0.2,
            logit_bias: vec![(1, 2.0), (7, -3.0)],
            ..Default::default()
        };
        let (prompt, output) = ([0u32, 1, 1, 5], [5u32, 7, 5, 2]);
        let logits: Vec<f32> = (0..10).map(|i| (i as f32 - 4.5) * 0.7).collect();
        let mut want = logits.clone();
        crate::sampling::apply_processors(&mut want, &p, &prompt, &output);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let b = SamplingBatch::build(&mut [SampleRequest { params: &p, rng: &mut rng, prompt: &prompt, output: &output, allowed_tokens: None }]);
        let mut got = logits;
        for (i, &id) in b.bias_ids.iter().enumerate() {
            got[id as usize] += b.bias_values[i];
        }
        for (i, &id) in b.pen_ids.iter().enumerate() {
            let mut v = got[id as usize];
            v = if v > 0.0 { v / b.repetition[0] } else { v * b.repetition[0] };
            if b.pen_counts[i] > 0.0 {
                v -= b.pen_counts[i] * b.frequency[0] + b.presence[0];
            }
            got[id as usize] = v;
        }
        assert_eq!(got, want);
    }
}
