//! BERT-family encoders (`BertModel`: sentence-transformers' all-MiniLM,
//! BAAI bge, e5, ...). Weight names are Hugging Face's, verbatim (with or
//! without the `bert.` prefix of task-head checkpoints).
//!
//! embed:   h = LN(word[tok] + position[pos] + token_type[0])
//! layer:   qkv = h·Wqkvᵀ + b ; a = softmax(q·kᵀ/√d)·v  (bidirectional, per sequence)
//!          h = LN(h + a·Woᵀ + bo) ; h = LN(h + gelu(h·Wiᵀ + bi)·Wo2ᵀ + bo2)
//! (post-LayerNorm, as in Devlin et al. 2018 and transformers' modeling_bert.py)

use super::weights::WeightSource;
use super::ModelError;
use crate::backend::cpu::encoder::{gelu_erf_inplace, layer_norm, packed_attention};
use crate::backend::cpu::ops::add_inplace;
use crate::backend::cpu::matmul::WeightData;
use crate::backend::cpu::{matmul, Weight};
use crate::backend::cpu::pool;
use serde::Deserialize;
use std::path::Path;

/// The hyper-parameters of a `BertModel` config.json.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_pos_type() -> String {
    "absolute".into()
}

/// Whether a config.json's architecture is one this file serves.
pub fn is_bert(config_json: &serde_json::Value) -> bool {
    let arch = config_json.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("");
    let ty = config_json.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
    arch.starts_with("Bert") || ty == "bert"
}

impl BertConfig {
    /// Parses and checks a config.json (`hidden_act` must be the exact
    /// "gelu", positions "absolute").
    pub fn from_file(path: &Path) -> Result<BertConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.into(), source: e })?;
        let c: BertConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::Corrupt { path: path.into(), msg: format!("invalid BERT config.json: {e}") })?;
        if c.hidden_act != "gelu" {
            return Err(ModelError::Unsupported { path: path.into(), what: "hidden_act", name: c.hidden_act });
        }
        if c.position_embedding_type != "absolute" {
            return Err(ModelError::Unsupported { path: path.into(), what: "position_embedding_type", name: c.position_embedding_type });
        }
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 || c.num_hidden_layers == 0 {
            return Err(ModelError::ConfigMismatch {
                path: path.into(),
                msg: format!("hidden_size {} is not a multiple of num_attention_heads {}", c.hidden_size, c.num_attention_heads),
            });
        }
        Ok(c)
    }
}

/// A LayerNorm's weight and bias.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

struct Linear {
    w: Weight,
    b: Vec<f32>,
}

/// From this many rows on, `Linear::forward` is one GEMM over all of them
/// (an encoder step packs every input's tokens: thousands of rows).
const WIDE_GEMM_MIN_M: usize = 64;

impl Linear {
    /// `x [m, cols]` -> `x·wᵀ + b [m, rows]`. Many rows: the `gemm` crate
    /// over blocks of x's rows, each against the whole f32 weight (the
    /// shared `matmul` splits the weight's rows into narrow tasks and packs
    /// all of `x` again in each, which cost an encoder step more than its
    /// arithmetic); few rows: the shared `matmul`.
    fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.w.rows, self.w.cols);
        let mut y = vec![0.0; m * n];
        let w = match &self.w.data {
            WeightData::F32(w) if m >= WIDE_GEMM_MIN_M => w,
            _ => {
                matmul(x, m, &self.w, Some(&self.b), &mut y);
                return y;
            }
        };
        assert_eq!(x.len(), m * k, "linear: x is not [m, k]");
        // Row blocks of x, a few per thread; each block packs its own rows
        // once and the whole weight once.
        let rows = m.div_ceil(2 * pool::threads()).max(WIDE_GEMM_MIN_M);
        pool::for_each_chunk_mut(&mut y, rows * n, |i, yb| {
            let xb = &x[i * rows * k..(i * rows * k + yb.len() / n * k)];
            let mb = xb.len() / k;
            // SAFETY: yb is [mb, n] row-major (column stride 1, row stride n),
            // xb is [mb, k] row-major, w is [n, k] row-major read as its
            // transpose [k, n] (row stride 1, column stride k); all live and
            // sized as said; yb is this task's own rows and aliases nothing.
            unsafe {
                gemm::gemm(
                    mb, n, k,
                    yb.as_mut_ptr(), 1, n as isize, false,
                    xb.as_ptr(), 1, k as isize,
                    w.as_ptr(), k as isize, 1,
                    0.0, 1.0, false, false, false,
                    gemm::Parallelism::None,
                );
            }
        });
        pool::for_each_chunk_mut(&mut y, n, |_, row| row.iter_mut().zip(&self.b).for_each(|(y, b)| *y += b));
        y
    }
}

struct Layer {
    /// query, key and value stacked: [3 * hidden, hidden].
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
}

pub struct BertModel {
    pub cfg: BertConfig,
    word: Weight,
    position: Weight,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

/// f32 views of one layer's tensors (`BertModel::view`), Hugging Face
/// shapes: weights `[out, in]` row-major, biases `[out]`.
pub struct BertLayerView<'a> {
    /// query, key and value stacked: [3 * hidden, hidden] and [3 * hidden].
    pub qkv_w: &'a [f32],
    pub qkv_b: &'a [f32],
    /// attention.output.dense: [hidden, hidden], [hidden].
    pub attn_out_w: &'a [f32],
    pub attn_out_b: &'a [f32],
    /// attention.output.LayerNorm: [hidden] each.
    pub attn_norm_w: &'a [f32],
    pub attn_norm_b: &'a [f32],
    /// intermediate.dense: [intermediate, hidden], [intermediate].
    pub inter_w: &'a [f32],
    pub inter_b: &'a [f32],
    /// output.dense: [hidden, intermediate], [hidden].
    pub out_w: &'a [f32],
    pub out_b: &'a [f32],
    /// output.LayerNorm: [hidden] each.
    pub out_norm_w: &'a [f32],
    pub out_norm_b: &'a [f32],
}

/// f32 views of every tensor of a `BertModel`, for a backend that uploads
/// them (the CUDA encoder, src/backend/cuda/encoder.rs).
pub struct BertView<'a> {
    /// [vocab, hidden]
    pub word: &'a [f32],
    /// [max_position_embeddings, hidden]
    pub position: &'a [f32],
    /// The token-type-0 row, [hidden] (single-sentence inputs).
    pub token_type: &'a [f32],
    /// embeddings.LayerNorm: [hidden] each.
    pub embed_norm_w: &'a [f32],
    pub embed_norm_b: &'a [f32],
    pub layers: Vec<BertLayerView<'a>>,
}

/// The f32 data of a weight `BertModel::load` made (always f32).
fn f32_data(w: &Weight) -> &[f32] {
    match &w.data {
        WeightData::F32(v) => v,
        _ => unreachable!("BertModel::load keeps every weight in f32"),
    }
}

struct Loader<'a> {
    src: &'a dyn WeightSource,
    prefix: &'static str,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let t = self.src.load(&full)?;
        if t.shape != shape {
            return Err(ModelError::ConfigMismatch {
                path: self.src.path().into(),
                msg: format!("tensor '{full}' has shape {:?}, the config implies {:?}", t.shape, shape),
            });
        }
        Ok(t.to_f32())
    }
    fn weight(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        Ok(Weight::f32(rows, cols, self.tensor(name, &[rows, cols])?))
    }
    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
        Ok(Linear { w: self.weight(&format!("{name}.weight"), rows, cols)?, b: self.tensor(&format!("{name}.bias"), &[rows])? })
    }
    fn norm(&self, name: &str, n: usize) -> Result<Norm, ModelError> {
        Ok(Norm { w: self.tensor(&format!("{name}.weight"), &[n])?, b: self.tensor(&format!("{name}.bias"), &[n])? })
    }
}

impl BertModel {
    /// Loads every tensor (as f32), checking shapes against `cfg`.
    pub fn load(cfg: BertConfig, src: &dyn WeightSource, mut progress: impl FnMut(usize)) -> Result<BertModel, ModelError> {
        let prefix = if src.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let l = Loader { src, prefix };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let word = l.weight("embeddings.word_embeddings.weight", cfg.vocab_size, h)?;
        let position = l.weight("embeddings.position_embeddings.weight", cfg.max_position_embeddings, h)?;
        let types = l.tensor("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let embed_norm = l.norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for n in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            let q = l.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = l.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = l.linear(&format!("{p}.attention.self.value"), h, h)?;
            layers.push(Layer {
                qkv: Linear { w: Weight::concat_rows(&[&q.w, &k.w, &v.w]), b: [q.b, k.b, v.b].concat() },
                attn_out: l.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: l.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                inter: l.linear(&format!("{p}.intermediate.dense"), i, h)?,
                out: l.linear(&format!("{p}.output.dense"), h, i)?,
                out_norm: l.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
            progress(n + 1);
        }
        // Single-sentence inputs: every token has token type 0.
        let token_type = types[..h].to_vec();
        Ok(BertModel { cfg, word, position, token_type, embed_norm, layers })
    }

    /// Views of every tensor (see `BertView`).
    pub fn view(&self) -> BertView<'_> {
        BertView {
            word: f32_data(&self.word),
            position: f32_data(&self.position),
            token_type: &self.token_type,
            embed_norm_w: &self.embed_norm.w,
            embed_norm_b: &self.embed_norm.b,
            layers: self
                .layers
                .iter()
                .map(|l| BertLayerView {
                    qkv_w: f32_data(&l.qkv.w),
                    qkv_b: &l.qkv.b,
                    attn_out_w: f32_data(&l.attn_out.w),
                    attn_out_b: &l.attn_out.b,
                    attn_norm_w: &l.attn_norm.w,
                    attn_norm_b: &l.attn_norm.b,
                    inter_w: f32_data(&l.inter.w),
                    inter_b: &l.inter.b,
                    out_w: f32_data(&l.out.w),
                    out_b: &l.out.b,
                    out_norm_w: &l.out_norm.w,
                    out_norm_b: &l.out_norm.b,
                })
                .collect(),
        }
    }

    /// The last hidden state `[tokens, hidden]` of packed sequences:
    /// `tokens` holds every sequence's ids back to back, `seqs` each one's
    /// (first row, length). Positions restart at 0 in each sequence; a
    /// sequence must not be longer than `max_position_embeddings`.
    pub fn forward(&self, tokens: &[u32], seqs: &[(usize, usize)]) -> Vec<f32> {
        let c = &self.cfg;
        let (t, h) = (tokens.len(), c.hidden_size);
        let eps = c.layer_norm_eps as f32;
        let mut x = vec![0.0f32; t * h];
        let mut pos = vec![0.0f32; h];
        for &(start, len) in seqs {
            for j in 0..len {
                let row = &mut x[(start + j) * h..(start + j + 1) * h];
                self.word.row_into(tokens[start + j] as usize, row);
                self.position.row_into(j, &mut pos);
                for ((r, p), ty) in row.iter_mut().zip(&pos).zip(&self.token_type) {
                    *r += p + ty;
                }
            }
        }
        let mut hs = vec![0.0f32; t * h];
        layer_norm(&x, &self.embed_norm.w, &self.embed_norm.b, eps, &mut hs);
        let heads = c.num_attention_heads;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&hs, t);
            let attn = packed_attention(&qkv, seqs, heads, h / heads);
            let mut a = layer.attn_out.forward(&attn, t);
            add_inplace(&mut a, &hs);
            layer_norm(&a, &layer.attn_norm.w, &layer.attn_norm.b, eps, &mut hs);
            let mut inter = layer.inter.forward(&hs, t);
            gelu_erf_inplace(&mut inter);
            let mut o = layer.out.forward(&inter, t);
            add_inplace(&mut o, &hs);
            layer_norm(&o, &layer.out_norm.w, &layer.out_norm.b, eps, &mut hs);
        }
        hs
    }
}
