//! The real tokenizer (and engine) behind the `port` traits.

use super::port::{ChatTurn, CodecError, TextCodec};
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
}
