//! kiln's Llama-family forward pass against Hugging Face transformers:
//! tiny random-weight models of every supported architecture (fixtures and
//! reference logits made by scripts/gen_model_fixtures.py).

use kiln::backend::cpu::KvCache;
use kiln::model::config::ModelConfig;
use kiln::model::llama::LlamaModel;
use kiln::model::weights::SafetensorsSource;
use kiln::model::BatchInput;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    /// [position][vocab]
    logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

const BLOCK: usize = 4;

fn fixture(name: &str) -> (LlamaModel, Reference) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name);
    let cfg = ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let model = LlamaModel::load(cfg, &src, |_| {}).unwrap();
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    (model, r)
}

/// A block table deliberately out of order (and skipping block 0, the null block).
fn table(blocks: usize) -> Vec<u32> {
    (0..blocks as u32).rev().map(|b| 2 * b + 1).collect()
}

fn cache(model: &LlamaModel, blocks: usize) -> KvCache {
    model.new_kv_cache(2 * blocks + 2, BLOCK)
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale, "{what}: max abs error {err} vs max |logit| {scale} (rel {})", err / scale);
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

fn check_model(name: &str) {
    let (model, r) = fixture(name);
    for (ci, case) in r.cases.iter().enumerate() {
        let p = &case.prompt_ids;
        let total = p.len() + case.greedy_ids.len();
        let nb = total.div_ceil(BLOCK);
        let bt = table(nb);

        // 1. Token by token (decode path): logits of every prompt position.
        let mut kv = cache(&model, nb);
        for (i, &t) in p.iter().enumerate() {
            let b = BatchInput::build(BLOCK, &[(&[t], i, &bt, true)]);
            assert_close(&model.forward(&b, &mut kv), &case.logits[i], &format!("{name} case {ci} pos {i}"));
        }

        // 2. Whole prompt at once, in two chunks (chunked prefill over a cached prefix),
        //    then 32 greedy steps.
        let mut kv = cache(&model, nb);
        let cut = p.len() / 2;
        if cut > 0 {
            let b = BatchInput::build(BLOCK, &[(&p[..cut], 0, &bt, false)]);
            assert!(model.forward(&b, &mut kv).is_empty());
        }
        let b = BatchInput::build(BLOCK, &[(&p[cut..], cut, &bt, true)]);
        let logits = model.forward(&b, &mut kv);
        assert_close(&logits, case.logits.last().unwrap(), &format!("{name} case {ci} chunked prefill"));
        let mut next = argmax(&logits);
        let mut got = vec![next];
        for step in 0..case.greedy_ids.len() - 1 {
            let b = BatchInput::build(BLOCK, &[(&[next], p.len() + step, &bt, true)]);
            next = argmax(&model.forward(&b, &mut kv));
            got.push(next);
        }
        assert_eq!(got, case.greedy_ids, "{name} case {ci}: greedy tokens");
    }
}

/// All prompts of a model in one batch give the same logits as one by one.
fn check_batched(name: &str) {
    let (model, r) = fixture(name);
    let tables: Vec<Vec<u32>> = {
        let mut next = 1u32;
        r.cases
            .iter()
            .map(|c| {
                let n = c.prompt_ids.len().div_ceil(BLOCK);
                let t = (next..next + n as u32).collect();
                next += n as u32;
                t
            })
            .collect()
    };
    let blocks = tables.iter().map(|t| t.len()).sum::<usize>() + 1;
    let mut kv = model.new_kv_cache(blocks, BLOCK);
    let seqs: Vec<(&[u32], usize, &[u32], bool)> =
        r.cases.iter().zip(&tables).map(|(c, t)| (c.prompt_ids.as_slice(), 0, t.as_slice(), true)).collect();
    let logits = model.forward(&BatchInput::build(BLOCK, &seqs), &mut kv);
    let vocab = model.cfg.vocab_size;
    for (ci, case) in r.cases.iter().enumerate() {
        assert_close(&logits[ci * vocab..(ci + 1) * vocab], case.logits.last().unwrap(), &format!("{name} batched case {ci}"));
    }
}

macro_rules! model_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check_model(stringify!($name));
            check_batched(stringify!($name));
        }
    )*};
}

model_tests!(llama3_tied, llama_untied_bf16, qwen2_bias, qwen3_qknorm, mistral);
