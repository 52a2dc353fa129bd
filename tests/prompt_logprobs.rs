//! Prompt logprobs (the legacy completions API's `echo` with `logprobs`,
//! vLLM's `prompt_logprobs`) through the whole engine on the CPU runner,
//! against the log-softmax of Hugging Face transformers' logits at every
//! prompt position (the tiny fixture models' reference.json, made by
//! scripts/gen_model_fixtures.py).
//!
//! The engine runs with a token budget of 3 per step, so every prompt of
//! more than 3 tokens is computed in chunks, and with prefix caching on: the
//! same prompt sent twice must be computed in full both times (no cache hit
//! for a request wanting prompt logprobs) and give the same logprobs.

use std::path::PathBuf;
use std::sync::Arc;

use kiln::engine::fake::FakeDecoder;
use kiln::engine::{
    EngineConfig, EngineHandle, EventKind, Priority, SeqUsage, StopCriteria, TokenLogprob, ValidRequest,
};
use kiln::model::config::ModelConfig;
use kiln::model::llama::LlamaModel;
use kiln::model::weights::SafetensorsSource;
use kiln::runner::cpu::CpuRunner;
use kiln::sampling::{log_softmax, SamplingParams};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    /// [position][vocab]
    logits: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

const TOP: u32 = 3;

fn engine(name: &str) -> (EngineHandle, Reference) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name);
    let cfg = ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let model = LlamaModel::load(cfg, &src, |_| {}).unwrap();
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let cfg = EngineConfig {
        block_size: 4,
        max_model_len: 256,
        max_num_batched_tokens: 3,
        max_num_seqs: 4,
        enable_prefix_caching: true,
        ..Default::default()
    };
    let runner = Box::new(CpuRunner::new(model, 64, 4));
    (EngineHandle::start_with_decoder(cfg, runner, Arc::new(FakeDecoder)).unwrap(), r)
}

/// (first prompt token, prompt logprobs, generated ids, usage) of one request.
fn run(e: &EngineHandle, prompt: &[u32]) -> (u32, Vec<TokenLogprob>, Vec<u32>, SeqUsage) {
    run_for(e, prompt, 2)
}

fn run_for(e: &EngineHandle, prompt: &[u32], max_tokens: usize) -> (u32, Vec<TokenLogprob>, Vec<u32>, SeqUsage) {
    let req = ValidRequest {
        request_id: "plp".into(),
        prompt_ids: prompt.to_vec(),
        sampling: SamplingParams { prompt_logprobs: Some(TOP), logprobs: Some(TOP), ..SamplingParams::greedy() },
        stop: StopCriteria { max_tokens, ignore_eos: true, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    };
    let mut rx = e.submit(req).unwrap();
    let (mut prompt_lps, mut generated) = (None, Vec::new());
    loop {
        match rx.blocking_recv().expect("the engine hung up").kind {
            EventKind::PromptLogprobs { first_token, logprobs } => {
                assert!(prompt_lps.is_none(), "prompt logprobs sent twice");
                assert!(generated.is_empty(), "prompt logprobs after a generated token");
                prompt_lps = Some((first_token, logprobs));
            }
            EventKind::Token { token_id, .. } => generated.push(token_id),
            EventKind::Finished { usage, .. } => {
                let (first, lps) = prompt_lps.expect("no prompt logprobs before the end");
                return (first, lps, generated, usage);
            }
            EventKind::Error(e) => panic!("engine error: {e}"),
        }
    }
}

/// |a - b| within what the logits' tolerance (1e-4 of the largest |logit|,
/// as tests/model_reference.rs checks) allows after a log-softmax: the
/// error of one logit plus that of the log-sum-exp.
fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 2e-4 * scale + 1e-5
}

fn check(name: &str) {
    let (e, r) = engine(name);
    for (ci, case) in r.cases.iter().enumerate() {
        let p = &case.prompt_ids;
        let (first, lps, generated, usage) = run(&e, p);
        assert_eq!(first, p[0], "{name} case {ci}: first prompt token");
        assert_eq!(lps.len(), p.len() - 1, "{name} case {ci}: one logprob per prompt token after the first");
        for (i, lp) in lps.iter().enumerate() {
            let what = format!("{name} case {ci} prompt token {}", i + 1);
            let want = log_softmax(&case.logits[i]);
            let scale = case.logits[i].iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(lp.token_id, p[i + 1], "{what}: token");
            assert!(close(lp.logprob, want[p[i + 1] as usize], scale), "{what}: {} vs {}", lp.logprob, want[p[i + 1] as usize]);
            let mut best = want.clone();
            best.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(lp.top.len(), TOP as usize, "{what}: top count");
            for (k, &(id, l)) in lp.top.iter().enumerate() {
                assert!(close(l, want[id as usize], scale), "{what}: top {k} logprob of id {id}");
                assert!(close(l, best[k], scale), "{what}: top {k} is not the {k}-th best");
            }
        }
        assert_eq!(generated.len(), 2, "{name} case {ci}: generated tokens");
        assert_eq!(usage.cached_tokens, 0, "{name} case {ci}: first run");

        // The same prompt again: its blocks are in the prefix cache now, but a
        // request wanting prompt logprobs computes them anyway.
        let (_, again, generated_again, usage) = run(&e, p);
        assert_eq!(usage.cached_tokens, 0, "{name} case {ci}: a prompt-logprobs request took a prefix-cache hit");
        assert_eq!(again, lps, "{name} case {ci}: second run differs");
        assert_eq!(generated_again, generated, "{name} case {ci}: second run's tokens differ");

        // max_tokens 0 (echo with max_tokens 0): the prompt's logprobs alone.
        let (_, alone, none, usage) = run_for(&e, p, 0);
        assert_eq!(alone, lps, "{name} case {ci}: prompt-only logprobs differ");
        assert_eq!((none.len(), usage.completion_tokens, usage.prompt_tokens), (0, 0, p.len()), "{name} case {ci}");
    }
    e.shutdown();
}

#[test]
fn llama3_tied() {
    check("llama3_tied");
}

#[test]
fn qwen2_bias() {
    check("qwen2_bias");
}

#[test]
fn mistral() {
    check("mistral");
}

/// A runner that does not compute prompt logprobs (the fake one here; the
/// CPU and CUDA runners both do) makes the engine refuse such requests at submit,
/// which the HTTP layer answers with a 400.
#[test]
fn runners_without_prompt_logprobs_refuse_them() {
    use kiln::engine::fake::FakeRunner;
    use kiln::engine::EngineError;
    let cfg = EngineConfig { block_size: 16, max_model_len: 256, ..Default::default() };
    let e = EngineHandle::start_with_decoder(cfg, Box::new(FakeRunner::new(32, 16, 100)), Arc::new(FakeDecoder)).unwrap();
    let mut req = ValidRequest {
        request_id: "plp".into(),
        prompt_ids: vec![1, 2, 3],
        sampling: SamplingParams { prompt_logprobs: Some(1), ..SamplingParams::greedy() },
        stop: StopCriteria { max_tokens: 2, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    };
    match e.submit(req.clone()) {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("prompt logprobs"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    req.sampling.prompt_logprobs = None;
    assert!(e.submit(req).is_ok());
    e.shutdown();
}
