//! The real tokenizer and engine behind the `port` traits.

use tokio::sync::mpsc::UnboundedReceiver;

use super::port::{ChatTurn, CodecError, Engine, EngineGauges, SubmitError, TextCodec};
use crate::engine::{EngineError, EngineHandle, TokenEvent, ValidRequest};
use crate::structured::VocabBytes;
use crate::tokenizer::{ChatMessage, Tokenizer, TokenizerError};

fn codec_err(e: TokenizerError) -> CodecError {
    match e {
        TokenizerError::Template(_) | TokenizerError::NoChatTemplate => CodecError::Template(e.to_string()),
        other => CodecError::Other(other.to_string()),
    }
}

impl TextCodec for Tokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, CodecError> {
        Tokenizer::encode(self, text, add_special_tokens).map_err(codec_err)
    }

    fn encode_truncated(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, CodecError> {
        Tokenizer::encode_truncated(self, text, max_tokens).map_err(codec_err)
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, CodecError> {
        Tokenizer::decode(self, ids, skip_special_tokens).map_err(codec_err)
    }

    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }

    fn apply_chat_template(&self, turns: &[ChatTurn], add_generation_prompt: bool) -> Result<String, CodecError> {
        let messages: Vec<ChatMessage> = turns.iter().map(|t| ChatMessage::new(t.role.clone(), t.content.clone())).collect();
        Tokenizer::apply_chat_template(self, &messages, add_generation_prompt).map_err(codec_err)
    }

    fn render_chat(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, CodecError> {
        Tokenizer::apply_chat_template_json(self, messages, tools, add_generation_prompt).map_err(codec_err)
    }

    fn template_supports_tools(&self) -> bool {
        Tokenizer::chat_template_supports_tools(self)
    }

    fn chat_template_source(&self) -> Option<String> {
        Tokenizer::chat_template_source(self).map(str::to_string)
    }

    fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        Tokenizer::token_bytes(self, id).map(<[u8]>::to_vec)
    }

    fn grammar_vocab(&self) -> Option<VocabBytes> {
        let n = self.vocab_size() as u32;
        let eos_ids = self.eos_ids().to_vec();
        if eos_ids.is_empty() {
            return None;
        }
        Some(VocabBytes {
            tokens: (0..n).map(|id| Tokenizer::token_bytes(self, id).unwrap_or_default().to_vec()).collect(),
            special: (0..n).filter(|&id| self.is_special(id)).collect(),
            eos_ids,
            bos_id: self.bos_id(),
        })
    }
}

impl Engine for EngineHandle {
    fn submit(&self, request: ValidRequest) -> Result<UnboundedReceiver<TokenEvent>, SubmitError> {
        EngineHandle::submit(self, request).map_err(|e| match e {
            EngineError::InvalidRequest(m) => SubmitError::Invalid(m),
            EngineError::Shutdown | EngineError::Config(_) => SubmitError::Closed,
        })
    }

    fn gauges(&self) -> EngineGauges {
        let s = self.stats();
        EngineGauges {
            num_running: s.num_running as usize,
            num_waiting: s.num_waiting as usize,
            kv_blocks_used: s.kv_blocks_used as usize,
            kv_blocks_total: s.kv_blocks_total as usize,
            prefix_cache_queries: s.prefix_cache_queries,
            prefix_cache_hits: s.prefix_cache_hits,
            num_preemptions: s.num_preemptions,
            steps: s.steps,
            block_size: self.config().block_size,
        }
    }

    fn heartbeat_age(&self) -> Option<std::time::Duration> {
        Some(EngineHandle::heartbeat_age(self))
    }

    fn observe_steps(&self, observer: crate::engine::handle::StepObserver) {
        EngineHandle::observe_steps(self, observer)
    }

    fn shutdown(&self) {
        EngineHandle::shutdown(self)
    }
}
