//! The engine loop, on its own OS thread: it owns the scheduler (and with it
//! the KV manager) and the model runner.
//!
//! ```text
//! loop: take requests from the inbox (block when idle)
//!       abort requests whose receiver is gone (their blocks return)
//!       schedule -> runner.execute -> update -> token events, finished sequences
//!       publish counters
//! ```

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use rand::RngCore;
use tokio::sync::mpsc::UnboundedSender;

use super::config::EngineConfig;
use super::constrain::Constraints;
use super::output::{Finish, SeqOutput, StopRules, TextDecoder};
use super::scheduler::{NewRequest, Scheduler, SchedulerOutput};
use super::sequence::SeqId;
use super::stats::StatsCells;
use super::types::{EventKind, FinishReason, TokenEvent, TokenLogprob, ValidRequest};
use crate::runner::{ModelRunner, PromptLogprobs, Sampled};
use crate::sampling::TokenMask;

pub(crate) enum EngineMsg {
    Add(Box<ValidRequest>, UnboundedSender<TokenEvent>),
    /// From now on, call this with the tokens of every step run.
    ObserveSteps(StepObserver),
    Shutdown,
}

/// Called by the engine thread after each forward pass with the number of
/// tokens it computed (prefill chunks and decode tokens together).
pub type StepObserver = Box<dyn Fn(usize) + Send>;

struct RequestState {
    tx: UnboundedSender<TokenEvent>,
    /// Sequences not yet finished.
    live: Vec<SeqId>,
    prompt_len: usize,
}

pub(crate) struct EngineCore {
    sched: Scheduler,
    runner: Box<dyn ModelRunner>,
    decoder: Arc<dyn TextDecoder>,
    cfg: EngineConfig,
    requests: HashMap<u64, RequestState>,
    outputs: HashMap<SeqId, SeqOutput>,
    /// Grammar states of the constrained sequences.
    constraints: Constraints,
    /// Prompt logprobs gathered so far, for sequence 0 of each request that
    /// asked for them and has not been sent them yet (entry i: prompt token i + 1).
    prompt_lps: HashMap<SeqId, Vec<TokenLogprob>>,
    next_request: u64,
    stats: Arc<StatsCells>,
    /// Sequences taken from the inbox since counters were last published.
    drained: u64,
    step_observer: Option<StepObserver>,
}

impl EngineCore {
    pub fn new(
        cfg: EngineConfig,
        sched: Scheduler,
        runner: Box<dyn ModelRunner>,
        decoder: Arc<dyn TextDecoder>,
        stats: Arc<StatsCells>,
    ) -> EngineCore {
        let constraints = Constraints::new(runner.vocab_size());
        EngineCore {
            constraints,
            sched,
            runner,
            decoder,
            cfg,
            requests: HashMap::new(),
            outputs: HashMap::new(),
            prompt_lps: HashMap::new(),
            next_request: 0,
            stats,
            drained: 0,
            step_observer: None,
        }
    }

    pub fn run(mut self, rx: Receiver<EngineMsg>) {
        self.publish();
        while self.drain(&rx) {
            self.abort_disconnected();
            if self.sched.has_work() {
                self.step();
            }
            self.publish();
        }
        self.abort_all();
        // Requests sent after the shutdown message still get an answer.
        while let Ok(msg) = rx.try_recv() {
            if let EngineMsg::Add(req, tx) = msg {
                self.drained += req.n as u64;
                for index in 0..req.n {
                    let ev = EventKind::Finished {
                        reason: FinishReason::Abort,
                        text: String::new(),
                        usage: Default::default(),
                        stop_string: None,
                    };
                    let _ = tx.send(TokenEvent { index, kind: ev });
                }
            }
        }
        self.publish();
    }

    /// Takes every queued message, blocking for one when there is nothing to
    /// do. Returns false on shutdown (or when every handle is gone).
    fn drain(&mut self, rx: &Receiver<EngineMsg>) -> bool {
        let idle = !self.sched.has_work();
        super::inbox::drain(rx, idle, |msg| self.handle(msg))
    }

    fn handle(&mut self, msg: EngineMsg) -> bool {
        match msg {
            EngineMsg::Add(req, tx) => {
                self.add(*req, tx);
                true
            }
            EngineMsg::ObserveSteps(f) => {
                self.step_observer = Some(f);
                true
            }
            EngineMsg::Shutdown => false,
        }
    }

    fn add(&mut self, req: ValidRequest, tx: UnboundedSender<TokenEvent>) {
        let key = self.next_request;
        self.next_request += 1;
        self.drained += req.n as u64;
        self.stats.prompt_tokens_total.fetch_add(req.prompt_ids.len() as u64, Relaxed);
        let rules = Arc::new(StopRules::new(&req.stop, &self.cfg.eos_token_ids, self.cfg.max_model_len));
        // No seed: the engine's --seed makes runs reproducible (each request
        // its own stream, by arrival order), else the OS picks one.
        let seed = req.sampling.seed.unwrap_or_else(|| match self.cfg.default_seed {
            Some(s) => s ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            None => rand::rngs::OsRng.next_u64(),
        });
        let ids = self.sched.add(NewRequest {
            request: key,
            prompt: req.prompt_ids.clone(),
            params: Arc::new(req.sampling.clone()),
            n: req.n,
            seed,
            priority: req.priority,
        });
        if req.sampling.prompt_logprobs.is_some() {
            self.prompt_lps.insert(ids[0], Vec::with_capacity(req.prompt_ids.len()));
        }
        for &id in &ids {
            self.outputs.insert(id, SeqOutput::new(rules.clone(), self.decoder.stream(&req.prompt_ids)));
            if let Some(g) = &req.grammar {
                self.constraints.add(id, g.start());
            }
        }
        self.requests.insert(key, RequestState { tx, live: ids, prompt_len: req.prompt_ids.len() });
    }

    /// Drops every request whose receiver is gone, freeing its blocks.
    fn abort_disconnected(&mut self) {
        let gone: Vec<u64> = self.requests.iter().filter(|(_, r)| r.tx.is_closed()).map(|(&k, _)| k).collect();
        for key in gone {
            self.drop_request(key);
        }
    }

    fn drop_request(&mut self, key: u64) {
        if let Some(r) = self.requests.remove(&key) {
            for id in r.live {
                self.sched.remove(id);
                self.outputs.remove(&id);
                self.prompt_lps.remove(&id);
                self.constraints.remove(id);
            }
            self.stats.requests_finished.fetch_add(1, Relaxed);
        }
    }

    /// One forward pass.
    fn step(&mut self) {
        let out = self.sched.schedule();
        if out.seqs.is_empty() {
            // A step that only preempted makes room for the next one. Every
            // request is validated to fit the pool alone, so an empty plan
            // otherwise means that promise broke: fail rather than spin.
            if out.preempted.is_empty() {
                self.fail_all("no sequence can be scheduled with the KV cache available");
            }
            return;
        }
        let now = std::time::Instant::now();
        for s in &out.seqs {
            if let Some(o) = self.outputs.get_mut(&s.id) {
                o.on_scheduled(now);
            }
        }
        let result = self.execute(&out);
        if let Some(f) = &self.step_observer {
            f(out.num_batched_tokens);
        }
        let prompt = self.runner.take_prompt_logprobs();
        if result.is_ok() {
            self.on_prompt_logprobs(&out, prompt);
        }
        self.stats.steps.fetch_add(1, Relaxed);
        self.stats.computed_tokens_total.fetch_add(out.num_batched_tokens as u64, Relaxed);
        match result {
            Ok((sampled, mut failed)) => {
                let ids: Vec<u32> = sampled.iter().map(|s| s.token_id).collect();
                let appended = self.sched.update(&out, &ids);
                self.stats.generation_tokens_total.fetch_add(appended.len() as u64, Relaxed);
                for ((seq, tok), s) in appended.into_iter().zip(sampled) {
                    // A sibling's failure may have ended this sequence already.
                    if !self.outputs.contains_key(&seq) {
                        continue;
                    }
                    match failed.remove(&seq) {
                        Some(msg) => self.fail_request(self.sched.seq(seq).request, &msg),
                        None => self.on_token(seq, tok, s.logprob),
                    }
                }
            }
            Err(msg) => {
                tracing::error!("model runner failed: {msg}");
                let keys: Vec<u64> = out.seqs.iter().map(|s| self.sched.seq(s.id).request).collect();
                for key in keys {
                    self.fail_request(key, &msg);
                }
            }
        }
    }

    /// Runs the step on the runner while a worker thread computes the masks
    /// of its constrained sequences; a runner error or panic becomes a
    /// message. Also returns the sequences whose grammar failed this step.
    fn execute(&mut self, out: &SchedulerOutput) -> Result<(Vec<Sampled>, HashMap<SeqId, String>), String> {
        let plan = self.constraints.plan(out);
        let masks: Vec<TokenMask> = plan.iter().map(|_| TokenMask::new()).collect();
        let (batch, mut reqs) = self.sched.prepare(out);
        for (&(row, _), mask) in plan.iter().zip(&masks) {
            reqs[row].allowed_tokens = Some(mask);
        }
        let want = reqs.len();
        let (runner, constraints) = (&mut self.runner, &mut self.constraints);
        let (res, failed) = std::thread::scope(|s| {
            let worker = (!plan.is_empty()).then(|| s.spawn(|| constraints.compute(&plan, &masks)));
            let res = std::panic::catch_unwind(AssertUnwindSafe(|| runner.execute(&batch, &mut reqs)));
            let failed = worker.map(|w| w.join().unwrap_or_default()).unwrap_or_default();
            (res, failed)
        });
        match res {
            Ok(Ok(s)) if s.len() == want => Ok((s, failed)),
            Ok(Ok(s)) => Err(format!("runner returned {} samples for {want} sequences", s.len())),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("the model runner panicked".into()),
        }
    }

    /// Adds a step's prompt logprobs to each sequence's gathered ones and
    /// sends `PromptLogprobs` for each sequence whose prompt is complete
    /// (before its first `Token`, sent later in the same step). A sequence
    /// recomputing after preemption overwrites what it computed before.
    fn on_prompt_logprobs(&mut self, out: &SchedulerOutput, computed: Vec<PromptLogprobs>) {
        let mut computed = computed.into_iter().peekable();
        for (i, s) in out.seqs.iter().enumerate() {
            let mine = computed.next_if(|p| p.seq == i).map(|p| p.logprobs).unwrap_or_default();
            let Some(acc) = self.prompt_lps.get_mut(&s.id) else { continue };
            acc.truncate(s.num_computed);
            if acc.len() == s.num_computed {
                acc.extend(mine);
            }
            let seq = self.sched.seq(s.id);
            if acc.len() + 1 < seq.prompt_len {
                continue;
            }
            let (first_token, index, key) = (seq.tokens[0], seq.index, seq.request);
            let logprobs = self.prompt_lps.remove(&s.id).unwrap_or_default();
            if let Some(r) = self.requests.get(&key) {
                let _ = r.tx.send(TokenEvent { index, kind: EventKind::PromptLogprobs { first_token, logprobs } });
            }
        }
    }

    fn on_token(&mut self, id: SeqId, tok: u32, logprob: Option<TokenLogprob>) {
        let seq = self.sched.seq(id);
        let (key, index, len) = (seq.request, seq.index, seq.num_tokens());
        let out = self.outputs.get_mut(&id).expect("output of a live sequence");
        let complete = match self.constraints.advance(id, tok, out.is_stop_id(tok)) {
            Ok(c) => c,
            Err(msg) => return self.fail_request(key, &msg),
        };
        let (event, mut finish) = out.on_token(tok, logprob, len);
        if complete && finish.is_none() {
            finish = Some(out.finish_complete());
        }
        if let (Some(kind), Some(r)) = (event, self.requests.get(&key)) {
            let _ = r.tx.send(TokenEvent { index, kind });
        }
        if let Some(f) = finish {
            self.finish_seq(id, f);
        }
    }

    /// Ends one sequence: frees its blocks and sends `Finished`.
    fn finish_seq(&mut self, id: SeqId, f: Finish) {
        self.constraints.remove(id);
        self.prompt_lps.remove(&id);
        let seq = self.sched.remove(id);
        let out = self.outputs.remove(&id).expect("output of a live sequence");
        let Some(r) = self.requests.get_mut(&seq.request) else { return };
        let usage = out.usage(r.prompt_len, seq.cached_tokens.unwrap_or(0));
        let kind = EventKind::Finished { reason: f.reason, text: f.text, usage, stop_string: f.stop_string };
        let _ = r.tx.send(TokenEvent { index: seq.index, kind });
        r.live.retain(|&s| s != id);
        if r.live.is_empty() {
            self.requests.remove(&seq.request);
            self.stats.requests_finished.fetch_add(1, Relaxed);
        }
    }

    /// Sends `Error` for each live sequence of a request and drops it.
    fn fail_request(&mut self, key: u64, msg: &str) {
        if let Some(r) = self.requests.get(&key) {
            for &id in &r.live {
                let index = self.sched.seq(id).index;
                let _ = r.tx.send(TokenEvent { index, kind: EventKind::Error(msg.to_string()) });
            }
        }
        self.drop_request(key);
    }

    fn fail_all(&mut self, msg: &str) {
        let keys: Vec<u64> = self.requests.keys().copied().collect();
        for key in keys {
            self.fail_request(key, msg);
        }
    }

    /// Shutdown: every live sequence ends with `Abort`.
    fn abort_all(&mut self) {
        let live: Vec<SeqId> = self.requests.values().flat_map(|r| r.live.iter().copied()).collect();
        for id in live {
            self.finish_seq(id, Finish { reason: FinishReason::Abort, text: String::new(), stop_string: None });
        }
    }

    fn publish(&mut self) {
        let s = &self.stats;
        s.heartbeat.beat();
        let kv = self.sched.kv();
        s.num_running.store(self.sched.num_running() as u64, Relaxed);
        s.num_waiting.store(self.sched.num_waiting() as u64, Relaxed);
        s.inbox.fetch_sub(std::mem::take(&mut self.drained), Relaxed);
        s.kv_blocks_used.store(kv.num_used_blocks() as u64, Relaxed);
        s.kv_blocks_total.store(kv.num_usable_blocks() as u64, Relaxed);
        s.prefix_cache_queries.store(kv.prefix_queries, Relaxed);
        s.prefix_cache_hits.store(kv.prefix_hits, Relaxed);
        s.num_preemptions.store(self.sched.num_preemptions, Relaxed);
    }
}
