//! The raw bytes each token stands for: what a token adds to the output
//! before any UTF-8 decoding. Logprobs report them (`bytes`, so that joining
//! a choice's tokens rebuilds its text exactly even when a character spans
//! tokens) and constrained decoding builds its token trie from them.
//!
//! How a vocabulary entry spells its bytes depends on the model's decoder:
//! - byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): each byte is one
//!   printable character of GPT-2's `bytes_to_unicode` table;
//! - SentencePiece (Llama 2, Mistral): `▁` is a space, `<0xNN>` is byte NN,
//!   anything else is UTF-8;
//! - otherwise the entry is its own UTF-8 text.
//!
//! Added tokens are their content as UTF-8.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;

/// How vocabulary entries spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteSpelling {
    ByteLevel,
    SentencePiece,
    Utf8,
}

/// The spelling a decoder implies (a sequence takes the first that says).
pub(crate) fn spelling_of(decoder: Option<&DecoderWrapper>) -> ByteSpelling {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => ByteSpelling::ByteLevel,
        Some(DecoderWrapper::ByteFallback(_)) | Some(DecoderWrapper::Metaspace(_)) => ByteSpelling::SentencePiece,
        Some(DecoderWrapper::Sequence(seq)) => seq
            .get_decoders()
            .iter()
            .map(|d| spelling_of(Some(d)))
            .find(|s| *s != ByteSpelling::Utf8)
            .unwrap_or(ByteSpelling::Utf8),
        _ => ByteSpelling::Utf8,
    }
}

/// GPT-2's `bytes_to_unicode` inverted: printable character -> byte. Bytes
/// `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for themselves; the other 68
/// bytes, in increasing order, take the characters U+0100, U+0101, ...
pub(crate) fn byte_level_decoder() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).unwrap_or('\u{FFFD}')
        };
        map.insert(c, b);
    }
    map
}

/// `<0xNN>` -> NN.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes of one vocabulary entry under `spelling`. A byte-level entry
/// with a character outside the table keeps that character's UTF-8.
pub(crate) fn piece_bytes(piece: &str, spelling: ByteSpelling, table: &HashMap<char, u8>) -> Vec<u8> {
    match spelling {
        ByteSpelling::ByteLevel => {
            let mut out = Vec::with_capacity(piece.len());
            for c in piece.chars() {
                match table.get(&c) {
                    Some(&b) => out.push(b),
                    None => out.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            out
        }
        ByteSpelling::SentencePiece => match byte_fallback(piece) {
            Some(b) => vec![b],
            None => piece.replace('▁', " ").into_bytes(),
        },
        ByteSpelling::Utf8 => piece.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection_with_gpt2_anchors() {
        let t = byte_level_decoder();
        assert_eq!(t.len(), 256);
        let mut bytes: Vec<u8> = t.values().copied().collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        // Well-known anchors of the table: space is 'Ġ', newline 'Ċ', byte 0 'Ā'.
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'Ā'], 0);
        assert_eq!(t[&'a'], b'a');
    }

    #[test]
    fn pieces_spell_their_bytes() {
        let t = byte_level_decoder();
        assert_eq!(piece_bytes("Ġhello", ByteSpelling::ByteLevel, &t), b" hello");
        // The first byte of a 4-byte emoji alone (F0 = 'ð').
        assert_eq!(piece_bytes("ð", ByteSpelling::ByteLevel, &t), vec![0xF0]);
        assert_eq!(piece_bytes("▁the", ByteSpelling::SentencePiece, &t), b" the");
        assert_eq!(piece_bytes("<0xE2>", ByteSpelling::SentencePiece, &t), vec![0xE2]);
        assert_eq!(piece_bytes("<0xZZ>", ByteSpelling::SentencePiece, &t), b"<0xZZ>");
    }
}
