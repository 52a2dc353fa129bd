//! The CUDA runner end to end against the CPU backend, beyond the fixture
//! checks of model.rs:
//! - the tiny Q8_0 and Q4_1 GGUF fixtures (tests/fixtures/gguf/tiny_*.gguf,
//!   made by scripts/gen_gguf_fixtures.py): blocks uploaded as stored and
//!   expanded by the dequant kernels, logits of every position and greedy;
//! - every --max-num-seqs from 1 to 40: start-up (warm-up, graph capture of
//!   every bucket) and steps of that many sequences stay inside the
//!   workspace (on the emulated device its guard bytes catch an overrun)
//!   and give the CPU's greedy tokens;
//! - contexts that cross decode partition boundaries, through CUDA graphs and
//!   eagerly.
use super::model::{assert_greedy, greedy_cpu, greedy_gpu, opts, table, BS, FIXTURE_REL_TOL};
use super::support::*;
use kiln::backend::cuda::runner::{open_weights, CudaRunner, CudaRunnerOptions};
use kiln::model::llama::LlamaModel;
use kiln::model::BatchInput;
use rand::{Rng, SeedableRng};

fn random_prompts(seed: u64, n: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..len).map(|_| r.gen_range(3..vocab as u32)).collect()).collect()
}

#[test]
fn quantized_gguf_models_match_the_cpu() {
    if device_or_skip("quantized_gguf").is_none() {
        return;
    }
    for file in ["tiny_q8_0.gguf", "tiny_q4_1.gguf"] {
        let path = repo_root().join("tests/fixtures/gguf").join(file);
        let (cfg, src) = open_weights(&path).unwrap();
        let cpu = LlamaModel::load(cfg.clone(), src.as_ref(), |_| {}).unwrap();
        let dev = device_or_skip(file).unwrap();
        let mut gpu = CudaRunner::load_on(dev, &cfg, src.as_ref(), opts(128, 4, 128), |_| {}).unwrap();
        let prompt = &random_prompts(7, 1, 24, cfg.vocab_size)[0];
        let per = (prompt.len() + 16).div_ceil(BS);
        let bt = table(0, per);
        let mut kv = cpu.new_kv_cache(1 + per, BS);
        for (i, &t) in prompt.iter().enumerate() {
            let b = BatchInput::build(BS, &[(&[t], i, &bt, true)]);
            let g = gpu.forward_logits(&b).unwrap();
            assert_rel(&g, &cpu.forward(&b, &mut kv), FIXTURE_REL_TOL, &format!("{file} decode pos {i} vs cpu"));
        }
        // The whole prompt as one prefill over a fresh table: its last logits.
        let bt2 = table(1, per);
        let b = BatchInput::build(BS, &[(&prompt[..], 0, &bt2, true)]);
        let g = gpu.forward_logits(&b).unwrap();
        let mut kv2 = cpu.new_kv_cache(2 + 2 * per, BS);
        assert_rel(&g, &cpu.forward(&b, &mut kv2), FIXTURE_REL_TOL, &format!("{file} prefill vs cpu"));
        let prompts = vec![prompt.clone()];
        let (want, margins, _) = greedy_cpu(&cpu, &prompts, 12, per);
        assert_greedy(&greedy_gpu(&mut gpu, &prompts, 12, per), &want, &margins, file);
    }
}

/// A runner for `max_num_seqs` sequences of up to 32 tokens, prompts of 2.
fn runner_for(cfg: &kiln::model::ModelConfig, src: &dyn kiln::model::weights::WeightSource, seqs: usize, test: &str) -> CudaRunner {
    let o = CudaRunnerOptions { num_kv_blocks: Some(1 + seqs * 2), ..opts(32, seqs, 2 * seqs) };
    CudaRunner::load_on(device_or_skip(test).unwrap(), cfg, src, o, |_| {}).unwrap()
}

#[test]
fn every_max_num_seqs_from_1_to_40_starts_and_decodes() {
    if device_or_skip("max_num_seqs").is_none() {
        return;
    }
    let dir = repo_root().join("tests/fixtures/models/qwen2_bias");
    let (cfg, src) = open_weights(&dir).unwrap();
    let cpu = LlamaModel::load(cfg.clone(), src.as_ref(), |_| {}).unwrap();
    for seqs in 1..=40 {
        // Graphs for every bucket up to `seqs` are captured at start-up.
        let mut gpu = runner_for(&cfg, src.as_ref(), seqs, "max_num_seqs");
        let prompts = random_prompts(seqs as u64, seqs, 2, cfg.vocab_size);
        // A prefill step of every sequence, then decode steps (graph replays).
        let (want, margins, _) = greedy_cpu(&cpu, &prompts, 4, 2);
        let got = greedy_gpu(&mut gpu, &prompts, 4, 2);
        assert_greedy(&got, &want, &margins, &format!("--max-num-seqs {seqs}"));
    }
}

#[test]
fn contexts_crossing_decode_partitions_match_the_cpu() {
    if device_or_skip("long_contexts").is_none() {
        return;
    }
    let dir = repo_root().join("tests/fixtures/models/qwen3_qknorm");
    let (cfg, src) = open_weights(&dir).unwrap();
    let cpu = LlamaModel::load(cfg.clone(), src.as_ref(), |_| {}).unwrap();
    // 120-token prompts and 24 steps: contexts go from 120 past 128, a
    // decode partition boundary (attention_plan::MIN_PART_SIZE) on any GPU.
    let prompts = random_prompts(3, 2, 120, cfg.vocab_size);
    let per = 256 / BS;
    let (want, margins, _) = greedy_cpu(&cpu, &prompts, 24, per);
    for eager in [false, true] {
        let dev = device_or_skip("long_contexts").unwrap();
        let o = CudaRunnerOptions { enforce_eager: eager, ..opts(256, 2, 256) };
        let mut gpu = CudaRunner::load_on(dev, &cfg, src.as_ref(), o, |_| {}).unwrap();
        let got = greedy_gpu(&mut gpu, &prompts, 24, per);
        assert_greedy(&got, &want, &margins, &format!("contexts 120..144, eager {eager}"));
    }
    // Logits of single decode steps at contexts 126..134 against the CPU.
    let mut gpu = CudaRunner::load_on(device_or_skip("long_contexts").unwrap(), &cfg, src.as_ref(), opts(256, 2, 256), |_| {}).unwrap();
    let p = &prompts[0];
    let bt = table(0, per);
    let mut kv = cpu.new_kv_cache(1 + per, BS);
    let pre = BatchInput::build(BS, &[(&p[..], 0, &bt, false)]);
    gpu.forward_logits(&pre).unwrap();
    cpu.forward(&pre, &mut kv);
    for pos in 120..136 {
        let b = BatchInput::build(BS, &[(&[(pos * 7 % 300) as u32 + 3], pos, &bt, true)]);
        let g = gpu.forward_logits(&b).unwrap();
        assert_rel(&g, &cpu.forward(&b, &mut kv), FIXTURE_REL_TOL, &format!("decode at context {}", pos + 1));
    }
}
