//! GPU sampling against the CPU sampler's semantics: greedy ids and
//! logprobs, logit processors, the support and the frequencies of top-k /
//! top-p / min-p draws, reproducibility from (seed, step), top logprobs,
//! allowed-token masks (constrained decoding).
use super::support::*;
use kiln::backend::cuda::device::{Device, DeviceMem};
use kiln::backend::cuda::ops;
use kiln::backend::cuda::sampling_plan::SamplingBatch;
use kiln::runner::SampleRequest;
use kiln::sampling::{apply_processors, log_softmax, SamplingParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Dev {
    _bufs: Vec<DeviceMem>,
    arrays: ops::SamplingArrays,
}

/// Uploads the packed arrays of `b`, with per-row (seed, step) overrides.
fn arrays(dev: &Device, b: &SamplingBatch, seeds: &[u64], steps: &[u64]) -> Dev {
    let mut bufs = Vec::new();
    let mut up = |bytes: &[u8]| {
        let m = upload(dev, bytes);
        let p = m.ptr;
        bufs.push(m);
        p
    };
    let c = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let arrays = ops::SamplingArrays {
        temperature: up(&c(&b.temperature)),
        top_k: up(bytemuck::cast_slice(&b.top_k)),
        top_p: up(&c(&b.top_p)),
        min_p: up(&c(&b.min_p)),
        seeds: up(bytemuck::cast_slice(seeds)),
        steps: up(bytemuck::cast_slice(steps)),
        repetition: up(&c(&b.repetition)),
        frequency: up(&c(&b.frequency)),
        presence: up(&c(&b.presence)),
        pen_offsets: up(bytemuck::cast_slice(&b.pen_offsets)),
        pen_ids: up(bytemuck::cast_slice(&b.pen_ids)),
        pen_counts: up(&c(&b.pen_counts)),
        bias_offsets: up(bytemuck::cast_slice(&b.bias_offsets)),
        bias_ids: up(bytemuck::cast_slice(&b.bias_ids)),
        bias_values: up(&c(&b.bias_values)),
        mask_index: up(bytemuck::cast_slice(&b.mask_index)),
        masks: up(bytemuck::cast_slice(&b.masks)),
    };
    Dev { _bufs: bufs, arrays }
}

fn batch(params: &[SamplingParams], prompt: &[u32], output: &[u32]) -> SamplingBatch {
    let mut rngs: Vec<ChaCha8Rng> = (0..params.len()).map(|i| ChaCha8Rng::seed_from_u64(i as u64)).collect();
    let mut reqs: Vec<SampleRequest> = params.iter().zip(rngs.iter_mut()).map(|(p, rng)| SampleRequest { params: p, rng, prompt, output, allowed_tokens: None }).collect();
    SamplingBatch::build(&mut reqs)
}

/// Runs penalties + sample_f32 on `logits` [rows, v]; returns (ids, logprobs, processed logits).
fn sample(dev: &Device, logits: &[f32], v: usize, b: &SamplingBatch, seeds: &[u64], steps: &[u64]) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let rows = b.rows();
    let a = arrays(dev, b, seeds, steps);
    let dl = upload(dev, logits);
    ops::apply_penalties(dev, dl.ptr, &a.arrays, rows, v).unwrap();
    let (ids, lps) = (poisoned::<u32>(dev, rows), poisoned::<f32>(dev, rows));
    ops::sample(dev, ids.ptr, lps.ptr, dl.ptr, &a.arrays, rows, v).unwrap();
    (download(dev, &ids, rows), download(dev, &lps, rows), download(dev, &dl, rows * v))
}

fn random_logits(r: &mut StdRng, rows: usize, v: usize, sigma: f32) -> Vec<f32> {
    (0..rows * v).map(|_| randn(r) * sigma).collect()
}

#[test]
fn greedy_is_the_first_argmax_with_its_logprob() {
    let Some(dev) = device_or_skip("greedy") else { return };
    let mut r = rng("greedy");
    for v in [320, 151_936] {
        let rows = 6;
        let mut logits = random_logits(&mut r, rows, v, 3.0);
        // Row 1: a tie between two maxima; row 2: NaN noise.
        let m = logits[v..2 * v].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
        logits[v + 7] = m;
        logits[v + v - 3] = m;
        logits[2 * v + 11] = f32::NAN;
        let b = batch(&vec![SamplingParams::greedy(); rows], &[], &[]);
        let (ids, lps, _) = sample(&dev, &logits, v, &b, &vec![0; rows], &vec![0; rows]);
        for row in 0..rows {
            let x: Vec<f32> = logits[row * v..(row + 1) * v].iter().map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }).collect();
            let want = (0..v).fold(0, |b, i| if x[i] > x[b] { i } else { b });
            assert_eq!(ids[row] as usize, want, "v={v} row {row}");
            let lp = log_softmax(&x)[want];
            assert!((lps[row] - lp).abs() < 1e-3, "v={v} row {row}: logprob {} vs {lp}", lps[row]);
        }
    }
}

#[test]
fn processors_match_the_cpu() {
    let Some(dev) = device_or_skip("processors") else { return };
    let mut r = rng("processors");
    let v = 50_000;
    let prompt: Vec<u32> = (0..300).map(|_| r.gen_range(0..v as u32)).collect();
    let output: Vec<u32> = (0..100).map(|_| r.gen_range(0..200)).collect(); // repeats
    let params = vec![
        SamplingParams { repetition_penalty: 1.3, ..SamplingParams::greedy() },
        SamplingParams { frequency_penalty: 0.7, presence_penalty: 0.3, ..SamplingParams::greedy() },
        SamplingParams { logit_bias: vec![(5, 4.0), (9, -100.0), (5, 1.0)], repetition_penalty: 0.8, ..SamplingParams::greedy() },
        SamplingParams::greedy(),
    ];
    let logits = random_logits(&mut r, params.len(), v, 2.0);
    let b = batch(&params, &prompt, &output);
    let (_, _, got) = sample(&dev, &logits, v, &b, &[0; 4], &[0; 4]);
    for (row, p) in params.iter().enumerate() {
        let mut want = logits[row * v..(row + 1) * v].to_vec();
        apply_processors(&mut want, p, &prompt, &output);
        // Same operations in the same order; fused multiply-adds and the summed
        // duplicate bias may move the last bits.
        for (i, (g, w)) in got[row * v..(row + 1) * v].iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "row {row} token {i}: {g} vs {w}");
        }
    }
}

/// The tokens a draw may return under the CPU sampler's rules, with their
/// renormalised probabilities.
fn support(x: &[f32], p: &SamplingParams) -> Vec<(usize, f64)> {
    let mut c: Vec<(usize, f64)> = x.iter().enumerate().map(|(i, &l)| (i, (l / p.temperature) as f64)).collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 {
        c.truncate(p.top_k as usize);
    }
    let m = c[0].1;
    let z: f64 = c.iter().map(|(_, y)| (y - m).exp()).sum();
    let mut probs: Vec<(usize, f64)> = c.iter().map(|&(i, y)| (i, (y - m).exp() / z)).collect();
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let keep = probs.iter().position(|(_, q)| { cum += q; cum >= p.top_p as f64 }).map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
    }
    let pmax = probs[0].1;
    probs.retain(|(_, q)| *q >= p.min_p as f64 * pmax);
    let z: f64 = probs.iter().map(|(_, q)| q).sum();
    probs.iter().map(|&(i, q)| (i, q / z)).collect()
}

#[test]
fn truncated_draws_stay_in_the_support_with_the_right_frequencies() {
    let Some(dev) = device_or_skip("truncation") else { return };
    let mut r = rng("truncation");
    // The emulated device draws fewer times from a smaller vocabulary (the
    // frequency bound below scales with the number of draws).
    let (v, draws) = if emulated(&dev) { (4096, 512) } else { (32_000, 4096) };
    let x: Vec<f32> = (0..v).map(|_| randn(&mut r) * 2.5).collect();
    let cases = [
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.7, top_k: 20, ..Default::default() },
        SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() },
        SamplingParams { temperature: 1.3, top_k: 50, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 1.0, min_p: 0.05, ..Default::default() },
    ];
    for p in &cases {
        let params = vec![p.clone(); draws];
        let logits: Vec<f32> = x.iter().copied().cycle().take(draws * v).collect();
        let b = batch(&params, &[], &[]);
        let seeds: Vec<u64> = (0..draws as u64).map(|s| s * 7919 + 1).collect();
        let (ids, _, _) = sample(&dev, &logits, v, &b, &seeds, &vec![3; draws]);
        let sup = support(&x, p);
        let allowed: std::collections::HashMap<usize, f64> = sup.iter().copied().collect();
        for &id in &ids {
            assert!(allowed.contains_key(&(id as usize)), "{p:?}: token {id} outside the support of {}", sup.len());
        }
        for (&tok, &prob) in allowed.iter().filter(|(_, &q)| q > 0.02) {
            let f = ids.iter().filter(|&&i| i as usize == tok).count() as f64 / draws as f64;
            let sigma = (prob * (1.0 - prob) / draws as f64).sqrt();
            assert!((f - prob).abs() < 5.0 * sigma + 1e-3, "{p:?}: token {tok} drawn {f:.4}, probability {prob:.4}");
        }
    }
}

#[test]
fn draws_depend_only_on_seed_and_step() {
    let Some(dev) = device_or_skip("determinism") else { return };
    let mut r = rng("determinism");
    let v = 4096;
    let x: Vec<f32> = (0..v).map(|_| randn(&mut r)).collect();
    let p = SamplingParams { temperature: 1.0, top_p: 0.95, ..Default::default() };
    let run = |seeds: &[u64], steps: &[u64]| {
        let n = seeds.len();
        let logits: Vec<f32> = x.iter().copied().cycle().take(n * v).collect();
        sample(&dev, &logits, v, &batch(&vec![p.clone(); n], &[], &[]), seeds, steps).0
    };
    let a = run(&[11, 12, 13, 14], &[0, 0, 5, 5]);
    let b = run(&[14, 13, 11], &[5, 5, 0]);
    assert_eq!((a[3], a[2], a[0]), (b[0], b[1], b[2]), "same (seed, step), same token, any row");
    let many = run(&(0..64).collect::<Vec<u64>>(), &[0; 64]);
    assert!(many.iter().collect::<std::collections::HashSet<_>>().len() > 1, "different seeds must differ somewhere");
}

#[test]
fn top_logprobs_are_the_best_n_sorted() {
    let Some(dev) = device_or_skip("top_logprobs") else { return };
    let mut r = rng("top_logprobs");
    let (rows, v, n) = (3, 151_936, 20);
    let logits = random_logits(&mut r, rows, v, 4.0);
    let dl = upload(&dev, &logits);
    let (ids, lps) = (poisoned::<u32>(&dev, rows * n), poisoned::<f32>(&dev, rows * n));
    ops::top_logprobs(&dev, ids.ptr, lps.ptr, dl.ptr, rows, n, v).unwrap();
    let (ids, lps): (Vec<u32>, Vec<f32>) = (download(&dev, &ids, rows * n), download(&dev, &lps, rows * n));
    for row in 0..rows {
        let lp = log_softmax(&logits[row * v..(row + 1) * v]);
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
        for j in 0..n {
            assert_eq!(ids[row * n + j] as usize, order[j], "row {row} rank {j}");
            assert!((lps[row * n + j] - lp[order[j]]).abs() < 1e-3, "row {row} rank {j}");
        }
    }
}

/// Masks of every kind for a vocabulary of `v`: all allowed (bits past the
/// vocabulary set too), one allowed (the first, the last, a random id), none
/// allowed (but bits past the vocabulary set: they must not count), random
/// densities.
fn mask_cases(r: &mut StdRng, v: usize) -> Vec<Option<Vec<u32>>> {
    let w = kiln::sampling::mask::mask_words(v);
    let one = |t: usize| {
        let mut m = vec![0u32; w];
        m[t / 32] |= 1 << (t % 32);
        m
    };
    let mut past = vec![0u32; w];
    if v % 32 != 0 {
        past[w - 1] = !((1u32 << (v % 32)) - 1);
    }
    let mut random = |density: f64| -> Vec<u32> {
        let mut m = vec![0u32; w];
        for t in 0..v {
            if r.gen_bool(density) {
                m[t / 32] |= 1 << (t % 32);
            }
        }
        m
    };
    let (dense, sparse) = (random(0.5), random(0.02));
    let mid = r.gen_range(0..v);
    vec![Some(vec![u32::MAX; w]), Some(one(0)), None, Some(one(v - 1)), Some(one(mid)), Some(past), Some(dense), Some(sparse)]
}

/// Packs `masks` as the runner does (SamplingBatch::build + wait_masks).
fn masked_batch(params: &[SamplingParams], masks: &[Option<Vec<u32>>], prompt: &[u32], output: &[u32], v: usize) -> SamplingBatch {
    let cells: Vec<Option<kiln::sampling::TokenMask>> = masks.iter().map(|m| m.clone().map(kiln::sampling::TokenMask::filled)).collect();
    let mut rngs: Vec<ChaCha8Rng> = (0..params.len()).map(|i| ChaCha8Rng::seed_from_u64(i as u64)).collect();
    let mut reqs: Vec<SampleRequest> = params
        .iter()
        .zip(rngs.iter_mut())
        .zip(&cells)
        .map(|((p, rng), m)| SampleRequest { params: p, rng, prompt, output, allowed_tokens: m.as_ref() })
        .collect();
    let mut b = SamplingBatch::build(&mut reqs);
    b.wait_masks(&reqs, kiln::sampling::mask::mask_words(v));
    b
}

/// penalties -> apply_token_mask_f32 -> sample_f32 -> top_logprobs_f32 (n):
/// (ids, logprobs, top ids, top logprobs, masked logits).
#[allow(clippy::type_complexity)]
fn sample_with_masks(dev: &Device, logits: &[f32], v: usize, b: &SamplingBatch, seeds: &[u64], n: usize) -> (Vec<u32>, Vec<f32>, Vec<u32>, Vec<f32>, Vec<f32>) {
    let rows = b.rows();
    let a = arrays(dev, b, seeds, &vec![0; rows]);
    let dl = upload(dev, logits);
    ops::apply_penalties(dev, dl.ptr, &a.arrays, rows, v).unwrap();
    ops::apply_token_mask(dev, dl.ptr, &a.arrays, rows, v).unwrap();
    let (ids, lps) = (poisoned::<u32>(dev, rows), poisoned::<f32>(dev, rows));
    ops::sample(dev, ids.ptr, lps.ptr, dl.ptr, &a.arrays, rows, v).unwrap();
    let (tids, tlps) = (poisoned::<u32>(dev, rows * n), poisoned::<f32>(dev, rows * n));
    ops::top_logprobs(dev, tids.ptr, tlps.ptr, dl.ptr, rows, n, v).unwrap();
    (download(dev, &ids, rows), download(dev, &lps, rows), download(dev, &tids, rows * n), download(dev, &tlps, rows * n), download(dev, &dl, rows * v))
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    a == b || (a - b).abs() <= tol
}

/// Greedy ids, logprobs, top logprobs and the masked logits themselves
/// against `sampling::sample_masked` (the CPU sampler), with penalties
/// applied before the mask, over every kind of mask, for a vocabulary that
/// is a multiple of 32 and one that is not.
#[test]
fn token_masks_match_the_cpu_sampler() {
    let Some(dev) = device_or_skip("token_masks") else { return };
    let mut r = rng("token_masks");
    let n = 6;
    for v in [320, 1001] {
        let masks = mask_cases(&mut r, v);
        let prompt: Vec<u32> = (0..20).map(|_| r.gen_range(0..v as u32)).collect();
        let output: Vec<u32> = (0..10).map(|_| r.gen_range(0..v as u32)).collect();
        // Row 6 (dense mask) has no processors: it holds a tie (below).
        let params: Vec<SamplingParams> = (0..masks.len())
            .map(|i| if i == 6 { SamplingParams { logprobs: Some(n as u32), ..SamplingParams::greedy() } } else { SamplingParams {
                logprobs: Some(n as u32),
                repetition_penalty: if i % 2 == 0 { 1.4 } else { 1.0 },
                logit_bias: vec![(r.gen_range(0..v as u32), 5.0)],
                ..SamplingParams::greedy()
            } })
            .collect();
        let mut logits = random_logits(&mut r, masks.len(), v, 2.0);
        // Row 6 (dense mask): a tie between its two best allowed tokens.
        let (lo, hi) = (6 * v, 7 * v);
        let allowed: Vec<usize> = (0..v).filter(|&t| kiln::sampling::mask::is_allowed(masks[6].as_ref().unwrap(), t as u32)).collect();
        let top = logits[lo..hi].iter().cloned().fold(f32::MIN, f32::max) + 10.0;
        logits[lo + allowed[1]] = top;
        logits[lo + allowed[2]] = top;
        let b = masked_batch(&params, &masks, &prompt, &output, v);
        let (ids, lps, tids, tlps, got) = sample_with_masks(&dev, &logits, v, &b, &vec![0; masks.len()], n);
        for (row, (p, m)) in params.iter().zip(&masks).enumerate() {
            let what = format!("v={v} row {row}");
            let mut want = logits[row * v..(row + 1) * v].to_vec();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let (id, lp) = kiln::sampling::sample_masked(&mut want, p, &mut rng, &prompt, &output, m.as_deref());
            for (t, (g, w)) in got[row * v..(row + 1) * v].iter().zip(&want).enumerate() {
                assert!(close(*g, *w, 1e-5 * w.abs().max(1.0)), "{what} token {t}: {g} vs {w}");
            }
            assert_eq!(ids[row], id, "{what}: greedy id");
            if let Some(m) = m {
                if kiln::sampling::mask::any_allowed(m, v) {
                    assert!(kiln::sampling::mask::is_allowed(m, ids[row]), "{what}: a masked token was chosen");
                }
            }
            let lp = lp.unwrap();
            assert!(close(lps[row], lp.logprob, 1e-3), "{what}: logprob {} vs {}", lps[row], lp.logprob);
            for (j, &(tid, tlp)) in lp.top.iter().enumerate() {
                assert_eq!(tids[row * n + j], tid, "{what}: top {j}");
                assert!(close(tlps[row * n + j], tlp, 1e-3), "{what}: top {j} logprob {} vs {tlp}", tlps[row * n + j]);
            }
        }
        assert_eq!(ids[6] as usize, allowed[1], "v={v}: greedy ties go to the lower id");
    }
}

/// Draws under a mask (alone, and with top-k / top-p) only return allowed
/// tokens, with the frequencies of the renormalised allowed distribution.
#[test]
fn masked_draws_stay_in_the_mask_with_the_right_frequencies() {
    let Some(dev) = device_or_skip("masked_draws") else { return };
    let mut r = rng("masked_draws");
    let (v, draws) = if emulated(&dev) { (1001, 400) } else { (32_003, 4096) };
    let w = kiln::sampling::mask::mask_words(v);
    let x: Vec<f32> = (0..v).map(|_| randn(&mut r) * 1.5).collect();
    let mut mask = vec![0u32; w];
    let chosen: Vec<usize> = (0..8).map(|_| r.gen_range(0..v)).collect();
    for &t in &chosen {
        mask[t / 32] |= 1 << (t % 32);
    }
    // The best token overall is masked out (it would win most draws).
    let best = (0..v).fold(0, |b, i| if x[i] > x[b] && !chosen.contains(&i) { i } else { b });
    let x_allowed: Vec<f32> = (0..v).map(|t| if kiln::sampling::mask::is_allowed(&mask, t as u32) { x[t] } else { f32::NEG_INFINITY }).collect();
    for p in [
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.8, top_k: 3, ..Default::default() },
        SamplingParams { temperature: 1.2, top_p: 0.7, ..Default::default() },
    ] {
        let params = vec![p.clone(); draws];
        let masks = vec![Some(mask.clone()); draws];
        let logits: Vec<f32> = x.iter().copied().cycle().take(draws * v).collect();
        let b = masked_batch(&params, &masks, &[], &[], v);
        let seeds: Vec<u64> = (0..draws as u64).map(|s| s * 104_729 + 3).collect();
        let (ids, _, _, _, _) = sample_with_masks(&dev, &logits, v, &b, &seeds, 1);
        assert!(!ids.contains(&(best as u32)) || chosen.contains(&best));
        // The CPU's support among the allowed tokens (masked ones are -inf: weight 0).
        let sup: std::collections::HashMap<usize, f64> = support(&x_allowed, &p).into_iter().filter(|(_, q)| *q > 0.0).collect();
        for &id in &ids {
            assert!(kiln::sampling::mask::is_allowed(&mask, id), "{p:?}: token {id} is masked out");
            assert!(sup.contains_key(&(id as usize)), "{p:?}: token {id} outside the support {sup:?}");
        }
        for (&tok, &prob) in sup.iter().filter(|(_, &q)| q > 0.02) {
            let f = ids.iter().filter(|&&i| i as usize == tok).count() as f64 / draws as f64;
            let sigma = (prob * (1.0 - prob) / draws as f64).sqrt();
            assert!((f - prob).abs() < 5.0 * sigma + 1e-3, "{p:?}: token {tok} drawn {f:.4}, probability {prob:.4}");
        }
    }
}
