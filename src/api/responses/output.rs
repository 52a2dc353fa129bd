//! The response object and its stream of semantic events, built from one
//! `Blocks` sequence so the streamed items and the final object agree:
//!
//! ```text
//! response.created, response.in_progress
//! per text block:  output_item.added, content_part.added,
//!                  output_text.delta*, output_text.done,
//!                  content_part.done, output_item.done
//! per call:        output_item.added, function_call_arguments.delta*,
//!                  function_call_arguments.done, output_item.done
//! response.completed | response.incomplete   (or error)
//! ```
//!
//! Every event carries `sequence_number` (0, 1, ...). At the end the
//! response is handed to `on_done` (storage).

use serde_json::{json, Value};

use crate::api::blocks::{Block, BlockEvent, Blocks};
use crate::api::error::ApiError;
use crate::api::new_id;
use crate::api::events::Delta;
use crate::api::sse_named::{Named, NamedEvents};
use crate::api::tools::CallReading;
use crate::api::wire_out::Usage;

/// Called once with the finished response object.
pub type OnDone = Box<dyn FnOnce(&Value) + Send>;

pub struct ResponseRun {
    /// The response object without `output`, `status` and `usage`.
    base: Value,
    blocks: Blocks,
    /// Item ids of the blocks, by index.
    item_ids: Vec<String>,
    finish: Option<&'static str>,
    /// When cut by max_output_tokens: the index of the first block the cut
    /// closed (that block and any after it are `incomplete` items).
    cut_from: Option<usize>,
    seq: u64,
    on_done: Option<OnDone>,
    /// The final response object, once finished.
    pub result: Option<Value>,
}

fn text_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" { json!([]) } else { json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]) };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// Responses usage from chat usage.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.prompt_tokens_details.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    })
}

impl ResponseRun {
    pub fn new(base: Value, tools: Option<CallReading>, on_done: Option<OnDone>) -> ResponseRun {
        ResponseRun { base, blocks: Blocks::new(tools, "call"), item_ids: Vec::new(), finish: None, cut_from: None, seq: 0, on_done, result: None }
    }

    fn event(&mut self, name: &'static str, mut data: Value) -> Named {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        (name, data)
    }

    fn snapshot(&self, status: &str, output: Value, usage: Value) -> Value {
        let mut r = self.base.clone();
        r["status"] = json!(status);
        r["output"] = output;
        r["usage"] = usage;
        r
    }

    fn item_of(&self, index: usize, b: &Block) -> Value {
        let id = &self.item_ids[index];
        let status = if self.cut_from.is_some_and(|c| index >= c) { "incomplete" } else { "completed" };
        match b {
            Block::Text(t) => text_item(id, t, status),
            Block::Call { call_id, name, arguments } => call_item(id, call_id, name, arguments, status),
        }
    }

    fn on_block(&mut self, index: usize, e: BlockEvent, out: &mut Vec<Named>) {
        match e {
            BlockEvent::OpenText => {
                let id = new_id("msg");
                self.item_ids.push(id.clone());
                out.push(self.event("response.output_item.added", json!({"output_index": index, "item": text_item(&id, "", "in_progress")})));
                let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                out.push(self.event("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": part})));
            }
            BlockEvent::Text(delta) => {
                let id = self.item_ids[index].clone();
                let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
                out.push(self.event("response.output_text.delta", data));
            }
            BlockEvent::OpenCall { call_id, name } => {
                let id = new_id("fc");
                self.item_ids.push(id.clone());
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                out.push(self.event("response.output_item.added", json!({"output_index": index, "item": item})));
            }
            BlockEvent::Args(delta) => {
                let id = self.item_ids[index].clone();
                out.push(self.event("response.function_call_arguments.delta", json!({"item_id": id, "output_index": index, "delta": delta})));
            }
            BlockEvent::Close(b) => {
                let id = self.item_ids[index].clone();
                match &b {
                    Block::Text(t) => {
                        let part = json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []});
                        let base = json!({"item_id": id, "output_index": index, "content_index": 0});
                        let mut done = base.clone();
                        done["text"] = json!(t);
                        done["logprobs"] = json!([]);
                        out.push(self.event("response.output_text.done", done));
                        let mut part_done = base;
                        part_done["part"] = part;
                        out.push(self.event("response.content_part.done", part_done));
                    }
                    Block::Call { name, arguments, .. } => {
                        let data = json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments});
                        out.push(self.event("response.function_call_arguments.done", data));
                    }
                }
                let item = self.item_of(index, &b);
                out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
            }
        }
    }
}

impl NamedEvents for ResponseRun {
    fn start(&mut self) -> Vec<Named> {
        let r = self.snapshot("in_progress", json!([]), Value::Null);
        vec![self.event("response.created", json!({"response": r.clone()})), self.event("response.in_progress", json!({"response": r}))]
    }

    fn delta(&mut self, d: Delta) -> Vec<Named> {
        let mut out = Vec::new();
        for (i, e) in self.blocks.push(&d.text) {
            self.on_block(i, e, &mut out);
        }
        if let Some(f) = d.finish {
            self.finish = Some(f);
        }
        out
    }

    fn finish(&mut self, usage: Usage) -> Vec<Named> {
        let mut out = Vec::new();
        if self.finish == Some("length") {
            self.cut_from = Some(self.blocks.closed.len());
        }
        for (i, e) in self.blocks.finish() {
            self.on_block(i, e, &mut out);
        }
        let output: Vec<Value> = self.blocks.closed.clone().iter().enumerate().map(|(i, b)| self.item_of(i, b)).collect();
        let incomplete = self.finish == Some("length");
        let status = if incomplete { "incomplete" } else { "completed" };
        let mut r = self.snapshot(status, Value::Array(output), usage_json(&usage));
        if incomplete {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        } else {
            r["completed_at"] = json!(crate::api::unix_now());
        }
        if let Some(done) = self.on_done.take() {
            done(&r);
        }
        self.result = Some(r.clone());
        let name = if incomplete { "response.incomplete" } else { "response.completed" };
        out.push(self.event(name, json!({"response": r})));
        out
    }

    fn error(&mut self, e: ApiError) -> Vec<Named> {
        let body = e.body().error;
        vec![self.event("error", json!({"code": body.code, "message": body.message, "param": body.param}))]
    }
}
