//! The plain-data input of one forward pass: many sequences of different
//! lengths, flattened.
//!
//! ```text
//! tokens:    [ s0 t0 t1 t2 | s1 t0 | s2 t0 t1 ]   (query tokens of this step)
//! positions: [  5  6  7    |  40   |  0  1    ]   (absolute positions)
//! slots:     [ where each token's K and V are written in the paged cache ]
//! seqs[i]:   query range, context length after this step, block table
//! ```
//! A slot is `block_id * block_size + offset`. Block 0 is the null block and
//! never holds a live token.

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchInput {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub seqs: Vec<SeqInput>,
    pub block_size: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqInput {
    /// Index of this sequence's first query token in `tokens`.
    pub q_start: usize,
    /// Number of query tokens of this sequence in this step.
    pub q_len: usize,
    /// Tokens in the KV cache once this step has written its own:
    /// (tokens computed before) + q_len. Query token j (0-based) sits at
    /// context position ctx_len - q_len + j and attends to positions <= that.
    pub ctx_len: usize,
    /// Physical block ids holding context positions [16*i, 16*i+16).
    pub block_table: Vec<u32>,
    /// Whether the logits of the last query token are wanted (false for a
    /// chunk of a prompt that is not its last).
    pub want_logits: bool,
    /// Prompt logprobs wanted this step: `prompt_targets[j]` is the prompt
    /// token that follows query token j, for the first
    /// `prompt_targets.len()` query tokens (empty: none wanted). The runner
    /// returns the logprob of each target with the `prompt_top` most likely
    /// tokens (see `ModelRunner::take_prompt_logprobs`).
    pub prompt_targets: Vec<u32>,
    pub prompt_top: u32,
}

impl BatchInput {
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Builds the batch for sequences laid in a cache whose block tables are
    /// given; `computed[i]` tokens of sequence i are already cached and
    /// `new_tokens[i]` are computed now. Used by the runner and by tests.
    pub fn build(block_size: usize, seqs: &[(&[u32], usize, &[u32], bool)]) -> BatchInput {
        let mut b = BatchInput { block_size, ..Default::default() };
        for &(new_tokens, computed, block_table, want_logits) in seqs {
            let q_start = b.tokens.len();
            for (j, &t) in new_tokens.iter().enumerate() {
                let pos = computed + j;
                b.tokens.push(t);
                b.positions.push(pos as u32);
                let block = block_table[pos / block_size];
                b.slots.push(block * block_size as u32 + (pos % block_size) as u32);
            }
            b.seqs.push(SeqInput {
                q_start,
                q_len: new_tokens.len(),
                ctx_len: computed + new_tokens.len(),
                block_table: block_table.to_vec(),
                want_logits,
                ..Default::default()
            });
        }
        b
    }
}
