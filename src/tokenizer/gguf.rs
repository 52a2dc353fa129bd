//! A `tokenizers::Tokenizer` built from GGUF `tokenizer.*` metadata.
//!
//! Two GGUF tokenizer models exist in the wild for the architectures kiln runs:
//! - `gpt2`: byte-level BPE (tokens + ranked merges), split first by the
//!   pre-tokenizer named in `tokenizer.ggml.pre` (see `pretok`);
//! - `llama`: SentencePiece BPE (tokens + scores), spaces as `▁`, an optional
//!   leading `▁` (`add_space_prefix`), unknown characters spelled with
//!   `<0xNN>` byte tokens. It becomes a BPE whose merge ranks follow the
//!   scores of the merged pieces (higher score merges first).
//!
//! Token types (`tokenizer.ggml.token_type`): 1 normal, 2 unknown, 3 control,
//! 4 user-defined, 5 unused, 6 byte. Control tokens become special added
//! tokens (matched whole in text, skipped when decoding for output);
//! user-defined ones become plain added tokens (matched whole, printed).

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, NormalizerWrapper};

use super::{pretok, SpecialIds, TokenizerError};
use crate::model::gguf::GgufFile;

const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Texts of control tokens that end a turn; generation stops on them too.
const END_OF_TURN: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<|eom_id|>",
];

/// The `tokenizer.*` metadata of a GGUF file, as plain data.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" or "llama".
    pub model: String,
    /// `tokenizer.ggml.pre`; `None` means "default".
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    /// "left right" pairs, highest priority first.
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the tokenizer metadata; missing tokens or model is an error.
    pub fn from_gguf(g: &GgufFile) -> Result<GgufVocab, TokenizerError> {
        let model = g
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| TokenizerError::Gguf("missing tokenizer.ggml.model".into()))?
            .to_string();
        let tokens: Vec<String> = g
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| TokenizerError::Gguf("missing tokenizer.ggml.tokens".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let id = |k: &str| g.get_u64(k).and_then(|v| u32::try_from(v).ok());
        let flag = |k: &str| g.get_bool(k);
        Ok(GgufVocab {
            model,
            pre: g.get_str("tokenizer.ggml.pre").map(str::to_string),
            tokens,
            scores: g.get_f32_array("tokenizer.ggml.scores"),
            token_types: g.get_i32_array("tokenizer.ggml.token_type"),
            merges: g
                .get_str_array("tokenizer.ggml.merges")
                .map(|m| m.into_iter().map(str::to_string).collect()),
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
            unk_id: id("tokenizer.ggml.unknown_token_id"),
            eot_id: id("tokenizer.ggml.eot_token_id"),
            eom_id: id("tokenizer.ggml.eom_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
            chat_template: g.get_str("tokenizer.chat_template").map(str::to_string),
        })
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.as_ref().and_then(|t| t.get(id).copied()).unwrap_or(1)
    }

    /// `Some(id)` only if the id names a token of this vocabulary.
    fn valid(&self, id: Option<u32>) -> Option<u32> {
        id.filter(|&i| (i as usize) < self.tokens.len())
    }
}

/// Builds the inner tokenizer and the special-id policy.
pub(crate) fn build(v: &GgufVocab) -> Result<(tokenizers::Tokenizer, SpecialIds), TokenizerError> {
    if v.tokens.is_empty() {
        return Err(TokenizerError::Gguf("tokenizer.ggml.tokens is empty".into()));
    }
    if let Some(t) = &v.token_types {
        if t.len() != v.tokens.len() {
            return Err(TokenizerError::Gguf(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                t.len(),
                v.tokens.len()
            )));
        }
    }
    let (mut tok, spm) = match v.model.as_str() {
        "gpt2" => (build_gpt2(v)?, false),
        "llama" => (build_llama(v)?, true),
        other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
    };
    add_added_tokens(&mut tok, v);
    Ok((tok, special_ids(v, spm)))
}

fn vocab_map(v: &GgufVocab) -> tokenizers::models::bpe::Vocab {
    v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
}

fn bpe_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Gguf(format!("cannot build BPE model: {e}"))
}

/// Byte-level BPE with the merges stored in the file.
fn build_gpt2(v: &GgufVocab) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let raw = v
        .merges
        .as_ref()
        .ok_or_else(|| TokenizerError::Gguf("gpt2 tokenizer without tokenizer.ggml.merges".into()))?;
    let mut merges = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        // The separator is the first space after the first character: a merge
        // may have a left part that is itself a space-like character.
        let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(p, _)| p);
        let Some(p) = split else {
            return Err(TokenizerError::Gguf(format!("merge {i} {m:?} has no space separator")));
        };
        merges.push((m[..p].to_string(), m[p + 1..].to_string()));
    }
    let pre = v.pre.as_deref().unwrap_or("default");
    let (pre_tok, ignore_merges) = pretok::byte_level_pre_tokenizer(pre)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(v), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(bpe_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(tok)
}

/// SentencePiece-style BPE: merges derived from the scores, byte fallback.
fn build_llama(v: &GgufVocab) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores = v
        .scores
        .as_ref()
        .ok_or_else(|| TokenizerError::Gguf("llama tokenizer without tokenizer.ggml.scores".into()))?;
    if scores.len() != v.tokens.len() {
        return Err(TokenizerError::Gguf(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            v.tokens.len()
        )));
    }
    let merges = merges_from_scores(&v.tokens, scores);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_map(v), merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = v.valid(v.unk_id) {
        builder = builder.unk_token(v.tokens[unk as usize].clone());
    }
    let bpe = builder.build().map_err(bpe_err)?;
    let prefix = v.add_space_prefix.unwrap_or(true);
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if prefix {
        norm.push(Prepend::new("▁".into()).into());
    }
    norm.push(Replace::new(" ", "▁").map_err(bpe_err)?.into());
    tok.with_normalizer(Some(NormalizerSequence::new(norm)));

    let mut dec: Vec<DecoderWrapper> = vec![
        ByteFallback::new().into(),
        Fuse::new().into(),
        tokenizers::decoders::DecoderWrapper::Replace(Replace::new("▁", " ").map_err(bpe_err)?),
    ];
    if prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(tok)
}

/// Merge ranks for a SentencePiece vocabulary: every way to cut a piece into
/// two pieces of the vocabulary is a merge; merges are ordered by the score
/// of the merged piece (highest first), then by vocabulary order, then by the
/// scores of the two halves (highest first). Sorts are stable.
pub(crate) fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    // piece -> score of its last occurrence; iteration in first-seen order.
    let mut score: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        if score.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    let mut all: Vec<(f32, &str, &str)> = Vec::new();
    for piece in order {
        let mut local: Vec<(f32, &str, &str)> = Vec::new();
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if score.contains_key(l) && score.contains_key(r) {
                local.push((score[piece], l, r));
            }
        }
        local.sort_by(|a, b| {
            let ka = (score[a.1], score[a.2]);
            let kb = (score[b.1], score[b.2]);
            kb.0.total_cmp(&ka.0).then(kb.1.total_cmp(&ka.1))
        });
        all.extend(local);
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter().map(|(_, l, r)| (l.to_string(), r.to_string())).collect()
}

/// Control tokens (and the unk/bos/eos tokens) become special added tokens,
/// user-defined tokens plain added tokens; none is normalized.
fn add_added_tokens(tok: &mut tokenizers::Tokenizer, v: &GgufVocab) {
    let named: HashSet<u32> = [v.unk_id, v.bos_id, v.eos_id].into_iter().flatten().collect();
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (i, t) in v.tokens.iter().enumerate() {
        let ty = v.token_type(i);
        if ty == TYPE_CONTROL || (named.contains(&(i as u32)) && ty != 6) {
            special.push(AddedToken::from(t.clone(), true).normalized(false));
        } else if ty == TYPE_USER_DEFINED {
            plain.push(AddedToken::from(t.clone(), false).normalized(false));
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&plain);
}

/// BOS/EOS policy: the file's flags, else SentencePiece adds BOS and
/// byte-level BPE adds nothing. Generation stops on EOS, the end-of-turn and
/// end-of-message ids, and control tokens that spell an end of turn.
fn special_ids(v: &GgufVocab, spm: bool) -> SpecialIds {
    let eos = v.valid(v.eos_id);
    let mut eos_ids: Vec<u32> = Vec::new();
    let mut push = |id: Option<u32>| {
        if let Some(i) = id {
            if !eos_ids.contains(&i) {
                eos_ids.push(i);
            }
        }
    };
    push(eos);
    push(v.valid(v.eot_id));
    push(v.valid(v.eom_id));
    for (i, t) in v.tokens.iter().enumerate() {
        if v.token_type(i) == TYPE_CONTROL && END_OF_TURN.contains(&t.as_str()) {
            push(Some(i as u32));
        }
    }
    SpecialIds {
        bos: v.valid(v.bos_id),
        eos,
        eos_ids,
        add_bos: v.add_bos.unwrap_or(spm),
        add_eos: v.add_eos.unwrap_or(false),
        use_post_processor: false,
    }
}
