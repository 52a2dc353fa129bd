//! Prompt logprobs (echo with logprobs) through the engine on the CUDA
//! runner, against the log-softmax of transformers' logits at every prompt
//! position (the fixture's reference.json, scripts/gen_model_fixtures.py).
//! The runner has 2 logits rows, so a step's prompt rows go through the LM
//! head in several chunks, and a 6-token budget, so prompts are computed in
//! several steps; two requests run at once (rows of two sequences in one
//! step), one of them with max_tokens 0 (the prompt alone).
//!
//! Bars: bf16 activations give absolute logit errors up to ~0.1 on these
//! fixtures (model.rs), so each logprob is within 0.25 of transformers'
//! and every top alternative is one of transformers' top ids wherever the
//! ranking there is clear (a gap of CLEAR_MARGIN).
use super::model::{opts, BS, CLEAR_MARGIN};
use super::support::*;
use kiln::backend::cuda::runner::{open_weights, CudaRunner};
use kiln::engine::fake::FakeDecoder;
use kiln::engine::{EngineConfig, EngineHandle, EventKind, Priority, StopCriteria, TokenLogprob, ValidRequest};
use kiln::sampling::{log_softmax, SamplingParams};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

const TOP: u32 = 3;
const LOGPROB_TOL: f32 = 0.25;

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

fn request(prompt: &[u32], max_tokens: usize) -> ValidRequest {
    ValidRequest {
        request_id: "plp".into(),
        prompt_ids: prompt.to_vec(),
        sampling: SamplingParams { prompt_logprobs: Some(TOP), logprobs: Some(TOP), ..SamplingParams::greedy() },
        stop: StopCriteria { max_tokens, ignore_eos: true, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    }
}

/// (first prompt token, prompt logprobs, number of generated tokens).
fn outcome(mut rx: UnboundedReceiver<kiln::engine::TokenEvent>) -> (u32, Vec<TokenLogprob>, usize) {
    let (mut lps, mut generated) = (None, 0);
    loop {
        match rx.blocking_recv().expect("the engine hung up").kind {
            EventKind::PromptLogprobs { first_token, logprobs } => {
                assert!(lps.is_none() && generated == 0, "prompt logprobs twice or after a token");
                lps = Some((first_token, logprobs));
            }
            EventKind::Token { .. } => generated += 1,
            EventKind::Finished { usage, .. } => {
                assert_eq!(usage.completion_tokens, generated);
                let (first, lps) = lps.expect("no prompt logprobs");
                return (first, lps, generated);
            }
            EventKind::Error(e) => panic!("engine error: {e}"),
        }
    }
}

fn check(what: &str, prompt: &[u32], lps: &[TokenLogprob], logits: &[Vec<f32>]) {
    assert_eq!(lps.len(), prompt.len() - 1, "{what}: one logprob per prompt token after the first");
    for (i, lp) in lps.iter().enumerate() {
        let want = log_softmax(&logits[i]);
        let at = format!("{what} position {}", i + 1);
        assert_eq!(lp.token_id, prompt[i + 1], "{at}: target");
        assert!((lp.logprob - want[prompt[i + 1] as usize]).abs() <= LOGPROB_TOL, "{at}: {} vs {}", lp.logprob, want[prompt[i + 1] as usize]);
        assert_eq!(lp.top.len(), TOP as usize, "{at}: top count");
        let mut order: Vec<usize> = (0..want.len()).collect();
        order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
        for (k, &(id, l)) in lp.top.iter().enumerate() {
            assert!((l - want[id as usize]).abs() <= LOGPROB_TOL, "{at}: top {k} (id {id}) {l} vs {}", want[id as usize]);
            // Where transformers' k-th choice is clearly apart from its
            // neighbours, the GPU's k-th choice is the same token.
            let clear_above = k == 0 || want[order[k - 1]] - want[order[k]] >= CLEAR_MARGIN;
            if clear_above && want[order[k]] - want[order[k + 1]] >= CLEAR_MARGIN {
                assert_eq!(id as usize, order[k], "{at}: top {k}");
            }
        }
    }
}

#[test]
fn prompt_logprobs_match_transformers() {
    let Some(dev) = device_or_skip("prompt_logprobs") else { return };
    let dir = repo_root().join("tests/fixtures/models/llama3_tied");
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let (cfg, src) = open_weights(&dir).unwrap();
    let gpu = CudaRunner::load_on(dev, &cfg, src.as_ref(), opts(128, 2, 6), |_| {}).unwrap();
    let ecfg = EngineConfig { block_size: BS, max_model_len: 128, max_num_seqs: 2, max_num_batched_tokens: 6, ..Default::default() };
    let h = EngineHandle::start_with_decoder(ecfg, Box::new(gpu), Arc::new(FakeDecoder)).unwrap();
    let cases: Vec<&Case> = r.cases.iter().filter(|c| c.prompt_ids.len() > 1).collect();
    assert!(cases.len() >= 2 && cases.iter().any(|c| c.prompt_ids.len() > 12), "fixture prompts");
    for pair in cases.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let ra = h.submit(request(&a.prompt_ids, 2)).unwrap();
        let rb = h.submit(request(&b.prompt_ids, 0)).unwrap();
        let (first_a, lps_a, gen_a) = outcome(ra);
        let (first_b, lps_b, gen_b) = outcome(rb);
        assert_eq!((first_a, first_b, gen_a, gen_b), (a.prompt_ids[0], b.prompt_ids[0], 2, 0));
        check(&format!("{} tokens", a.prompt_ids.len()), &a.prompt_ids, &lps_a, &a.logits);
        check(&format!("{} tokens, max_tokens 0", b.prompt_ids.len()), &b.prompt_ids, &lps_b, &b.logits);
    }
    h.shutdown();
}
