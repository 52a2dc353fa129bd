//! The engine's configuration and errors.

/// Limits of the engine, validated once by `EngineHandle::start`.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Token slots per KV block; must equal the runner's (0: take the runner's).
    pub block_size: usize,
    /// KV blocks to use, null block included (None: all the runner holds;
    /// fewer than the runner holds is allowed, more is not).
    pub num_kv_blocks: Option<usize>,
    /// Tokens computed per step, all sequences together (`--max-num-batched-tokens`).
    pub max_num_batched_tokens: usize,
    /// Running sequences at most (`--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Context window: prompt + generated tokens (`--max-model-len`).
    pub max_model_len: usize,
    /// Automatic prefix caching (`--no-prefix-caching` turns it off).
    pub enable_prefix_caching: bool,
    /// Running `Priority::Batch` sequences at most (None: no cap).
    pub max_batch_inflight: Option<usize>,
    /// Ids that end generation unless `ignore_eos` (model EOS and
    /// generation_config ids); the tokenizer's EOS ids are added at start.
    pub eos_token_ids: Vec<u32>,
    /// Seed for requests that bring none (`--seed`); None: from the OS.
    pub default_seed: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_kv_blocks: None,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            max_model_len: 4096,
            enable_prefix_caching: true,
            max_batch_inflight: None,
            eos_token_ids: Vec::new(),
            default_seed: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("the engine has shut down")]
    Shutdown,
    /// The request can never be served as asked (the message says why).
    #[error("{0}")]
    InvalidRequest(String),
    /// The configuration does not fit the runner.
    #[error("engine configuration: {0}")]
    Config(String),
}

/// What `EngineHandle::submit` checks a request against.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub block_size: usize,
    /// Usable KV blocks (the null block excluded).
    pub usable_blocks: usize,
    /// Whether the runner computes prompt logprobs
    /// (`ModelRunner::supports_prompt_logprobs`).
    pub prompt_logprobs: bool,
}

impl EngineConfig {
    /// Resolves the configuration against the runner's geometry.
    pub(crate) fn resolve(
        &self,
        runner_blocks: usize,
        runner_block_size: usize,
        vocab_size: usize,
    ) -> Result<(EngineConfig, Limits), EngineError> {
        let bad = |m: String| Err(EngineError::Config(m));
        let mut c = self.clone();
        if c.block_size == 0 {
            c.block_size = runner_block_size;
        }
        if c.block_size != runner_block_size {
            return bad(format!("block size {} differs from the runner's {}", c.block_size, runner_block_size));
        }
        let blocks = c.num_kv_blocks.unwrap_or(runner_blocks);
        if blocks > runner_blocks {
            return bad(format!("{blocks} KV blocks asked, the runner holds {runner_blocks}"));
        }
        if blocks < 2 {
            return bad(format!("{blocks} KV blocks: at least 2 are needed (block 0 is reserved)"));
        }
        c.num_kv_blocks = Some(blocks);
        if c.max_num_batched_tokens == 0 || c.max_num_seqs == 0 || c.max_model_len == 0 {
            return bad("max_num_batched_tokens, max_num_seqs and max_model_len must be positive".into());
        }
        if c.max_batch_inflight == Some(0) {
            return bad("max_batch_inflight must be positive (leave it unset for no cap)".into());
        }
        let limits =
            Limits {
            max_model_len: c.max_model_len,
            vocab_size,
            block_size: c.block_size,
            usable_blocks: blocks - 1,
            prompt_logprobs: false,
        };
        Ok((c, limits))
    }
}

impl Limits {
    /// Checks what can be known before queueing: the engine can serve the
    /// request to the end of its `max_tokens`.
    pub fn check(&self, req: &crate::engine::ValidRequest) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        let (p, m) = (req.prompt_ids.len(), req.stop.max_tokens);
        if p == 0 {
            return bad("the prompt is empty".into());
        }
        if req.n == 0 {
            return bad("n must be at least 1".into());
        }
        if m == 0 && req.n > 1 {
            return bad("max_tokens 0 (the prompt alone, for its logprobs) takes n = 1".into());
        }
        if req.sampling.prompt_logprobs.is_some() && !self.prompt_logprobs {
            return bad("prompt logprobs (echo with logprobs) are not supported by this model runner".into());
        }
        if let Some(&id) = req.prompt_ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return bad(format!("prompt token id {id} is out of range (vocabulary size {})", self.vocab_size));
        }
        if p + m > self.max_model_len {
            return bad(format!(
                "this model's maximum context length is {} tokens; the request asks for {} ({} in the prompt, {} to generate)",
                self.max_model_len,
                p + m,
                p,
                m
            ));
        }
        // The last generated token is never written to the cache.
        let blocks = (p + m - 1).div_ceil(self.block_size);
        if blocks > self.usable_blocks {
            return bad(format!(
                "the request needs {blocks} KV cache blocks ({} tokens) but the pool holds {}",
                p + m - 1,
                self.usable_blocks
            ));
        }
        Ok(())
    }
}
