//! Admission control, decided before any tokenization: draining, the
//! waiting-queue cap (503) and the key's request limits (429). Also the
//! shared steps every generation handler runs: model check, tokenization off
//! the async threads, token-limit charge and submission.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::auth::Caller;
use super::error::ApiError;
use super::port::{CodecError, SubmitError};
use super::reqlog::RequestRecord;
use super::AppState;
use crate::engine::{Priority, TokenEvent, ValidRequest};
use crate::sampling::SamplingParams;
use crate::engine::StopCriteria;

/// Loading -> ready (a real forward pass ran) -> draining (shutdown began);
/// and how many requests are in flight (probes and scrapes aside), for the
/// drain to know when it is done.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

/// One request in flight; dropped after its last byte (or its client left).
#[derive(Debug)]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lifecycle {
    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Holds one place among the requests waiting for their first token; the
/// place is given back at the first token or when the request ends.
pub struct PendingGuard {
    counter: Arc<AtomicUsize>,
    held: bool,
}

impl PendingGuard {
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Refuses a new generation request while draining, when `max_waiting`
/// requests already wait, or when the key's request budget is spent.
pub fn admit(state: &AppState, caller: &Caller, record: &RequestRecord) -> Result<PendingGuard, ApiError> {
    if state.lifecycle.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
    let max = state.config.max_waiting;
    let before = state.pending.fetch_add(1, Ordering::SeqCst);
    let guard = PendingGuard { counter: state.pending.clone(), held: true };
    if before >= max {
        return Err(ApiError::QueueFull { waiting: before, retry_after_secs: 2 });
    }
    if let Some(limits) = &caller.limits {
        let mut headers = record.rate_headers();
        let result = limits.admit_request(&mut headers);
        record.set_rate_headers(headers);
        result?;
    }
    Ok(guard)
}

/// Charges prompt + max completion tokens against the key's per-minute budget.
pub fn charge_tokens(caller: &Caller, record: &RequestRecord, tokens: usize) -> Result<(), ApiError> {
    let Some(limits) = &caller.limits else { return Ok(()) };
    let mut headers = record.rate_headers();
    let result = limits.admit_tokens(tokens, &mut headers);
    record.set_rate_headers(headers);
    result?;
    record.set_charge(limits.clone(), tokens);
    Ok(())
}

pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.model.name => Err(ApiError::ModelNotFound(m.to_string())),
        _ => Ok(()),
    }
}

pub fn codec_error(e: CodecError, param: &str) -> ApiError {
    match e {
        CodecError::Template(m) => ApiError::invalid(format!("Could not apply the chat template: {m}"), param),
        CodecError::Other(m) => ApiError::Internal(format!("tokenizer: {m}")),
    }
}

/// Runs blocking tokenizer work on the blocking pool.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))?
}

/// Everything the engine needs for one prompt.
pub struct PromptJob {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    /// The grammar every sequence of this prompt generates under.
    pub grammar: Option<std::sync::Arc<crate::structured::CompiledGrammar>>,
}

/// Submits each prompt as its own engine request; receivers in prompt order.
pub fn submit_all(
    state: &AppState,
    request_id: &str,
    jobs: Vec<PromptJob>,
    sampling: &SamplingParams,
    stop: &StopCriteria,
    n: usize,
) -> Result<Vec<UnboundedReceiver<TokenEvent>>, ApiError> {
    jobs.into_iter()
        .enumerate()
        .map(|(i, job)| {
            let req = ValidRequest {
                request_id: format!("{request_id}-{i}"),
                prompt_ids: job.prompt_ids,
                sampling: sampling.clone(),
                stop: StopCriteria { max_tokens: job.max_tokens, ..stop.clone() },
                n,
                priority: Priority::Interactive,
                grammar: job.grammar,
            };
            state.engine.submit(req).map_err(|e| match e {
                SubmitError::Invalid(m) => ApiError::Invalid { message: m, param: None, code: None },
                SubmitError::Closed => ApiError::ShuttingDown,
            })
        })
        .collect()
}
