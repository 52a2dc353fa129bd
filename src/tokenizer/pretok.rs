//! Byte-level BPE pre-tokenizers named by GGUF `tokenizer.ggml.pre`.
//!
//! A pre-tokenizer is a list of regexes applied in turn: each one splits every
//! piece left by the previous one into matches and the text between matches
//! (both kept, "isolated"), then bytes are mapped to the GPT-2 byte alphabet.
//! This is what the Hugging Face `tokenizer.json` of these models does with
//! `Split`/`Digits` + `ByteLevel`, and what llama.cpp does for each name.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::TokenizerError;

/// GPT-2's split: contractions, letters, numbers, other symbols, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's split: case-insensitive contractions, numbers in groups of 1-3.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: as Llama 3 but single digits.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tekken (Mistral Nemo) split.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o split.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// BLOOM / Poro: words with an optional leading space.
const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// The regex list for a `tokenizer.ggml.pre` name, and whether BPE should take
/// a whole pre-token that is itself in the vocabulary without merging
/// (`ignore_merges`, as Llama 3's tokenizer does).
pub fn regexes_for(pre: &str) -> Result<(Vec<&'static str>, bool), TokenizerError> {
    let list: Vec<&'static str> = match pre {
        "default" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe" | "chatglm-bpe" => {
            return Ok((vec![LLAMA3], true));
        }
        "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "phi-2" => {
            vec![GPT2]
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "qwen2" | "qwen2.5" | "qwen-2.5" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "megrez" => {
            vec![QWEN2]
        }
        "falcon" => vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
        "deepseek-coder" => vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
        "tekken" => vec![TEKKEN],
        "gpt-4o" | "minimax-m2" => vec![GPT4O],
        "poro-chat" | "bloom" | "gpt3-finnish" => vec![BLOOM],
        "viking" => vec![BLOOM, r"\p{N}"],
        other => {
            return Err(TokenizerError::Gguf(format!(
                "unknown pre-tokenizer '{other}' in tokenizer.ggml.pre (known: default, llama-bpe, \
                 gpt2, smollm, starcoder, qwen2, falcon, deepseek-coder, tekken, gpt-4o, bloom, ...)"
            )))
        }
    };
    Ok((list, false))
}

/// The pre-tokenizer for a byte-level BPE model: the regex splits, then the
/// byte-to-unicode mapping (no prefix space, no regex of its own).
pub fn byte_level_pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool), TokenizerError> {
    let (regexes, ignore_merges) = regexes_for(pre)?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for re in regexes {
        let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| TokenizerError::Gguf(format!("pre-tokenizer '{pre}': bad regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok((Sequence::new(steps).into(), ignore_merges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn split(pre: &str, text: &str) -> Vec<String> {
        let (p, _) = byte_level_pre_tokenizer(pre).unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    /// Every name compiles (onig accepts every regex).
    #[test]
    fn every_known_name_builds() {
        for name in [
            "default", "llama-bpe", "gpt2", "smollm", "qwen2", "falcon", "deepseek-coder", "tekken",
            "gpt-4o", "bloom", "viking",
        ] {
            assert!(byte_level_pre_tokenizer(name).is_ok(), "{name}");
        }
        assert!(regexes_for("nope").is_err());
    }

    /// Digits: one by one for smollm/qwen2, groups of three for llama3.
    #[test]
    fn digit_rules_differ_by_name() {
        assert_eq!(split("smollm", "a 1234"), ["a", "Ġ", "1", "2", "3", "4"]);
        assert_eq!(split("llama-bpe", "a 1234"), ["a", "Ġ", "123", "4"]);
        assert_eq!(split("qwen2", "a 12"), ["a", "Ġ", "1", "2"]);
        assert_eq!(split("gpt2", "a 1234"), ["a", "Ġ1234"]);
    }
}
