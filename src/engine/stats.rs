//! Engine counters: written by the engine thread after each step, read by
//! anyone through `EngineHandle::stats`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The engine thread's pulse: it beats after every step and, when idle, at
/// least every `IDLE_WAKE`; readers see how long ago the last beat was. A
/// step that never returns (a hung kernel, a deadlock) stops the beats.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last beat.
    last_ms: AtomicU64,
}

/// How long an idle engine thread waits for a message before it beats again.
pub const IDLE_WAKE: Duration = Duration::from_millis(500);

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { epoch: Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed)))
    }
}

/// A snapshot of the engine's counters. Gauges are `num_*` and `kv_*`;
/// everything else counts up from start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences admitted and holding KV blocks.
    pub num_running: u64,
    /// Sequences queued (preempted ones included), and requests sent but not
    /// yet taken in by the engine (counted n times).
    pub num_waiting: u64,
    pub kv_blocks_used: u64,
    /// Usable blocks (the null block excluded).
    pub kv_blocks_total: u64,
    /// Prompt tokens looked up in the prefix cache at admission.
    pub prefix_cache_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    /// Prompt tokens of accepted requests (once per request).
    pub prompt_tokens_total: u64,
    /// Tokens sampled, all sequences together.
    pub generation_tokens_total: u64,
    /// Forward passes run.
    pub steps: u64,
    /// Tokens fed through the model (prefill chunks, recompute, decode).
    pub computed_tokens_total: u64,
    /// Requests finished (all their sequences ended) or aborted.
    pub requests_finished: u64,
}

/// The shared atomic cells behind `EngineStats`.
#[derive(Debug, Default)]
pub(crate) struct StatsCells {
    pub num_running: AtomicU64,
    pub num_waiting: AtomicU64,
    /// Sequences submitted but not yet received by the engine thread.
    pub inbox: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prefix_cache_queries: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub num_preemptions: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generation_tokens_total: AtomicU64,
    pub steps: AtomicU64,
    pub computed_tokens_total: AtomicU64,
    pub requests_finished: AtomicU64,
    pub heartbeat: Heartbeat,
}

impl StatsCells {
    pub fn snapshot(&self) -> EngineStats {
        EngineStats {
            num_running: self.num_running.load(Relaxed),
            num_waiting: self.num_waiting.load(Relaxed) + self.inbox.load(Relaxed),
            kv_blocks_used: self.kv_blocks_used.load(Relaxed),
            kv_blocks_total: self.kv_blocks_total.load(Relaxed),
            prefix_cache_queries: self.prefix_cache_queries.load(Relaxed),
            prefix_cache_hits: self.prefix_cache_hits.load(Relaxed),
            num_preemptions: self.num_preemptions.load(Relaxed),
            prompt_tokens_total: self.prompt_tokens_total.load(Relaxed),
            generation_tokens_total: self.generation_tokens_total.load(Relaxed),
            steps: self.steps.load(Relaxed),
            computed_tokens_total: self.computed_tokens_total.load(Relaxed),
            requests_finished: self.requests_finished.load(Relaxed),
        }
    }
}
