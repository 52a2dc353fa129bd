//! The token-budget scheduler: decides which sequences compute how many
//! tokens each step. It moves ids and counts only.
//!
//! Each step, under one token budget (`max_num_batched_tokens`):
//! 1. running sequences, oldest first, each take up to what they lack; when
//!    the pool cannot hold a sequence's new tokens, the most recently
//!    admitted running sequence (a batch-priority one first) is preempted:
//!    its blocks are freed and it waits to recompute;
//! 2. if nothing was preempted, waiting sequences are admitted FCFS while
//!    `max_num_seqs` allows: interactive first, then batch ones (under
//!    `max_batch_inflight`), each reusing its cached prefix and taking a
//!    chunk of what remains of the budget.
//!
//! `n > 1` siblings wait (`PendingFork`) until their leader has computed the
//! shared full prompt blocks, then fork them by reference and compute only
//! the prompt's tail themselves.

use std::collections::VecDeque;
use std::sync::Arc;

use super::kv_cache::KvManager;
use super::sequence::{SeqId, SeqStatus, Sequence};
use super::types::Priority;
use crate::model::BatchInput;
use crate::runner::SampleRequest;
use crate::sampling::SamplingParams;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Tokens computed per step, all sequences together.
    pub max_num_batched_tokens: usize,
    /// Running sequences at most.
    pub max_num_seqs: usize,
    /// Running `Priority::Batch` sequences at most (None: no cap).
    pub max_batch_inflight: Option<usize>,
}

/// One sequence's share of a step: compute `tokens[num_computed..][..num_new]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    pub num_computed: usize,
    pub num_new: usize,
    /// The step reaches the end of the sequence: sample its next token.
    pub want_logits: bool,
}

/// A step's plan, plain data.
#[derive(Clone, Debug, Default)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    pub num_batched_tokens: usize,
    pub preempted: Vec<SeqId>,
}

/// A request as the scheduler sees it.
pub struct NewRequest {
    /// The caller's key for the request (echoed in each `Sequence`).
    pub request: u64,
    pub prompt: Vec<u32>,
    pub params: Arc<SamplingParams>,
    pub n: usize,
    /// Seed of the request's RNG streams (sequence i draws stream i).
    pub seed: u64,
    pub priority: Priority,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvManager,
    /// Sequence arena; `SeqId` is the index.
    slots: Vec<Option<Sequence>>,
    free_slots: Vec<u32>,
    waiting: VecDeque<SeqId>,
    waiting_batch: VecDeque<SeqId>,
    /// In admission order: preemption takes from the back.
    running: Vec<SeqId>,
    num_running_batch: usize,
    num_pending_forks: usize,
    pub num_preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, kv: KvManager) -> Scheduler {
        assert!(cfg.max_num_batched_tokens > 0 && cfg.max_num_seqs > 0);
        Scheduler {
            cfg,
            kv,
            slots: Vec::new(),
            free_slots: Vec::new(),
            waiting: VecDeque::new(),
            waiting_batch: VecDeque::new(),
            running: Vec::new(),
            num_running_batch: 0,
            num_pending_forks: 0,
            num_preemptions: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn kv(&self) -> &KvManager {
        &self.kv
    }

    pub fn kv_mut(&mut self) -> &mut KvManager {
        &mut self.kv
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting sequences, siblings waiting to fork included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len() + self.waiting_batch.len() + self.num_pending_forks
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty() || !self.waiting_batch.is_empty()
    }

    pub fn seq(&self, id: SeqId) -> &Sequence {
        self.slots[id.0 as usize].as_ref().expect("live sequence")
    }

    fn seq_mut(&mut self, id: SeqId) -> &mut Sequence {
        self.slots[id.0 as usize].as_mut().expect("live sequence")
    }

    /// Every live sequence.
    pub fn iter(&self) -> impl Iterator<Item = &Sequence> {
        self.slots.iter().flatten()
    }

    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    /// Queues a request's n sequences; returns their ids in index order.
    pub fn add(&mut self, req: NewRequest) -> Vec<SeqId> {
        let n = req.n.max(1);
        // Siblings share the prompt's full blocks up to (not including) the
        // block of the last prompt token, which each computes itself.
        let fork_blocks = (req.prompt.len().saturating_sub(1)) / self.kv.block_size();
        let ids: Vec<SeqId> = (0..n)
            .map(|i| {
                let seq_id = self.alloc_slot();
                let s = Sequence::new(
                    seq_id,
                    req.request,
                    i,
                    req.prompt.clone(),
                    req.params.clone(),
                    req.seed,
                    req.priority,
                );
                self.slots[seq_id.0 as usize] = Some(s);
                seq_id
            })
            .collect();
        let leader = ids[0];
        self.queue(req.priority).push_back(leader);
        if n > 1 && fork_blocks > 0 {
            for &id in &ids[1..] {
                self.seq_mut(id).status = SeqStatus::PendingFork { leader };
            }
            self.num_pending_forks += n - 1;
            let l = self.seq_mut(leader);
            l.fork_children = ids[1..].to_vec();
            l.fork_blocks = fork_blocks;
        } else {
            // Nothing to share (a prompt within one block): plain siblings.
            self.queue(req.priority).extend(&ids[1..]);
        }
        ids
    }

    fn alloc_slot(&mut self) -> SeqId {
        match self.free_slots.pop() {
            Some(i) => SeqId(i),
            None => {
                self.slots.push(None);
                SeqId(self.slots.len() as u32 - 1)
            }
        }
    }

    fn queue(&mut self, p: Priority) -> &mut VecDeque<SeqId> {
        match p {
            Priority::Interactive => &mut self.waiting,
            Priority::Batch => &mut self.waiting_batch,
        }
    }

    /// Plans one step.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        self.schedule_running(&mut out, &mut budget);
        if out.preempted.is_empty() {
            self.admit_waiting(&mut out, &mut budget);
        }
        out.num_batched_tokens = self.cfg.max_num_batched_tokens - budget;
        out
    }

    fn schedule_running(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let seq = self.seq(id);
            let (computed, num_new) = (seq.num_computed, seq.num_uncomputed().min(*budget));
            let want_logits = computed + num_new == seq.num_tokens();
            let Scheduler { kv, slots, .. } = self;
            let seq = slots[id.0 as usize].as_mut().expect("running sequence");
            if kv.allocate_slots(&mut seq.kv, &[], computed + num_new) {
                out.seqs.push(ScheduledSeq { id, num_computed: computed, num_new, want_logits });
                *budget -= num_new;
                i += 1;
                continue;
            }
            // Out of blocks: first take back blocks that waiting sequences
            // hold (forked prompt blocks; they will recompute), then preempt
            // a later-admitted sequence, or this one.
            if self.release_waiting_blocks(None) {
                continue;
            }
            let victim = self.pick_victim(i + 1).unwrap_or(i);
            let vid = self.running.remove(victim);
            self.preempt(vid);
            out.preempted.push(vid);
        }
    }

    /// Index in `running[from..]` of the sequence to preempt: the most
    /// recently admitted batch-priority one, else the most recently admitted.
    fn pick_victim(&self, from: usize) -> Option<usize> {
        let tail = &self.running[from..];
        let batch = tail.iter().rposition(|&id| self.seq(id).priority == Priority::Batch);
        batch.or_else(|| tail.len().checked_sub(1)).map(|j| from + j)
    }

    /// Frees a (just unlisted) running sequence's blocks and requeues it at
    /// the front of its queue.
    fn preempt(&mut self, id: SeqId) {
        let Scheduler { kv, slots, .. } = self;
        let seq = slots[id.0 as usize].as_mut().expect("running sequence");
        kv.free(&mut seq.kv);
        seq.num_computed = 0;
        seq.status = SeqStatus::Waiting;
        seq.num_preemptions += 1;
        let p = seq.priority;
        if p == Priority::Batch {
            self.num_running_batch -= 1;
        }
        self.queue(p).push_front(id);
        self.num_preemptions += 1;
    }

    /// The next waiting sequence allowed in: interactive ones first; batch
    /// ones only when no interactive one waits and the batch cap allows.
    fn next_waiting(&self) -> Option<SeqId> {
        if let Some(&id) = self.waiting.front() {
            return Some(id);
        }
        let cap = self.cfg.max_batch_inflight.unwrap_or(usize::MAX);
        if self.num_running_batch < cap {
            return self.waiting_batch.front().copied();
        }
        None
    }

    fn admit_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        while self.running.len() < self.cfg.max_num_seqs && *budget > 0 {
            let Some(id) = self.next_waiting() else { break };
            if !self.try_admit(id, out, budget) {
                // Only sequences waiting with forked blocks can starve an idle
                // engine: release theirs and retry; otherwise keep FCFS order.
                if self.running.is_empty() && self.release_waiting_blocks(Some(id)) {
                    continue;
                }
                break;
            }
        }
    }

    /// Admits the head of a waiting queue if the pool can hold its chunk.
    fn try_admit(&mut self, id: SeqId, out: &mut SchedulerOutput, budget: &mut usize) -> bool {
        let Scheduler { kv, slots, .. } = self;
        let seq = slots[id.0 as usize].as_mut().expect("waiting sequence");
        let fresh = seq.kv.blocks.is_empty();
        // A request asking for prompt logprobs needs logits at every prompt
        // position, so it computes its whole prompt: no prefix-cache hit
        // (vLLM skips the prefix cache for such requests the same way).
        let lookup = fresh && seq.params.prompt_logprobs.is_none();
        let hits = if lookup { kv.lookup_prefix(&mut seq.kv, &seq.tokens) } else { Vec::new() };
        let computed = if fresh { hits.len() * kv.block_size() } else { seq.num_computed };
        let num_new = (seq.num_tokens() - computed).min(*budget);
        if !kv.allocate_slots(&mut seq.kv, &hits, computed + num_new) {
            return false;
        }
        if fresh {
            kv.record_prefix_query(seq.num_tokens(), computed);
        }
        seq.cached_tokens.get_or_insert(computed);
        seq.num_computed = computed;
        seq.status = SeqStatus::Running;
        let want_logits = computed + num_new == seq.num_tokens();
        let p = seq.priority;
        let popped = self.queue(p).pop_front();
        debug_assert_eq!(popped, Some(id));
        if p == Priority::Batch {
            self.num_running_batch += 1;
        }
        self.running.push(id);
        out.seqs.push(ScheduledSeq { id, num_computed: computed, num_new, want_logits });
        *budget -= num_new;
        true
    }

    /// Frees the blocks of every waiting sequence but `keep` (they will
    /// recompute). Returns whether any block was released.
    fn release_waiting_blocks(&mut self, keep: Option<SeqId>) -> bool {
        let Scheduler { kv, slots, waiting, waiting_batch, .. } = self;
        let mut any = false;
        for &id in waiting.iter().chain(waiting_batch.iter()) {
            let seq = slots[id.0 as usize].as_mut().expect("waiting sequence");
            if Some(id) != keep && !seq.kv.blocks.is_empty() {
                kv.free(&mut seq.kv);
                seq.num_computed = 0;
                any = true;
            }
        }
        any
    }

    /// The runner's input for `out`, and one sample request per sequence
    /// that wants logits, in batch order.
    pub fn prepare(&mut self, out: &SchedulerOutput) -> (BatchInput, Vec<SampleRequest<'_>>) {
        let entries: Vec<(&[u32], usize, &[u32], bool)> = out
            .seqs
            .iter()
            .map(|s| {
                let q = self.seq(s.id);
                (&q.tokens[s.num_computed..s.num_computed + s.num_new], s.num_computed, q.kv.table(), s.want_logits)
            })
            .collect();
        let mut batch = BatchInput::build(self.kv.block_size(), &entries);
        for (input, s) in batch.seqs.iter_mut().zip(&out.seqs) {
            let q = self.seq(s.id);
            if let (Some(top), 0) = (q.params.prompt_logprobs, q.index) {
                input.prompt_targets = prompt_targets(q, s).to_vec();
                input.prompt_top = top;
            }
        }
        let mut by_slot: Vec<Option<&mut Sequence>> = self.slots.iter_mut().map(|s| s.as_mut()).collect();
        let reqs = out
            .seqs
            .iter()
            .filter(|s| s.want_logits)
            .map(|s| {
                let seq = by_slot[s.id.0 as usize].take().expect("each sequence scheduled once");
                let Sequence { tokens, prompt_len, params, rng, .. } = seq;
                let (tokens, params): (&Vec<u32>, &Arc<SamplingParams>) = (tokens, params);
                SampleRequest {
                    params,
                    rng,
                    prompt: &tokens[..*prompt_len],
                    output: &tokens[*prompt_len..],
                    allowed_tokens: None,
                }
            })
            .collect();
        (batch, reqs)
    }

    /// Applies a finished step: advances `num_computed`, offers full blocks
    /// to the prefix cache, forks waiting siblings, and appends the sampled
    /// ids (`sampled[k]` for the k-th scheduled sequence wanting logits).
    /// Returns (sequence, id) for each appended id, in that order.
    pub fn update(&mut self, out: &SchedulerOutput, sampled: &[u32]) -> Vec<(SeqId, u32)> {
        let mut appended = Vec::with_capacity(sampled.len());
        let mut next = sampled.iter();
        for s in &out.seqs {
            let Scheduler { kv, slots, .. } = self;
            let seq = slots[s.id.0 as usize].as_mut().expect("scheduled sequence");
            debug_assert_eq!(seq.num_computed, s.num_computed);
            seq.num_computed += s.num_new;
            kv.commit_computed(&mut seq.kv, &seq.tokens, seq.num_computed);
            if !seq.fork_children.is_empty() && seq.num_computed >= seq.fork_blocks * kv.block_size() {
                self.fork_children(s.id);
            }
            if s.want_logits {
                let &t = next.next().expect("one sampled id per sequence wanting logits");
                self.seq_mut(s.id).tokens.push(t);
                appended.push((s.id, t));
            }
        }
        appended
    }

    /// Gives each pending sibling of `leader` a table sharing the leader's
    /// computed prompt blocks and queues it first in line.
    fn fork_children(&mut self, leader: SeqId) {
        let children = std::mem::take(&mut self.seq_mut(leader).fork_children);
        for &c in children.iter().rev() {
            let Scheduler { kv, slots, .. } = self;
            let l = slots[leader.0 as usize].as_ref().expect("leader");
            let (nb, cached) = (l.fork_blocks, l.cached_tokens);
            let table = kv.fork(&l.kv, nb);
            let bs = kv.block_size();
            let child = slots[c.0 as usize].as_mut().expect("pending sibling");
            child.kv = table;
            child.num_computed = nb * bs;
            child.cached_tokens = cached;
            child.status = SeqStatus::Waiting;
            let p = child.priority;
            self.num_pending_forks -= 1;
            self.queue(p).push_front(c);
        }
    }

    /// Removes a sequence in any state (finished or aborted), freeing its
    /// blocks. Siblings still waiting to fork from it compute on their own.
    pub fn remove(&mut self, id: SeqId) -> Sequence {
        let mut seq = self.slots[id.0 as usize].take().expect("live sequence");
        match seq.status {
            SeqStatus::Running => {
                self.running.retain(|&r| r != id);
                if seq.priority == Priority::Batch {
                    self.num_running_batch -= 1;
                }
            }
            SeqStatus::Waiting => self.queue(seq.priority).retain(|&w| w != id),
            SeqStatus::PendingFork { leader } => {
                self.num_pending_forks -= 1;
                if let Some(l) = self.slots[leader.0 as usize].as_mut() {
                    l.fork_children.retain(|&c| c != id);
                }
            }
        }
        for c in std::mem::take(&mut seq.fork_children) {
            let child = self.seq_mut(c);
            child.status = SeqStatus::Waiting;
            let p = child.priority;
            self.num_pending_forks -= 1;
            self.queue(p).push_front(c);
        }
        self.kv.free(&mut seq.kv);
        self.free_slots.push(id.0);
        seq
    }

    /// Checks the KV pool against every table and the queues against the
    /// sequence states.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check(self.iter().map(|s| &s.kv))?;
        for s in self.iter() {
            let listed = match s.status {
                SeqStatus::Running => self.running.contains(&s.id),
                SeqStatus::Waiting => self.waiting.contains(&s.id) || self.waiting_batch.contains(&s.id),
                SeqStatus::PendingFork { .. } => s.kv.blocks.is_empty(),
            };
            if !listed {
                return Err(format!("sequence {:?} is {:?} but not listed as such", s.id, s.status));
            }
            if s.kv.blocks.len() < self.kv.blocks_for(s.num_computed) {
                return Err(format!(
                    "sequence {:?} computed {} tokens in {} blocks",
                    s.id,
                    s.num_computed,
                    s.kv.blocks.len()
                ));
            }
        }
        let batch = self.running.iter().filter(|&&id| self.seq(id).priority == Priority::Batch).count();
        if batch != self.num_running_batch {
            return Err(format!("{batch} batch sequences running, counter says {}", self.num_running_batch));
        }
        Ok(())
    }
}

/// The prompt tokens that follow the query tokens of `s` (position p's
/// target is token p + 1, while p + 1 is in the prompt). Only sequence 0
/// of a request reports prompt logprobs; its siblings fork its blocks.
fn prompt_targets<'a>(q: &'a Sequence, s: &ScheduledSeq) -> &'a [u32] {
    let start = (s.num_computed + 1).min(q.prompt_len);
    let end = (s.num_computed + s.num_new + 1).min(q.prompt_len);
    &q.tokens[start..end]
}
