//! Offline generation (`kiln generate --prompts-file FILE`): every prompt of
//! a file goes through the engine at once; results come back in input order.
//!
//! File format, one prompt per line (blank lines skipped): a line starting
//! with `{` is a JSON object with `prompt` and optional per-line parameters
//! (`max_tokens`, `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `n`,
//! `stop` (string or list), `stop_token_ids`, `ignore_eos`,
//! `repetition_penalty`, `frequency_penalty`, `presence_penalty`); any other
//! line is the prompt text itself, verbatim.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{EngineError, EngineHandle, EventKind, Priority, StopCriteria, TokenEvent, ValidRequest};
use crate::sampling::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("line {line}: {msg}")]
    Invalid { line: usize, msg: String },
    #[error("line {line}: generation failed: {msg}")]
    Failed { line: usize, msg: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// One prompt of the file, with its own parameters (None: the defaults).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptLine {
    /// 1-based line number in the file (not part of the JSON).
    #[serde(skip)]
    pub line: usize,
    pub prompt: String,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub n: Option<usize>,
    #[serde(default)]
    pub stop: StopField,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: Option<bool>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
}

/// Defaults applied to every line.
#[derive(Clone, Debug)]
pub struct OfflineOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Wrap each prompt as a user message in the model's chat template.
    pub chat: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for OfflineOptions {
    fn default() -> Self {
        OfflineOptions { max_tokens: 256, sampling: SamplingParams::default(), chat: false, progress: true }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: &'static str,
    pub token_ids: Vec<u32>,
}

/// The outcome of one line, serializable as a JSON line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OfflineResult {
    pub line: usize,
    pub prompt: String,
    pub completions: Vec<Completion>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug)]
pub struct OfflineReport {
    /// In input order.
    pub results: Vec<OfflineResult>,
    pub elapsed: Duration,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl OfflineReport {
    /// Generated tokens per second of wall time, all prompts together.
    pub fn tokens_per_s(&self) -> f64 {
        self.completion_tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Parses a prompts file (plain lines or JSONL, mixed freely).
pub fn parse_prompts(text: &str) -> Result<Vec<PromptLine>, OfflineError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut p = if raw.trim_start().starts_with('{') {
            serde_json::from_str::<PromptLine>(raw).map_err(|e| OfflineError::Parse { line, msg: e.to_string() })?
        } else {
            PromptLine { prompt: raw.to_string(), ..Default::default() }
        };
        p.line = line;
        out.push(p);
    }
    Ok(out)
}

impl PromptLine {
    fn request(&self, tok: &Tokenizer, opts: &OfflineOptions) -> Result<ValidRequest, OfflineError> {
        let invalid = |msg: String| OfflineError::Invalid { line: self.line, msg };
        let prompt_ids = if opts.chat {
            let text = tok.apply_chat_template(&[ChatMessage::new("user", self.prompt.clone())], true);
            tok.encode(&text.map_err(|e| invalid(e.to_string()))?, false)
        } else {
            tok.encode(&self.prompt, true)
        }
        .map_err(|e| invalid(e.to_string()))?;
        let d = &opts.sampling;
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            seed: self.seed.or(d.seed),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            ..d.clone()
        };
        let stop_strings = match &self.stop {
            StopField::None => Vec::new(),
            StopField::One(s) => vec![s.clone()],
            StopField::Many(v) => v.clone(),
        };
        Ok(ValidRequest {
            request_id: format!("line-{}", self.line),
            prompt_ids,
            sampling,
            stop: StopCriteria {
                max_tokens: self.max_tokens.unwrap_or(opts.max_tokens),
                stop_token_ids: self.stop_token_ids.clone(),
                stop_strings,
                ignore_eos: self.ignore_eos.unwrap_or(false),
            },
            n: self.n.unwrap_or(1),
            priority: Priority::Interactive,
            grammar: None,
        })
    }
}

/// Runs every prompt through the engine concurrently. Every line is
/// tokenized and validated before anything is submitted.
pub fn run_prompts(
    engine: &EngineHandle,
    tokenizer: &Arc<Tokenizer>,
    prompts: &[PromptLine],
    opts: &OfflineOptions,
) -> Result<OfflineReport, OfflineError> {
    let reqs = prompts
        .iter()
        .map(|p| {
            let r = p.request(tokenizer, opts)?;
            engine.validate(&r).map_err(|e| OfflineError::Invalid { line: p.line, msg: e.to_string() })?;
            Ok(r)
        })
        .collect::<Result<Vec<_>, OfflineError>>()?;
    let bar = progress_bar(prompts.len(), opts.progress);
    let start = Instant::now();
    let mut pending = Vec::with_capacity(reqs.len());
    for (p, r) in prompts.iter().zip(reqs) {
        let (n, len) = (r.n, r.prompt_ids.len());
        pending.push((p, n, len, engine.submit(r)?));
    }
    let gen0 = engine.stats().generation_tokens_total;
    let tasks = pending.into_iter().map(|(p, n, len, rx)| {
        let bar = &bar;
        async move {
            let r = collect(p, n, len, rx).await;
            let tps = (engine.stats().generation_tokens_total - gen0) as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{tps:.1} tok/s"));
            bar.inc(1);
            r
        }
    });
    let results = futures::executor::block_on(join_all(tasks)).into_iter().collect::<Result<Vec<_>, _>>()?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(OfflineReport {
        prompt_tokens: results.iter().map(|r| r.prompt_tokens).sum(),
        completion_tokens: results.iter().map(|r| r.completion_tokens).sum(),
        results,
        elapsed,
    })
}

fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} prompts [{elapsed_precise}] {msg}") {
        bar.set_style(style);
    }
    bar
}

/// Reads one request's events until its n sequences have ended.
async fn collect(
    p: &PromptLine,
    n: usize,
    prompt_tokens: usize,
    mut rx: UnboundedReceiver<TokenEvent>,
) -> Result<OfflineResult, OfflineError> {
    let mut completions: Vec<Completion> =
        (0..n).map(|_| Completion { text: String::new(), finish_reason: "", token_ids: Vec::new() }).collect();
    let (mut cached_tokens, mut completion_tokens, mut open) = (0, 0, n);
    while open > 0 {
        let Some(ev) = rx.recv().await else {
            return Err(OfflineError::Failed { line: p.line, msg: "the engine stopped".into() });
        };
        let c = &mut completions[ev.index];
        match ev.kind {
            EventKind::Token { token_id, text, .. } => {
                c.token_ids.push(token_id);
                c.text.push_str(&text);
            }
            EventKind::Finished { reason, text, usage, .. } => {
                c.text.push_str(&text);
                c.finish_reason = reason.as_str();
                cached_tokens = cached_tokens.max(usage.cached_tokens);
                completion_tokens += usage.completion_tokens;
                open -= 1;
            }
            EventKind::Error(msg) => return Err(OfflineError::Failed { line: p.line, msg }),
            EventKind::PromptLogprobs { .. } => {}
        }
    }
    Ok(OfflineResult {
        line: p.line,
        prompt: p.prompt.clone(),
        completions,
        prompt_tokens,
        cached_tokens,
        completion_tokens,
    })
}
