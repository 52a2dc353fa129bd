//! Allowed-token masks for constrained decoding.
//!
//! A mask is a packed bitmask over the vocabulary: `ceil(vocab_size / 32)`
//! `u32` words, bit `i % 32` of word `i / 32` set when token `i` may be
//! sampled (the layout llguidance and vLLM's bitmask kernels use). Bits past
//! `vocab_size` are ignored.
//!
//! `TokenMask` is the hand-off between the grammar worker, which fills it
//! while the forward pass runs, and the runner, which waits for it just
//! before sampling the sequence's row. It is filled exactly once.

use std::sync::{Condvar, Mutex};

/// Number of `u32` words of a mask over `vocab_size` tokens.
pub fn mask_words(vocab_size: usize) -> usize {
    vocab_size.div_ceil(32)
}

/// Whether token `id` is allowed by the packed `mask` (ids beyond it are not).
pub fn is_allowed(mask: &[u32], id: u32) -> bool {
    mask.get(id as usize / 32).is_some_and(|w| w >> (id % 32) & 1 == 1)
}

/// Whether `mask` allows at least one of the first `vocab_size` tokens.
pub fn any_allowed(mask: &[u32], vocab_size: usize) -> bool {
    (0..vocab_size.min(mask.len() * 32)).step_by(32).any(|start| {
        let word = mask[start / 32];
        let live = vocab_size - start;
        let keep = if live >= 32 { u32::MAX } else { (1u32 << live) - 1 };
        word & keep != 0
    })
}

/// Sets every logit whose token the mask does not allow to minus infinity.
/// A mask allowing none of the row's tokens leaves the row untouched (the
/// engine ends such a sequence with an error; sampling must not fail first).
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    if !any_allowed(mask, logits.len()) {
        return;
    }
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let word = mask.get(w).copied().unwrap_or(0);
        if word == u32::MAX {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if word >> b & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// A mask filled once by one thread and read by others, who block until it
/// is there. The grammar worker fills it; the runner reads it before sampling.
#[derive(Debug, Default)]
pub struct TokenMask {
    words: Mutex<Option<Vec<u32>>>,
    ready: Condvar,
}

impl TokenMask {
    pub fn new() -> TokenMask {
        TokenMask::default()
    }

    /// A mask that is already filled.
    pub fn filled(words: Vec<u32>) -> TokenMask {
        TokenMask { words: Mutex::new(Some(words)), ready: Condvar::new() }
    }

    /// Fills the mask and wakes every waiter. A second fill is ignored.
    pub fn fill(&self, words: Vec<u32>) {
        let mut g = self.words.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(words);
        }
        self.ready.notify_all();
    }

    /// Blocks until the mask is filled and returns a copy of its words.
    pub fn wait(&self) -> Vec<u32> {
        let mut g = self.words.lock().unwrap_or_else(|e| e.into_inner());
        while g.is_none() {
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_of(vocab: usize, allowed: &[u32]) -> Vec<u32> {
        let mut m = vec![0u32; mask_words(vocab)];
        for &t in allowed {
            m[t as usize / 32] |= 1 << (t % 32);
        }
        m
    }

    #[test]
    fn bit_layout_is_word_then_bit() {
        let m = mask_of(70, &[0, 33, 69]);
        assert_eq!(m, vec![1, 2, 1 << 5]);
        assert!(is_allowed(&m, 33) && !is_allowed(&m, 32) && !is_allowed(&m, 1000));
    }

    #[test]
    fn masked_logits_are_minus_infinity() {
        let mut l: Vec<f32> = (0..40).map(|i| i as f32).collect();
        apply_mask(&mut l, &mask_of(40, &[3, 35]));
        for (i, &x) in l.iter().enumerate() {
            assert_eq!(x.is_finite(), i == 3 || i == 35, "{i}");
        }
    }

    #[test]
    fn empty_mask_and_bits_past_the_vocab_do_not_count() {
        let mut m = mask_of(64, &[40]);
        assert!(!any_allowed(&m, 40));
        let mut l = vec![1.0f32; 40];
        apply_mask(&mut l, &m);
        assert!(l.iter().all(|x| *x == 1.0));
        m[0] = 1;
        assert!(any_allowed(&m, 40));
    }

    #[test]
    fn waiters_get_the_filled_words() {
        let mask = std::sync::Arc::new(TokenMask::new());
        let m2 = mask.clone();
        let t = std::thread::spawn(move || m2.wait());
        mask.fill(vec![7]);
        mask.fill(vec![8]);
        assert_eq!(t.join().unwrap(), vec![7]);
        assert_eq!(mask.wait(), vec![7]);
    }
}
