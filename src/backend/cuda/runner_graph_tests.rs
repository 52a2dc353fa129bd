//! CUDA graphs replay exactly what the eager pass computes: for every
//! captured bucket, the same staged decode step run eagerly (with the split
//! the capture used) and replayed from the graph give the same logits, bit
//! for bit. Runs on the emulated device (feature emu), where the graph is
//! the recorded launch list.

use super::*;
use crate::model::loader::open_weights;

fn fixture_runner(max_num_seqs: usize) -> CudaRunner {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama3_tied");
    let (cfg, src) = open_weights(&dir).unwrap();
    let opts = CudaRunnerOptions {
        max_model_len: 64,
        max_num_seqs,
        max_num_batched_tokens: 64,
        num_kv_blocks: Some(1 + max_num_seqs * 4),
        ..Default::default()
    };
    CudaRunner::load_on(Device::emulated(), &cfg, src.as_ref(), opts, |_| {}).unwrap()
}

/// f32 logits of the first `rows` rows, as raw bits.
fn logits_bits(r: &CudaRunner, rows: usize) -> Vec<u32> {
    let mut out = vec![0u32; rows * r.cfg.vocab_size];
    r.dev.download(bytemuck::cast_slice_mut(&mut out), r.ws.at(r.act.logits)).unwrap();
    out
}

#[test]
fn graph_replay_equals_the_eager_pass_bit_for_bit() {
    let mut r = fixture_runner(5);
    assert_eq!(r.buckets, vec![1, 2, 4, 5]);
    for b in r.buckets.clone() {
        // Prompts of 5..5+b tokens in blocks 1 + 4i .. (written by a prefill).
        let tables: Vec<Vec<u32>> = (0..b).map(|i| (0..4).map(|j| (1 + 4 * i + j) as u32).collect()).collect();
        let prompts: Vec<Vec<u32>> = (0..b).map(|i| (0..5 + i as u32).map(|t| (t * 31 + i as u32) % 300 + 3).collect()).collect();
        let pre: Vec<(&[u32], usize, &[u32], bool)> = prompts.iter().zip(&tables).map(|(p, t)| (&p[..], 0, &t[..], true)).collect();
        r.forward_logits(&BatchInput::build(16, &pre)).unwrap();
        // One decode step of b sequences, staged in the bucket's layout.
        let next: Vec<[u32; 1]> = (0..b).map(|i| [7 + i as u32]).collect();
        let dec: Vec<(&[u32], usize, &[u32], bool)> = next.iter().zip(&prompts).zip(&tables).map(|((n, p), t)| (&n[..], p.len(), &t[..], true)).collect();
        let batch = BatchInput::build(16, &dec);
        let plan = AttentionPlan::build(&batch, launch::prefill_tokens_per_tile(r.cfg.num_heads / r.cfg.num_kv_heads));
        let step = HostStep::new(&batch, plan, SamplingBatch::default(), r.table_width, r.mask_width());
        assert!(step.is_pure_decode());
        let layout = r.stage(&step).unwrap();
        assert!(same_forward_layout(&layout, &r.graphs[&b].layout), "bucket {b}");
        let split = decode_split(r.kv_chunks * b, r.table_width * r.opts.block_size, r.dev.num_sms);
        r.forward().run(&layout, split).unwrap();
        let eager = logits_bits(&r, b);
        r.dev.memset(r.ws.at(r.act.logits), 0xFF, b * r.cfg.vocab_size * 4).unwrap();
        r.dev.replay(&r.graphs[&b].graph).unwrap();
        let replayed = logits_bits(&r, b);
        assert!(eager.iter().all(|&x| f32::from_bits(x).is_finite()), "bucket {b}: eager logits");
        assert_eq!(replayed, eager, "bucket {b}: graph replay differs from the eager pass");
    }
}

#[test]
fn start_up_and_steps_stay_inside_the_guarded_workspace() {
    // Every region of the workspace and of the step inputs is guarded on the
    // emulated device; loading (warm-up GEMMs at the largest step, capture of
    // every bucket) and a full-size step must leave every guard intact.
    let mut r = fixture_runner(3);
    let tables: Vec<Vec<u32>> = (0..3).map(|i| (0..4).map(|j| (1 + 4 * i + j) as u32).collect()).collect();
    let prompt: Vec<u32> = (0..21).map(|t| t * 13 % 300 + 3).collect();
    let seqs: Vec<(&[u32], usize, &[u32], bool)> = tables.iter().map(|t| (&prompt[..], 0, &t[..], true)).collect();
    let logits = r.forward_logits(&BatchInput::build(16, &seqs)).unwrap();
    assert_eq!(logits.len(), 3 * r.cfg.vocab_size);
    assert!(logits.iter().all(|v| v.is_finite()));
}
