//! `engine::offline`: prompts files (plain and JSONL lines) run through a
//! real `EngineHandle::start` with a real tokenizer (the tiny SentencePiece
//! GGUF fixture) and the fake runner. Results come back in input order, with
//! each line's parameters applied; ids are checked against what each prompt
//! generates alone, text against the tokenizer's detokenizer over those ids.

use std::path::Path;
use std::sync::Arc;

use kiln::engine::fake::FakeRunner;
use kiln::engine::offline::{parse_prompts, run_prompts, OfflineError, OfflineOptions, StopField};
use kiln::engine::{EngineConfig, EngineHandle};
use kiln::model::gguf::GgufFile;
use kiln::sampling::SamplingParams;
use kiln::tokenizer::{IncrementalDetokenizer, Tokenizer};

fn tokenizer() -> Arc<Tokenizer> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/spm-tiny.gguf");
    Arc::new(Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap())
}

const FILE: &str = r#"Hello there, how are you?

{"prompt": "The quick brown fox", "max_tokens": 5}
{"prompt": "jumps over", "max_tokens": 9, "temperature": 0.9, "seed": 42, "n": 3}
plain { not json
{"prompt": "the lazy dog", "stop": ["e"], "max_tokens": 30}
  {"prompt": "last one", "stop_token_ids": [7], "ignore_eos": true}
"#;

/// The text the tokenizer's incremental detokenizer spells for `ids`.
fn incremental(tok: &Tokenizer, prompt: &[u32], ids: &[u32]) -> String {
    let mut d = IncrementalDetokenizer::new(prompt);
    let mut text: String = ids.iter().map(|&id| d.push(tok, id)).collect();
    text.push_str(&d.finish(tok));
    text
}

#[test]
fn parses_plain_and_jsonl_lines_with_line_numbers() {
    let p = parse_prompts(FILE).unwrap();
    let lines: Vec<usize> = p.iter().map(|l| l.line).collect();
    assert_eq!(lines, vec![1, 3, 4, 5, 6, 7]);
    assert_eq!(p[0].prompt, "Hello there, how are you?");
    assert_eq!((p[1].max_tokens, p[2].n, p[2].seed), (Some(5), Some(3), Some(42)));
    assert_eq!(p[3].prompt, "plain { not json");
    assert_eq!(p[4].stop, StopField::Many(vec!["e".into()]));
    assert_eq!((p[5].stop_token_ids.clone(), p[5].ignore_eos), (vec![7], Some(true)));
    let err = parse_prompts("ok\n{\"prompt\": \"x\", \"temprature\": 1}\n").unwrap_err();
    assert!(matches!(err, OfflineError::Parse { line: 2, .. }), "{err}");
    assert!(matches!(parse_prompts("{\"max_tokens\": 3}"), Err(OfflineError::Parse { line: 1, .. })));
}

#[test]
fn runs_every_prompt_and_returns_them_in_input_order() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let runner = FakeRunner::new(256, 16, vocab);
    let cfg = EngineConfig { max_model_len: 1024, max_num_batched_tokens: 64, max_num_seqs: 4, ..Default::default() };
    let engine = EngineHandle::start(cfg, Box::new(runner), tok.clone()).unwrap();
    let opts = OfflineOptions { max_tokens: 12, sampling: SamplingParams::greedy(), chat: false, progress: false };
    let prompts = parse_prompts(FILE).unwrap();
    let report = run_prompts(&engine, &tok, &prompts, &opts).unwrap();
    assert_eq!(report.results.len(), prompts.len());
    let eos = tok.eos_ids().to_vec();
    for (p, r) in prompts.iter().zip(&report.results) {
        assert_eq!((r.line, &r.prompt), (p.line, &p.prompt));
        let ids = tok.encode(&p.prompt, true).unwrap();
        assert_eq!(r.prompt_tokens, ids.len());
        let max = p.max_tokens.unwrap_or(12);
        let params =
            SamplingParams { temperature: p.temperature.unwrap_or(0.0), seed: p.seed, ..SamplingParams::greedy() };
        assert_eq!(r.completions.len(), p.n.unwrap_or(1));
        for (i, c) in r.completions.iter().enumerate() {
            let mut expect = FakeRunner::reference(&ids, max, &params, p.seed.unwrap_or(0), i, vocab);
            // The engine ends a sequence at its first stop id.
            let stops: Vec<u32> = if p.ignore_eos == Some(true) { vec![] } else { eos.clone() };
            let stops = [stops, p.stop_token_ids.clone()].concat();
            let finished_early = expect.iter().position(|t| stops.contains(t));
            if let Some(at) = finished_early {
                expect.truncate(at);
            }
            // The reference text: the tokenizer's own incremental detokenizer
            // over the reference ids (random ids often spell invalid UTF-8,
            // so a full decode is no reference here).
            let text = incremental(&tok, &ids, &expect);
            match &p.stop {
                StopField::Many(s) if text.contains(s[0].as_str()) => {
                    let cut = text.find(s[0].as_str()).unwrap();
                    assert_eq!(c.text, text[..cut]);
                    assert_eq!(c.finish_reason, "stop");
                }
                _ => {
                    assert_eq!(c.token_ids, expect, "line {}", p.line);
                    assert_eq!(c.text, text, "line {}", p.line);
                    let reason = if finished_early.is_some() { "stop" } else { "length" };
                    assert_eq!(c.finish_reason, reason);
                }
            }
        }
    }
    assert!(report.completion_tokens > 0 && report.tokens_per_s() > 0.0);
    let invalid = parse_prompts(r#"{"prompt": "x", "max_tokens": 5000}"#).unwrap();
    let err = run_prompts(&engine, &tok, &invalid, &opts).unwrap_err();
    assert!(matches!(err, OfflineError::Invalid { line: 1, .. }), "{err}");
}
