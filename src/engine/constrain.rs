//! Constrained sequences on the engine thread: their grammar states, the
//! masks of one step (computed on a worker thread while the forward pass
//! runs) and the advance over each sampled token.
//!
//! ```text
//! step:  plan (which sample rows are constrained) -> one TokenMask each
//!        worker thread: next_mask for each, fill          } at the same time
//!        runner: forward pass, then per row wait + sample  }
//! token: advance the grammar (error: the sequence fails); a complete
//!        grammar ends the sequence with "stop"
//! ```
//! An unconstrained row never waits: only constrained rows hold a mask.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use super::scheduler::SchedulerOutput;
use super::sequence::SeqId;
use crate::sampling::mask::mask_words;
use crate::sampling::TokenMask;
use crate::structured::GrammarState;

/// The grammar states of live constrained sequences.
pub(crate) struct Constraints {
    states: HashMap<SeqId, GrammarState>,
    /// Mask length in words for the runner's vocabulary.
    words: usize,
}

/// The constrained rows of one step: `(sample row, sequence)`.
pub(crate) type MaskPlan = Vec<(usize, SeqId)>;

/// Fills every mask not filled yet with "all allowed" when dropped, so a
/// runner never waits forever on a worker that failed.
struct FillRest<'a> {
    masks: &'a [TokenMask],
    words: usize,
}

impl Drop for FillRest<'_> {
    fn drop(&mut self) {
        for m in self.masks {
            m.fill(vec![u32::MAX; self.words]);
        }
    }
}

impl Constraints {
    pub fn new(vocab_size: usize) -> Constraints {
        Constraints { states: HashMap::new(), words: mask_words(vocab_size) }
    }

    pub fn add(&mut self, id: SeqId, state: GrammarState) {
        self.states.insert(id, state);
    }

    pub fn remove(&mut self, id: SeqId) {
        self.states.remove(&id);
    }

    /// The sample rows of `out` whose sequences are constrained.
    pub fn plan(&self, out: &SchedulerOutput) -> MaskPlan {
        if self.states.is_empty() {
            return Vec::new();
        }
        out.seqs
            .iter()
            .filter(|s| s.want_logits)
            .enumerate()
            .filter(|(_, s)| self.states.contains_key(&s.id))
            .map(|(row, s)| (row, s.id))
            .collect()
    }

    /// Computes and fills `masks[k]` for `plan[k]` (run on the worker).
    /// Returns the sequences whose grammar failed or allowed no token; their
    /// mask allows everything and the engine fails them after the step.
    pub fn compute(&mut self, plan: &MaskPlan, masks: &[TokenMask]) -> HashMap<SeqId, String> {
        let _guard = FillRest { masks, words: self.words };
        let mut failed = HashMap::new();
        for ((_, id), mask) in plan.iter().zip(masks) {
            let Some(state) = self.states.get_mut(id) else { continue };
            let words = self.words;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| state.next_mask(words)))
                .unwrap_or_else(|_| Err("the grammar matcher panicked".into()));
            match result {
                Ok(m) => mask.fill(m),
                Err(msg) => {
                    mask.fill(vec![u32::MAX; words]);
                    failed.insert(*id, format!("constrained decoding: {msg}"));
                }
            }
        }
        failed
    }

    /// Advances `id`'s grammar over `token` (stop ids end the sequence on
    /// their own and are not fed). Ok(true): the grammar is complete.
    /// Unconstrained sequences always give Ok(false).
    pub fn advance(&mut self, id: SeqId, token: u32, is_stop_id: bool) -> Result<bool, String> {
        let Some(state) = self.states.get_mut(&id) else { return Ok(false) };
        if is_stop_id {
            return Ok(false);
        }
        state.consume(token).map_err(|e| format!("constrained decoding: {e}"))?;
        Ok(state.is_finished())
    }
}
