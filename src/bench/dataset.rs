//! Benchmark workloads: `random` (token-id prompts, so any tokenizer
//! works), `prefix` (prompts sharing one long prefix: the prefix-cache
//! workload) and `sharegpt:PATH` (first human turn of each ShareGPT
//! conversation, its reply's length as the output length).
//!
//! With a tokenizer, token-id prompts are decoded to text, so servers that
//! take no ids (or the chat endpoint) see the same workload.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::args::DatasetSpec;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Ids(Vec<u32>),
    Text(String),
}

/// One request of the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRequest {
    pub prompt: Prompt,
    /// Prompt tokens as the client counts them (0 when unknown: text with
    /// no tokenizer); the server's usage replaces it in the results.
    pub prompt_len: usize,
    pub output_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read dataset {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("dataset {path} is not ShareGPT JSON: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("dataset {path} has no usable conversation (each needs a human turn and a reply, both of 4 tokens or more)")]
    Empty { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Everything that shapes a workload.
pub struct DatasetOptions<'a> {
    pub spec: &'a DatasetSpec,
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: Option<usize>,
    pub range_ratio: f64,
    pub prefix_len: usize,
    /// Ids are drawn from [0, vocab_size) when there is no tokenizer.
    pub vocab_size: u32,
    pub seed: u64,
    /// Present: random ids skip its special tokens and stay below its
    /// vocabulary size, and text lengths are measured with it.
    pub tokenizer: Option<&'a Tokenizer>,
    /// Decode random prompts to text (needs the tokenizer).
    pub text: bool,
}

/// Output length of random and prefix prompts when none is given.
pub const DEFAULT_OUTPUT_LEN: usize = 128;

/// The workload plus a small prompt, unrelated to it, to check the server.
pub struct Dataset {
    pub requests: Vec<BenchRequest>,
    pub probe: Prompt,
}

pub fn build(o: &DatasetOptions) -> Result<Dataset, DatasetError> {
    if o.num_prompts == 0 {
        return Err(DatasetError::Invalid("--num-prompts must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&o.range_ratio) {
        return Err(DatasetError::Invalid(format!("--range-ratio {} must be in [0, 1)", o.range_ratio)));
    }
    let ids = IdSource::new(o)?;
    // A separate stream: the probe never shares a prefix with the workload.
    let probe = match o.spec {
        DatasetSpec::Sharegpt { .. } => Prompt::Text("Hello.".into()),
        _ => ids.prompt(&ids.draw(&mut ChaCha8Rng::seed_from_u64(o.seed ^ 0x9e37_79b9), 4), o.tokenizer)?,
    };
    let requests = match o.spec {
        DatasetSpec::Random => synthetic(o, &ids, 0)?,
        DatasetSpec::Prefix => synthetic(o, &ids, o.prefix_len)?,
        DatasetSpec::Sharegpt { path } => sharegpt(o, path)?,
    };
    Ok(Dataset { requests, probe })
}

/// The ids random prompts are drawn from.
struct IdSource {
    allowed: Vec<u32>,
    text: bool,
}

impl IdSource {
    fn new(o: &DatasetOptions) -> Result<IdSource, DatasetError> {
        let allowed: Vec<u32> = match o.tokenizer {
            Some(t) => (0..t.vocab_size() as u32).filter(|&id| !t.is_special(id)).collect(),
            None => (0..o.vocab_size).collect(),
        };
        if allowed.is_empty() {
            return Err(DatasetError::Invalid("no token ids to draw prompts from (--vocab-size 0?)".into()));
        }
        if o.text && o.tokenizer.is_none() {
            return Err(DatasetError::Invalid("text prompts need a tokenizer".into()));
        }
        Ok(IdSource { allowed, text: o.text })
    }

    fn draw(&self, rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.allowed[rng.gen_range(0..self.allowed.len())]).collect()
    }

    fn prompt(&self, ids: &[u32], tok: Option<&Tokenizer>) -> Result<Prompt, DatasetError> {
        match tok.filter(|_| self.text) {
            None => Ok(Prompt::Ids(ids.to_vec())),
            Some(t) => Ok(Prompt::Text(t.decode(ids, false).map_err(|e| DatasetError::Tokenizer(e.to_string()))?)),
        }
    }
}

/// A length drawn uniformly from [len*(1-r), len*(1+r)], at least 1.
fn draw_len(rng: &mut ChaCha8Rng, len: usize, r: f64) -> usize {
    let lo = ((len as f64 * (1.0 - r)).floor() as usize).max(1);
    let hi = ((len as f64 * (1.0 + r)).ceil() as usize).max(lo);
    rng.gen_range(lo..=hi)
}

fn count(tok: &Tokenizer, text: &str) -> Result<usize, DatasetError> {
    tok.encode(text, false).map(|v| v.len()).map_err(|e| DatasetError::Tokenizer(e.to_string()))
}

/// random (prefix_len 0) and prefix prompts: `prefix_len` shared ids, then
/// a unique random part of about `input_len` ids.
fn synthetic(o: &DatasetOptions, ids: &IdSource, prefix_len: usize) -> Result<Vec<BenchRequest>, DatasetError> {
    if o.input_len == 0 && prefix_len == 0 {
        return Err(DatasetError::Invalid("--input-len must be at least 1".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let prefix = ids.draw(&mut rng, prefix_len);
    let prefix_text = match (o.tokenizer.filter(|_| o.text), prefix_len) {
        (Some(t), 1..) => t.decode(&prefix, false).map_err(|e| DatasetError::Tokenizer(e.to_string()))?,
        _ => String::new(),
    };
    let out_len = o.output_len.unwrap_or(DEFAULT_OUTPUT_LEN);
    let mut requests = Vec::with_capacity(o.num_prompts);
    for _ in 0..o.num_prompts {
        let n_in = if o.input_len == 0 { 0 } else { draw_len(&mut rng, o.input_len, o.range_ratio) };
        let n_out = draw_len(&mut rng, out_len, o.range_ratio);
        let unique = ids.draw(&mut rng, n_in);
        let (prompt, prompt_len) = match (ids.prompt(&unique, o.tokenizer)?, o.tokenizer) {
            (Prompt::Text(s), Some(t)) => {
                let text = prefix_text.clone() + &s;
                let n = count(t, &text)?;
                (Prompt::Text(text), n)
            }
            _ => {
                let all: Vec<u32> = prefix.iter().chain(&unique).copied().collect();
                let n = all.len();
                (Prompt::Ids(all), n)
            }
        };
        requests.push(BenchRequest { prompt, prompt_len, output_len: n_out });
    }
    Ok(requests)
}

/// The first human turn and its reply of one ShareGPT entry, if it has both.
fn first_exchange(entry: &Value, index: usize) -> Result<Option<(String, String)>, String> {
    let conv = entry
        .get("conversations")
        .ok_or_else(|| format!("entry {index} has no \"conversations\""))?
        .as_array()
        .ok_or_else(|| format!("entry {index}: \"conversations\" is not a list"))?;
    if conv.len() < 2 {
        return Ok(None);
    }
    let value = |turn: usize| {
        conv[turn]
            .get("value")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("entry {index}, turn {turn}: no string \"value\""))
    };
    Ok(Some((value(0)?, value(1)?)))
}

/// Usable (prompt, prompt_len, output_len) of a ShareGPT file, in file order.
/// With a tokenizer, vLLM's filter applies: both parts >= 4 tokens, prompt
/// <= 1024 and prompt + output <= 2048 when the output length is the reply's.
fn sharegpt_entries(o: &DatasetOptions, path: &Path) -> Result<Vec<BenchRequest>, DatasetError> {
    let malformed = |detail: String| DatasetError::Malformed { path: path.into(), detail };
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Read { path: path.into(), source })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    let entries = json.as_array().ok_or_else(|| malformed("the top level is not a list of conversations".into()))?;
    let mut out = vec![];
    for (i, entry) in entries.iter().enumerate() {
        let Some((prompt, reply)) = first_exchange(entry, i).map_err(malformed)? else { continue };
        let (prompt_len, output_len) = match (o.tokenizer, o.output_len) {
            (Some(t), fixed) => {
                let (p, r) = (count(t, &prompt)?, count(t, &reply)?);
                let out = fixed.unwrap_or(r);
                let too_long = fixed.is_none() && (p > 1024 || p + r > 2048);
                if p < 4 || out < 4 || too_long {
                    continue;
                }
                (p, out)
            }
            (None, Some(fixed)) => (0, fixed),
            (None, None) => {
                return Err(DatasetError::Invalid("sharegpt without --tokenizer needs --output-len (the reply lengths are counted in tokens)".into()))
            }
        };
        out.push(BenchRequest { prompt: Prompt::Text(prompt), prompt_len, output_len });
    }
    if out.is_empty() {
        return Err(DatasetError::Empty { path: path.into() });
    }
    Ok(out)
}

/// `num_prompts` entries, shuffled by the seed; repeated if the file has fewer.
fn sharegpt(o: &DatasetOptions, path: &Path) -> Result<Vec<BenchRequest>, DatasetError> {
    let mut entries = sharegpt_entries(o, path)?;
    entries.shuffle(&mut ChaCha8Rng::seed_from_u64(o.seed));
    if entries.len() < o.num_prompts {
        eprintln!("kiln bench: {} has {} usable conversations; repeating them to make {}", path.display(), entries.len(), o.num_prompts);
    }
    Ok(entries.iter().cycle().take(o.num_prompts).cloned().collect())
}
