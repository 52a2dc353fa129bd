//! Tokenizer: a `tokenizers::Tokenizer` plus what the engine needs around it
//! (BOS/EOS ids, which ids are special, the chat template), built from a
//! Hugging Face directory or from GGUF metadata; and the incremental
//! detokenizer used when streaming.
//!
//! Invariant: `encode(text, true)` adds exactly the special tokens the model
//! asks for (BOS when `add_bos`, EOS when `add_eos`) and nothing else; the
//! inner tokenizer's own post-processor is used only for Hugging Face
//! directories (it is how transformers adds them there).

mod bytes;
mod chat;
mod detok;
mod gguf;
mod hf;
mod pretok;

pub use chat::{ChatMessage, ChatTemplate};
pub use detok::IncrementalDetokenizer;
pub use gguf::GgufVocab;

use std::collections::HashSet;
use std::path::Path;

use crate::model::gguf::GgufFile;

/// Everything that can go wrong building or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {msg}")]
    Load { path: String, msg: String },
    #[error("GGUF tokenizer metadata: {0}")]
    Gguf(String),
    #[error("unsupported GGUF tokenizer model '{0}' (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    BadId { id: u32, vocab_size: usize },
    #[error("this model has no chat template")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

/// How the special ids around a sequence are added on `encode(_, true)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Every id that ends generation (EOS, end-of-turn ...), EOS first.
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// When true the inner tokenizer's post-processor adds BOS/EOS itself.
    pub use_post_processor: bool,
}

/// The bytes of every id below `vocab_size`: added tokens are their
/// content, vocabulary entries are read with the decoder's byte spelling.
fn all_token_bytes(inner: &tokenizers::Tokenizer, vocab_size: usize) -> Vec<Vec<u8>> {
    let spelling = bytes::spelling_of(inner.get_decoder());
    let table = bytes::byte_level_decoder();
    let added = inner.get_added_tokens_decoder();
    (0..vocab_size as u32)
        .map(|id| match added.get(&id) {
            Some(t) => t.content.as_bytes().to_vec(),
            None => inner.id_to_token(id).map(|p| bytes::piece_bytes(&p, spelling, &table)).unwrap_or_default(),
        })
        .collect()
}

/// A model's tokenizer. Cheap to share behind `Arc`; all methods take `&self`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    ids: SpecialIds,
    /// Ids of special (control) tokens, skipped when decoding for output.
    special: HashSet<u32>,
    chat: Option<ChatTemplate>,
    /// Highest id + 1 (computed once: the inner tokenizer rebuilds its whole
    /// vocabulary map to count it).
    vocab_size: usize,
    /// Raw bytes of each id (see `bytes`); empty for ids with no entry.
    token_bytes: Vec<Vec<u8>>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (chat template,
    /// bos/eos tokens, add_bos_token) from a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        hf::load(dir)
    }

    /// Builds the tokenizer from GGUF `tokenizer.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let vocab = GgufVocab::from_gguf(g)?;
        Self::from_gguf_vocab(&vocab)
    }

    /// Builds the tokenizer from already extracted GGUF tokenizer metadata.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
        let (inner, ids) = gguf::build(v)?;
        let name = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize)).cloned();
        let chat = match &v.chat_template {
            Some(src) => Some(ChatTemplate::new(src, name(ids.bos), name(ids.eos))?),
            None => None,
        };
        Ok(Tokenizer::from_parts(inner, ids, chat))
    }

    pub(crate) fn from_parts(
        inner: tokenizers::Tokenizer,
        ids: SpecialIds,
        chat: Option<ChatTemplate>,
    ) -> Tokenizer {
        let special = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1);
        let token_bytes = all_token_bytes(&inner, vocab_size);
        Tokenizer { inner, ids, special, chat, vocab_size, token_bytes }
    }

    /// The raw bytes token `id` adds to the output (part of a UTF-8
    /// character for byte tokens); None for an id out of range. Special
    /// tokens give their text.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// Token ids of `text`. With `add_special_tokens` the model's BOS (and
    /// EOS where the model wants it) are added. Special-token strings that
    /// appear in `text` (e.g. `<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let post = add_special_tokens && self.ids.use_post_processor;
        let enc = self
            .inner
            .encode(text, post)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(enc.len() + 2);
        if add_special_tokens && !self.ids.use_post_processor {
            if let (true, Some(b)) = (self.ids.add_bos, self.ids.bos) {
                out.push(b);
            }
        }
        out.extend_from_slice(enc.get_ids());
        if add_special_tokens && !self.ids.use_post_processor {
            if let (true, Some(e)) = (self.ids.add_eos, self.ids.eos) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// `encode(text, true)` cut to at most `max_tokens` ids: the text's
    /// tokens are cut at the end and the post-processor's special tokens
    /// (e.g. BERT's [CLS] ... [SEP]) are kept, as transformers does with
    /// `truncation=True, max_length=max_tokens`.
    pub fn encode_truncated(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, TokenizerError> {
        let full = self.encode(text, true)?;
        if full.len() <= max_tokens {
            return Ok(full);
        }
        let body = self.encode(text, false)?;
        let added = full.len().saturating_sub(body.len());
        let keep = max_tokens.saturating_sub(added);
        if self.ids.use_post_processor {
            let mut enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
            enc.truncate(keep, 0, tokenizers::TruncationDirection::Right);
            let enc = self.inner.post_process(enc, None, true).map_err(|e| TokenizerError::Encode(e.to_string()))?;
            return Ok(enc.get_ids().to_vec());
        }
        let mut out = Vec::with_capacity(max_tokens);
        let bos = self.ids.add_bos && self.ids.bos.is_some();
        if bos {
            out.push(full[0]);
        }
        out.extend_from_slice(&body[..keep]);
        out.extend_from_slice(&full[bos as usize + body.len()..]);
        Ok(out)
    }

    /// The text of `ids`; with `skip_special_tokens` control tokens are left out.
    /// No clean-up of spaces is done (the text is what the tokens spell).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let n = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(TokenizerError::BadId { id, vocab_size: n });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of ids (highest id + 1), added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.ids.bos
    }

    /// Ids that end generation, EOS first. Never empty when the model names an EOS.
    pub fn eos_ids(&self) -> &[u32] {
        &self.ids.eos_ids
    }

    /// Whether `id` is a special (control) token, left out of output text.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Whether the chat template renders the `tools` variable (tool-call
    /// prompting through the model's own format).
    pub fn chat_template_supports_tools(&self) -> bool {
        self.chat.as_ref().is_some_and(ChatTemplate::uses_tools)
    }

    /// The chat template's source, when there is one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat.as_ref().map(ChatTemplate::source)
    }

    /// Renders the chat template over messages given as JSON objects
    /// (`content` may be null, `tool_calls`, `tool_call_id` and `name` are
    /// passed through) with the `tools` variable set when `tools` is Some.
    pub fn apply_chat_template_json(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let chat = self.chat.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        chat.render_json(messages, tools, add_generation_prompt)
    }

    /// Renders the model's chat template over `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let chat = self.chat.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        chat.render(messages, add_generation_prompt)
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
