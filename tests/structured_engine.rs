//! Constrained decoding through the engine thread, over a toy vocabulary
//! whose every token is known, with a runner that samples the lowest token
//! id its mask allows (so each step's mask is visible in the output):
//! a grammar is followed and ends the sequence when complete, max_tokens
//! still ends it with "length", a grammar with no way on ends it with an
//! error, a runner that ignores masks is caught, and unconstrained
//! sequences in the same batch are untouched. Also: token bytes rebuild
//! text exactly for byte-level and SentencePiece tokenizers.

use std::sync::Arc;

use kiln::engine::output::{TextDecoder, TextStream};
use kiln::engine::{EngineConfig, EngineHandle, EventKind, FinishReason, Priority, StopCriteria, TokenEvent, ValidRequest};
use kiln::model::BatchInput;
use kiln::runner::{ModelRunner, SampleRequest, Sampled};
use kiln::sampling::mask::is_allowed;
use kiln::sampling::SamplingParams;
use kiln::structured::{CompiledGrammar, GrammarCompiler, GrammarSpec, VocabBytes};
use tokio::sync::mpsc::UnboundedReceiver;

const EOS: u32 = 0;
/// Unconstrained rows sample this token ("x").
const FREE_TOKEN: u32 = 5;

fn vocab(pieces: &[&str]) -> Vec<String> {
    std::iter::once("<eos>").chain(pieces.iter().copied()).map(str::to_string).collect()
}

fn compiler(pieces: &[String]) -> GrammarCompiler {
    let tokens: Vec<Vec<u8>> = pieces.iter().map(|p| p.as_bytes().to_vec()).collect();
    let v = VocabBytes { tokens, special: vec![EOS], eos_ids: vec![EOS], bos_id: None };
    let table = pieces.to_vec();
    // Greedy longest match, enough for the literals of these grammars.
    let tokenize = Arc::new(move |text: &str| {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let best = (1..table.len()).filter(|&i| rest.starts_with(table[i].as_str())).max_by_key(|&i| table[i].len());
            let Some(i) = best else { break };
            out.push(i as u32);
            rest = &rest[table[i].len()..];
        }
        out
    });
    GrammarCompiler::new(&v, tokenize, 8).unwrap()
}

/// Samples the lowest allowed id of each constrained row; `FREE_TOKEN`
/// for the others (or always, when `ignore_masks`).
struct LowestAllowed {
    vocab: usize,
    ignore_masks: bool,
}

impl ModelRunner for LowestAllowed {
    fn execute(&mut self, _batch: &BatchInput, sample: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>> {
        Ok(sample
            .iter()
            .map(|r| {
                let token_id = match r.allowed_tokens {
                    Some(m) if !self.ignore_masks => {
                        let words = m.wait();
                        (0..self.vocab as u32).find(|&t| is_allowed(&words, t)).unwrap_or(EOS)
                    }
                    _ => FREE_TOKEN,
                };
                Sampled { token_id, logprob: None }
            })
            .collect())
    }
    fn num_kv_blocks(&self) -> usize {
        64
    }
    fn block_size(&self) -> usize {
        4
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

struct ToyDecoder(Vec<String>);
struct ToyStream(Vec<String>);

impl TextDecoder for ToyDecoder {
    fn stream(&self, _prompt: &[u32]) -> Box<dyn TextStream> {
        Box::new(ToyStream(self.0.clone()))
    }
}

impl TextStream for ToyStream {
    fn push(&mut self, id: u32) -> String {
        self.0[id as usize].clone()
    }
    fn finish(&mut self) -> String {
        String::new()
    }
}

fn engine(pieces: &[String], ignore_masks: bool) -> EngineHandle {
    let cfg = EngineConfig { block_size: 4, max_model_len: 128, eos_token_ids: vec![EOS], ..Default::default() };
    let runner = LowestAllowed { vocab: pieces.len(), ignore_masks };
    EngineHandle::start_with_decoder(cfg, Box::new(runner), Arc::new(ToyDecoder(pieces.to_vec()))).unwrap()
}

fn request(max_tokens: usize, grammar: Option<Arc<CompiledGrammar>>) -> ValidRequest {
    ValidRequest {
        request_id: "r".into(),
        prompt_ids: vec![1, 2],
        sampling: SamplingParams::greedy(),
        stop: StopCriteria { max_tokens, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar,
    }
}

/// (text, finish reason or error message).
fn outcome(mut rx: UnboundedReceiver<TokenEvent>) -> (String, Result<FinishReason, String>) {
    let mut text = String::new();
    loop {
        match rx.blocking_recv().expect("the engine hung up").kind {
            EventKind::Token { text: t, .. } => text.push_str(&t),
            EventKind::Finished { reason, text: t, .. } => return (text + &t, Ok(reason)),
            EventKind::Error(e) => return (text, Err(e)),
            EventKind::PromptLogprobs { .. } => {}
        }
    }
}

fn compile(c: &GrammarCompiler, spec: GrammarSpec) -> Arc<CompiledGrammar> {
    c.compile(&spec).unwrap().grammar
}

#[test]
fn the_grammar_is_followed_and_ends_the_sequence() {
    let pieces = vocab(&["a", "b", "c", "ab", "x", "{", "}", "\"", ":", " ", ",", "1"]);
    let c = compiler(&pieces);
    let h = engine(&pieces, false);
    let abc = compile(&c, GrammarSpec::Regex("abc".into()));
    // A fixed string is forced in its canonical tokens ("ab" then "c");
    // complete after "c": no EOS step is needed.
    assert_eq!(outcome(h.submit(request(10, Some(abc.clone()))).unwrap()), ("abc".into(), Ok(FinishReason::Stop)));
    assert_eq!(outcome(h.submit(request(1, Some(abc))).unwrap()), ("ab".into(), Ok(FinishReason::Length)));
    // A choice: the lowest allowed id each step ("a" = 1 before "b" = 2).
    let ab_or = compile(&c, GrammarSpec::Regex("(a|b)(b|c)".into()));
    assert_eq!(outcome(h.submit(request(10, Some(ab_or))).unwrap()), ("ab".into(), Ok(FinishReason::Stop)));
    let json = compile(&c, GrammarSpec::JsonSchema(serde_json::json!({"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]})));
    assert_eq!(outcome(h.submit(request(30, Some(json))).unwrap()), ("{\"a\": 1}".into(), Ok(FinishReason::Stop)));
    h.shutdown();
}

#[test]
fn unconstrained_sequences_of_the_same_batch_are_untouched() {
    let pieces = vocab(&["a", "b", "c", "ab", "x"]);
    let c = compiler(&pieces);
    let h = engine(&pieces, false);
    let g = compile(&c, GrammarSpec::Regex("(ab)*c".into()));
    let constrained: Vec<_> = (0..3).map(|_| h.submit(request(6, Some(g.clone()))).unwrap()).collect();
    let free: Vec<_> = (0..3).map(|_| h.submit(request(6, None)).unwrap()).collect();
    for rx in free {
        assert_eq!(outcome(rx), ("xxxxxx".into(), Ok(FinishReason::Length)));
    }
    for rx in constrained {
        // "a" then "b" (lowest each time) repeated: the grammar never forces "c".
        assert_eq!(outcome(rx), ("ababab".into(), Ok(FinishReason::Length)));
    }
    h.shutdown();
}

#[test]
fn a_grammar_with_no_way_on_ends_with_an_error() {
    // "abc" is forced as "ab" then "c": this vocabulary has no "c".
    let pieces = vocab(&["a", "ab", "z", "y", "x"]);
    let c = compiler(&pieces);
    let g = compile(&c, GrammarSpec::Regex("abc".into()));
    let h = engine(&pieces, false);
    let (text, end) = outcome(h.submit(request(10, Some(g))).unwrap());
    assert_eq!(text, "ab");
    let msg = end.unwrap_err();
    assert!(msg.contains("allows no next token"), "{msg}");
    // The engine goes on serving.
    assert_eq!(outcome(h.submit(request(2, None)).unwrap()), ("xx".into(), Ok(FinishReason::Length)));
    h.shutdown();
}

#[test]
fn a_runner_that_ignores_the_mask_is_caught() {
    let pieces = vocab(&["a", "b", "c", "ab", "x"]);
    let c = compiler(&pieces);
    let g = compile(&c, GrammarSpec::Regex("abc".into()));
    let h = engine(&pieces, true);
    let (_, end) = outcome(h.submit(request(10, Some(g))).unwrap());
    assert!(end.unwrap_err().contains("left its grammar"));
    h.shutdown();
}

#[test]
fn grammars_are_cached_and_bad_ones_refused_by_name() {
    let pieces = vocab(&["a", "b", "{", "}", "\"", ":", " ", ",", "1", "x"]);
    let c = compiler(&pieces);
    let spec = GrammarSpec::JsonSchema(serde_json::json!({"type": "object"}));
    assert!(!c.compile(&spec).unwrap().cache_hit);
    assert!(c.compile(&spec).unwrap().cache_hit);
    let bad = GrammarSpec::JsonSchema(serde_json::json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}));
    let e = c.compile(&bad).err().expect("a missing $ref is refused").to_string();
    assert!(e.contains("missing"), "{e}");
    let unsat = GrammarSpec::JsonSchema(serde_json::json!({"type": "integer", "minimum": 5, "maximum": 1}));
    assert!(c.compile(&unsat).is_err());
}

/// Joining each token's bytes rebuilds the text exactly, emoji included,
/// for a byte-level BPE (Llama 3) and a SentencePiece (Mistral) tokenizer.
#[test]
fn token_bytes_rebuild_the_text() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for model in ["llama3_tied", "mistral"] {
        let tok = kiln::tokenizer::Tokenizer::from_hf_dir(&dir.join(model)).unwrap();
        for text in ["Hello, world!", "naïve café 😀🎉 end", "  two  spaces\nand a line", "日本語のテキスト"] {
            let ids = tok.encode(text, false).unwrap();
            let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).unwrap().to_vec()).collect();
            assert_eq!(String::from_utf8_lossy(&bytes), text, "{model}: {ids:?}");
        }
    }
}

/// Tool parameters written the way pydantic writes nested models (`$defs`
/// with `#/$defs/...` references, and a `#` self-reference) compile into
/// every constrained tool grammar: the references resolve against the
/// parameters, not against the call wrapper kiln puts around them.
#[test]
fn tool_parameters_with_defs_and_refs_compile() {
    use kiln::api::tools::grammar::tool_grammar;
    use kiln::api::tools::{ToolChoice, ToolDef, ToolFormat, ToolPlan};
    let printable: Vec<String> = (b' '..=b'~').map(|b| (b as char).to_string()).chain(["\n".to_string()]).collect();
    let pieces = vocab(&printable.iter().map(String::as_str).collect::<Vec<_>>());
    let c = compiler(&pieces);
    let params = serde_json::json!({
        "type": "object",
        "$defs": {"City": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
        "properties": {"city": {"$ref": "#/$defs/City"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["city"],
    });
    let tool = |n: &str, p: serde_json::Value| ToolDef { name: n.into(), description: None, parameters: p };
    for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Mistral] {
        for tools in [vec![tool("weather", params.clone())], vec![tool("plain", serde_json::json!({"type": "object"})), tool("weather", params.clone())]] {
            let plan = ToolPlan { tools, choice: ToolChoice::Required, parallel: true, format };
            let spec = tool_grammar(&plan, None).expect("required calls are constrained");
            if let Err(e) = c.compile(&spec) {
                panic!("{format:?}: {e}");
            }
        }
    }
}
