//! Per-sequence output: incremental text and stop conditions, turning each
//! generated id into the `EventKind`s the request's receiver gets.

use std::sync::Arc;
use std::time::Instant;

use super::stop::{StopMatcher, StopScan};
use super::types::{EventKind, FinishReason, SeqTiming, SeqUsage, StopCriteria, TokenLogprob};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// What the engine needs from a tokenizer: one incremental text stream per
/// sequence. Implemented by `TokenizerDecoder`; tests use a fake.
pub trait TextDecoder: Send + Sync {
    /// A stream for a sequence whose prompt is `prompt` (left context only:
    /// its text is never produced).
    fn stream(&self, prompt: &[u32]) -> Box<dyn TextStream>;
}

pub trait TextStream: Send {
    /// Text made final by one more generated id (maybe empty).
    fn push(&mut self, id: u32) -> String;
    /// Text still held at the end of the sequence.
    fn finish(&mut self) -> String;
}

/// The real tokenizer as a `TextDecoder` (special tokens are skipped).
pub struct TokenizerDecoder(pub Arc<Tokenizer>);

struct TokenizerStream {
    tok: Arc<Tokenizer>,
    detok: IncrementalDetokenizer,
}

impl TextDecoder for TokenizerDecoder {
    fn stream(&self, prompt: &[u32]) -> Box<dyn TextStream> {
        Box::new(TokenizerStream { tok: self.0.clone(), detok: IncrementalDetokenizer::new(prompt) })
    }
}

impl TextStream for TokenizerStream {
    fn push(&mut self, id: u32) -> String {
        self.detok.push(&self.tok, id)
    }
    fn finish(&mut self) -> String {
        self.detok.finish(&self.tok)
    }
}

/// The stop conditions shared by a request's sequences.
#[derive(Debug)]
pub struct StopRules {
    /// Stop token ids, plus the EOS ids unless `ignore_eos`.
    pub stop_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    pub max_tokens: usize,
    pub max_model_len: usize,
}

impl StopRules {
    pub fn new(stop: &StopCriteria, eos_ids: &[u32], max_model_len: usize) -> StopRules {
        let mut stop_ids = stop.stop_token_ids.clone();
        if !stop.ignore_eos {
            stop_ids.extend_from_slice(eos_ids);
        }
        StopRules { stop_ids, stop_strings: stop.stop_strings.clone(), max_tokens: stop.max_tokens, max_model_len }
    }
}

/// One sequence's output state.
pub struct SeqOutput {
    rules: Arc<StopRules>,
    text: Box<dyn TextStream>,
    stop: StopMatcher,
    pub num_generated: usize,
    clock: SeqClock,
}

/// When a sequence reached each phase (see `SeqTiming`).
struct SeqClock {
    arrived: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl SeqClock {
    fn timing(&self) -> SeqTiming {
        let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Default::default(),
        };
        SeqTiming {
            queued: span(Some(self.arrived), self.scheduled),
            prefill: span(self.scheduled, self.first_token),
            decode: span(self.first_token, self.last_token),
        }
    }
}

/// The sequence ended: why, and the text to send with `Finished`.
#[derive(Debug, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub text: String,
    /// The stop string that ended the sequence, if one did.
    pub stop_string: Option<String>,
}

impl SeqOutput {
    pub fn new(rules: Arc<StopRules>, text: Box<dyn TextStream>) -> SeqOutput {
        let stop = StopMatcher::new(&rules.stop_strings);
        let clock = SeqClock { arrived: Instant::now(), scheduled: None, first_token: None, last_token: None };
        SeqOutput { rules, text, stop, num_generated: 0, clock }
    }

    /// Marks the sequence scheduled (only its first step counts).
    pub fn on_scheduled(&mut self, now: Instant) {
        self.clock.scheduled.get_or_insert(now);
    }

    /// Takes one generated id; `seq_len` is the sequence's length with it.
    /// Returns the `Token` event to send (none for a stop id: it ends the
    /// sequence and has no text) and the finish, if this id ends it.
    pub fn on_token(
        &mut self,
        id: u32,
        logprob: Option<TokenLogprob>,
        seq_len: usize,
    ) -> (Option<EventKind>, Option<Finish>) {
        if self.rules.max_tokens == 0 {
            // A prompt-only sequence (echo with max_tokens 0, for the
            // prompt's logprobs): the token sampled after the prompt is
            // not output.
            return (None, Some(Finish { reason: FinishReason::Length, text: String::new(), stop_string: None }));
        }
        self.num_generated += 1;
        let now = Instant::now();
        self.clock.first_token.get_or_insert(now);
        self.clock.last_token = Some(now);
        if self.rules.stop_ids.contains(&id) {
            return (None, Some(self.finish_with(FinishReason::Stop)));
        }
        let piece = self.text.push(id);
        match self.stop.push(&piece) {
            StopScan::Stopped(before) => {
                let ev = EventKind::Token { token_id: id, text: before, logprob };
                let stop_string = self.stop.matched().map(str::to_string);
                (Some(ev), Some(Finish { reason: FinishReason::Stop, text: String::new(), stop_string }))
            }
            StopScan::Emit(text) => {
                let ev = EventKind::Token { token_id: id, text, logprob };
                let at_limit = self.num_generated >= self.rules.max_tokens || seq_len >= self.rules.max_model_len;
                (Some(ev), at_limit.then(|| self.finish_with(FinishReason::Length)))
            }
        }
    }

    /// Whether `id` ends the sequence by itself (a stop id or EOS).
    pub fn is_stop_id(&self, id: u32) -> bool {
        self.rules.stop_ids.contains(&id)
    }

    /// Ends the sequence now with `Stop` (its grammar is complete),
    /// flushing held text.
    pub fn finish_complete(&mut self) -> Finish {
        self.finish_with(FinishReason::Stop)
    }

    /// Flushes held text; a stop string completed by the flush still stops.
    fn finish_with(&mut self, reason: FinishReason) -> Finish {
        let tail = self.text.finish();
        match self.stop.push(&tail) {
            StopScan::Stopped(before) => Finish { reason: FinishReason::Stop, text: before, stop_string: self.stop.matched().map(str::to_string) },
            StopScan::Emit(mut t) => {
                t.push_str(&self.stop.flush());
                Finish { reason, text: t, stop_string: None }
            }
        }
    }

    pub fn usage(&self, prompt_tokens: usize, cached_tokens: usize) -> SeqUsage {
        SeqUsage { prompt_tokens, cached_tokens, completion_tokens: self.num_generated, timing: self.clock.timing() }
    }
}
