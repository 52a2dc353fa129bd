//! A deterministic stand-in for a model, for tests and benches of the
//! scheduler, the engine and the HTTP layer.
//!
//! `FakeRunner` keeps, like a real KV cache, what was written at every slot
//! (token and position). The next token of a sequence is a hash of its whole
//! context *as read back through its block table*, mixed with its RNG when
//! sampling is random. So its output is right only if block tables, slots,
//! prefix reuse, forks and recompute are: reading a block of another
//! sequence, or a stale one, changes the token (or fails the step).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::output::{TextDecoder, TextStream};
use super::types::TokenLogprob;
use crate::model::BatchInput;
use crate::runner::{ModelRunner, SampleRequest, Sampled};
use crate::sampling::SamplingParams;

/// What one step looked like, as the runner saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub num_sampled: usize,
}

pub struct FakeRunner {
    num_blocks: usize,
    block_size: usize,
    vocab_size: usize,
    /// Slot contents: `(position << 32 | token) + 1`; 0 = never written.
    cache: Vec<u64>,
    log: Arc<Mutex<Vec<StepLog>>>,
    delay: Duration,
}

impl FakeRunner {
    /// `num_blocks` includes the null block 0.
    pub fn new(num_blocks: usize, block_size: usize, vocab_size: usize) -> FakeRunner {
        FakeRunner {
            num_blocks,
            block_size,
            vocab_size,
            cache: vec![0; num_blocks * block_size],
            log: Arc::default(),
            delay: Duration::ZERO,
        }
    }

    /// Sleeps this long in each step (a model's time).
    pub fn with_delay(mut self, delay: Duration) -> FakeRunner {
        self.delay = delay;
        self
    }

    /// The log of steps, shared: keep a clone before boxing the runner.
    pub fn log(&self) -> Arc<Mutex<Vec<StepLog>>> {
        self.log.clone()
    }

    /// The token a sequence with this whole context samples.
    pub fn next_token(context: &[u32], params: &SamplingParams, rng: &mut ChaCha8Rng, vocab_size: usize) -> u32 {
        let mut h = 0x243f_6a88_85a3_08d3u64;
        for &t in context {
            h = mix(h ^ t as u64);
        }
        if params.temperature > 0.0 {
            h = mix(h ^ rng.next_u64());
        }
        (h % vocab_size as u64) as u32
    }

    /// What a sequence generates running alone: the reference the engine's
    /// output is compared with. `seed`/`index` as in the engine (seed of the
    /// request, ChaCha stream = sequence index).
    pub fn reference(
        prompt: &[u32],
        max_tokens: usize,
        params: &SamplingParams,
        seed: u64,
        index: usize,
        vocab_size: usize,
    ) -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        let mut ctx = prompt.to_vec();
        for _ in 0..max_tokens {
            let t = Self::next_token(&ctx, params, &mut rng, vocab_size);
            ctx.push(t);
        }
        ctx.split_off(prompt.len())
    }

    fn write(&mut self, batch: &BatchInput) -> anyhow::Result<()> {
        let bs = self.block_size;
        ensure!(batch.block_size == bs, "batch block size {} != {}", batch.block_size, bs);
        for s in &batch.seqs {
            ensure!(s.q_len > 0 && s.ctx_len >= s.q_len, "empty or inconsistent sequence in batch");
            for j in 0..s.q_len {
                let i = s.q_start + j;
                let pos = s.ctx_len - s.q_len + j;
                ensure!(batch.positions[i] as usize == pos, "position {} != {pos}", batch.positions[i]);
                let block = s.block_table[pos / bs];
                ensure!(block != 0, "position {pos} mapped to the null block");
                ensure!((block as usize) < self.num_blocks, "block {block} out of the pool");
                let slot = block as usize * bs + pos % bs;
                ensure!(batch.slots[i] as usize == slot, "slot {} != {slot}", batch.slots[i]);
                self.cache[slot] = (((pos as u64) << 32) | batch.tokens[i] as u64) + 1;
            }
        }
        Ok(())
    }

    fn read_context(&self, block_table: &[u32], ctx_len: usize) -> anyhow::Result<Vec<u32>> {
        let bs = self.block_size;
        (0..ctx_len)
            .map(|pos| {
                let block = block_table[pos / bs] as usize;
                let v = self.cache[block * bs + pos % bs];
                ensure!(v != 0, "position {pos} read from block {block}, never written");
                let v = v - 1;
                ensure!((v >> 32) as usize == pos, "position {pos} read a token written for position {}", v >> 32);
                Ok(v as u32)
            })
            .collect()
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl ModelRunner for FakeRunner {
    fn execute(&mut self, batch: &BatchInput, sample: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.write(batch)?;
        let wanting: Vec<_> = batch.seqs.iter().filter(|s| s.want_logits).collect();
        ensure!(
            wanting.len() == sample.len(),
            "{} sequences want logits, {} sample requests",
            wanting.len(),
            sample.len()
        );
        let mut out = Vec::with_capacity(sample.len());
        for (s, req) in wanting.into_iter().zip(sample.iter_mut()) {
            let ctx = self.read_context(&s.block_table, s.ctx_len)?;
            let history = [req.prompt, req.output].concat();
            if ctx != history {
                bail!("KV cache holds a context different from the sequence's tokens");
            }
            let token_id = Self::next_token(&ctx, req.params, req.rng, self.vocab_size);
            let logprob = req.params.logprobs.map(|k| TokenLogprob {
                token_id,
                logprob: -0.5,
                top: (0..k).map(|i| ((token_id + i) % self.vocab_size as u32, -0.5 - i as f32)).collect(),
            });
            out.push(Sampled { token_id, logprob });
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.push(StepLog { num_tokens: batch.num_tokens(), num_seqs: batch.seqs.len(), num_sampled: out.len() });
        Ok(out)
    }

    fn num_kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// A text decoder where each id spells one fixed piece: `piece(id)`.
pub struct FakeDecoder;

impl FakeDecoder {
    /// One character of "abcdefghijklmnopqrstuvwxyz " per id (id mod 27).
    pub fn piece(id: u32) -> String {
        let c = b"abcdefghijklmnopqrstuvwxyz "[(id % 27) as usize] as char;
        c.to_string()
    }

    pub fn text(ids: &[u32]) -> String {
        ids.iter().map(|&i| Self::piece(i)).collect()
    }
}

struct FakeStream;

impl TextDecoder for FakeDecoder {
    fn stream(&self, _prompt: &[u32]) -> Box<dyn TextStream> {
        Box::new(FakeStream)
    }
}

impl TextStream for FakeStream {
    fn push(&mut self, id: u32) -> String {
        FakeDecoder::piece(id)
    }
    fn finish(&mut self) -> String {
        String::new()
    }
}
