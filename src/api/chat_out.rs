//! Chat responses, whole (`chat.completion`) or streamed
//! (`chat.completion.chunk`). With tools, each choice's text goes through
//! the tool-call parser: calls become `message.tool_calls` (content null when
//! there is no text besides) and `finish_reason: "tool_calls"`; streamed,
//! each call is one delta with `id`, `type` and `name`, then `arguments`
//! fragments that join into the non-streamed string.

use std::sync::Arc;

use rand::distributions::{Alphanumeric, DistString};

use super::error::ApiError;
use super::events::{Delta, Running, Step};
use super::logprobs::chat_logprob;
use super::port::TextCodec;
use super::sse::ChunkFormat;
use super::tools::{CallReading, ParsedOutput, ToolEvent, ToolStream};
use super::wire_out::*;
use super::ResponseMeta;

/// A new tool call id: `call_` + 24 alphanumerics.
pub fn call_id() -> String {
    format!("call_{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 24))
}

/// "tool_calls" replaces "stop" when the choice made calls.
fn finish_reason(finish: &str, calls: usize) -> String {
    if calls > 0 && finish == "stop" { "tool_calls" } else { finish }.to_string()
}

/// One choice's message from its whole text.
fn message(text: String, tools: Option<CallReading>) -> ChatMessageOut {
    let Some(reading) = tools else {
        return ChatMessageOut { role: "assistant".into(), content: Some(text), refusal: None, tool_calls: None };
    };
    let forced = reading.forced.is_some();
    let parsed = ParsedOutput::parse(reading, &text);
    let calls: Vec<ToolCall> = parsed
        .calls
        .into_iter()
        .map(|(name, arguments)| ToolCall { id: call_id(), kind: "function".into(), function: FunctionCall { name, arguments } })
        .collect();
    let text_only = calls.is_empty() && !forced;
    let content = if text_only || !parsed.content.trim().is_empty() { Some(parsed.content) } else { None };
    let tool_calls = (!calls.is_empty()).then_some(calls);
    ChatMessageOut { role: "assistant".into(), content, refusal: None, tool_calls }
}

/// Waits for every choice and builds the whole response.
pub async fn collect(
    mut running: Running,
    meta: ResponseMeta,
    codec: &dyn TextCodec,
    tools: Option<CallReading>,
) -> Result<ChatCompletionResponse, ApiError> {
    let k = running.num_choices();
    let mut texts = vec![String::new(); k];
    let mut lps: Vec<Option<ChatLogprobs>> = vec![None; k];
    let mut finish = vec!["stop"; k];
    let usage = loop {
        match running.next_step().await {
            Some(Step::Delta(d)) => {
                texts[d.choice].push_str(&d.text);
                if let Some(lp) = &d.logprob {
                    lps[d.choice].get_or_insert_with(Default::default).content.push(chat_logprob(codec, lp));
                }
                if let Some(f) = d.finish {
                    finish[d.choice] = f;
                }
            }
            Some(Step::Usage(u)) => break u,
            Some(Step::Error(e)) => return Err(e),
            None => return Err(ApiError::Internal("stream ended without usage".into())),
        }
    };
    let choices = (0..k)
        .map(|i| {
            let message = message(std::mem::take(&mut texts[i]), tools.clone());
            let calls = message.tool_calls.as_ref().map_or(0, Vec::len);
            ChatChoice { index: i, message, logprobs: lps[i].take(), finish_reason: finish_reason(finish[i], calls) }
        })
        .collect();
    Ok(ChatCompletionResponse {
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.fingerprint,
        choices,
        usage,
    })
}

/// `chat.completion.chunk` payloads.
pub struct ChatChunks {
    meta: ResponseMeta,
    codec: Arc<dyn TextCodec>,
    include_usage: bool,
    choices: usize,
    /// One tool-call parser per choice when tools are active.
    tools: Option<Vec<ToolStream>>,
}

impl ChatChunks {
    pub fn new(meta: ResponseMeta, codec: Arc<dyn TextCodec>, include_usage: bool, choices: usize, tools: Option<CallReading>) -> Self {
        let tools = tools.map(|r| (0..choices).map(|_| ToolStream::reading(r.clone())).collect());
        ChatChunks { meta, codec, include_usage, choices, tools }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        let chunk = ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: self.meta.fingerprint.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn one(&self, index: usize, delta: ChatDelta, logprobs: Option<ChatLogprobs>, finish: Option<&str>) -> String {
        let choice = ChatChunkChoice { index, delta, logprobs, finish_reason: finish.map(str::to_string) };
        self.chunk(vec![choice], None)
    }

    /// The deltas of one step's text: plain content, or parsed tool events.
    fn deltas(&mut self, d: &Delta) -> Vec<ChatDelta> {
        let Some(streams) = self.tools.as_mut() else {
            return if d.text.is_empty() { Vec::new() } else { vec![ChatDelta { content: Some(d.text.clone()), ..Default::default() }] };
        };
        let s = &mut streams[d.choice];
        let mut events = s.push(&d.text);
        if d.finish.is_some() {
            events.extend(s.finish());
        }
        events.into_iter().map(event_delta).collect()
    }
}

fn event_delta(e: ToolEvent) -> ChatDelta {
    let call = |index, id: Option<String>, name: Option<String>, arguments: Option<String>| ToolCallDelta {
        index,
        kind: id.as_ref().map(|_| "function".to_string()),
        id,
        function: FunctionCallDelta { name, arguments },
    };
    match e {
        ToolEvent::Text(t) => ChatDelta { content: Some(t), ..Default::default() },
        ToolEvent::Start { index, name } => {
            ChatDelta { tool_calls: Some(vec![call(index, Some(call_id()), Some(name), Some(String::new()))]), ..Default::default() }
        }
        ToolEvent::Args { index, fragment } => {
            ChatDelta { tool_calls: Some(vec![call(index, None, None, Some(fragment))]), ..Default::default() }
        }
    }
}

impl ChunkFormat for ChatChunks {
    fn prelude(&mut self) -> Vec<String> {
        (0..self.choices)
            .map(|i| {
                let delta = ChatDelta { role: Some("assistant".into()), content: Some(String::new()), tool_calls: None };
                self.one(i, delta, None, None)
            })
            .collect()
    }

    fn delta(&mut self, d: Delta) -> Vec<String> {
        let mut lp = d.logprob.as_ref().map(|lp| ChatLogprobs { content: vec![chat_logprob(self.codec.as_ref(), lp)], refusal: None });
        let mut deltas = self.deltas(&d);
        if deltas.is_empty() && lp.is_some() {
            deltas.push(ChatDelta { content: Some(String::new()), ..Default::default() });
        }
        let mut out: Vec<String> = deltas.into_iter().map(|delta| self.one(d.choice, delta, lp.take(), None)).collect();
        if let Some(f) = d.finish {
            let calls = self.tools.as_ref().map_or(0, |s| s[d.choice].num_calls());
            out.push(self.one(d.choice, ChatDelta::default(), None, Some(&finish_reason(f, calls))));
        }
        out
    }

    fn usage(&mut self, usage: Usage) -> Option<String> {
        self.include_usage.then(|| self.chunk(Vec::new(), Some(usage)))
    }
}
