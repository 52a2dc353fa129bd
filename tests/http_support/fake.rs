//! An in-process fake engine and byte-level tokenizer for router tests.
//!
//! The fake engine's behaviour is scripted by words in the prompt:
//! HANG (never answers until the receiver is dropped), SLOW (30 ms per
//! token), FAIL (engine error after the first token), STOP (stops after two
//! tokens with held-back text "."). Otherwise each of the n sequences emits
//! max_tokens letters, sequence i starting at letter i.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::api::{ChatTurn, CodecError, Engine, EngineGauges, SubmitError, TextCodec};
use kiln::engine::{EventKind, FinishReason, SeqUsage, TokenEvent, TokenLogprob, ValidRequest};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// ids 0..3 are <bos>, <eos>, <pad>; byte b is id b + 3.
pub struct FakeCodec;

pub const SPECIALS: [&str; 3] = ["<bos>", "<eos>", "<pad>"];

impl TextCodec for FakeCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, CodecError> {
        let bos = add_special_tokens.then_some(0u32);
        Ok(bos.into_iter().chain(text.bytes().map(|b| b as u32 + 3)).collect())
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, CodecError> {
        let mut bytes = Vec::new();
        for &id in ids {
            match id {
                0..=2 if skip_special_tokens => {}
                0..=2 => bytes.extend_from_slice(SPECIALS[id as usize].as_bytes()),
                3..=258 => bytes.push((id - 3) as u8),
                _ => return Err(CodecError::Other(format!("id {id} out of range"))),
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vocab_size(&self) -> usize {
        259
    }

    fn apply_chat_template(&self, turns: &[ChatTurn], add_generation_prompt: bool) -> Result<String, CodecError> {
        let mut out = String::from("<bos>");
        for t in turns {
            if t.content.contains("BADTEMPLATE") {
                return Err(CodecError::Template("scripted template failure".into()));
            }
            out.push_str(&format!("{}: {}\n", t.role, t.content));
        }
        if add_generation_prompt {
            out.push_str("assistant: ");
        }
        Ok(out)
    }
}

/// Counts live requests (a stand-in for KV blocks in use) and keeps every
/// submitted request for inspection.
#[derive(Default)]
pub struct FakeEngine {
    pub live: Arc<AtomicUsize>,
    pub submitted: Mutex<Vec<ValidRequest>>,
}

impl Engine for FakeEngine {
    fn submit(&self, req: ValidRequest) -> Result<UnboundedReceiver<TokenEvent>, SubmitError> {
        let (tx, rx) = unbounded_channel();
        self.submitted.lock().unwrap().push(req.clone());
        let live = self.live.clone();
        live.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            script(req, tx).await;
            live.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(rx)
    }

    fn gauges(&self) -> EngineGauges {
        let live = self.live.load(Ordering::SeqCst);
        EngineGauges { num_running: live, kv_blocks_used: live, kv_blocks_total: 100, steps: 1, ..Default::default() }
    }

    fn shutdown(&self) {}
}

fn prompt_text(ids: &[u32]) -> String {
    FakeCodec.decode(ids, true).unwrap_or_default()
}

fn logprob(id: u32, k: Option<u32>) -> Option<TokenLogprob> {
    let k = k?;
    let top = (0..k).map(|j| (3 + b'a' as u32 + j, -0.25 - j as f32)).collect();
    Some(TokenLogprob { token_id: id, logprob: -0.25, top })
}

async fn script(req: ValidRequest, tx: UnboundedSender<TokenEvent>) {
    let prompt = prompt_text(&req.prompt_ids);
    if prompt.contains("HANG") {
        tx.closed().await;
        return;
    }
    let usage = |completion| SeqUsage { prompt_tokens: req.prompt_ids.len(), cached_tokens: 1, completion_tokens: completion, ..Default::default() };
    let send = |index, kind| tx.send(TokenEvent { index, kind }).is_ok();
    for step in 0..req.stop.max_tokens {
        if prompt.contains("SLOW") {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for i in 0..req.n {
            if prompt.contains("FAIL") && step == 1 {
                send(i, EventKind::Error("scripted engine failure".into()));
                return;
            }
            if prompt.contains("STOP") && step == 2 {
                if !send(i, EventKind::Finished { reason: FinishReason::Stop, text: ".".into(), usage: usage(2), stop_string: None }) {
                    return;
                }
                continue;
            }
            let letter = b'a' + ((step + i) % 26) as u8;
            let id = letter as u32 + 3;
            let kind = EventKind::Token { token_id: id, text: (letter as char).to_string(), logprob: logprob(id, req.sampling.logprobs) };
            if !send(i, kind) {
                return;
            }
        }
        if prompt.contains("STOP") && step == 2 {
            return;
        }
        tokio::task::yield_now().await;
    }
    for i in 0..req.n {
        send(i, EventKind::Finished { reason: FinishReason::Length, text: String::new(), usage: usage(req.stop.max_tokens), stop_string: None });
    }
}
