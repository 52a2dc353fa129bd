//! Constrained decoding (structured outputs and tool calls) with llguidance.
//!
//! ```text
//! HTTP: response_format / tools -> GrammarSpec -> GrammarCompiler::compile
//!       (llguidance, cached by hash) -> Arc<CompiledGrammar> in ValidRequest
//! engine: each sequence starts a GrammarState; every step its next mask is
//!       computed on a worker thread while the forward pass runs, handed to
//!       the runner as a TokenMask, applied just before sampling; the sampled
//!       token advances the state; a complete grammar ends the sequence.
//! ```
//!
//! The token trie is built from kiln's own token bytes (`tokenv`), so GGUF
//! and Hugging Face tokenizers work alike.

mod cache;
pub mod compiler;
mod limits;
pub mod spec;
pub mod tokenv;

pub use compiler::{Compiled, CompiledGrammar, GrammarCompiler, GrammarError, GrammarState, DEFAULT_CACHE_SIZE};
pub use spec::GrammarSpec;
pub use tokenv::{TokenizeFn, VocabBytes};
