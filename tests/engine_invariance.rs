//! Batch invariance: the greedy output of each of 32 prompts is the same
//! whether it runs alone, among 32 concurrent requests, with preemption
//! forced by a tiny KV pool, or with its prefix served from the cache.
//!
//! The harness is generic over the runner: it runs on the fake runner
//! (`fake_subject`), on the CPU runner with the default model
//! (`default_model_subject`, skipped with a printed reason when the model
//! cannot be fetched) and, built with `--features emu`, on the CUDA runner
//! on the emulated device with a fixture model (`emu_cuda_subject`: CUDA
//! graphs, paged kernels, preemption and prefix hits through the real
//! runner), where aborts are checked too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::engine::fake::{FakeDecoder, FakeRunner};
use kiln::engine::output::{TextDecoder, TokenizerDecoder};
use kiln::engine::{EngineConfig, EngineHandle, EventKind, Priority, StopCriteria, TokenEvent, ValidRequest};
use kiln::runner::cpu::CpuRunner;
use kiln::runner::ModelRunner;
use kiln::sampling::SamplingParams;
use tokio::sync::mpsc::UnboundedReceiver;

/// What the invariance check runs on.
struct Subject {
    /// A runner whose KV pool holds `num_blocks` blocks (null block included).
    runner: Box<dyn Fn(usize) -> Box<dyn ModelRunner>>,
    decoder: Arc<dyn TextDecoder>,
    block_size: usize,
    prompts: Vec<Vec<u32>>,
    max_tokens: usize,
    /// The engine's --max-num-seqs (the CUDA runner is built for it).
    max_num_seqs: usize,
}

/// The fake runner with 32 prompts, half of them sharing a long
/// prefix (so the cached round hits across different prompts).
fn fake_subject() -> Subject {
    const VOCAB: usize = 500;
    let shared: Vec<u32> = (0..40).map(|i| (i * 13 % VOCAB) as u32).collect();
    let prompts = (0..32u32)
        .map(|i| {
            let own: Vec<u32> = (0..5 + i * 3).map(|j| (i * 31 + j * 7) % VOCAB as u32).collect();
            if i % 2 == 0 {
                [shared.clone(), own].concat()
            } else {
                own
            }
        })
        .collect();
    Subject {
        runner: Box::new(|blocks| Box::new(FakeRunner::new(blocks, 16, VOCAB))),
        decoder: Arc::new(FakeDecoder),
        block_size: 16,
        prompts,
        max_tokens: 24,
        max_num_seqs: 256,
    }
}

/// The default model on the CPU runner, greedy, with 32 chat-free prompts
/// (half sharing a long prefix). None when the model cannot be had.
fn default_model_subject() -> Option<Subject> {
    let path = match kiln::launch::resolve_model(&None) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP: default model unavailable: {e:#}");
            return None;
        }
    };
    let load = move || kiln::model::loader::load(&path, |_, _| {}).expect("the default model loads");
    let loaded = load();
    let tok = Arc::new(loaded.tokenizer);
    let shared = "You are a careful assistant who writes for curious readers. Answer in one short sentence, \
        plainly, without lists, headings or quotations, and never repeat the question. If you are unsure, \
        say what is commonly known and stop there. Question: ";
    let topics = [
        "rivers", "bread", "the moon", "glass", "bees", "snow", "copper", "tea", "maps", "owls", "clocks", "salt",
        "wind", "paper", "whales", "iron",
    ];
    let prompts = topics
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let own = format!("What is worth knowing about {t}? Reply {i}.");
            [format!("{shared}{own}"), own]
        })
        .map(|text| tok.encode(&text, true).unwrap())
        .collect();
    Some(Subject {
        runner: Box::new(move |blocks| Box::new(CpuRunner::new(load().model, blocks, 16))),
        decoder: Arc::new(TokenizerDecoder(tok)),
        block_size: 16,
        prompts,
        max_tokens: 8,
        max_num_seqs: 256,
    })
}

/// The CUDA runner on the emulated device with the qwen2_bias fixture (f32
/// q/k/v with bias, GQA), greedy, 32 prompts of ids in its vocabulary, half
/// sharing a 40-token prefix.
#[cfg(feature = "emu")]
fn emu_cuda_subject() -> Subject {
    use kiln::backend::cuda::device::Device;
    use kiln::backend::cuda::runner::{open_weights, CudaRunner, CudaRunnerOptions};
    const SEQS: usize = 32;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen2_bias");
    let shared: Vec<u32> = (0..40).map(|i| 3 + (i * 37 % 317) as u32).collect();
    let prompts = (0..SEQS as u32)
        .map(|i| {
            let own: Vec<u32> = (0..5 + i % 11).map(|j| 3 + (i * 31 + j * 7) % 317).collect();
            if i % 2 == 0 {
                [shared.clone(), own].concat()
            } else {
                own
            }
        })
        .collect();
    let tok = kiln::tokenizer::Tokenizer::from_hf_dir(&dir).unwrap();
    Subject {
        runner: Box::new(move |blocks| {
            let (cfg, src) = open_weights(&dir).unwrap();
            let opts = CudaRunnerOptions {
                block_size: 16,
                max_model_len: 4096,
                max_num_seqs: SEQS,
                max_num_batched_tokens: 512,
                num_kv_blocks: Some(blocks),
                ..Default::default()
            };
            Box::new(CudaRunner::load_on(Device::emulated(), &cfg, src.as_ref(), opts, |_| {}).unwrap())
        }),
        decoder: Arc::new(TokenizerDecoder(Arc::new(tok))),
        block_size: 16,
        prompts,
        max_tokens: 8,
        max_num_seqs: SEQS,
    }
}

fn start(s: &Subject, blocks: usize, caching: bool) -> EngineHandle {
    let cfg = EngineConfig {
        block_size: s.block_size,
        max_model_len: 4096,
        max_num_batched_tokens: 512,
        max_num_seqs: s.max_num_seqs,
        enable_prefix_caching: caching,
        ..Default::default()
    };
    EngineHandle::start_with_decoder(cfg, (s.runner)(blocks), s.decoder.clone()).unwrap()
}

fn request(s: &Subject, prompt: &[u32]) -> ValidRequest {
    ValidRequest {
        request_id: "inv".into(),
        prompt_ids: prompt.to_vec(),
        sampling: SamplingParams::greedy(),
        stop: StopCriteria { max_tokens: s.max_tokens, ignore_eos: true, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    }
}

fn ids(mut rx: UnboundedReceiver<TokenEvent>) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        match rx.blocking_recv().expect("engine hung up").kind {
            EventKind::Token { token_id, .. } => out.push(token_id),
            EventKind::Finished { .. } => return out,
            EventKind::Error(e) => panic!("engine error: {e}"),
            EventKind::PromptLogprobs { .. } => {}
        }
    }
}

fn concurrent(h: &EngineHandle, s: &Subject) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = s.prompts.iter().map(|p| h.submit(request(s, p)).unwrap()).collect();
    rxs.into_iter().map(ids).collect()
}

fn wait_idle(h: &EngineHandle) {
    let t = Instant::now();
    while h.stats().num_running + h.stats().num_waiting > 0 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn greedy_outputs_are_batch_invariant_fake_runner() {
    check_batch_invariance(&fake_subject());
}

#[test]
fn greedy_outputs_are_batch_invariant_default_model() {
    if let Some(s) = default_model_subject() {
        check_batch_invariance(&s);
    }
}

#[cfg(feature = "emu")]
#[test]
fn greedy_outputs_are_batch_invariant_cuda_runner_emulated() {
    check_batch_invariance(&emu_cuda_subject());
}

/// Requests dropped at varying points (before any token, after some, mid
/// stream) on the CUDA runner: every block comes back, and the runner still
/// gives the same greedy output afterwards.
#[cfg(feature = "emu")]
#[test]
fn aborted_requests_free_everything_cuda_runner_emulated() {
    let s = emu_cuda_subject();
    let h = start(&s, 64, true);
    let before = ids(h.submit(request(&s, &s.prompts[0])).unwrap());
    for (i, p) in s.prompts.iter().cycle().take(48).enumerate() {
        let mut rx = h.submit(request(&s, p)).unwrap();
        for _ in 0..i % 4 {
            if rx.blocking_recv().is_none() {
                break;
            }
        }
        drop(rx);
    }
    wait_idle(&h);
    assert_eq!(h.stats().kv_blocks_used, 0, "{:?}", h.stats());
    assert_eq!(ids(h.submit(request(&s, &s.prompts[0])).unwrap()), before);
    wait_idle(&h);
    assert_eq!(h.stats().kv_blocks_used, 0);
}

fn check_batch_invariance(s: &Subject) {
    let longest = s.prompts.iter().map(Vec::len).max().unwrap() + s.max_tokens;
    let per_seq = longest.div_ceil(s.block_size);
    let big = per_seq * s.prompts.len() + 1;

    let alone_engine = start(s, big, false);
    let alone: Vec<Vec<u32>> = s.prompts.iter().map(|p| ids(alone_engine.submit(request(s, p)).unwrap())).collect();
    assert!(alone.iter().all(|o| o.len() == s.max_tokens));

    let together = start(s, big, false);
    assert_eq!(concurrent(&together, s), alone, "32 concurrent requests");

    // Room for about three sequences at a time: preemption is forced.
    let tiny = start(s, 3 * per_seq + 1, false);
    assert_eq!(concurrent(&tiny, s), alone, "tiny pool");
    wait_idle(&tiny);
    assert!(tiny.stats().num_preemptions > 0, "the tiny pool did not preempt");

    let cached = start(s, big, true);
    assert_eq!(concurrent(&cached, s), alone, "first cached round");
    wait_idle(&cached);
    let hits = cached.stats().prefix_cache_hits;
    assert!(hits > 0, "shared prefixes should hit within the first round");
    assert_eq!(concurrent(&cached, s), alone, "second cached round");
    wait_idle(&cached);
    assert!(cached.stats().prefix_cache_hits > hits);
    for h in [&alone_engine, &together, &tiny, &cached] {
        wait_idle(h);
        assert_eq!(h.stats().kv_blocks_used, 0);
    }
}
