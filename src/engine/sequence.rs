//! Per-sequence state: token ids, how many of them are in the KV cache, and
//! the block table holding them.
//!
//! The one rule: `num_computed <= tokens.len()`, and a step computes
//! `tokens[num_computed..num_computed + k]`. When it reaches the end, the
//! step samples one token, which is appended. Prefill, chunked prefill,
//! decode and recompute after preemption are all this rule.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::kv_cache::SeqBlocks;
use super::types::Priority;
use crate::sampling::SamplingParams;

/// Identity of a live sequence (a slot index, reused after the sequence ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued for admission (new, or preempted and waiting to recompute).
    Waiting,
    /// Admitted: holds blocks for its computed tokens and is served every step.
    Running,
    /// A sibling of an `n > 1` request waiting for its leader to compute the
    /// shared prompt blocks, which it then forks.
    PendingFork { leader: SeqId },
}

#[derive(Debug)]
pub struct Sequence {
    pub id: SeqId,
    /// The engine's key of the request this sequence belongs to.
    pub request: u64,
    /// Which of the request's n sequences.
    pub index: usize,
    /// Prompt ids followed by generated ids.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache (positions `0..num_computed`).
    pub num_computed: usize,
    pub kv: SeqBlocks,
    pub status: SeqStatus,
    pub priority: Priority,
    pub params: Arc<SamplingParams>,
    /// Advanced only when this sequence samples, so recompute after
    /// preemption continues the same random stream.
    pub rng: ChaCha8Rng,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached_tokens: Option<usize>,
    pub num_preemptions: usize,
    /// Siblings waiting to fork this sequence's first `fork_blocks` blocks.
    pub fork_children: Vec<SeqId>,
    pub fork_blocks: usize,
}

impl Sequence {
    pub fn new(
        id: SeqId,
        request: u64,
        index: usize,
        prompt: Vec<u32>,
        params: Arc<SamplingParams>,
        seed: u64,
        priority: Priority,
    ) -> Sequence {
        // One seed per request, one ChaCha stream per sequence: sequence 0 of
        // an n > 1 request draws exactly what an n = 1 request would.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        Sequence {
            id,
            request,
            index,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            kv: SeqBlocks::default(),
            status: SeqStatus::Waiting,
            priority,
            params,
            rng,
            cached_tokens: None,
            num_preemptions: 0,
            fork_children: Vec::new(),
            fork_blocks: 0,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn num_output(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to compute before the next sample.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
}
