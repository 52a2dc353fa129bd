//! The engine thread through its public handle, with the fake runner and the
//! fake decoder (one letter per id): token events, stop conditions, n > 1,
//! prefix-cache counters, aborts by dropped receivers, shutdown, validation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::engine::fake::{FakeDecoder, FakeRunner};
use kiln::engine::{
    EngineConfig, EngineError, EngineHandle, EventKind, FinishReason, Priority, SeqUsage, StopCriteria, TokenEvent,
    ValidRequest,
};
use kiln::model::BatchInput;
use kiln::runner::{ModelRunner, SampleRequest, Sampled};
use kiln::sampling::SamplingParams;
use tokio::sync::mpsc::UnboundedReceiver;

const VOCAB: usize = 60;

fn engine(cfg: EngineConfig, blocks: usize) -> EngineHandle {
    let runner = FakeRunner::new(blocks, cfg.block_size, VOCAB);
    EngineHandle::start_with_decoder(cfg, Box::new(runner), Arc::new(FakeDecoder)).unwrap()
}

fn cfg() -> EngineConfig {
    EngineConfig { block_size: 4, max_model_len: 512, ..Default::default() }
}

fn req(prompt: Vec<u32>, max_tokens: usize) -> ValidRequest {
    ValidRequest {
        request_id: "r".into(),
        prompt_ids: prompt,
        sampling: SamplingParams::greedy(),
        stop: StopCriteria { max_tokens, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7 + salt) % VOCAB as u32).collect()
}

#[derive(Debug, Default)]
struct Out {
    ids: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    usage: SeqUsage,
    error: Option<String>,
}

/// Reads every event of a request with `n` sequences until each has ended.
fn collect(mut rx: UnboundedReceiver<TokenEvent>, n: usize) -> Vec<Out> {
    let mut outs: Vec<Out> = (0..n).map(|_| Out::default()).collect();
    let mut open = n;
    while open > 0 {
        let ev = rx.blocking_recv().expect("engine hung up before every sequence ended");
        let o = &mut outs[ev.index];
        assert!(o.finish.is_none() && o.error.is_none(), "event after the end: {ev:?}");
        match ev.kind {
            EventKind::Token { token_id, text, .. } => {
                o.ids.push(token_id);
                o.text.push_str(&text);
            }
            EventKind::Finished { reason, text, usage, .. } => {
                o.text.push_str(&text);
                o.finish = Some(reason);
                o.usage = usage;
                open -= 1;
            }
            EventKind::Error(e) => {
                o.error = Some(e);
                open -= 1;
            }
            EventKind::PromptLogprobs { .. } => {}
        }
    }
    outs
}

fn run(h: &EngineHandle, r: ValidRequest) -> Vec<Out> {
    let n = r.n;
    collect(h.submit(r).unwrap(), n)
}

fn wait_idle(h: &EngineHandle) {
    let t = Instant::now();
    loop {
        let s = h.stats();
        if s.num_running == 0 && s.num_waiting == 0 {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "engine not idle: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn reference(r: &ValidRequest, index: usize, seed: u64) -> Vec<u32> {
    FakeRunner::reference(&r.prompt_ids, r.stop.max_tokens, &r.sampling, seed, index, VOCAB)
}

#[test]
fn greedy_output_usage_and_text() {
    let h = engine(cfg(), 128);
    let r = req(prompt(23, 1), 9);
    let out = run(&h, r.clone());
    let expect = reference(&r, 0, 0);
    assert_eq!(out[0].ids, expect);
    assert_eq!(out[0].text, FakeDecoder::text(&expect));
    assert_eq!(out[0].finish, Some(FinishReason::Length));
    let u = out[0].usage;
    assert_eq!((u.prompt_tokens, u.cached_tokens, u.completion_tokens), (23, 0, 9));
    let t = u.timing;
    assert!(t.prefill > std::time::Duration::ZERO && t.decode > std::time::Duration::ZERO, "prefill and decode were timed: {t:?}");
    wait_idle(&h);
    let s = h.stats();
    assert_eq!((s.prompt_tokens_total, s.generation_tokens_total), (23, 9));
    assert_eq!(s.kv_blocks_used, 0);
    assert_eq!(s.kv_blocks_total, 127);
}

#[test]
fn stop_string_split_across_tokens_is_caught_and_not_emitted() {
    let h = engine(cfg(), 128);
    let base = req(prompt(10, 3), 40);
    let full = FakeDecoder::text(&reference(&base, 0, 0));
    // Every two-letter window of the text is a stop string spanning two tokens.
    for at in [3, 11, 20, 30] {
        let stop = full[at..at + 2].to_string();
        let mut r = base.clone();
        r.stop.stop_strings = vec!["never there".into(), stop.clone()];
        let out = run(&h, r);
        let cut = full.find(&stop).unwrap();
        assert_eq!(out[0].text, full[..cut], "stop {stop:?}");
        assert_eq!(out[0].finish, Some(FinishReason::Stop));
        // The token completing the stop string was generated and counted.
        assert_eq!(out[0].usage.completion_tokens, cut + 2);
    }
    // A stop string never completed: everything, held text included, arrives.
    let mut r = base.clone();
    r.stop.stop_strings = vec![format!("{}#", &full[38..40])];
    let out = run(&h, r);
    assert_eq!(out[0].text, full);
    assert_eq!(out[0].finish, Some(FinishReason::Length));
}

#[test]
fn eos_and_stop_token_ids_end_the_sequence_unless_ignored() {
    let base = req(prompt(12, 5), 30);
    let ids = reference(&base, 0, 0);
    let eos = ids[6];
    let first = ids.iter().position(|&t| t == eos).unwrap();
    let h = engine(EngineConfig { eos_token_ids: vec![eos], ..cfg() }, 128);
    let out = run(&h, base.clone());
    assert_eq!(out[0].finish, Some(FinishReason::Stop));
    assert_eq!(out[0].ids, ids[..first]);
    assert_eq!(out[0].text, FakeDecoder::text(&ids[..first]), "the EOS id spells no text");
    assert_eq!(out[0].usage.completion_tokens, first + 1, "the EOS id counts as generated");
    let mut r = base.clone();
    r.stop.ignore_eos = true;
    let out = run(&h, r.clone());
    assert_eq!((out[0].ids.clone(), out[0].finish), (ids.clone(), Some(FinishReason::Length)));
    // stop_token_ids apply even with ignore_eos.
    r.stop.stop_token_ids = vec![ids[3]];
    let out = run(&h, r);
    let at = ids.iter().position(|&t| t == ids[3]).unwrap();
    assert_eq!((out[0].ids.clone(), out[0].finish), (ids[..at].to_vec(), Some(FinishReason::Stop)));
}

#[test]
fn n_sequences_share_the_prompt_and_sample_independently() {
    let h = engine(cfg(), 128);
    let mut r = req(prompt(30, 2), 12);
    r.n = 3;
    r.sampling = SamplingParams { temperature: 1.0, seed: Some(77), ..Default::default() };
    let out = run(&h, r.clone());
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.ids, reference(&r, i, 77), "sequence {i}");
        assert_eq!(o.usage.prompt_tokens, 30);
    }
    assert_ne!(out[0].ids, out[1].ids);
    // 30 tokens: 7 full blocks shared. The leader computes the prompt, each
    // sibling only its 2-token tail, then every sequence 11 decode tokens.
    assert_eq!(h.stats().computed_tokens_total, 30 + 2 * 2 + 3 * 11);
    // Sequence 0 of an n = 3 request draws what an n = 1 request draws.
    let mut one = r.clone();
    one.n = 1;
    assert_eq!(run(&h, one)[0].ids, out[0].ids);
}

#[test]
fn prefix_cache_counters_and_identical_output() {
    let shared = prompt(64, 9);
    let a = req([shared.clone(), vec![1, 2, 3]].concat(), 5);
    let b = req([shared, vec![4, 5, 6, 7, 8]].concat(), 5);
    let mut outputs = Vec::new();
    for caching in [true, false] {
        let h = engine(EngineConfig { enable_prefix_caching: caching, ..cfg() }, 128);
        run(&h, a.clone());
        wait_idle(&h);
        let before = h.stats();
        let out = run(&h, b.clone());
        wait_idle(&h);
        let after = h.stats();
        let computed = after.computed_tokens_total - before.computed_tokens_total;
        // b computes its prompt minus the cached blocks, then one token per
        // generated token but the last.
        let cached = if caching { 64 } else { 0 };
        assert_eq!(computed, (69 - cached) + 4);
        assert_eq!(out[0].usage.cached_tokens, cached as usize);
        assert_eq!(after.prefix_cache_hits - before.prefix_cache_hits, cached);
        if caching {
            assert_eq!(after.prefix_cache_queries - before.prefix_cache_queries, 69);
        }
        outputs.push(out[0].ids.clone());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], reference(&b, 0, 0));
}

#[test]
fn thousand_submit_abort_cycles_leave_no_block_in_use() {
    let runner = FakeRunner::new(64, 4, VOCAB).with_delay(Duration::from_micros(50));
    let h = EngineHandle::start_with_decoder(cfg(), Box::new(runner), Arc::new(FakeDecoder)).unwrap();
    for i in 0..1000u32 {
        let mut r = req(prompt(5 + (i as usize % 40), i), 200);
        r.n = 1 + (i as usize % 3);
        let mut rx = h.submit(r).unwrap();
        // Drop at a varying point: at once, after some tokens, mid-stream.
        for _ in 0..(i % 4) {
            if rx.blocking_recv().is_none() {
                break;
            }
        }
        drop(rx);
    }
    wait_idle(&h);
    let s = h.stats();
    assert_eq!(s.kv_blocks_used, 0, "{s:?}");
    assert_eq!(s.requests_finished, 1000);
    // Run to the end, they would have generated 200 tokens per sequence.
    assert!(s.generation_tokens_total < 20 * 1000, "requests were not aborted: {s:?}");
}

#[test]
fn tiny_pool_preempts_and_outputs_stay_exact() {
    let h = engine(EngineConfig { max_num_batched_tokens: 64, ..cfg() }, 20);
    let reqs: Vec<ValidRequest> = (0..12)
        .map(|i| {
            let mut r = req(prompt(20 + i * 2, i as u32), 30);
            r.sampling = SamplingParams { temperature: 0.7, seed: Some(i as u64), ..Default::default() };
            r
        })
        .collect();
    let rxs: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    for (r, rx) in reqs.iter().zip(rxs) {
        assert_eq!(collect(rx, 1)[0].ids, reference(r, 0, r.sampling.seed.unwrap()));
    }
    wait_idle(&h);
    assert!(h.stats().num_preemptions > 0);
    assert_eq!(h.stats().kv_blocks_used, 0);
}

#[test]
fn shutdown_aborts_live_requests_and_refuses_new_ones() {
    let runner = FakeRunner::new(256, 4, VOCAB).with_delay(Duration::from_millis(2));
    let h = EngineHandle::start_with_decoder(cfg(), Box::new(runner), Arc::new(FakeDecoder)).unwrap();
    let mut r = req(prompt(8, 0), 400);
    r.n = 2;
    let rx = h.submit(r.clone()).unwrap();
    let t = Instant::now();
    while h.stats().generation_tokens_total < 4 {
        assert!(t.elapsed() < Duration::from_secs(20), "no token generated");
        std::thread::sleep(Duration::from_millis(1));
    }
    let h2 = h.clone();
    h2.shutdown();
    let out = collect(rx, 2);
    assert!(out.iter().all(|o| o.finish == Some(FinishReason::Abort)));
    assert!(out[0].usage.completion_tokens > 0);
    assert_eq!(h.submit(r).unwrap_err(), EngineError::Shutdown);
    h.shutdown(); // idempotent
}

#[test]
fn requests_that_can_never_be_served_are_refused() {
    let h = engine(EngineConfig { max_model_len: 100, ..cfg() }, 11); // 10 usable blocks = 40 slots
    let bad = |r: ValidRequest| matches!(h.submit(r), Err(EngineError::InvalidRequest(_)));
    assert!(bad(req(vec![], 5)));
    // max_tokens 0 is a prompt-only sequence (echo with max_tokens 0): its
    // prompt is prefilled, no token is returned, it ends with length.
    let out = collect(h.submit(req(prompt(5, 0), 0)).expect("max_tokens 0 is a prompt-only sequence"), 1);
    assert_eq!((out[0].finish, out[0].ids.len(), out[0].usage.completion_tokens), (Some(FinishReason::Length), 0, 0));
    assert!(bad(req(vec![1, VOCAB as u32], 5)));
    assert!(bad(ValidRequest { n: 0, ..req(prompt(5, 0), 5) }));
    assert!(bad(req(prompt(90, 0), 11)), "beyond max_model_len");
    assert!(bad(req(prompt(30, 0), 12)), "41 slots needed, 40 in the pool");
    assert!(h.submit(req(prompt(30, 0), 11)).is_ok(), "exactly 40 slots");
    let msg = h.validate(&req(prompt(90, 0), 11)).unwrap_err().to_string();
    assert!(msg.contains("100") && msg.contains("101"), "{msg}");
}

#[test]
fn engine_config_is_checked_against_the_runner() {
    let start = |c: EngineConfig| {
        EngineHandle::start_with_decoder(c, Box::new(FakeRunner::new(32, 4, VOCAB)), Arc::new(FakeDecoder)).err()
    };
    assert!(matches!(start(EngineConfig { block_size: 16, ..cfg() }), Some(EngineError::Config(_))));
    assert!(matches!(start(EngineConfig { num_kv_blocks: Some(33), ..cfg() }), Some(EngineError::Config(_))));
    assert!(matches!(start(EngineConfig { max_num_seqs: 0, ..cfg() }), Some(EngineError::Config(_))));
    let h = EngineHandle::start_with_decoder(
        EngineConfig { block_size: 0, num_kv_blocks: Some(9), ..cfg() },
        Box::new(FakeRunner::new(32, 4, VOCAB)),
        Arc::new(FakeDecoder),
    )
    .unwrap();
    assert_eq!((h.config().block_size, h.stats().kv_blocks_total), (4, 8));
}

/// A runner that fails every step.
struct Broken;

impl ModelRunner for Broken {
    fn execute(&mut self, _: &BatchInput, _: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>> {
        anyhow::bail!("device lost")
    }
    fn num_kv_blocks(&self) -> usize {
        16
    }
    fn block_size(&self) -> usize {
        4
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

#[test]
fn runner_failure_becomes_an_error_event() {
    let h = EngineHandle::start_with_decoder(cfg(), Box::new(Broken), Arc::new(FakeDecoder)).unwrap();
    let mut r = req(prompt(5, 0), 5);
    r.n = 2;
    let out = run(&h, r);
    assert!(out.iter().all(|o| o.error.as_deref() == Some("device lost")));
    wait_idle(&h);
    assert_eq!(h.stats().kv_blocks_used, 0);
}

#[tokio::test]
async fn submit_and_receive_from_async_code() {
    let h = engine(cfg(), 64);
    let r = req(prompt(7, 4), 6);
    let mut rx = h.submit(r.clone()).unwrap();
    let mut ids = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev.kind {
            EventKind::Token { token_id, .. } => ids.push(token_id),
            EventKind::Finished { .. } => break,
            EventKind::Error(e) => panic!("{e}"),
            EventKind::PromptLogprobs { .. } => {}
        }
    }
    assert_eq!(ids, reference(&r, 0, 0));
}
