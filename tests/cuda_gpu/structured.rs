//! Constrained decoding through the engine on both backends: the same JSON
//! schema (compiled by `kiln::structured` over the fixture's own tokenizer)
//! drives greedy requests on the CPU runner and on the CUDA runner, and the
//! CUDA tokens must equal the CPU's up to the first step where the CPU's
//! constrained top-two margin is too thin for bf16 (as model.rs compares
//! unconstrained greedy runs). The CPU runs one request at a time, so each
//! step's margin is known; the CUDA runner gets them all at once, with an
//! unconstrained request in the same steps (rows with and without a mask).
use super::model::{opts, BS, CLEAR_MARGIN};
use super::support::*;
use kiln::api::port::TextCodec;
use kiln::backend::cuda::agreement::greedy_agreement;
use kiln::backend::cuda::runner::{open_weights, CudaRunner};
use kiln::engine::{EngineConfig, EngineHandle, EventKind, FinishReason, Priority, StopCriteria, TokenEvent, ValidRequest};
use kiln::model::llama::LlamaModel;
use kiln::model::BatchInput;
use kiln::runner::cpu::CpuRunner;
use kiln::runner::{ModelRunner, SampleRequest, Sampled};
use kiln::sampling::mask::apply_mask;
use kiln::sampling::{apply_processors, sample_masked};
use kiln::structured::{CompiledGrammar, GrammarSpec};
use kiln::tokenizer::Tokenizer;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedReceiver;

const MODEL: &str = "llama3_tied";
const MAX_TOKENS: usize = 40;

/// The CPU runner, recording for every sampled row the top-two margin of
/// the distribution it sampled from (after penalties and the mask; infinite
/// when the mask leaves one token).
struct MarginRecorder {
    cpu: CpuRunner,
    margins: Arc<Mutex<Vec<f32>>>,
}

fn constrained_margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in row {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    if b == f32::NEG_INFINITY { f32::INFINITY } else { a - b }
}

impl ModelRunner for MarginRecorder {
    fn execute(&mut self, batch: &BatchInput, reqs: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>> {
        let vocab = self.cpu.vocab_size();
        let logits = self.cpu.forward(batch);
        let mut out = Vec::new();
        for (row, r) in logits.chunks(vocab).zip(reqs.iter_mut()) {
            let mask = r.allowed_tokens.map(|m| m.wait());
            let mut seen = row.to_vec();
            apply_processors(&mut seen, r.params, r.prompt, r.output);
            if let Some(m) = &mask {
                apply_mask(&mut seen, m);
            }
            self.margins.lock().unwrap().push(constrained_margin(&seen));
            let (token_id, logprob) = sample_masked(&mut row.to_vec(), r.params, r.rng, r.prompt, r.output, mask.as_deref());
            out.push(Sampled { token_id, logprob });
        }
        Ok(out)
    }
    fn num_kv_blocks(&self) -> usize {
        self.cpu.num_kv_blocks()
    }
    fn block_size(&self) -> usize {
        self.cpu.block_size()
    }
    fn vocab_size(&self) -> usize {
        self.cpu.vocab_size()
    }
}

/// Generated ids, text and how the sequence ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    end: Result<FinishReason, String>,
}

fn outcome(mut rx: UnboundedReceiver<TokenEvent>) -> Outcome {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match rx.blocking_recv().expect("the engine hung up").kind {
            EventKind::Token { token_id, text: t, .. } => {
                ids.push(token_id);
                text.push_str(&t);
            }
            EventKind::Finished { reason, text: t, .. } => return Outcome { ids, text: text + &t, end: Ok(reason) },
            EventKind::Error(e) => return Outcome { ids, text, end: Err(e) },
            EventKind::PromptLogprobs { .. } => {}
        }
    }
}

fn request(id: usize, prompt: Vec<u32>, grammar: Option<Arc<CompiledGrammar>>) -> ValidRequest {
    ValidRequest {
        request_id: format!("r{id}"),
        prompt_ids: prompt,
        sampling: kiln::sampling::SamplingParams::greedy(),
        stop: StopCriteria { max_tokens: MAX_TOKENS, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar,
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig { block_size: BS, max_model_len: 128, max_num_seqs: 8, max_num_batched_tokens: 256, ..Default::default() }
}

#[test]
fn json_schema_greedy_outputs_match_the_cpu() {
    let Some(dev) = device_or_skip("structured") else { return };
    let dir = repo_root().join("tests/fixtures/models").join(MODEL);
    let (cfg, src) = open_weights(&dir).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_hf_dir(&dir).unwrap());
    let codec: Arc<dyn TextCodec> = tokenizer.clone();
    let compiler = kiln::api::structured::grammar_compiler(&codec, 8).expect("the fixture's tokenizer gives a grammar vocabulary");
    let schemas = [
        serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["name", "ok", "n"],
            "additionalProperties": false
        }),
        serde_json::json!({"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 4}),
    ];
    let grammars: Vec<Arc<CompiledGrammar>> =
        schemas.iter().map(|s| compiler.compile(&GrammarSpec::JsonSchema(s.clone())).unwrap().grammar).collect();
    let prompts = ["Give me JSON:", "Colours, please", "An object"];
    // (prompt, grammar): two constrained requests per schema, and one free.
    let cases: Vec<(Vec<u32>, Option<Arc<CompiledGrammar>>)> = vec![
        (tokenizer.encode(prompts[0], false).unwrap(), Some(grammars[0].clone())),
        (tokenizer.encode(prompts[1], false).unwrap(), Some(grammars[1].clone())),
        (tokenizer.encode(prompts[2], false).unwrap(), Some(grammars[0].clone())),
        (tokenizer.encode(prompts[0], false).unwrap(), Some(grammars[1].clone())),
        (tokenizer.encode(prompts[2], false).unwrap(), None),
    ];

    // The CPU, one request at a time: each step samples one row.
    let margins = Arc::new(Mutex::new(Vec::new()));
    let cpu = LlamaModel::load(cfg.clone(), src.as_ref(), |_| {}).unwrap();
    let recorder = MarginRecorder { cpu: CpuRunner::new(cpu, 64, BS), margins: margins.clone() };
    let h = EngineHandle::start(engine_config(), Box::new(recorder), tokenizer.clone()).unwrap();
    let mut want = Vec::new();
    for (i, (prompt, g)) in cases.iter().enumerate() {
        margins.lock().unwrap().clear();
        let o = outcome(h.submit(request(i, prompt.clone(), g.clone())).unwrap());
        let m = std::mem::take(&mut *margins.lock().unwrap());
        assert_eq!(m.len(), o.ids.len(), "case {i}: one margin per generated token");
        want.push((o, m));
    }
    h.shutdown();

    // The emulated (or real) GPU, every request at once.
    let gpu = CudaRunner::load_on(dev, &cfg, src.as_ref(), opts(128, 8, 256), |_| {}).unwrap();
    let h = EngineHandle::start(engine_config(), Box::new(gpu), tokenizer.clone()).unwrap();
    let rxs: Vec<_> = cases.iter().enumerate().map(|(i, (p, g))| h.submit(request(i, p.clone(), g.clone())).unwrap()).collect();
    let got: Vec<Outcome> = rxs.into_iter().map(outcome).collect();
    h.shutdown();

    for (i, (g, (w, m))) in got.iter().zip(&want).enumerate() {
        println!("case {i}: cpu {:?} {:?}, gpu {:?} {:?}", w.text, w.end, g.text, g.end);
        let constrained = cases[i].1.is_some();
        if constrained {
            // Both backends kept to the grammar (a token outside it fails the sequence).
            assert!(w.end.is_ok() && g.end.is_ok(), "case {i}: cpu {:?}, gpu {:?}", w.end, g.end);
            if w.end == Ok(FinishReason::Stop) {
                let v: serde_json::Value = serde_json::from_str(&w.text).unwrap_or_else(|e| panic!("case {i}: {e}: {:?}", w.text));
                assert!(v.is_object() || v.is_array(), "case {i}: {v}");
            }
        }
        let compared = greedy_agreement(&g.ids, &w.ids, m, CLEAR_MARGIN).unwrap_or_else(|d| panic!("case {i}: the GPU diverges from the CPU at {d}"));
        println!("case {i}: {compared} of {} tokens compared", w.ids.len());
        if compared == w.ids.len() {
            assert_eq!(g, w, "case {i}: every step was clear, so the whole outputs agree");
        }
        if constrained {
            // The grammar's first token is forced or clear: something was compared.
            assert!(compared >= 1, "case {i}: margins {m:?}");
        }
    }
}
