//! Sentence-embedding pooling, as sentence-transformers configures it:
//! `modules.json` lists the pipeline (Transformer -> Pooling -> [Normalize]),
//! `1_Pooling/config.json` (the Pooling module's folder) picks the mode,
//! `sentence_bert_config.json` gives `max_seq_length`. Also Matryoshka
//! truncation for the `dimensions` request field.

use super::ModelError;
use serde_json::Value;
use std::path::Path;

/// How the token vectors of one sequence become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    /// The mean over every token (`pooling_mode_mean_tokens`).
    Mean,
    /// The first token (`pooling_mode_cls_token`).
    Cls,
    /// The last token (`pooling_mode_lasttoken`; decoder embedding models).
    LastToken,
}

/// The pooling pipeline of an embedding model.
#[derive(Clone, Debug, PartialEq)]
pub struct Pooling {
    pub mode: PoolingMode,
    /// L2-normalise the pooled vector (a Normalize module follows Pooling).
    pub normalize: bool,
    /// sentence_bert_config.json's limit on input tokens, if any.
    pub max_seq_length: Option<usize>,
    /// What `dimensions` may truncate to (see `Matryoshka`).
    pub matryoshka: Matryoshka,
}

/// Which `dimensions` an embedding model allows, from its config.json as
/// vLLM reads it: `matryoshka_dimensions` (a list: only those sizes),
/// `is_matryoshka: true` (any size), else none but the native size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Matryoshka {
    #[default]
    No,
    Any,
    Only(Vec<usize>),
}

impl Matryoshka {
    /// Reads config.json's fields.
    pub fn from_config(config: &Value) -> Matryoshka {
        if let Some(list) = config.get("matryoshka_dimensions").and_then(Value::as_array) {
            let dims: Vec<usize> = list.iter().filter_map(Value::as_u64).map(|d| d as usize).collect();
            if !dims.is_empty() {
                return Matryoshka::Only(dims);
            }
        }
        match config.get("is_matryoshka").and_then(Value::as_bool) {
            Some(true) => Matryoshka::Any,
            _ => Matryoshka::No,
        }
    }

    /// Whether `dimensions` may truncate at all.
    pub fn enabled(&self) -> bool {
        *self != Matryoshka::No
    }

    /// Checks a requested `dimensions` against the model's `native` size:
    /// the native size is always allowed (nothing to truncate); the error
    /// says what is allowed.
    pub fn check(&self, dims: usize, native: usize) -> Result<(), String> {
        if dims == native {
            return Ok(());
        }
        match self {
            Matryoshka::No => Err(format!("the model does not support Matryoshka truncation: dimensions may only be its native {native}")),
            _ if dims == 0 || dims > native => Err(format!("dimensions must be between 1 and {native}, got {dims}")),
            Matryoshka::Any => Ok(()),
            Matryoshka::Only(list) if list.contains(&dims) => Ok(()),
            Matryoshka::Only(list) => {
                let list: Vec<String> = list.iter().map(usize::to_string).collect();
                Err(format!("dimensions must be one of the model's matryoshka_dimensions [{}] or {native}, got {dims}", list.join(", ")))
            }
        }
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.into(), source: e })?;
    serde_json::from_str(&text).map(Some).map_err(|e| ModelError::Corrupt { path: path.into(), msg: e.to_string() })
}

fn mode_of(cfg: &Value, path: &Path) -> Result<PoolingMode, ModelError> {
    let on = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    let modes = [
        ("pooling_mode_mean_tokens", Some(PoolingMode::Mean)),
        ("pooling_mode_cls_token", Some(PoolingMode::Cls)),
        ("pooling_mode_lasttoken", Some(PoolingMode::LastToken)),
        ("pooling_mode_max_tokens", None),
        ("pooling_mode_mean_sqrt_len_tokens", None),
        ("pooling_mode_weightedmean_tokens", None),
    ];
    let set: Vec<_> = modes.iter().filter(|(k, _)| on(k)).collect();
    match set.as_slice() {
        [(_, Some(m))] => Ok(*m),
        [(k, None)] => Err(ModelError::Unsupported { path: path.into(), what: "pooling mode", name: k.to_string() }),
        [] => Err(ModelError::Corrupt { path: path.into(), msg: "no pooling mode is set".into() }),
        _ => Err(ModelError::Unsupported { path: path.into(), what: "pooling", name: "several modes concatenated".into() }),
    }
}

impl Pooling {
    /// The pooling of a sentence-transformers model directory; None when
    /// it has no modules.json (not a sentence-transformers model).
    pub fn from_dir(dir: &Path) -> Result<Option<Pooling>, ModelError> {
        let modules_path = dir.join("modules.json");
        let Some(modules) = read_json(&modules_path)? else { return Ok(None) };
        let list = modules.as_array().ok_or_else(|| ModelError::Corrupt { path: modules_path.clone(), msg: "not a list".into() })?;
        let (mut mode, mut normalize) = (None, false);
        for m in list {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            let sub = dir.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
            match ty.rsplit('.').next().unwrap_or("") {
                "Transformer" => {}
                "Pooling" => {
                    let p = sub.join("config.json");
                    let cfg = read_json(&p)?.ok_or(ModelError::NotFound { path: p.clone() })?;
                    mode = Some(mode_of(&cfg, &p)?);
                }
                "Normalize" => normalize = true,
                _ => return Err(ModelError::Unsupported { path: modules_path, what: "sentence-transformers module", name: ty.into() }),
            }
        }
        let mode = mode.ok_or_else(|| ModelError::Corrupt { path: modules_path, msg: "no Pooling module".into() })?;
        let max_seq_length = read_json(&dir.join("sentence_bert_config.json"))?
            .and_then(|v| v.get("max_seq_length").and_then(Value::as_u64))
            .map(|n| n as usize);
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let matryoshka = Matryoshka::from_config(&config);
        Ok(Some(Pooling { mode, normalize, max_seq_length, matryoshka }))
    }

    /// The pooling vLLM applies to a decoder served for embeddings without
    /// sentence-transformers files: last token, normalised.
    pub fn decoder_default() -> Pooling {
        Pooling { mode: PoolingMode::LastToken, normalize: true, max_seq_length: None, matryoshka: Matryoshka::No }
    }

    /// Pools `hidden: [tokens, width]` of packed sequences (`seqs`: first
    /// row, length; each length >= 1) into one vector per sequence.
    pub fn pool(&self, hidden: &[f32], width: usize, seqs: &[(usize, usize)]) -> Vec<Vec<f32>> {
        let row = |r: usize| &hidden[r * width..(r + 1) * width];
        seqs.iter()
            .map(|&(start, len)| {
                let mut v = match self.mode {
                    PoolingMode::Cls => row(start).to_vec(),
                    PoolingMode::LastToken => row(start + len - 1).to_vec(),
                    PoolingMode::Mean => {
                        let mut acc = vec![0.0f64; width];
                        for r in start..start + len {
                            acc.iter_mut().zip(row(r)).for_each(|(a, &x)| *a += x as f64);
                        }
                        acc.iter().map(|&a| (a / len as f64) as f32).collect()
                    }
                };
                if self.normalize {
                    l2_normalize(&mut v);
                }
                v
            })
            .collect()
    }
}

/// v <- v / max(‖v‖, 1e-12) (torch.nn.functional.normalize).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
}

/// Matryoshka truncation: the first `dims` values, re-normalised.
pub fn truncate_dims(mut v: Vec<f32>, dims: usize) -> Vec<f32> {
    v.truncate(dims);
    l2_normalize(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_pool_the_right_rows() {
        let hidden = [1.0f32, 0.0, 3.0, 4.0, 5.0, 0.0];
        let seqs = [(0, 2), (2, 1)];
        let p = |mode, normalize| Pooling { mode, normalize, max_seq_length: None, matryoshka: Matryoshka::No }.pool(&hidden, 2, &seqs);
        assert_eq!(p(PoolingMode::Mean, false), vec![vec![2.0, 2.0], vec![5.0, 0.0]]);
        assert_eq!(p(PoolingMode::Cls, false), vec![vec![1.0, 0.0], vec![5.0, 0.0]]);
        assert_eq!(p(PoolingMode::LastToken, true), vec![vec![0.6, 0.8], vec![1.0, 0.0]]);
        assert_eq!(truncate_dims(vec![3.0, 4.0, 12.0], 2), vec![0.6, 0.8]);
    }

    #[test]
    fn reads_sentence_transformers_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("modules.json"), r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#).unwrap();
        std::fs::create_dir(d.join("1_Pooling")).unwrap();
        std::fs::write(d.join("1_Pooling/config.json"), r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#).unwrap();
        std::fs::write(d.join("sentence_bert_config.json"), r#"{"max_seq_length": 512}"#).unwrap();
        let p = Pooling::from_dir(d).unwrap().unwrap();
        assert_eq!(p, Pooling { mode: PoolingMode::Cls, normalize: true, max_seq_length: Some(512), matryoshka: Matryoshka::No });
        std::fs::write(d.join("1_Pooling/config.json"), r#"{"pooling_mode_max_tokens": true}"#).unwrap();
        let e = Pooling::from_dir(d).unwrap_err().to_string();
        assert!(e.contains("pooling_mode_max_tokens"), "{e}");
        assert_eq!(Pooling::from_dir(&d.join("1_Pooling")).unwrap(), None);
    }

    /// `dimensions` equal to the native size was refused on a model
    /// without Matryoshka training, and a listed `matryoshka_dimensions`
    /// was not enforced.
    #[test]
    fn matryoshka_dimensions_are_enforced_and_the_native_size_always_allowed() {
        let no = Matryoshka::from_config(&serde_json::json!({}));
        assert_eq!(no, Matryoshka::No);
        assert!(no.check(384, 384).is_ok());
        assert!(no.check(64, 384).unwrap_err().contains("native 384"));
        let any = Matryoshka::from_config(&serde_json::json!({"is_matryoshka": true}));
        assert!(any.check(17, 64).is_ok() && any.check(65, 64).is_err() && any.check(0, 64).is_err());
        let only = Matryoshka::from_config(&serde_json::json!({"is_matryoshka": true, "matryoshka_dimensions": [32, 128]}));
        assert_eq!(only, Matryoshka::Only(vec![32, 128]));
        assert!(only.check(32, 256).is_ok() && only.check(256, 256).is_ok());
        let e = only.check(64, 256).unwrap_err();
        assert!(e.contains("[32, 128]") && e.contains("64"), "{e}");
    }
}
