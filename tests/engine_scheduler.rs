//! Scheduler tests, driven step by step with the fake runner (no engine
//! thread): every step respects the budget and the caps; outputs equal what
//! each sequence generates alone (`FakeRunner::reference`), through chunked
//! prefill, preemption in a tiny pool, prefix reuse, forks and aborts.

use std::collections::HashMap;
use std::sync::Arc;

use kiln::engine::fake::FakeRunner;
use kiln::engine::kv_cache::KvManager;
use kiln::engine::scheduler::{NewRequest, Scheduler, SchedulerConfig, SchedulerOutput};
use kiln::engine::sequence::{SeqId, SeqStatus};
use kiln::engine::Priority;
use kiln::runner::ModelRunner;
use kiln::sampling::SamplingParams;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 50;

struct Sim {
    sched: Scheduler,
    runner: FakeRunner,
    cfg: SchedulerConfig,
    /// (request, index) -> max_tokens, for live sequences.
    max_tokens: HashMap<u64, usize>,
    /// (request, index) -> generated ids.
    outputs: HashMap<(u64, usize), Vec<u32>>,
    finished_at: HashMap<u64, usize>,
    admitted_at: HashMap<u64, usize>,
    steps: usize,
    next_req: u64,
}

struct Req {
    prompt: Vec<u32>,
    max_tokens: usize,
    n: usize,
    params: SamplingParams,
    seed: u64,
    priority: Priority,
}

impl Req {
    fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Req {
        Req { prompt, max_tokens, n: 1, params: SamplingParams::greedy(), seed: 0, priority: Priority::Interactive }
    }

    /// Expected ids of sequence `index`.
    fn reference(&self, index: usize) -> Vec<u32> {
        FakeRunner::reference(&self.prompt, self.max_tokens, &self.params, self.seed, index, VOCAB)
    }
}

impl Sim {
    fn new(num_blocks: usize, block_size: usize, cfg: SchedulerConfig, caching: bool) -> Sim {
        let kv = KvManager::new(num_blocks, block_size, caching);
        Sim {
            sched: Scheduler::new(cfg.clone(), kv),
            runner: FakeRunner::new(num_blocks, block_size, VOCAB),
            cfg,
            max_tokens: HashMap::new(),
            outputs: HashMap::new(),
            finished_at: HashMap::new(),
            admitted_at: HashMap::new(),
            steps: 0,
            next_req: 0,
        }
    }

    fn add(&mut self, r: &Req) -> (u64, Vec<SeqId>) {
        let key = self.next_req;
        self.next_req += 1;
        self.max_tokens.insert(key, r.max_tokens);
        let ids = self.sched.add(NewRequest {
            request: key,
            prompt: r.prompt.clone(),
            params: Arc::new(r.params.clone()),
            n: r.n,
            seed: r.seed,
            priority: r.priority,
        });
        (key, ids)
    }

    /// One step, checking every limit; sequences reaching max_tokens end.
    fn step(&mut self) -> SchedulerOutput {
        let out = self.sched.schedule();
        self.check_step(&out);
        let (batch, mut reqs) = self.sched.prepare(&out);
        let sampled = self.runner.execute(&batch, &mut reqs).expect("fake runner step");
        drop(reqs);
        let ids: Vec<u32> = sampled.iter().map(|s| s.token_id).collect();
        for s in &out.seqs {
            let key = self.sched.seq(s.id).request;
            self.admitted_at.entry(key).or_insert(self.steps);
        }
        for (id, tok) in self.sched.update(&out, &ids) {
            let seq = self.sched.seq(id);
            let (key, index) = (seq.request, seq.index);
            let o = self.outputs.entry((key, index)).or_default();
            o.push(tok);
            if o.len() == self.max_tokens[&key] {
                self.sched.remove(id);
                self.finished_at.insert(key, self.steps);
            }
        }
        self.sched.check_invariants().unwrap();
        self.steps += 1;
        out
    }

    fn check_step(&self, out: &SchedulerOutput) {
        let total: usize = out.seqs.iter().map(|s| s.num_new).sum();
        assert_eq!(total, out.num_batched_tokens);
        assert!(total <= self.cfg.max_num_batched_tokens, "budget exceeded: {total}");
        assert!(self.sched.num_running() <= self.cfg.max_num_seqs);
        assert!(out.seqs.len() <= self.cfg.max_num_seqs);
        let mut ids: Vec<SeqId> = out.seqs.iter().map(|s| s.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), out.seqs.len(), "a sequence scheduled twice in one step");
        if let Some(cap) = self.cfg.max_batch_inflight {
            let batch =
                self.sched.running().iter().filter(|&&id| self.sched.seq(id).priority == Priority::Batch).count();
            assert!(batch <= cap, "{batch} batch sequences running, cap {cap}");
        }
        for s in &out.seqs {
            let seq = self.sched.seq(s.id);
            assert_eq!(seq.status, SeqStatus::Running);
            assert!(s.num_new > 0);
            assert_eq!(s.want_logits, s.num_computed + s.num_new == seq.num_tokens());
        }
        if self.sched.has_work() {
            assert!(!out.seqs.is_empty() || !out.preempted.is_empty(), "work left but nothing scheduled");
        }
    }

    fn run_until_idle(&mut self, max_steps: usize) {
        while self.sched.has_work() {
            assert!(self.steps < max_steps, "not idle after {max_steps} steps");
            self.step();
        }
    }

    fn output(&self, key: u64, index: usize) -> &[u32] {
        &self.outputs[&(key, index)]
    }
}

fn cfg(budget: usize, max_seqs: usize) -> SchedulerConfig {
    SchedulerConfig { max_num_batched_tokens: budget, max_num_seqs: max_seqs, max_batch_inflight: None }
}

fn random_reqs(seed: u64, count: usize, max_prompt: usize, max_gen: usize) -> Vec<Req> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let len = rng.gen_range(1..=max_prompt);
            let prompt = (0..len).map(|_| rng.gen_range(0..VOCAB as u32)).collect();
            let mut r = Req::greedy(prompt, rng.gen_range(1..=max_gen));
            if i % 2 == 1 {
                r.params = SamplingParams { temperature: 1.0, ..Default::default() };
                r.seed = rng.gen();
            }
            r
        })
        .collect()
}

fn run_all(sim: &mut Sim, reqs: &[Req]) -> Vec<u64> {
    let keys: Vec<u64> = reqs.iter().map(|r| sim.add(r).0).collect();
    sim.run_until_idle(100_000);
    for (r, &k) in reqs.iter().zip(&keys) {
        for i in 0..r.n {
            assert_eq!(sim.output(k, i), r.reference(i).as_slice(), "request {k} sequence {i}");
        }
    }
    assert_eq!(sim.sched.kv().num_used_blocks(), 0, "blocks left in use");
    keys
}

#[test]
fn budget_and_caps_hold_every_step_and_outputs_match() {
    for (budget, seqs, blocks) in [(32, 4, 64), (7, 3, 40), (256, 16, 200), (1, 2, 30)] {
        let reqs = random_reqs(budget as u64, 30, 60, 12);
        let mut sim = Sim::new(blocks, 4, cfg(budget, seqs), true);
        run_all(&mut sim, &reqs);
    }
}

#[test]
fn long_prompt_is_prefilled_in_chunks() {
    let mut sim = Sim::new(64, 4, cfg(16, 4), false);
    let r = Req::greedy((0..100).map(|i| i % VOCAB as u32).collect(), 3);
    let (key, _) = sim.add(&r);
    let chunks: Vec<(usize, usize, bool)> = (0..7)
        .map(|_| sim.step())
        .map(|o| (o.seqs[0].num_computed, o.seqs[0].num_new, o.seqs[0].want_logits))
        .collect();
    let expect: Vec<(usize, usize, bool)> = (0..7).map(|i| (16 * i, if i < 6 { 16 } else { 4 }, i == 6)).collect();
    assert_eq!(chunks, expect);
    sim.run_until_idle(100);
    assert_eq!(sim.output(key, 0), r.reference(0).as_slice());
}

#[test]
fn no_starvation_under_steady_arrivals() {
    let mut sim = Sim::new(200, 4, cfg(24, 4), true);
    let mut keys = Vec::new();
    let mut reqs = random_reqs(5, 120, 20, 8);
    // One long prompt among the short ones.
    reqs[10] = Req::greedy((0..150).map(|i| (i * 7 % VOCAB) as u32).collect(), 5);
    for (i, r) in reqs.iter().enumerate() {
        keys.push(sim.add(r).0);
        sim.step();
        if i % 3 == 2 {
            sim.step();
        }
    }
    sim.run_until_idle(10_000);
    // FCFS: admitted in arrival order, and every request finished soon after.
    let admitted: Vec<usize> = keys.iter().map(|k| sim.admitted_at[k]).collect();
    assert!(admitted.windows(2).all(|w| w[0] <= w[1]), "admission out of order: {admitted:?}");
    for (r, &k) in reqs.iter().zip(&keys) {
        assert_eq!(sim.output(k, 0), r.reference(0).as_slice());
    }
    let waits: Vec<usize> = keys.iter().map(|k| sim.finished_at[k] - sim.admitted_at[k]).collect();
    assert!(waits.iter().all(|&w| w < 40), "a request took too long once admitted: {waits:?}");
}

#[test]
fn preemption_in_a_tiny_pool_gives_identical_outputs() {
    let reqs = random_reqs(11, 24, 40, 30);
    // Each request alone fits 10 blocks of 8 (prompt <= 40, + 30 generated).
    let mut tiny = Sim::new(11, 8, cfg(64, 16), true);
    run_all(&mut tiny, &reqs);
    assert!(tiny.sched.num_preemptions > 0, "the tiny pool should force preemption");
    let mut tiny_nocache = Sim::new(11, 8, cfg(64, 16), false);
    run_all(&mut tiny_nocache, &reqs);
    assert!(tiny_nocache.sched.num_preemptions > 0);
}

#[test]
fn abort_at_any_point_frees_everything() {
    let reqs = random_reqs(3, 12, 30, 10);
    for abort_after in 0..25 {
        let mut sim = Sim::new(40, 4, cfg(20, 6), true);
        let mut all = Vec::new();
        for r in &reqs {
            all.extend(sim.add(r).1);
        }
        for _ in 0..abort_after {
            if !sim.sched.has_work() {
                break;
            }
            sim.step();
        }
        let live: Vec<SeqId> = sim.sched.iter().map(|s| s.id).collect();
        for id in live {
            sim.sched.remove(id);
            sim.sched.check_invariants().unwrap();
        }
        assert_eq!(sim.sched.kv().num_used_blocks(), 0);
        assert_eq!(sim.sched.num_running() + sim.sched.num_waiting(), 0);
        assert!(!sim.sched.has_work());
    }
}

#[test]
fn aborting_some_sequences_leaves_the_others_exact() {
    let reqs = random_reqs(8, 16, 30, 12);
    let mut sim = Sim::new(30, 4, cfg(24, 8), true);
    let keys: Vec<u64> = reqs.iter().map(|r| sim.add(r).0).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut aborted = Vec::new();
    while sim.sched.has_work() {
        sim.step();
        if rng.gen_bool(0.2) {
            let live: Vec<SeqId> = sim.sched.iter().map(|s| s.id).collect();
            let victim = live[rng.gen_range(0..live.len())];
            aborted.push(sim.sched.remove(victim).request);
            sim.sched.check_invariants().unwrap();
        }
    }
    assert_eq!(sim.sched.kv().num_used_blocks(), 0);
    for (r, k) in reqs.iter().zip(keys) {
        if !aborted.contains(&k) {
            assert_eq!(sim.output(k, 0), r.reference(0).as_slice());
        }
    }
}

#[test]
fn n_siblings_share_prompt_blocks_and_sample_independently() {
    let mut sim = Sim::new(64, 4, cfg(512, 8), false);
    let mut r = Req::greedy((0..38).map(|i| i % VOCAB as u32).collect(), 6);
    r.n = 4;
    r.params = SamplingParams { temperature: 1.0, ..Default::default() };
    r.seed = 1234;
    let (key, ids) = sim.add(&r);
    sim.step(); // leader prefills the whole prompt and samples
    sim.step(); // siblings fork and compute the prompt's tail
                // 38 tokens = 9 full blocks shared + one tail block each (+ decode room).
    let shared = &sim.sched.seq(ids[0]).kv.blocks[..9];
    for &id in &ids[1..] {
        assert_eq!(&sim.sched.seq(id).kv.blocks[..9], shared);
        assert_eq!(sim.sched.seq(id).cached_tokens, Some(0));
    }
    for &b in shared {
        assert_eq!(sim.sched.kv().pool().ref_count(b), 4);
    }
    assert_eq!(sim.sched.kv().num_used_blocks(), 9 + 4);
    sim.run_until_idle(100);
    let outs: Vec<Vec<u32>> = (0..4).map(|i| sim.output(key, i).to_vec()).collect();
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o, &r.reference(i));
    }
    assert!(outs.iter().any(|o| o != &outs[0]), "siblings drew the same random stream");
    assert_eq!(sim.sched.kv().num_used_blocks(), 0);
}

#[test]
fn n_siblings_survive_a_tiny_pool() {
    let mut r = Req::greedy((0..21).map(|i| (i * 3 % VOCAB) as u32).collect(), 20);
    r.n = 5;
    r.params = SamplingParams { temperature: 0.8, ..Default::default() };
    r.seed = 99;
    for caching in [false, true] {
        let mut sim = Sim::new(14, 4, cfg(64, 8), caching);
        run_all(&mut sim, std::slice::from_ref(&r));
        assert!(sim.sched.num_preemptions > 0);
    }
}

#[test]
fn prefix_cache_serves_shared_blocks_and_output_is_unchanged() {
    let prefix: Vec<u32> = (0..48).map(|i| (i * 5 % VOCAB) as u32).collect();
    let a = Req::greedy([prefix.clone(), vec![1, 2, 3, 4, 5, 6, 7, 8]].concat(), 4);
    let b = Req::greedy([prefix, vec![9; 13]].concat(), 4);
    for caching in [true, false] {
        let mut sim = Sim::new(64, 8, cfg(1024, 4), caching);
        run_all(&mut sim, std::slice::from_ref(&a));
        let log_len = sim.runner.log().lock().unwrap().len();
        let (kb, ids) = sim.add(&b);
        let first = sim.step();
        assert_eq!(first.seqs[0].id, ids[0]);
        let expect_cached = if caching { 48 } else { 0 };
        assert_eq!(first.seqs[0].num_computed, expect_cached);
        assert_eq!(first.num_batched_tokens, 61 - expect_cached);
        assert_eq!(sim.runner.log().lock().unwrap()[log_len].num_tokens, 61 - expect_cached);
        assert_eq!(sim.sched.seq(ids[0]).cached_tokens, Some(expect_cached));
        sim.run_until_idle(100);
        assert_eq!(sim.output(kb, 0), b.reference(0).as_slice());
        let kv = sim.sched.kv();
        if caching {
            assert_eq!((kv.prefix_queries, kv.prefix_hits), (56 + 61, 48));
        }
    }
}

#[test]
fn fully_cached_prompt_still_computes_its_last_token() {
    let r = Req::greedy((0..32).collect(), 3);
    let mut sim = Sim::new(32, 8, cfg(1024, 4), true);
    run_all(&mut sim, std::slice::from_ref(&r));
    let (k, _) = sim.add(&r);
    let out = sim.step();
    // 4 full blocks cached, capped at 3 so the last token (its logits) is computed.
    assert_eq!((out.seqs[0].num_computed, out.seqs[0].num_new), (24, 8));
    sim.run_until_idle(100);
    assert_eq!(sim.output(k, 0), r.reference(0).as_slice());
}

#[test]
fn batch_priority_waits_for_interactive_and_respects_its_cap() {
    let mut c = cfg(64, 6);
    c.max_batch_inflight = Some(2);
    let mut sim = Sim::new(200, 4, c, false);
    let mut batch = Vec::new();
    for i in 0..6 {
        let mut r = Req::greedy(vec![i; 5], 6);
        r.priority = Priority::Batch;
        batch.push((sim.add(&r).0, r));
    }
    let inter: Vec<(u64, Req)> = (0..3).map(|i| Req::greedy(vec![10 + i; 5], 6)).map(|r| (sim.add(&r).0, r)).collect();
    let first = sim.step();
    // Interactive ones go first even though the batch ones arrived earlier.
    let reqs: Vec<u64> = first.seqs.iter().map(|s| sim.sched.seq(s.id).request).collect();
    assert_eq!(reqs, vec![inter[0].0, inter[1].0, inter[2].0, batch[0].0, batch[1].0]);
    sim.run_until_idle(1000);
    for (k, r) in batch.iter().chain(&inter) {
        assert_eq!(sim.output(*k, 0), r.reference(0).as_slice());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Random workloads over random limits: caps hold each step (checked in
    /// `Sim::step`), outputs are exact, nothing leaks.
    #[test]
    fn random_workloads_over_random_limits(seed in 0u64..1000, budget in 1usize..80, seqs in 1usize..10,
                                           blocks in 19usize..120, caching: bool, n in 1usize..4) {
        let mut reqs = random_reqs(seed, 16, 60, 12);
        for r in reqs.iter_mut().step_by(5) {
            r.n = n;
        }
        let mut sim = Sim::new(blocks, 4, cfg(budget, seqs), caching);
        run_all(&mut sim, &reqs);
    }
}

/// Found by the proptest above: a forked sibling waiting with its prompt
/// blocks while the only running sequence keeps preempting itself for want
/// of them; the waiting sibling's blocks must be taken back.
#[test]
fn forked_sequences_finish_under_a_tiny_pool() {
    for seed in 0..300 {
        let mut reqs = random_reqs(seed, 16, 60, 12);
        for r in reqs.iter_mut().step_by(5) {
            r.n = 2;
        }
        let mut sim = Sim::new(19, 4, cfg(6 + seed as usize % 3, 2), false);
        run_all(&mut sim, &reqs);
    }
}
