//! Incremental detokenization for streaming, one per sequence.
//!
//! Decoding token by token is wrong twice over: a character may be spread
//! over several tokens (byte-fallback `<0xNN>` tokens, byte-level BPE pieces
//! of a multi-byte character), and SentencePiece decoders drop the leading
//! space of the first token they see. So each step decodes a short window of
//! ids twice, `ids[prefix..read]` (text already emitted) and `ids[prefix..]`,
//! and emits the difference once it no longer ends in U+FFFD (an incomplete
//! character). Invariants: `prefix <= read <= ids.len()`; all text of
//! `ids[..read]` has been emitted; the concatenation of everything returned
//! by `push` and `finish` equals `decode(generated ids, skip_special=true)`.

use super::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// How many prompt tokens to keep as left context.
const CONTEXT: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl IncrementalDetokenizer {
    /// `prompt_tail` gives left context (the last prompt ids) so that the
    /// first generated token keeps its leading space; its text is never
    /// emitted. Pass `&[]` to emit text exactly as a full decode would.
    pub fn new(prompt_tail: &[u32]) -> IncrementalDetokenizer {
        let tail = &prompt_tail[prompt_tail.len().saturating_sub(CONTEXT)..];
        IncrementalDetokenizer { ids: tail.to_vec(), prefix: 0, read: tail.len() }
    }

    /// Adds one generated id; returns the text that became final (maybe "").
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let (before, now) = self.window(tok);
        if now.len() <= before.len() || now.ends_with(REPLACEMENT) {
            return String::new();
        }
        let out = suffix_after(&before, &now);
        self.prefix = self.read;
        self.read = self.ids.len();
        out
    }

    /// Flushes text held back (an incomplete character at the very end
    /// is emitted as U+FFFD, as a full decode would spell it).
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        let (before, now) = self.window(tok);
        self.prefix = self.read;
        self.read = self.ids.len();
        if now.len() <= before.len() {
            return String::new();
        }
        suffix_after(&before, &now)
    }

    /// Decodes the window before and after the ids not yet emitted. A decode
    /// error (an id out of range) yields no text rather than a panic.
    fn window(&self, tok: &Tokenizer) -> (String, String) {
        let before = tok.decode(&self.ids[self.prefix..self.read], true).unwrap_or_default();
        let now = tok.decode(&self.ids[self.prefix..], true).unwrap_or_default();
        (before, now)
    }
}

/// The part of `now` after `before`; when `before` is not a prefix of `now`
/// (a decoder that rewrites earlier text), the characters past its length.
fn suffix_after(before: &str, now: &str) -> String {
    if let Some(rest) = now.strip_prefix(before) {
        return rest.to_string();
    }
    now.chars().skip(before.chars().count()).collect()
}
