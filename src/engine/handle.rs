//! `EngineHandle`: the only way into the engine thread. Cheap to clone,
//! usable from sync and async code alike; nothing here blocks except
//! `shutdown`.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::config::{EngineConfig, EngineError, Limits};
use super::core::{EngineCore, EngineMsg};
pub use super::core::StepObserver;
use super::kv_cache::KvManager;
use super::output::{TextDecoder, TokenizerDecoder};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::stats::{EngineStats, StatsCells};
use super::types::{TokenEvent, ValidRequest};
use crate::runner::ModelRunner;
use crate::tokenizer::Tokenizer;

#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<EngineMsg>,
    stats: Arc<StatsCells>,
    limits: Limits,
    config: EngineConfig,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread over `runner`. The tokenizer's EOS ids are
    /// added to `config.eos_token_ids`.
    pub fn start(
        mut config: EngineConfig,
        runner: Box<dyn ModelRunner>,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<EngineHandle, EngineError> {
        for &id in tokenizer.eos_ids() {
            if !config.eos_token_ids.contains(&id) {
                config.eos_token_ids.push(id);
            }
        }
        Self::start_with_decoder(config, runner, Arc::new(TokenizerDecoder(tokenizer)))
    }

    /// `start` with any text decoder (tests use a fake one).
    pub fn start_with_decoder(
        config: EngineConfig,
        runner: Box<dyn ModelRunner>,
        decoder: Arc<dyn TextDecoder>,
    ) -> Result<EngineHandle, EngineError> {
        let (config, mut limits) = config.resolve(runner.num_kv_blocks(), runner.block_size(), runner.vocab_size())?;
        limits.prompt_logprobs = runner.supports_prompt_logprobs();
        let kv = KvManager::new(limits.usable_blocks + 1, limits.block_size, config.enable_prefix_caching);
        let sched = Scheduler::new(
            SchedulerConfig {
                max_num_batched_tokens: config.max_num_batched_tokens,
                max_num_seqs: config.max_num_seqs,
                max_batch_inflight: config.max_batch_inflight,
            },
            kv,
        );
        let stats = Arc::new(StatsCells::default());
        stats.kv_blocks_total.store(limits.usable_blocks as u64, Relaxed);
        let core = EngineCore::new(config.clone(), sched, runner, decoder, stats.clone());
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || core.run(rx))
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        let inner =
            Inner { tx, stats, limits, config, closed: AtomicBool::new(false), thread: Mutex::new(Some(thread)) };
        Ok(EngineHandle { inner: Arc::new(inner) })
    }

    /// Queues a request. Its events arrive on the returned receiver: for each
    /// of its `n` sequences, `Token`s then one `Finished` (or `Error`).
    /// Dropping the receiver aborts the request at the next step.
    pub fn submit(&self, req: ValidRequest) -> Result<UnboundedReceiver<TokenEvent>, EngineError> {
        if self.inner.closed.load(Relaxed) {
            return Err(EngineError::Shutdown);
        }
        self.validate(&req)?;
        let (tx, rx) = unbounded_channel();
        let n = req.n as u64;
        self.inner.stats.inbox.fetch_add(n, Relaxed);
        if self.inner.tx.send(EngineMsg::Add(Box::new(req), tx)).is_err() {
            self.inner.stats.inbox.fetch_sub(n, Relaxed);
            return Err(EngineError::Shutdown);
        }
        Ok(rx)
    }

    /// Has the engine thread call `observer` after every forward pass with
    /// the number of tokens that pass computed (replaces any earlier one).
    pub fn observe_steps(&self, observer: StepObserver) {
        let _ = self.inner.tx.send(EngineMsg::ObserveSteps(observer));
    }

    /// The checks `submit` makes (prompt not empty, ids in the vocabulary,
    /// prompt + max_tokens within the context window and the KV pool).
    pub fn validate(&self, req: &ValidRequest) -> Result<(), EngineError> {
        self.inner.limits.check(req)
    }

    /// Time since the engine thread last showed it is alive (it beats
    /// after every step and every `stats::IDLE_WAKE` when idle).
    pub fn heartbeat_age(&self) -> std::time::Duration {
        self.inner.stats.heartbeat.age()
    }

    pub fn stats(&self) -> EngineStats {
        self.inner.stats.snapshot()
    }

    /// The configuration in force (block size and KV blocks resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Aborts everything (each live sequence gets `Finished` with
    /// `FinishReason::Abort`) and joins the engine thread. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Relaxed)
    }
}

impl Inner {
    fn shutdown(&self) {
        self.closed.store(true, Relaxed);
        let _ = self.tx.send(EngineMsg::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}
