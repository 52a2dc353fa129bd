//! Grammar compilation with a bounded cache, and the per-sequence matcher
//! state the engine advances token by token.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llguidance::{Matcher, ParserFactory};
use toktrie::TokEnv;

use super::cache::LruCache;
use super::limits::oversized_prediction;
use super::spec::GrammarSpec;
use super::tokenv::{KilnTokEnv, TokenizeFn, VocabBytes};
use crate::sampling::mask::mask_words;

/// Compiled grammars kept by default (`--grammar-cache-size`).
pub const DEFAULT_CACHE_SIZE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// The grammar or schema is malformed, or uses a feature llguidance
    /// cannot enforce; the message is llguidance's and names the feature.
    #[error("{0}")]
    Invalid(String),
    /// The vocabulary cannot be turned into a token trie.
    #[error("cannot prepare constrained decoding for this tokenizer: {0}")]
    Vocabulary(String),
}

/// Compiles `GrammarSpec`s over one model's vocabulary.
pub struct GrammarCompiler {
    factory: ParserFactory,
    cache: Mutex<LruCache<Arc<CompiledGrammar>>>,
}

/// What `compile` returns: the grammar and how it was obtained.
pub struct Compiled {
    pub grammar: Arc<CompiledGrammar>,
    pub cache_hit: bool,
    /// Time spent compiling (zero on a cache hit).
    pub compile_time: Duration,
}

impl GrammarCompiler {
    /// Builds the token trie and llguidance's parser factory (tens of ms for
    /// a 50k vocabulary). `cache_size` bounds the compiled-grammar cache.
    pub fn new(vocab: &VocabBytes, tokenize: TokenizeFn, cache_size: usize) -> Result<GrammarCompiler, GrammarError> {
        if vocab.tokens.is_empty() || vocab.eos_ids.is_empty() {
            return Err(GrammarError::Vocabulary("the vocabulary is empty or names no EOS token".into()));
        }
        let env: TokEnv = Arc::new(KilnTokEnv::new(vocab, tokenize));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Vocabulary(format!("{e:#}")))?;
        factory.quiet();
        Ok(GrammarCompiler { factory, cache: Mutex::new(LruCache::new(cache_size)) })
    }

    /// The compiled grammar of `spec`, from the cache when it is there. A
    /// grammar that fails to compile, or allows no first token, is an error.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Compiled, GrammarError> {
        let key = spec.cache_key();
        if let Some(g) = self.lock().get(&key) {
            return Ok(Compiled { grammar: g, cache_hit: true, compile_time: Duration::ZERO });
        }
        let start = Instant::now();
        let parser = self.factory.create_parser(spec.to_llguidance()).map_err(|e| GrammarError::Invalid(format!("{e:#}")))?;
        let limit = self.factory.limits().max_items_in_row;
        if oversized_prediction(parser.parser.grammar(), limit).is_some() {
            return Err(GrammarError::Invalid(format!(
                "the schema offers more than {limit} alternatives at one point (an anyOf, oneOf or type list with that many \
                 non-constant choices); the grammar engine (llguidance) accepts at most {limit} there"
            )));
        }
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(e));
        }
        let vocab_size = self.factory.tok_env().tok_trie().vocab_size();
        let grammar = Arc::new(CompiledGrammar { matcher, vocab_size });
        // An unsatisfiable schema shows up as a first mask with no token.
        grammar.start().next_mask(mask_words(vocab_size)).map_err(GrammarError::Invalid)?;
        let compile_time = start.elapsed();
        self.lock().insert(key, grammar.clone());
        Ok(Compiled { grammar, cache_hit: false, compile_time })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Arc<CompiledGrammar>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// llguidance's errors carry a dump of the parser state after the first
/// line; clients get the first line.
fn first_line(e: &str) -> &str {
    e.lines().next().unwrap_or(e).trim()
}

/// A mask error as a message; llguidance's `NoExtensionBias` means that no
/// token of the vocabulary can continue the output.
fn describe(e: &str) -> String {
    if e.contains("NoExtensionBias") {
        "the grammar allows no next token (no token of the vocabulary continues the output)".into()
    } else {
        format!("grammar error: {}", first_line(e))
    }
}

/// A compiled grammar in its start state; each sequence starts its own copy.
pub struct CompiledGrammar {
    matcher: Matcher,
    vocab_size: usize,
}

impl fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompiledGrammar(vocab {})", self.vocab_size)
    }
}

impl CompiledGrammar {
    /// A fresh matcher for one sequence (it shares the compiled lexer).
    pub fn start(&self) -> GrammarState {
        GrammarState { matcher: self.matcher.clone() }
    }
}

/// One sequence's position in its grammar.
pub struct GrammarState {
    matcher: Matcher,
}

impl GrammarState {
    /// The packed mask of tokens allowed next, `words` words long (the
    /// model's vocabulary may be padded past the tokenizer's). When the
    /// grammar is complete only the EOS tokens are allowed. An error, or a
    /// mask allowing no token at all, is returned as a message.
    pub fn next_mask(&mut self, words: usize) -> Result<Vec<u32>, String> {
        let vob = self.matcher.compute_mask_or_eos().map_err(|e| describe(&format!("{e:#}")))?;
        let mut out = vob.as_slice().to_vec();
        out.resize(words, 0);
        if out.iter().all(|&w| w == 0) {
            return Err("the grammar allows no next token".into());
        }
        Ok(out)
    }

    /// Advances over a sampled token; a token the grammar does not allow is
    /// an error (the mask was not applied).
    pub fn consume(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| format!("the output left its grammar: {}", first_line(&format!("{e:#}"))))
    }

    /// The grammar is complete and allows nothing more: the sequence ends.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// A byte-level toy vocabulary for tests: id 0 is EOS, ids 1..=256 the
/// bytes 0..=255, then the given control tokens.
#[cfg(test)]
pub(crate) mod test_vocab {
    use super::*;

    pub fn byte_compiler(specials: &[&str]) -> GrammarCompiler {
        let mut tokens = vec![b"<eos>".to_vec()];
        tokens.extend((0..=255u8).map(|b| vec![b]));
        let special: Vec<u32> = std::iter::once(0).chain((0..specials.len()).map(|i| 257 + i as u32)).collect();
        tokens.extend(specials.iter().map(|s| s.as_bytes().to_vec()));
        let v = VocabBytes { tokens, special, eos_ids: vec![0], bos_id: None };
        let tokenize: TokenizeFn = Arc::new(|t: &str| t.bytes().map(|b| b as u32 + 1).collect());
        GrammarCompiler::new(&v, tokenize, 4).unwrap()
    }

    /// The ids of `text`'s bytes.
    pub fn bytes(text: &str) -> Vec<u32> {
        text.bytes().map(|b| b as u32 + 1).collect()
    }

    /// Feeds `ids` to a fresh state of `g`, checking each against the mask
    /// first; the first refusal is the error.
    pub fn walk_ids(g: &CompiledGrammar, ids: &[u32]) -> Result<GrammarState, String> {
        let mut s = g.start();
        for &id in ids {
            let m = s.next_mask(mask_words(g.vocab_size))?;
            if !crate::sampling::mask::is_allowed(&m, id) {
                return Err(format!("token {id} is masked"));
            }
            s.consume(id)?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::test_vocab::*;
    use super::*;
    use serde_json::json;

    fn walk(g: &CompiledGrammar, text: &str) -> Result<(), String> {
        walk_ids(g, &bytes(text)).and_then(|mut s| s.next_mask(mask_words(257)).map(|_| ()))
    }

    fn alternatives(n: usize) -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({"type": "object", "properties": {format!("k{i}"): {"type": "integer"}}, "required": [format!("k{i}")]})).collect()
    }

    /// An `anyOf` of more than 2000 objects below the top level compiled,
    /// and failed only when generation reached it ("Current row has 2100
    /// items; max is 2000"): it is refused at compile time now.
    #[test]
    fn a_choice_over_the_row_limit_is_refused_at_compile_time() {
        let c = byte_compiler(&[]);
        let big = json!({"type": "object", "properties": {"a": {"anyOf": alternatives(2100)}}, "required": ["a"]});
        let Err(GrammarError::Invalid(msg)) = c.compile(&GrammarSpec::JsonSchema(big)) else { panic!("compiled") };
        assert!(msg.contains("more than 2000 alternatives"), "{msg}");
        // Under the limit, and many plain constants (one lexeme), still pass
        // and can be walked to the choice.
        let small = json!({"type": "object", "properties": {"a": {"anyOf": alternatives(1500)}}, "required": ["a"]});
        let g = c.compile(&GrammarSpec::JsonSchema(small)).unwrap().grammar;
        walk(&g, "{\"a\": {\"k7\": 1").unwrap();
        let names: Vec<String> = (0..5000).map(|i| format!("v{i}")).collect();
        let g = c.compile(&GrammarSpec::JsonSchema(json!({"enum": names}))).unwrap().grammar;
        walk(&g, "\"v4999\"").unwrap();
    }
}
