//! `CudaRunner`: the `ModelRunner` of the GPU. One step:
//!
//! 1. validate the batch, plan attention (decode vs prefill), pack sampling;
//! 2. write every input into the pinned staging buffer, one copy to the GPU
//!    (with constrained rows: the forward-pass inputs only);
//! 3. pure-decode steps of up to the largest bucket replay the bucket's CUDA
//!    graph (padded rows are inert); other steps launch the pass eagerly;
//! 4. constrained rows: while the pass runs, wait for their allowed-token
//!    masks (the grammar worker fills them meanwhile) and copy the sampling
//!    inputs, masks included, in a second small transfer;
//! 5. penalties, the masks, the draw and top logprobs run on the GPU; only
//!    ids and logprobs come back, and reading them is the step's one
//!    synchronisation;
//! 6. prompt logprobs, when the step carries prompt positions that want
//!    them: LM head over those rows on the GPU, log-softmax on the host
//!    (`prompt_logprobs.rs`).
//!
//! Start-up: open the GPU (kernels from the embedded fatbin or NVRTC),
//! check the weights fit, upload them, allocate the workspace of the largest
//! step, warm cuBLAS up, size the KV pool from what is left under
//! `--gpu-memory-utilization`, capture the decode graphs.

use super::attention_plan::{decode_split, AttentionPlan};
use super::capacity::{Limits, RunnerCaps};
use super::device::{Device, DeviceMem, Graph, Out, PinnedMem};
use super::error::CudaError;
use super::forward::{Forward, KvPool};
use super::graph_buckets::bucket_for;
use super::launch;
use super::memory::{self, activation_regions, Activations};
use super::sampling_plan::SamplingBatch;
use super::step_inputs::{HostStep, InputLayout};
use super::weights::CudaWeights;
use crate::engine::TokenLogprob;
use crate::model::weights::WeightSource;
use crate::model::{BatchInput, ModelConfig};
use super::prompt_logprobs::PromptPass;
use crate::runner::{ModelRunner, PromptLogprobs, SampleRequest, Sampled};
use std::collections::BTreeMap;

/// Memory left aside for CUDA graphs and the driver when sizing the KV pool.
const GRAPH_RESERVE: u64 = 512 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct CudaRunnerOptions {
    pub device: usize,
    pub block_size: usize,
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub gpu_memory_utilization: f64,
    pub enforce_eager: bool,
    pub max_top_logprobs: usize,
    /// At most this many KV blocks (null block included), whatever
    /// --gpu-memory-utilization allows (tests that force preemption).
    pub num_kv_blocks: Option<usize>,
}

impl Default for CudaRunnerOptions {
    fn default() -> Self {
        CudaRunnerOptions {
            device: 0,
            block_size: 16,
            max_model_len: 8192,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            gpu_memory_utilization: 0.9,
            enforce_eager: false,
            max_top_logprobs: 20,
            num_kv_blocks: None,
        }
    }
}

/// Shapes the kernels support (checked before anything is allocated).
pub fn check_model(cfg: &ModelConfig) -> Result<(), CudaError> {
    let bad = |m: String| Err(CudaError::Unsupported(m));
    if ![16, 32, 64, 128, 256].contains(&cfg.head_dim) {
        return bad(format!("head_dim {} (16, 32, 64, 128 or 256)", cfg.head_dim));
    }
    if cfg.hidden_size % 8 != 0 || cfg.intermediate_size % 8 != 0 {
        return bad(format!("hidden {} / intermediate {} not multiples of 8", cfg.hidden_size, cfg.intermediate_size));
    }
    if cfg.hidden_size > 8 * launch::RMS_MAX_VPT * 1024 {
        return bad(format!("hidden_size {} above 32768", cfg.hidden_size));
    }
    Ok(())
}

struct Captured {
    graph: Graph,
    layout: InputLayout,
}

/// Fields drop in declaration order: graphs and buffers before the device.
pub struct CudaRunner {
    graphs: BTreeMap<usize, Captured>,
    buckets: Vec<usize>,
    inputs_host: PinnedMem,
    inputs_dev: DeviceMem,
    out_host: PinnedMem,
    ws: DeviceMem,
    act: Activations,
    kv: KvPool,
    weights: CudaWeights,
    /// Row indices of a prompt-logprob chunk (u32, `max_rows` long).
    prompt_rows: DeviceMem,
    /// Rows of the workspace's `last` and `logits` regions.
    max_rows: usize,
    /// The last step's prompt logprobs, until the engine takes them.
    prompt_lps: Vec<PromptLogprobs>,
    cfg: ModelConfig,
    opts: CudaRunnerOptions,
    table_width: usize,
    kv_chunks: usize,
    dev: Device,
}

impl CudaRunner {
    /// Loads the model onto GPU `opts.device` and prepares every buffer.
    #[cfg(feature = "cuda")]
    pub fn load(cfg: &ModelConfig, src: &dyn WeightSource, opts: CudaRunnerOptions, progress: impl FnMut(usize)) -> anyhow::Result<CudaRunner> {
        check_model(cfg)?; // before the GPU is opened
        CudaRunner::load_on(Device::open(opts.device)?, cfg, src, opts, progress)
    }

    /// Loads the model onto `dev` (a GPU or the emulated device; `opts.device`
    /// is not used) and prepares every buffer.
    pub fn load_on(dev: Device, cfg: &ModelConfig, src: &dyn WeightSource, opts: CudaRunnerOptions, progress: impl FnMut(usize)) -> anyhow::Result<CudaRunner> {
        check_model(cfg)?;
        let (free, total) = dev.mem_info()?;
        memory::check_weights_fit(memory::weight_bytes(cfg), free as u64, total as u64)?;
        let weights = CudaWeights::load(&dev, cfg, src, progress)?;
        if !cfg.attention_bias && weights.layers.iter().any(|l| l.qkv_bias.is_some()) {
            // The workspace sizes the f32 q/k/v output of biased layers by the config.
            return Err(CudaError::Unsupported("q/k/v bias tensors in a model whose config says attention_bias: false".into()).into());
        }
        let limits = Limits {
            block_size: opts.block_size,
            max_model_len: opts.max_model_len,
            max_num_seqs: opts.max_num_seqs,
            max_num_batched_tokens: opts.max_num_batched_tokens,
            max_top_logprobs: opts.max_top_logprobs,
        };
        let caps = RunnerCaps::new(cfg, limits, dev.num_sms);
        let (table_width, kv_chunks, max_tokens) = (caps.table_width, caps.kv_chunks, caps.max_tokens);
        let (act, regions) = activation_regions(cfg, caps.step);
        let ws = dev.alloc(act.total)?;
        dev.guard_regions(ws.ptr, "the workspace", &regions.regions)?;
        let cap = InputLayout::new(caps.inputs).total;
        let inputs_host = dev.alloc_pinned(cap)?;
        let inputs_dev = dev.alloc(cap)?;
        let out_host = dev.alloc_pinned(caps.out_host_bytes)?;
        warm_up_gemms(&dev, cfg, &weights, &ws, &act, max_tokens)?;
        let kv = alloc_kv(&dev, cfg, &opts)?;
        let max_rows = caps.step.max_seqs;
        let prompt_rows = dev.alloc(4 * max_rows)?;
        let mut r = CudaRunner {
            graphs: BTreeMap::new(),
            buckets: caps.buckets,
            inputs_host,
            inputs_dev,
            out_host,
            ws,
            act,
            kv,
            weights,
            prompt_rows,
            max_rows,
            prompt_lps: Vec::new(),
            cfg: cfg.clone(),
            opts,
            table_width,
            kv_chunks,
            dev,
        };
        if !r.opts.enforce_eager {
            r.capture_graphs()?;
        }
        Ok(r)
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn forward(&self) -> Forward<'_> {
        Forward {
            dev: &self.dev,
            cfg: &self.cfg,
            w: &self.weights,
            kv: &self.kv,
            ws: self.ws.ptr,
            act: &self.act,
            inputs: self.inputs_dev.ptr,
        }
    }

    fn prompt_pass(&self) -> PromptPass<'_> {
        PromptPass {
            dev: &self.dev,
            w: &self.weights,
            ws: &self.ws,
            act: &self.act,
            rows: &self.prompt_rows,
            max_rows: self.max_rows,
            hidden: self.cfg.hidden_size,
            vocab: self.cfg.vocab_size,
        }
    }

    /// Words of one allowed-token mask over the model's vocabulary.
    pub(super) fn mask_width(&self) -> usize {
        crate::sampling::mask::mask_words(self.cfg.vocab_size)
    }

    /// The layout of `step`, checked against the staging buffer.
    fn layout_of(&self, step: &HostStep) -> Result<InputLayout, CudaError> {
        let l = InputLayout::new(step.sizes());
        if l.total > self.inputs_host.bytes {
            return Err(CudaError::BadBatch(format!("step inputs of {} bytes exceed the {}-byte staging buffer", l.total, self.inputs_host.bytes)));
        }
        Ok(l)
    }

    /// Packs `step` into the staging buffer and copies it to the GPU.
    fn stage(&mut self, step: &HostStep) -> Result<InputLayout, CudaError> {
        let l = self.layout_of(step)?;
        step.write(&l, self.inputs_host.as_mut_slice());
        self.upload_inputs(&l, 0..l.total)?;
        Ok(l)
    }

    /// Copies `bytes` of the staging buffer (laid out as `l`) to the GPU.
    fn upload_inputs(&mut self, l: &InputLayout, bytes: std::ops::Range<usize>) -> Result<(), CudaError> {
        self.dev.upload(self.inputs_dev.ptr + bytes.start as u64, &self.inputs_host.as_slice()[bytes])?;
        if self.dev.is_emulated() {
            // Every copy carries the gaps too: lay the guard bytes again.
            self.dev.guard_regions(self.inputs_dev.ptr, "the step inputs", &l.regions())?;
        }
        Ok(())
    }

    fn capture_graphs(&mut self) -> Result<(), CudaError> {
        for &b in &self.buckets.clone() {
            let mut step = HostStep::new(&BatchInput::default(), AttentionPlan { max_blocks: 1, ..Default::default() }, SamplingBatch::default(), self.table_width, self.mask_width());
            step.pad_decode_to(b);
            let layout = self.stage(&step)?;
            let split = decode_split(self.kv_chunks * b, self.table_width * self.opts.block_size, self.dev.num_sms);
            self.forward().run(&layout, split)?; // warm-up outside the capture
            self.dev.synchronize()?;
            self.dev.begin_capture()?;
            let ran = self.forward().run(&layout, split);
            let graph = self.dev.end_capture()?;
            ran?;
            self.graphs.insert(b, Captured { graph, layout });
        }
        tracing::info!("captured CUDA graphs for decode batch sizes {:?}", self.buckets);
        Ok(())
    }

    fn validate(&self, batch: &BatchInput, reqs: &[SampleRequest<'_>]) -> Result<(), CudaError> {
        self.validate_batch(batch)?;
        let bad = |m: String| Err(CudaError::BadBatch(m));
        let want = batch.seqs.iter().filter(|s| s.want_logits).count();
        if want != reqs.len() {
            return bad(format!("{want} sequences want logits but {} sample requests", reqs.len()));
        }
        if reqs.iter().any(|r| r.params.logprobs.is_some_and(|n| n as usize > self.opts.max_top_logprobs)) {
            return bad(format!("more than {} top logprobs asked", self.opts.max_top_logprobs));
        }
        Ok(())
    }

    fn validate_batch(&self, batch: &BatchInput) -> Result<(), CudaError> {
        let bad = |m: String| Err(CudaError::BadBatch(m));
        let o = &self.opts;
        if batch.block_size != o.block_size {
            return bad(format!("block size {} (the pool's is {})", batch.block_size, o.block_size));
        }
        if batch.tokens.len() > o.max_num_batched_tokens.max(o.max_num_seqs) || batch.seqs.len() > o.max_num_seqs {
            return bad(format!("{} tokens / {} sequences exceed the configured maximum", batch.tokens.len(), batch.seqs.len()));
        }
        if let Some(t) = batch.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return bad(format!("token id {t} outside the vocabulary"));
        }
        let slots = (self.kv.num_blocks * o.block_size) as u32;
        if batch.slots.iter().any(|&s| s >= slots) {
            return bad("a KV slot lies outside the pool".into());
        }
        for s in &batch.seqs {
            if s.block_table.len() > self.table_width || s.block_table.iter().any(|&b| b as usize >= self.kv.num_blocks) {
                return bad("a block table is longer than --max-model-len allows or names a block outside the pool".into());
            }
            if s.ctx_len > s.block_table.len() * o.block_size || s.q_len > s.ctx_len {
                return bad(format!("context {} does not fit its {} blocks", s.ctx_len, s.block_table.len()));
            }
        }
        if batch.seqs.iter().filter(|s| s.want_logits).count() > o.max_num_seqs {
            return bad("more sequences want logits than --max-num-seqs".into());
        }
        Ok(())
    }

    /// Runs `batch` eagerly (writing its K/V) and returns the f32 logits
    /// [rows, vocab] of the sequences that want them, in order. For tests and
    /// benchmarks; serving goes through `execute`.
    pub fn forward_logits(&mut self, batch: &BatchInput) -> anyhow::Result<Vec<f32>> {
        let layout = self.run_eager(batch)?;
        let n = layout.sizes.rows * self.cfg.vocab_size;
        let mut out = vec![0f32; n];
        self.dev.download(bytemuck::cast_slice_mut(&mut out), self.ws.at(self.act.logits))?;
        self.dev.synchronize()?;
        Ok(out)
    }

    /// Runs `batch` eagerly (writing its K/V) and returns the final-norm
    /// hidden state of every token, `[tokens, hidden]` (bf16 on the device,
    /// widened to f32): what a decoder used as an embedding model pools
    /// (transformers' `last_hidden_state`). Sequences that want logits also
    /// get them computed, unused.
    pub fn forward_hidden(&mut self, batch: &BatchInput) -> anyhow::Result<Vec<f32>> {
        let layout = self.run_eager(batch)?;
        let n = layout.sizes.tokens * self.cfg.hidden_size;
        let mut raw = vec![0u16; n];
        self.dev.download(bytemuck::cast_slice_mut(&mut raw), self.ws.at(self.act.normed))?;
        self.dev.synchronize()?;
        Ok(raw.into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect())
    }

    /// Validates, stages and enqueues the forward pass of `batch` (no graph).
    fn run_eager(&mut self, batch: &BatchInput) -> anyhow::Result<InputLayout> {
        self.dev.bind()?;
        self.validate_batch(batch)?;
        let group = self.cfg.num_heads / self.cfg.num_kv_heads;
        let plan = AttentionPlan::build(batch, launch::prefill_tokens_per_tile(group));
        let step = HostStep::new(batch, plan, SamplingBatch::default(), self.table_width, self.mask_width());
        let layout = self.stage(&step)?;
        let split = decode_split(self.kv_chunks * layout.sizes.decode_seqs, step.plan.max_decode_ctx(), self.dev.num_sms);
        self.forward().run(&layout, split)?;
        Ok(layout)
    }

    /// Copies ids and logprobs of `rows` rows back and waits for them.
    fn collect(&mut self, rows: usize, top_n: usize, sampling: &SamplingBatch) -> Result<Vec<Sampled>, CudaError> {
        let a = self.act;
        let (ws, host) = (self.ws.ptr, self.out_host.as_mut_slice());
        let (ids, rest) = host.split_at_mut(4 * rows);
        let (lps, rest) = rest.split_at_mut(4 * rows);
        let (tids, rest) = rest.split_at_mut(4 * rows * top_n);
        let tlps = &mut rest[..4 * rows * top_n];
        self.dev.download(ids, ws + a.out_ids as u64)?;
        self.dev.download(lps, ws + a.out_logprobs as u64)?;
        self.dev.download(tids, ws + a.top_ids as u64)?;
        self.dev.download(tlps, ws + a.top_logprobs as u64)?;
        self.dev.synchronize()?;
        let ids: &[u32] = bytemuck::cast_slice(ids);
        let lps: &[f32] = bytemuck::cast_slice(lps);
        let tids: &[u32] = bytemuck::cast_slice(tids);
        let tlps: &[f32] = bytemuck::cast_slice(tlps);
        Ok((0..rows)
            .map(|r| Sampled {
                token_id: ids[r],
                logprob: sampling.logprobs[r].map(|k| TokenLogprob {
                    token_id: ids[r],
                    logprob: lps[r],
                    top: (0..k as usize).map(|j| (tids[r * top_n + j], tlps[r * top_n + j])).collect(),
                }),
            })
            .collect())
    }
}

/// The config and weight source of a model path: a Hugging Face directory or
/// a GGUF file (the same sources the CPU loader reads).
pub use crate::model::loader::open_weights;

fn warm_up_gemms(dev: &Device, cfg: &ModelConfig, w: &CudaWeights, ws: &DeviceMem, a: &Activations, max_tokens: usize) -> Result<(), CudaError> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let l = &w.layers[0];
    for m in [1, max_tokens] {
        dev.linear(ws.at(a.qkv), Out::Bf16, ws.at(a.normed), l.qkv.ptr, [m, (nh + 2 * nkv) * hd, h])?;
        dev.linear(ws.at(a.proj_out), Out::Bf16, ws.at(a.attn), l.o.ptr, [m, h, nh * hd])?;
        dev.linear(ws.at(a.gate_up), Out::Bf16, ws.at(a.normed), l.gate_up.ptr, [m, 2 * i, h])?;
        dev.linear(ws.at(a.proj_out), Out::Bf16, ws.at(a.act), l.down.ptr, [m, h, i])?;
    }
    dev.synchronize()
}

fn alloc_kv(dev: &Device, cfg: &ModelConfig, o: &CudaRunnerOptions) -> Result<KvPool, CudaError> {
    let (free, total) = dev.mem_info()?;
    let block_bytes = memory::kv_block_bytes(cfg.num_layers, o.block_size, cfg.num_kv_heads, cfg.head_dim);
    let min_blocks = o.max_model_len.div_ceil(o.block_size) + 1;
    let free = (free as u64).saturating_sub(GRAPH_RESERVE);
    let fit = memory::kv_pool_blocks(total as u64, free, o.gpu_memory_utilization, block_bytes, min_blocks.min(o.num_kv_blocks.unwrap_or(usize::MAX)))?;
    let num_blocks = o.num_kv_blocks.map_or(fit, |n| n.min(fit));
    let half_layer_bytes = num_blocks * o.block_size * cfg.num_kv_heads * cfg.head_dim * 2;
    let mem = dev.alloc(2 * cfg.num_layers * half_layer_bytes)?;
    dev.memset(mem.ptr, 0, mem.bytes)?;
    tracing::info!("KV pool: {num_blocks} blocks of {} tokens ({})", o.block_size, memory::gib(mem.bytes as u64));
    Ok(KvPool { mem, num_blocks, block_size: o.block_size, half_layer_bytes })
}

/// The forward-pass part of two layouts agrees (sampling arrays may differ).
fn same_forward_layout(a: &InputLayout, b: &InputLayout) -> bool {
    let key = |l: &InputLayout| {
        let s = l.sizes;
        (s.tokens, s.decode_seqs, s.prefill_seqs, s.table_width, s.tiles, s.rows, l.last_rows)
    };
    key(a) == key(b)
}

impl ModelRunner for CudaRunner {
    fn execute(&mut self, batch: &BatchInput, reqs: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>> {
        self.dev.bind()?;
        self.validate(batch, reqs)?;
        let group = self.cfg.num_heads / self.cfg.num_kv_heads;
        let plan = AttentionPlan::build(batch, launch::prefill_tokens_per_tile(group));
        let sampling = SamplingBatch::build(reqs);
        let rows = sampling.rows();
        let mut step = HostStep::new(batch, plan, sampling, self.table_width, self.mask_width());
        let bucket = if self.opts.enforce_eager || !step.is_pure_decode() { None } else { bucket_for(rows, &self.buckets) };
        if let Some(b) = bucket {
            step.pad_decode_to(b);
        }
        let constrained = step.sampling.masked_rows() > 0;
        let layout = self.layout_of(&step)?;
        if constrained {
            // The masks are not there yet: the forward pass must not wait for them.
            step.write_forward(&layout, self.inputs_host.as_mut_slice());
            self.upload_inputs(&layout, 0..layout.sampling_start())?;
        } else {
            step.write(&layout, self.inputs_host.as_mut_slice());
            self.upload_inputs(&layout, 0..layout.total)?;
        }
        match bucket.and_then(|b| self.graphs.get(&b)) {
            Some(c) if same_forward_layout(&c.layout, &layout) => {
                self.dev.replay(&c.graph)?;
            }
            _ => {
                let split = decode_split(self.kv_chunks * layout.sizes.decode_seqs, step.plan.max_decode_ctx(), self.dev.num_sms);
                self.forward().run(&layout, split)?;
            }
        }
        if constrained {
            // The pass is queued on the stream; the grammar worker has had
            // its time. Only constrained rows wait (sampling::TokenMask).
            step.sampling.wait_masks(reqs, self.mask_width());
            step.write_sampling(&layout, self.inputs_host.as_mut_slice());
            self.upload_inputs(&layout, layout.sampling_start()..layout.total)?;
        }
        let top_n = step.sampling.max_top_logprobs();
        self.forward().sample(&layout, rows, step.sampling.any_processor(), constrained, top_n)?;
        let sampled = self.collect(rows, top_n, &step.sampling)?;
        // After the draw is read back: the logits region is free again.
        self.prompt_lps = self.prompt_pass().run(batch)?;
        Ok(sampled)
    }

    fn supports_prompt_logprobs(&self) -> bool {
        true
    }

    fn take_prompt_logprobs(&mut self) -> Vec<PromptLogprobs> {
        std::mem::take(&mut self.prompt_lps)
    }

    fn num_kv_blocks(&self) -> usize {
        self.kv.num_blocks
    }

    fn block_size(&self) -> usize {
        self.opts.block_size
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
}

#[cfg(all(test, feature = "emu"))]
#[path = "runner_graph_tests.rs"]
mod graph_tests;
