//! Engine events of all prompts of a request, merged and turned into
//! per-choice steps that chat and completions both format. Choice index =
//! prompt index * n + sequence index. Usage comes once, after every choice
//! finished; an error ends the steps.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{SelectAll, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::admit::PendingGuard;
use super::error::ApiError;
use super::reqlog::RequestRecord;
use super::wire_out::Usage;
use super::AppState;
use crate::engine::{EventKind, FinishReason, TokenEvent, TokenLogprob};

/// New output of one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub choice: usize,
    pub text: String,
    /// The token this delta came from, when logprobs were asked for.
    pub logprob: Option<TokenLogprob>,
    /// "stop" or "length" on the choice's last delta.
    pub finish: Option<&'static str>,
    /// The prompt's logprobs (echo with logprobs), on each choice's first delta.
    pub prompt: Option<Arc<PromptLogprobs>>,
    /// On the last delta: the stop string that ended the choice, if one did.
    pub stop_string: Option<String>,
}

/// The logprobs of one prompt's tokens, as the engine reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprobs {
    /// Prompt token 0, which has no logprob.
    pub first_token: u32,
    /// Prompt tokens 1.. with their logprobs.
    pub logprobs: Vec<TokenLogprob>,
}

#[derive(Debug)]
pub enum Step {
    Delta(Delta),
    /// All choices finished.
    Usage(Usage),
    Error(ApiError),
}

type Merged = SelectAll<futures::stream::BoxStream<'static, (usize, TokenEvent)>>;

/// The live state of one admitted request, from submission to usage.
pub struct Running {
    events: Merged,
    n: usize,
    prompt_lens: Vec<usize>,
    /// Per prompt: the most cached tokens any of its sequences reported.
    cached: Vec<usize>,
    /// Generated tokens, all choices: Token events, plus tokens the engine
    /// counted without sending (a stop id) once a choice finishes.
    completion_tokens: usize,
    /// Token events seen per choice.
    seen: Vec<usize>,
    finished: Vec<bool>,
    /// Per prompt: its logprobs, once the engine sent them.
    prompt_logprobs: Vec<Option<Arc<PromptLogprobs>>>,
    /// Per choice: whether a delta carried the prompt's logprobs yet.
    prompt_sent: Vec<bool>,
    last_token_at: Vec<Option<Instant>>,
    pending: Option<PendingGuard>,
    record: RequestRecord,
    state: std::sync::Arc<AppState>,
    done: bool,
}

/// Dropped before its usage step: the client went away (or the handler
/// failed); dropping the receivers aborts the sequences in the engine, and
/// each unfinished one counts as aborted.
impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.record.set_error("client disconnected");
        }
        for _ in self.finished.iter().filter(|&&f| !f) {
            self.state.metrics.vllm.count_finished(FinishReason::Abort);
        }
    }
}

impl Running {
    pub fn new(
        receivers: Vec<UnboundedReceiver<TokenEvent>>,
        n: usize,
        prompt_lens: Vec<usize>,
        pending: PendingGuard,
        record: RequestRecord,
        state: std::sync::Arc<AppState>,
    ) -> Self {
        let mut events = SelectAll::new();
        for (p, rx) in receivers.into_iter().enumerate() {
            events.push(UnboundedReceiverStream::new(rx).map(move |e| (p, e)).boxed());
        }
        let choices = prompt_lens.len() * n;
        let num_prompts = prompt_lens.len();
        Running {
            events,
            n,
            cached: vec![0; prompt_lens.len()],
            prompt_lens,
            completion_tokens: 0,
            seen: vec![0; choices],
            finished: vec![false; choices],
            prompt_logprobs: vec![None; num_prompts],
            prompt_sent: vec![false; choices],
            last_token_at: vec![None; choices],
            pending: Some(pending),
            record,
            state,
            done: false,
        }
    }

    pub fn num_choices(&self) -> usize {
        self.finished.len()
    }

    pub fn usage(&self) -> Usage {
        Usage::new(self.prompt_lens.iter().sum(), self.cached.iter().sum(), self.completion_tokens)
    }

    /// The next step, or None after usage or an error.
    pub async fn next_step(&mut self) -> Option<Step> {
        if self.done {
            return None;
        }
        if self.finished.iter().all(|&f| f) {
            self.done = true;
            return Some(Step::Usage(self.usage()));
        }
        loop {
            let Some((prompt, event)) = self.events.next().await else {
                return Some(Step::Error(self.fail("the engine stopped before the request finished".into())));
            };
            if event.index >= self.n {
                return Some(Step::Error(self.fail(format!("engine sent sequence index {} for n = {}", event.index, self.n))));
            }
            let choice = prompt * self.n + event.index;
            if let Some(step) = self.on_event(prompt, choice, event.kind) {
                return Some(step);
            }
        }
    }

    fn fail(&mut self, detail: String) -> ApiError {
        self.done = true;
        self.record.set_error(&detail);
        ApiError::Internal(detail)
    }

    /// A choice's first output: its time to first token, and its prompt
    /// counted as processed.
    fn first_output(&self, prompt: usize, now: Instant) {
        self.state.metrics.vllm.on_first_token(now.duration_since(self.record.started()), self.prompt_lens[prompt]);
    }

    /// The prompt's logprobs if this choice has not carried them yet.
    fn take_prompt(&mut self, prompt: usize, choice: usize) -> Option<Arc<PromptLogprobs>> {
        let lps = self.prompt_logprobs[prompt].clone()?;
        (!std::mem::replace(&mut self.prompt_sent[choice], true)).then_some(lps)
    }

    fn on_event(&mut self, prompt: usize, choice: usize, kind: EventKind) -> Option<Step> {
        if let Some(p) = self.pending.as_mut() {
            p.release();
        }
        match kind {
            EventKind::PromptLogprobs { first_token, logprobs } => {
                self.prompt_logprobs[prompt] = Some(Arc::new(PromptLogprobs { first_token, logprobs }));
                None
            }
            EventKind::Token { text, logprob, .. } => {
                let now = Instant::now();
                let prev = self.last_token_at[choice].replace(now);
                if let Some(prev) = prev {
                    self.state.metrics.inter_token_latency.record(now.duration_since(prev).as_secs_f64());
                } else {
                    self.first_output(prompt, now);
                }
                self.state.metrics.vllm.on_token(prev.map(|p| now.duration_since(p)));
                self.completion_tokens += 1;
                self.seen[choice] += 1;
                self.record.add_completion_tokens(1);
                let prompt = self.take_prompt(prompt, choice);
                if text.is_empty() && logprob.is_none() && prompt.is_none() {
                    return None;
                }
                Some(Step::Delta(Delta { choice, text, logprob, finish: None, prompt, stop_string: None }))
            }
            EventKind::Finished { reason, text, usage, stop_string } => {
                self.cached[prompt] = self.cached[prompt].max(usage.cached_tokens);
                self.finished[choice] = true;
                let unsent = usage.completion_tokens.saturating_sub(self.seen[choice]);
                self.completion_tokens += unsent;
                self.record.add_completion_tokens(unsent);
                let now = Instant::now();
                if self.last_token_at[choice].is_none() && reason != FinishReason::Abort {
                    self.first_output(prompt, now);
                }
                let vllm = &self.state.metrics.vllm;
                vllm.on_unsent_tokens(unsent);
                match reason {
                    FinishReason::Abort => vllm.count_finished(reason),
                    _ => vllm.on_finished(reason, now.duration_since(self.record.started()), &usage),
                }
                let finish = match reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                    FinishReason::Abort => {
                        self.done = true;
                        return Some(Step::Error(ApiError::ShuttingDown));
                    }
                };
                let prompt = self.take_prompt(prompt, choice);
                Some(Step::Delta(Delta { choice, text, logprob: None, finish: Some(finish), prompt, stop_string }))
            }
            EventKind::Error(msg) => {
                self.finished[choice] = true;
                self.state.metrics.vllm.count_finished(FinishReason::Abort);
                self.done = true;
                self.record.set_error(&msg);
                Some(Step::Error(ApiError::Engine(msg)))
            }
        }
    }
}
