//! Device memory arithmetic: the KV block size in bytes, how many blocks
//! `--gpu-memory-utilization` leaves room for, and the layout of the
//! activation workspace (one allocation, sized for the largest step, so a
//! step never allocates and CUDA graphs see fixed addresses).

use crate::model::ModelConfig;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MemoryError {
    #[error("--gpu-memory-utilization must be in (0, 1], got {0}")]
    BadUtilization(f64),
    #[error("out of device memory loading the weights: {} needed, {} free of {}", gib(*need), gib(*free), gib(*total))]
    WeightsDoNotFit { need: u64, free: u64, total: u64 },
    #[error(
        "not enough device memory for the KV cache: --gpu-memory-utilization {util} allows {} of {}, \
         {} is already used by weights and activations, and one sequence of the maximum length needs \
         {min_blocks} blocks of {} ({}); raise --gpu-memory-utilization or lower --max-model-len",
        gib((*total as f64 * util) as u64), gib(*total), gib(*used), gib(*block_bytes), gib(*min_blocks as u64 * block_bytes)
    )]
    KvDoesNotFit { util: f64, total: u64, used: u64, block_bytes: u64, min_blocks: usize },
}

/// "1.50 GiB".
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Bytes of one KV block over all layers: K and V, bf16,
/// [block_size, num_kv_heads, head_dim] each per layer.
pub fn kv_block_bytes(num_layers: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> u64 {
    2 * 2 * (num_layers * block_size * num_kv_heads * head_dim) as u64
}

/// bf16 bytes of every weight of `cfg` (for the fit check before loading).
pub fn weight_bytes(cfg: &ModelConfig) -> u64 {
    let (h, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * hd * h;
    let mut layer = qkv + cfg.num_heads * hd * h + 3 * i * h + 2 * h;
    if cfg.qk_norm {
        layer += 2 * hd;
    }
    if cfg.attention_bias {
        layer += (cfg.num_heads + 2 * cfg.num_kv_heads) * hd;
    }
    let head = if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size * h };
    2 * (cfg.num_layers * layer + cfg.vocab_size * h + head + h) as u64
}

/// Fails early, with the numbers, when the weights cannot fit in free memory.
pub fn check_weights_fit(weight_bytes: u64, free: u64, total: u64) -> Result<(), MemoryError> {
    if weight_bytes > free {
        return Err(MemoryError::WeightsDoNotFit { need: weight_bytes, free, total });
    }
    Ok(())
}

/// Number of KV blocks (block 0, the null block, included) to allocate, once
/// weights, workspace and one maximum-size step have run, so that memory in
/// use reaches `utilization * total`. `free_now` is measured then.
/// `min_blocks` is what one maximum-length sequence needs, plus the null block.
pub fn kv_pool_blocks(total: u64, free_now: u64, utilization: f64, block_bytes: u64, min_blocks: usize) -> Result<usize, MemoryError> {
    if !(utilization > 0.0 && utilization <= 1.0) {
        return Err(MemoryError::BadUtilization(utilization));
    }
    let used = total.saturating_sub(free_now);
    let allowed = (total as f64 * utilization) as u64;
    // Never plan past what is actually free, whatever the utilization says.
    let budget = allowed.saturating_sub(used).min(free_now);
    let blocks = (budget / block_bytes.max(1)) as usize;
    if blocks < min_blocks {
        return Err(MemoryError::KvDoesNotFit { util: utilization, total, used, block_bytes, min_blocks });
    }
    Ok(blocks)
}

/// Byte offsets of named regions (name, offset, bytes) inside one
/// allocation, each aligned to 256 bytes (what cudaMalloc guarantees, enough
/// for 16-byte vector access) and followed by a gap of at least ALIGN bytes:
/// unused on a GPU, guard bytes on the emulated device (an overrun of a
/// region fails the launch that made it, naming the region).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    pub regions: Vec<(&'static str, usize, usize)>,
    /// Bytes the allocation needs, the last region's gap included.
    pub total: usize,
}

pub const ALIGN: usize = 256;

impl Layout {
    /// Appends a region of `bytes` (and its gap) and returns its offset.
    pub fn push(&mut self, name: &'static str, bytes: usize) -> usize {
        let off = self.total.div_ceil(ALIGN) * ALIGN;
        self.regions.push((name, off, bytes));
        self.total = off + bytes + ALIGN;
        off
    }

    pub fn offset(&self, name: &str) -> Option<usize> {
        self.regions.iter().find(|r| r.0 == name).map(|r| r.1)
    }
}

/// The largest step the workspace must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepCaps {
    /// Tokens per step (the scheduler's token budget).
    pub max_tokens: usize,
    /// Sequences per step.
    pub max_seqs: usize,
    /// (sequence, partition) pairs of the largest decode split
    /// (attention_plan::max_partial_rows).
    pub max_partial_rows: usize,
    /// Largest `logprobs` a request may ask for.
    pub max_top_logprobs: usize,
}

/// Offsets of the activation buffers of one step (see forward.rs for their use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activations {
    pub residual: usize,
    pub normed: usize,
    pub proj_out: usize,
    pub qkv: usize,
    pub q: usize,
    pub attn: usize,
    pub gate_up: usize,
    pub act: usize,
    pub last: usize,
    pub logits: usize,
    pub part_out: usize,
    pub part_max: usize,
    pub part_sum: usize,
    pub out_ids: usize,
    pub out_logprobs: usize,
    pub top_ids: usize,
    pub top_logprobs: usize,
    pub total: usize,
}

/// Bytes per element of the q/k/v GEMM output: f32 when the projections
/// carry a bias (added to the f32 output and rounded once by the rotary
/// kernel, as transformers does), else bf16.
pub fn qkv_bytes(cfg: &ModelConfig) -> usize {
    if cfg.attention_bias {
        4
    } else {
        2
    }
}

/// Lays out every activation of a step of `caps` for model `cfg`.
pub fn activation_layout(cfg: &ModelConfig, caps: StepCaps) -> Activations {
    activation_regions(cfg, caps).0
}

/// `activation_layout` and the named regions behind it (for the emulated
/// device's guard bytes).
pub fn activation_regions(cfg: &ModelConfig, caps: StepCaps) -> (Activations, Layout) {
    let (t, s) = (caps.max_tokens, caps.max_seqs);
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let bf = 2;
    let mut l = Layout::default();
    let a = Activations {
        residual: l.push("residual", t * h * bf),
        normed: l.push("normed", t * h * bf),
        proj_out: l.push("proj_out", t * h * bf),
        qkv: l.push("qkv", t * (nh + 2 * nkv) * hd * qkv_bytes(cfg)),
        q: l.push("q", t * nh * hd * bf),
        attn: l.push("attn", t * nh * hd * bf),
        gate_up: l.push("gate_up", t * 2 * cfg.intermediate_size * bf),
        act: l.push("act", t * cfg.intermediate_size * bf),
        last: l.push("last", s * h * bf),
        logits: l.push("logits", s * cfg.vocab_size * 4),
        part_out: l.push("part_out", caps.max_partial_rows * nh * hd * 4),
        part_max: l.push("part_max", caps.max_partial_rows * nh * 4),
        part_sum: l.push("part_sum", caps.max_partial_rows * nh * 4),
        out_ids: l.push("out_ids", s * 4),
        out_logprobs: l.push("out_logprobs", s * 4),
        top_ids: l.push("top_ids", s * caps.max_top_logprobs.max(1) * 4),
        top_logprobs: l.push("top_logprobs", s * caps.max_top_logprobs.max(1) * 4),
        total: l.total,
    };
    (a, l)
}

#[cfg(test)]
mod tests {
    use super::*;
    const GIB: u64 = 1 << 30;

    #[test]
    fn kv_block_of_llama_8b() {
        // 32 layers, 16 tokens, 8 kv heads, head_dim 128: 2 MiB per block.
        assert_eq!(kv_block_bytes(32, 16, 8, 128), 2 * 1024 * 1024);
    }

    #[test]
    fn pool_fills_the_utilization_budget() {
        // 80 GiB card, 20 GiB in use after weights + peak step, 0.9 utilization: 52 GiB left.
        let blocks = kv_pool_blocks(80 * GIB, 60 * GIB, 0.9, 2 << 20, 100).unwrap();
        assert_eq!(blocks as u64, (72 * GIB - 20 * GIB) / (2 << 20));
    }

    #[test]
    fn pool_never_exceeds_free_memory() {
        let blocks = kv_pool_blocks(80 * GIB, 10 * GIB, 1.0, GIB, 1).unwrap();
        assert_eq!(blocks, 10);
    }

    #[test]
    fn pool_errors_carry_the_numbers() {
        let e = kv_pool_blocks(16 * GIB, 2 * GIB, 0.9, GIB, 8).unwrap_err();
        assert!(matches!(e, MemoryError::KvDoesNotFit { min_blocks: 8, .. }));
        let msg = e.to_string();
        assert!(msg.contains("14.00 GiB is already used") && msg.contains("8 blocks"), "{msg}");
        assert_eq!(kv_pool_blocks(1, 1, 0.0, 1, 1), Err(MemoryError::BadUtilization(0.0)));
        assert_eq!(kv_pool_blocks(1, 1, 1.5, 1, 1), Err(MemoryError::BadUtilization(1.5)));
        assert!(kv_pool_blocks(1, 1, f64::NAN, 1, 1).is_err());
    }

    #[test]
    fn weight_bytes_of_known_models() {
        // Llama-3.1-8B: 8.03e9 parameters; Qwen3-0.6B: 0.596e9 (tied embeddings).
        let b = weight_bytes(&crate::backend::cuda::tests_support::llama_8b_config()) as f64 / 2.0;
        assert!((8.02e9..8.04e9).contains(&b), "{b}");
        let q = weight_bytes(&crate::backend::cuda::tests_support::qwen3_0_6b_config()) as f64 / 2.0;
        assert!((0.59e9..0.60e9).contains(&q), "{q}");
    }

    #[test]
    fn weights_check() {
        assert!(check_weights_fit(GIB, 2 * GIB, 4 * GIB).is_ok());
        let e = check_weights_fit(16 * GIB, 2 * GIB, 4 * GIB).unwrap_err().to_string();
        assert!(e.contains("16.00 GiB needed") && e.contains("2.00 GiB free"), "{e}");
    }

    #[test]
    fn layout_aligns_and_does_not_overlap() {
        let mut l = Layout::default();
        let a = l.push("a", 10);
        let b = l.push("b", 300);
        let c = l.push("c", 0);
        // Every region is followed by at least ALIGN bytes of gap (guard bytes on the emulator).
        assert_eq!((a, b, c), (0, 512, 1280));
        assert_eq!(l.total, 1280 + ALIGN);
        assert_eq!(l.offset("b"), Some(512));
    }

    /// A biased model's q/k/v GEMM writes f32 (the bias joins before the one
    /// rounding), so its region holds 4 bytes per element; others 2.
    #[test]
    fn qkv_region_holds_f32_when_the_projections_have_a_bias() {
        let caps = StepCaps { max_tokens: 100, max_seqs: 4, max_partial_rows: 8, max_top_logprobs: 0 };
        let qwen2 = ModelConfig { attention_bias: true, ..crate::backend::cuda::tests_support::qwen3_0_6b_config() };
        let width = (16 + 2 * 8) * 128;
        for (cfg, bytes) in [(qwen2.clone(), 4), (ModelConfig { attention_bias: false, ..qwen2 }, 2)] {
            let a = activation_layout(&cfg, caps);
            assert!(a.q - a.qkv >= 100 * width * bytes, "{} bytes per element", bytes);
            assert!(a.q - a.qkv < 100 * width * bytes + 2 * ALIGN); // the region, its guard gap, alignment
        }
    }

    #[test]
    fn activation_regions_are_disjoint_and_aligned() {
        let cfg = crate::backend::cuda::tests_support::llama_8b_config();
        let caps = StepCaps { max_tokens: 8192, max_seqs: 256, max_partial_rows: 2048, max_top_logprobs: 20 };
        let a = activation_layout(&cfg, caps);
        let offs = [a.residual, a.normed, a.proj_out, a.qkv, a.q, a.attn, a.gate_up, a.act, a.last, a.logits];
        assert!(offs.windows(2).all(|w| w[0] < w[1]));
        assert!(offs.iter().all(|o| o % ALIGN == 0));
        // gate_up of the 8B shape at 8192 tokens: 8192 * 28672 * 2 bytes.
        assert_eq!(a.act - a.gate_up, 8192 * 28672 * 2 + ALIGN);
        assert!(a.total > a.top_logprobs);
    }
}
