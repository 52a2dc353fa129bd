//! The embedding engine: encoder work (BERT-family models, decoders used for
//! embeddings) on its own OS thread, batched across requests.
//!
//! ```text
//! EmbedHandle::submit(EmbedRequest) --crossbeam--> worker thread
//!   queue.rs: inputs in arrival order -> a step within max_num_batched_tokens
//!             and max_num_seqs -> EncoderRunner::encode -> one vector per input
//!   <--oneshot, one per request: every vector of the request, in input order--
//! ```
//!
//! Why a worker of its own rather than sequences in the generation engine:
//! an embedding input is prefill-only work with no KV cache to keep, no
//! sampling and no stop rules, so none of the generation scheduler's state
//! (block tables, preemption, prefix cache, detokenizers) applies. What
//! does apply is kept: one owner thread, the same per-step token budget and
//! sequence cap, arrival order with interactive work ahead of batch work,
//! and requests dropped by their client leave the queue before their turn.

pub mod queue;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use super::stats::{EngineStats, StatsCells};
use super::{EngineError, Priority};
use crate::runner::encoder::EncoderRunner;
use queue::{Item, Queue};

/// Limits of the embedding engine (vLLM's flag names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedConfig {
    /// Most tokens encoded in one step.
    pub max_num_batched_tokens: usize,
    /// Most inputs encoded in one step.
    pub max_num_seqs: usize,
    /// Most tokens in one input (at most `max_num_batched_tokens`).
    pub max_model_len: usize,
    /// Token ids must be below this.
    pub vocab_size: usize,
}

/// Inputs to embed, already tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedRequest {
    pub request_id: String,
    /// One token-id list per input; each non-empty and within `max_model_len`.
    pub inputs: Vec<Vec<u32>>,
    pub priority: Priority,
}

/// Every vector of a request in input order, or the reason it failed.
pub type EmbedReply = Result<Vec<Vec<f32>>, String>;

enum Msg {
    Add(EmbedRequest, oneshot::Sender<EmbedReply>),
    Shutdown,
}

/// The way into the embedding engine thread. Cheap to clone.
#[derive(Clone)]
pub struct EmbedHandle {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<Msg>,
    stats: Arc<StatsCells>,
    config: EmbedConfig,
    dimensions: usize,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EmbedHandle {
    /// Starts the worker thread over `runner`.
    pub fn start(config: EmbedConfig, runner: Box<dyn EncoderRunner>) -> Result<EmbedHandle, EngineError> {
        if config.max_model_len == 0 || config.max_model_len > config.max_num_batched_tokens || config.max_num_seqs == 0 {
            return Err(EngineError::Config(format!(
                "max_model_len {} must be between 1 and max_num_batched_tokens {} (an input is never split), max_num_seqs {} at least 1",
                config.max_model_len, config.max_num_batched_tokens, config.max_num_seqs
            )));
        }
        let stats = Arc::new(StatsCells::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let dimensions = runner.dimensions();
        let worker = Worker { runner, config: config.clone(), stats: stats.clone(), queue: Queue::default(), requests: HashMap::new(), next: 0 };
        let thread = std::thread::Builder::new()
            .name("kiln-embed".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Config(format!("cannot start the embedding thread: {e}")))?;
        let inner = Inner { tx, stats, config, dimensions, closed: AtomicBool::new(false), thread: Mutex::new(Some(thread)) };
        Ok(EmbedHandle { inner: Arc::new(inner) })
    }

    /// Queues a request; its vectors arrive on the receiver. Dropping the
    /// receiver drops the request's inputs that have not run yet.
    pub fn submit(&self, req: EmbedRequest) -> Result<oneshot::Receiver<EmbedReply>, EngineError> {
        if self.inner.closed.load(Relaxed) {
            return Err(EngineError::Shutdown);
        }
        self.validate(&req)?;
        let (tx, rx) = oneshot::channel();
        let n = req.inputs.len() as u64;
        self.inner.stats.inbox.fetch_add(n, Relaxed);
        if self.inner.tx.send(Msg::Add(req, tx)).is_err() {
            self.inner.stats.inbox.fetch_sub(n, Relaxed);
            return Err(EngineError::Shutdown);
        }
        Ok(rx)
    }

    /// The checks `submit` makes: at least one input, each non-empty,
    /// within `max_model_len`, ids in the vocabulary.
    pub fn validate(&self, req: &EmbedRequest) -> Result<(), EngineError> {
        let c = &self.inner.config;
        if req.inputs.is_empty() {
            return Err(EngineError::InvalidRequest("no input to embed".into()));
        }
        for (i, ids) in req.inputs.iter().enumerate() {
            if ids.is_empty() {
                return Err(EngineError::InvalidRequest(format!("input {i} is empty")));
            }
            if ids.len() > c.max_model_len {
                return Err(EngineError::InvalidRequest(format!(
                    "input {i} has {} tokens, more than the model's limit of {}",
                    ids.len(),
                    c.max_model_len
                )));
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(EngineError::InvalidRequest(format!("token id {id} is outside the vocabulary [0, {})", c.vocab_size)));
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &EmbedConfig {
        &self.inner.config
    }

    /// Length of every vector the model returns.
    pub fn dimensions(&self) -> usize {
        self.inner.dimensions
    }

    /// Counters: `num_running` is the inputs of the step in progress,
    /// `num_waiting` the inputs queued, `prompt_tokens_total` the tokens encoded.
    /// Time since the worker thread last showed it is alive (it beats
    /// before every batch it runs and every `stats::IDLE_WAKE` when idle).
    pub fn heartbeat_age(&self) -> std::time::Duration {
        self.inner.stats.heartbeat.age()
    }

    pub fn stats(&self) -> EngineStats {
        self.inner.stats.snapshot()
    }

    /// Fails everything queued and joins the thread. Idempotent.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Relaxed);
        let _ = self.inner.tx.send(Msg::Shutdown);
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the embedding thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Relaxed);
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// A request being encoded: its reply channel and the vectors so far.
struct Pending {
    tx: oneshot::Sender<EmbedReply>,
    vectors: Vec<Option<Vec<f32>>>,
    missing: usize,
}

struct Worker {
    runner: Box<dyn EncoderRunner>,
    config: EmbedConfig,
    stats: Arc<StatsCells>,
    queue: Queue,
    requests: HashMap<u64, Pending>,
    next: u64,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        self.stats.heartbeat.beat();
        while self.drain(&rx) {
            self.stats.heartbeat.beat();
            let requests = &self.requests;
            self.queue.retain(|r| requests.get(&r).is_some_and(|p| !p.tx.is_closed()));
            self.requests.retain(|_, p| !p.tx.is_closed());
            if !self.queue.is_empty() {
                self.step();
            }
            self.stats.num_waiting.store(self.queue.len() as u64, Relaxed);
        }
        // Dropping the reply senders tells the waiting handlers the engine
        // has shut down (a 503 shutting_down, as for generation).
        self.requests.clear();
    }

    /// Takes every queued message, blocking for one when idle. False on shutdown.
    fn drain(&mut self, rx: &Receiver<Msg>) -> bool {
        let idle = self.queue.is_empty();
        super::inbox::drain(rx, idle, |msg| self.handle(msg))
    }

    fn handle(&mut self, msg: Msg) -> bool {
        let Msg::Add(req, tx) = msg else { return false };
        let key = self.next;
        self.next += 1;
        let n = req.inputs.len();
        self.stats.inbox.fetch_sub(n as u64, Relaxed);
        for (index, tokens) in req.inputs.into_iter().enumerate() {
            self.queue.push(Item { request: key, index, tokens }, req.priority);
        }
        self.requests.insert(key, Pending { tx, vectors: vec![None; n], missing: n });
        true
    }

    /// Encodes one step and hands out its vectors.
    fn step(&mut self) {
        let items = self.queue.next_step(self.config.max_num_batched_tokens, self.config.max_num_seqs);
        let mut tokens = Vec::with_capacity(items.iter().map(|i| i.tokens.len()).sum());
        let mut seqs = Vec::with_capacity(items.len());
        for i in &items {
            seqs.push((tokens.len(), i.tokens.len()));
            tokens.extend_from_slice(&i.tokens);
        }
        self.stats.num_running.store(items.len() as u64, Relaxed);
        let runner = &mut self.runner;
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| runner.encode(&tokens, &seqs))) {
            Ok(Ok(v)) if v.len() == items.len() => Ok(v),
            Ok(Ok(v)) => Err(format!("the encoder returned {} vectors for {} inputs", v.len(), items.len())),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("the encoder panicked".into()),
        };
        self.stats.num_running.store(0, Relaxed);
        self.stats.steps.fetch_add(1, Relaxed);
        self.stats.computed_tokens_total.fetch_add(tokens.len() as u64, Relaxed);
        self.stats.prompt_tokens_total.fetch_add(tokens.len() as u64, Relaxed);
        match result {
            Ok(vectors) => items.into_iter().zip(vectors).for_each(|(item, v)| self.deliver(item, v)),
            Err(msg) => {
                tracing::error!("encoder failed: {msg}");
                for item in items {
                    if let Some(p) = self.requests.remove(&item.request) {
                        let _ = p.tx.send(Err(msg.clone()));
                        self.stats.requests_finished.fetch_add(1, Relaxed);
                    }
                }
                let requests = &self.requests;
                self.queue.retain(|r| requests.contains_key(&r));
            }
        }
    }

    fn deliver(&mut self, item: Item, vector: Vec<f32>) {
        let Some(p) = self.requests.get_mut(&item.request) else { return };
        p.vectors[item.index] = Some(vector);
        p.missing -= 1;
        if p.missing == 0 {
            let p = self.requests.remove(&item.request).expect("present");
            let _ = p.tx.send(Ok(p.vectors.into_iter().map(|v| v.unwrap_or_default()).collect()));
            self.stats.requests_finished.fetch_add(1, Relaxed);
        }
    }
}
