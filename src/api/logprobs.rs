//! Engine logprobs in OpenAI's two shapes: chat (`content: [{token,
//! logprob, bytes, top_logprobs}]`) and legacy completions (parallel arrays).

use std::collections::BTreeMap;

use super::port::TextCodec;
use super::wire_out::{ChatTokenLogprob, CompletionLogprobs, TopLogprob};
use crate::engine::TokenLogprob;

/// OpenAI's stand-in for a log-probability of minus infinity; JSON has no
/// infinities and serde would write null.
pub const MIN_LOGPROB: f32 = -9999.0;

/// A finite logprob for the wire (NaN and -inf become MIN_LOGPROB).
pub fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp.max(MIN_LOGPROB)
    } else {
        MIN_LOGPROB
    }
}

/// The alternatives of a `top_logprobs` list that clients see: tokens the
/// step could not produce (logprob -inf: blocked by a structured-output or
/// tool grammar's mask) are left out, so a list may hold fewer entries than
/// asked for, as OpenAI's does, instead of padding with MIN_LOGPROB.
pub fn possible(top: &[(u32, f32)]) -> impl Iterator<Item = (u32, f32)> + '_ {
    top.iter().copied().filter(|&(_, lp)| lp != f32::NEG_INFINITY)
}

/// The text of one token as clients see it (decoded, special tokens kept).
pub fn token_text(codec: &dyn TextCodec, id: u32) -> String {
    codec.decode(&[id], false).unwrap_or_default()
}

/// The token's raw bytes (so that a character split over tokens rebuilds
/// exactly when a choice's `bytes` are joined, as OpenAI documents); the
/// decoded text's bytes when the codec does not know them.
pub fn token_bytes(codec: &dyn TextCodec, id: u32, text: &str) -> Vec<u8> {
    codec.token_bytes(id).unwrap_or_else(|| text.as_bytes().to_vec())
}

pub fn chat_logprob(codec: &dyn TextCodec, lp: &TokenLogprob) -> ChatTokenLogprob {
    let token = token_text(codec, lp.token_id);
    let top_logprobs = possible(&lp.top)
        .map(|(id, logprob)| {
            let token = token_text(codec, id);
            TopLogprob { bytes: Some(token_bytes(codec, id, &token)), token, logprob: finite(logprob) }
        })
        .collect();
    ChatTokenLogprob { bytes: Some(token_bytes(codec, lp.token_id, &token)), token, logprob: finite(lp.logprob), top_logprobs }
}

/// Appends one token to completions logprobs; `offset` is the character
/// offset of the token's text in the choice's whole text.
pub fn push_completion_logprob(out: &mut CompletionLogprobs, codec: &dyn TextCodec, lp: &TokenLogprob, offset: usize) {
    out.tokens.push(token_text(codec, lp.token_id));
    out.token_logprobs.push(Some(finite(lp.logprob)));
    let top: BTreeMap<String, f32> = possible(&lp.top).map(|(id, l)| (token_text(codec, id), finite(l))).collect();
    out.top_logprobs.push(Some(top));
    out.text_offset.push(offset);
}

/// Appends a prompt's tokens to completions logprobs (echo with logprobs):
/// the first token with null logprob and null top, then each later token.
/// Offsets count the tokens' texts from 0, the start of the echoed prompt.
pub fn push_prompt_logprobs(out: &mut CompletionLogprobs, codec: &dyn TextCodec, first: u32, rest: &[TokenLogprob]) {
    let text = token_text(codec, first);
    let mut offset = text.chars().count();
    out.tokens.push(text);
    out.token_logprobs.push(None);
    out.top_logprobs.push(None);
    out.text_offset.push(0);
    for lp in rest {
        let before = out.tokens.len();
        push_completion_logprob(out, codec, lp, offset);
        offset += out.tokens[before].chars().count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_alternatives_are_left_out_and_the_rest_kept_finite() {
        let top = [(7, -0.1), (3, f32::NEG_INFINITY), (9, -2.5), (4, f32::NEG_INFINITY)];
        assert_eq!(possible(&top).collect::<Vec<_>>(), vec![(7, -0.1), (9, -2.5)]);
        assert_eq!(finite(f32::NEG_INFINITY), MIN_LOGPROB);
        assert_eq!(finite(-20000.0), MIN_LOGPROB);
        assert_eq!(finite(-1.5), -1.5);
    }
}
