//! The model's vocabulary as llguidance sees it: a `toktrie::TokTrie` built
//! from kiln's own token bytes (so a GGUF-built tokenizer works as well as
//! a Hugging Face one) and a tokenize function for the literals grammars
//! contain.

use std::sync::Arc;

use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// Text -> ids, with the model's tokenizer (no special tokens added).
pub type TokenizeFn = Arc<dyn Fn(&str) -> Vec<u32> + Send + Sync>;

/// Plain data describing a vocabulary.
pub struct VocabBytes {
    /// Raw bytes of each id (see `Tokenizer::token_bytes`).
    pub tokens: Vec<Vec<u8>>,
    /// Ids of special (control) tokens: they get toktrie's 0xFF marker so
    /// that grammar text never matches them, and grammars name them as
    /// `<|im_end|>`.
    pub special: Vec<u32>,
    /// Ids that end generation, the model's EOS first (never empty).
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
}

/// A `TokenizerEnv` over kiln's tokenizer.
pub struct KilnTokEnv {
    trie: TokTrie,
    tokenize: TokenizeFn,
}

impl KilnTokEnv {
    /// Builds the trie. `eos_ids` must not be empty.
    pub fn new(v: &VocabBytes, tokenize: TokenizeFn) -> KilnTokEnv {
        let mut words = v.tokens.clone();
        for &id in &v.special {
            if let Some(w) = words.get_mut(id as usize) {
                let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                marked.extend_from_slice(w);
                *w = marked;
            }
        }
        let eos = v.eos_ids.first().copied().unwrap_or(0);
        let mut info = TokRxInfo::new(words.len() as u32, eos);
        info.tok_bos = v.bos_id;
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&v.eos_ids);
        KilnTokEnv { trie, tokenize }
    }
}

impl TokenizerEnv for KilnTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// UTF-8 text goes through the model's tokenizer; other bytes (a split
    /// character) are tokenized greedily over the trie.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => (self.tokenize)(text),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
