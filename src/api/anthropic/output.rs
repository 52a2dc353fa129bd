//! The Message object and its event stream, built from one `Blocks`
//! sequence so both agree:
//!
//! ```text
//! message_start, ping
//! per block: content_block_start, content_block_delta*, content_block_stop
//!            (text_delta for text, input_json_delta for tool_use)
//! message_delta (stop_reason, stop_sequence, usage), message_stop
//! ```
//!
//! Usage follows Anthropic: `input_tokens` counts the prompt tokens not
//! read from the prefix cache, `cache_read_input_tokens` those that were.

use serde_json::{json, Value};

use super::error::error_body;
use crate::api::blocks::{Block, BlockEvent, Blocks};
use crate::api::error::ApiError;
use crate::api::events::Delta;
use crate::api::sse_named::{Named, NamedEvents};
use crate::api::tools::CallReading;
use crate::api::wire_out::Usage;

pub struct MessageRun {
    id: String,
    model: String,
    prompt_len: usize,
    blocks: Blocks,
    finish: Option<&'static str>,
    stop_sequence: Option<String>,
    /// The final Message object, once finished.
    pub result: Option<Value>,
}

/// A tool call's arguments as the `input` object.
fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            tracing::warn!(arguments, "a tool call's arguments are not a JSON object");
            json!({})
        }
    }
}

fn block_json(b: &Block) -> Value {
    match b {
        Block::Text(t) => json!({"type": "text", "text": t}),
        Block::Call { call_id, name, arguments } => json!({"type": "tool_use", "id": call_id, "name": name, "input": input_of(arguments)}),
    }
}

impl MessageRun {
    pub fn new(id: String, model: String, prompt_len: usize, tools: Option<CallReading>) -> MessageRun {
        MessageRun { id, model, prompt_len, blocks: Blocks::new(tools, "toolu"), finish: None, stop_sequence: None, result: None }
    }

    fn stop_reason(&self) -> &'static str {
        match self.finish {
            Some("length") => "max_tokens",
            _ if self.blocks.num_calls() > 0 => "tool_use",
            _ if self.stop_sequence.is_some() => "stop_sequence",
            _ => "end_turn",
        }
    }

    fn usage(&self, u: &Usage) -> Value {
        let cached = u.prompt_tokens_details.cached_tokens;
        json!({
            "input_tokens": u.prompt_tokens - cached,
            "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        })
    }

    fn on_block(&self, index: usize, e: BlockEvent, out: &mut Vec<Named>) {
        let ev = |name: &'static str, mut data: Value| {
            data["type"] = json!(name);
            (name, data)
        };
        match e {
            BlockEvent::OpenText => out.push(ev("content_block_start", json!({"index": index, "content_block": {"type": "text", "text": ""}}))),
            BlockEvent::Text(t) => out.push(ev("content_block_delta", json!({"index": index, "delta": {"type": "text_delta", "text": t}}))),
            BlockEvent::OpenCall { call_id, name } => {
                let block = json!({"type": "tool_use", "id": call_id, "name": name, "input": {}});
                out.push(ev("content_block_start", json!({"index": index, "content_block": block})));
            }
            BlockEvent::Args(a) => {
                out.push(ev("content_block_delta", json!({"index": index, "delta": {"type": "input_json_delta", "partial_json": a}})))
            }
            BlockEvent::Close(_) => out.push(ev("content_block_stop", json!({"index": index}))),
        }
    }

    fn push_all(&mut self, events: Vec<(usize, BlockEvent)>) -> Vec<Named> {
        let mut out = Vec::new();
        for (i, e) in events {
            self.on_block(i, e, &mut out);
        }
        out
    }
}

impl NamedEvents for MessageRun {
    fn start(&mut self) -> Vec<Named> {
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.prompt_len, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        });
        vec![("message_start", json!({"type": "message_start", "message": message})), ("ping", json!({"type": "ping"}))]
    }

    fn delta(&mut self, d: Delta) -> Vec<Named> {
        if let Some(f) = d.finish {
            self.finish = Some(f);
            self.stop_sequence = d.stop_string.clone();
        }
        let events = self.blocks.push(&d.text);
        self.push_all(events)
    }

    fn finish(&mut self, usage: Usage) -> Vec<Named> {
        let events = self.blocks.finish();
        let mut out = self.push_all(events);
        let stop_reason = self.stop_reason();
        let usage = self.usage(&usage);
        let stop_sequence = if stop_reason == "stop_sequence" { self.stop_sequence.clone() } else { None };
        self.result = Some(json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": self.blocks.closed.iter().map(block_json).collect::<Vec<_>>(),
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage,
        }));
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage});
        out.push(("message_delta", delta));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn error(&mut self, e: ApiError) -> Vec<Named> {
        vec![("error", error_body(&e))]
    }
}
