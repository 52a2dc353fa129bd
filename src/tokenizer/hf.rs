//! Loading a tokenizer from a Hugging Face model directory:
//! `tokenizer.json` (the whole pipeline) and `tokenizer_config.json`
//! (chat template, bos/eos tokens, add_bos_token/add_eos_token), and
//! `chat_template.jinja` when present.

use std::path::Path;

use serde_json::Value as J;

use super::{ChatTemplate, SpecialIds, Tokenizer, TokenizerError};

fn load_err(path: &Path, msg: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Load { path: path.display().to_string(), msg: msg.to_string() }
}

pub(crate) fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let tj = dir.join("tokenizer.json");
    if !tj.is_file() {
        return Err(load_err(&tj, "no such file"));
    }
    let mut inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| load_err(&tj, e))?;
    // kiln never truncates or pads silently (some tokenizer.json files, e.g.
    // sentence-transformers' exports, ask for both).
    inner.with_truncation(None).map_err(|e| load_err(&tj, e))?;
    inner.with_padding(None);
    let cfg = read_config(&dir.join("tokenizer_config.json"))?;

    let token_str = |key: &str| cfg.get(key).and_then(token_content);
    let bos_token = token_str("bos_token");
    let eos_token = token_str("eos_token");
    let bos = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
    let eos = eos_token.as_deref().and_then(|t| inner.token_to_id(t));

    let ids = special_ids(&inner, &cfg, bos, eos);
    let chat = match chat_template_file(dir)?.or_else(|| chat_template_source(&cfg)) {
        Some(src) => Some(ChatTemplate::new(&src, bos_token, eos_token)?),
        None => None,
    };
    Ok(Tokenizer::from_parts(inner, ids, chat))
}

/// `tokenizer_config.json` as a JSON object; a missing file is an empty one.
fn read_config(path: &Path) -> Result<serde_json::Map<String, J>, TokenizerError> {
    if !path.is_file() {
        return Ok(serde_json::Map::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| load_err(path, e))?;
    match serde_json::from_str(&text).map_err(|e| load_err(path, e))? {
        J::Object(m) => Ok(m),
        _ => Err(load_err(path, "not a JSON object")),
    }
}

/// A token given as a string or as `{"content": ...}` (an AddedToken).
fn token_content(v: &J) -> Option<String> {
    match v {
        J::String(s) => Some(s.clone()),
        J::Object(m) => m.get("content").and_then(J::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template.jinja`, where transformers >= 4.50 saves the template
/// (it wins over tokenizer_config.json's, as in transformers).
fn chat_template_file(dir: &Path) -> Result<Option<String>, TokenizerError> {
    let path = dir.join("chat_template.jinja");
    if !path.is_file() {
        return Ok(None);
    }
    std::fs::read_to_string(&path).map(Some).map_err(|e| load_err(&path, e))
}

/// `chat_template` is a string, or a list of `{name, template}` of which
/// the one named "default" is used (else the first).
fn chat_template_source(cfg: &serde_json::Map<String, J>) -> Option<String> {
    match cfg.get("chat_template")? {
        J::String(s) => Some(s.clone()),
        J::Array(list) => {
            let named = |want: Option<&str>| {
                list.iter().find_map(|t| {
                    let name = t.get("name").and_then(J::as_str);
                    let src = t.get("template").and_then(J::as_str)?;
                    (want.is_none() || name == want).then(|| src.to_string())
                })
            };
            named(Some("default")).or_else(|| named(None))
        }
        _ => None,
    }
}

/// transformers adds BOS/EOS through tokenizer.json's post-processor; when
/// tokenizer_config.json asks for BOS and the post-processor does not add
/// it, kiln adds it itself (and likewise for EOS).
fn special_ids(
    inner: &tokenizers::Tokenizer,
    cfg: &serde_json::Map<String, J>,
    bos: Option<u32>,
    eos: Option<u32>,
) -> SpecialIds {
    let flag = |k: &str| cfg.get(k).and_then(J::as_bool);
    let probe = inner.encode("a", true).map(|e| e.get_ids().to_vec()).unwrap_or_default();
    let post_bos = bos.is_some() && probe.first() == bos.as_ref();
    let post_eos = eos.is_some() && probe.last() == eos.as_ref();
    let want_bos = flag("add_bos_token").unwrap_or(post_bos);
    let want_eos = flag("add_eos_token").unwrap_or(post_eos);
    // Use the post-processor only when it does exactly what is wanted.
    let use_post = inner.get_post_processor().is_some() && want_bos == post_bos && want_eos == post_eos;
    SpecialIds {
        bos,
        eos,
        eos_ids: eos.into_iter().collect(),
        add_bos: want_bos,
        add_eos: want_eos,
        use_post_processor: use_post,
    }
}
