//! Parse, don't validate: wire parameters become `SamplingParams`,
//! `StopCriteria` and counts here, once, or a 400 that names the parameter.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::wire_in::{CommonParams, StopSpec};
use crate::engine::StopCriteria;
use crate::sampling::SamplingParams;

/// Server-side bounds a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_n: usize,
    pub max_stop: usize,
    pub max_logprobs: usize,
    pub max_prompts: usize,
    pub max_model_len: usize,
    pub vocab_size: usize,
}

/// Parameters of a generation request that do not depend on the prompt.
#[derive(Debug, Clone)]
pub struct ValidParams {
    pub sampling: SamplingParams,
    /// `max_tokens` is filled by `fit_context` once the prompt length is known.
    pub stop: StopCriteria,
    /// As requested; None: up to the context window.
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

/// OpenAI's deprecated function-calling fields, which `tools` replaces.
const DEPRECATED: &[&str] = &["functions", "function_call"];

/// Refuses every non-null field kiln does not serve, naming it.
pub fn refuse_extra(extra: &Map<String, Value>, prefix: &str) -> Result<(), ApiError> {
    let Some((name, _)) = extra.iter().find(|(_, v)| !v.is_null()) else { return Ok(()) };
    let param = format!("{prefix}{name}");
    let why = if DEPRECATED.contains(&name.as_str()) {
        "is deprecated by OpenAI and not served: use tools and tool_choice"
    } else {
        "is not supported by kiln"
    };
    Err(ApiError::unsupported(param, why))
}

/// Below this a temperature means greedy (as in vLLM): dividing logits by
/// a subnormal would overflow.
const MIN_TEMPERATURE: f64 = 1e-5;

/// Checks `v` after rounding to f32 (the engine's precision), so that e.g.
/// top_p = 5e-324 is refused as the 0 it becomes.
fn check_range(v: Option<f64>, param: &str, lo: f64, hi: f64, lo_open: bool) -> Result<(), ApiError> {
    let Some(x) = v else { return Ok(()) };
    let x = x as f32 as f64;
    let lo_ok = if lo_open { x > lo } else { x >= lo };
    if lo_ok && x <= hi && x.is_finite() {
        return Ok(());
    }
    let open = if lo_open { "(" } else { "[" };
    Err(ApiError::invalid(format!("{param} must be in {open}{lo}, {hi}], got {x}"), param))
}

/// `n` is checked first and on its own: nothing is sized from it before.
pub fn check_n(n: Option<i64>, max_n: usize) -> Result<usize, ApiError> {
    let n = n.unwrap_or(1);
    if n < 1 || n as u64 > max_n as u64 {
        return Err(ApiError::invalid(format!("n must be between 1 and {max_n}, got {n}"), "n"));
    }
    Ok(n as usize)
}

fn check_max_tokens(v: Option<i64>, param: &str, max_model_len: usize) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(t) if t < 1 => Err(ApiError::invalid(format!("{param} must be at least 1, got {t}"), param)),
        Some(t) if t as u64 > max_model_len as u64 => Err(ApiError::invalid(
            format!("{param} must be at most the context window of {max_model_len} tokens, got {t}"),
            param,
        )),
        Some(t) => Ok(Some(t as usize)),
    }
}

fn check_stop(stop: Option<&StopSpec>, max_stop: usize) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if list.len() > max_stop {
        return Err(ApiError::invalid(format!("at most {max_stop} stop sequences are allowed, got {}", list.len()), "stop"));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop sequences must not be empty", "stop"));
    }
    Ok(list)
}

pub fn check_token_id(id: i64, vocab_size: usize, param: &str) -> Result<u32, ApiError> {
    if id < 0 || id as u64 >= vocab_size as u64 {
        return Err(ApiError::invalid(format!("token id {id} is outside the vocabulary [0, {vocab_size})"), param));
    }
    Ok(id as u32)
}

fn check_logit_bias(p: &CommonParams<'_>, vocab_size: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = p.logit_bias else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(map.len().min(vocab_size));
    for (key, &bias) in map {
        let id: i64 = key
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("logit_bias key '{key}' is not a token id"), "logit_bias"))?;
        let id = check_token_id(id, vocab_size, "logit_bias")?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid(format!("logit_bias values must be in [-100, 100], got {bias}"), "logit_bias"));
        }
        out.push((id, bias as f32));
    }
    Ok(out)
}

/// Validates everything prompt-independent. `max_tokens_param` is the name
/// the client used (`max_tokens` or `max_completion_tokens`).
pub fn validate_common(p: &CommonParams<'_>, max_tokens_param: &str, limits: &Limits) -> Result<ValidParams, ApiError> {
    let n = check_n(p.n, limits.max_n)?;
    if let Some(extra) = p.extra {
        refuse_extra(extra, "")?;
    }
    check_range(p.temperature, "temperature", 0.0, 2.0, false)?;
    check_range(p.top_p, "top_p", 0.0, 1.0, true)?;
    check_range(p.min_p, "min_p", 0.0, 1.0, false)?;
    check_range(p.frequency_penalty, "frequency_penalty", -2.0, 2.0, false)?;
    check_range(p.presence_penalty, "presence_penalty", -2.0, 2.0, false)?;
    check_range(p.repetition_penalty, "repetition_penalty", 0.0, 2.0, true)?;
    let top_k = p.top_k.unwrap_or(-1);
    if top_k < -1 || top_k > i32::MAX as i64 {
        return Err(ApiError::invalid(format!("top_k must be -1 (disabled) or a positive count, got {top_k}"), "top_k"));
    }
    let max_tokens = check_max_tokens(p.max_tokens, max_tokens_param, limits.max_model_len)?;
    let stop_strings = check_stop(p.stop, limits.max_stop)?;
    let stop_token_ids = p
        .stop_token_ids
        .unwrap_or(&[])
        .iter()
        .map(|&id| check_token_id(id, limits.vocab_size, "stop_token_ids"))
        .collect::<Result<Vec<_>, _>>()?;
    let logit_bias = check_logit_bias(p, limits.vocab_size)?;
    let stream = p.stream.unwrap_or(false);
    let include_usage = match p.stream_options {
        Some(_) if !stream => return Err(ApiError::invalid("stream_options is only allowed when stream is true", "stream_options")),
        Some(o) => {
            refuse_extra(&o.extra, "stream_options.")?;
            o.include_usage.unwrap_or(false)
        }
        None => false,
    };
    let temperature = match p.temperature.unwrap_or(1.0) {
        t if t < MIN_TEMPERATURE => 0.0,
        t => t as f32,
    };
    let sampling = SamplingParams {
        temperature,
        top_k: top_k as i32,
        top_p: p.top_p.unwrap_or(1.0) as f32,
        min_p: p.min_p.unwrap_or(0.0) as f32,
        repetition_penalty: p.repetition_penalty.unwrap_or(1.0) as f32,
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
        logit_bias,
        seed: p.seed.map(|s| s as u64),
        logprobs: None,
        prompt_logprobs: None,
    };
    let stop = StopCriteria { max_tokens: 0, stop_token_ids, stop_strings, ignore_eos: p.ignore_eos.unwrap_or(false) };
    Ok(ValidParams { sampling, stop, max_tokens, n, stream, include_usage })
}

/// Checks the prompt against the context window and returns the number of
/// tokens to generate: the request's max_tokens, or what the window leaves.
pub fn fit_context(
    prompt_len: usize,
    max_tokens: Option<usize>,
    max_model_len: usize,
    prompt_param: &'static str,
) -> Result<usize, ApiError> {
    if prompt_len >= max_model_len {
        let message = format!(
            "This model's maximum context length is {max_model_len} tokens. However, your {prompt_param} \
             resulted in {prompt_len} tokens, leaving no room for the completion. Please reduce the length of the {prompt_param}."
        );
        return Err(ApiError::ContextLength { message, param: prompt_param });
    }
    match max_tokens {
        None => Ok(max_model_len - prompt_len),
        Some(t) if prompt_len + t <= max_model_len => Ok(t),
        Some(t) => {
            let message = format!(
                "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens \
                 ({prompt_len} in the {prompt_param}, {t} in the completion). Please reduce the length of the {prompt_param} or completion.",
                prompt_len + t
            );
            Err(ApiError::ContextLength { message, param: "max_tokens" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const LIMITS: Limits =
        Limits { max_n: 4, max_stop: 2, max_logprobs: 5, max_prompts: 8, max_model_len: 100, vocab_size: 50 };

    fn param_of(r: Result<ValidParams, ApiError>) -> String {
        r.unwrap_err().param().unwrap_or_default()
    }

    #[test]
    fn ranges_name_their_param() {
        let v = |p: CommonParams| param_of(validate_common(&p, "max_tokens", &LIMITS));
        let d = CommonParams::default();
        assert_eq!(v(CommonParams { temperature: Some(2.5), ..d }), "temperature");
        assert_eq!(v(CommonParams { temperature: Some(-0.1), ..d }), "temperature");
        assert_eq!(v(CommonParams { top_p: Some(0.0), ..d }), "top_p");
        assert_eq!(v(CommonParams { top_p: Some(1.01), ..d }), "top_p");
        assert_eq!(v(CommonParams { frequency_penalty: Some(2.1), ..d }), "frequency_penalty");
        assert_eq!(v(CommonParams { presence_penalty: Some(-2.1), ..d }), "presence_penalty");
        assert_eq!(v(CommonParams { top_k: Some(-2), ..d }), "top_k");
        assert_eq!(v(CommonParams { n: Some(0), ..d }), "n");
        assert_eq!(v(CommonParams { n: Some(5), ..d }), "n");
        assert_eq!(v(CommonParams { max_tokens: Some(0), ..d }), "max_tokens");
        assert_eq!(v(CommonParams { max_tokens: Some(101), ..d }), "max_tokens");
    }

    #[test]
    fn values_are_checked_at_engine_precision() {
        let d = CommonParams::default();
        let v = |p: CommonParams| validate_common(&p, "max_tokens", &LIMITS);
        assert_eq!(param_of(v(CommonParams { top_p: Some(5e-324), ..d })), "top_p");
        assert_eq!(param_of(v(CommonParams { repetition_penalty: Some(1e-50), ..d })), "repetition_penalty");
        assert_eq!(v(CommonParams { temperature: Some(1e-40), ..d }).unwrap().sampling.temperature, 0.0);
        assert_eq!(v(CommonParams { temperature: Some(0.5), ..d }).unwrap().sampling.temperature, 0.5);
    }

    #[test]
    fn edges_are_accepted() {
        let d = CommonParams::default();
        let p = CommonParams { temperature: Some(2.0), top_p: Some(1.0), top_k: Some(-1), n: Some(4), max_tokens: Some(100), ..d };
        let ok = validate_common(&p, "max_tokens", &LIMITS).unwrap();
        assert_eq!((ok.n, ok.max_tokens, ok.sampling.top_k), (4, Some(100), -1));
        assert_eq!(ok.sampling.temperature, 2.0);
    }

    #[test]
    fn stop_and_bias_checks() {
        let d = CommonParams::default();
        let many = StopSpec::Many(vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(param_of(validate_common(&CommonParams { stop: Some(&many), ..d }, "max_tokens", &LIMITS)), "stop");
        let empty = StopSpec::One(String::new());
        assert_eq!(param_of(validate_common(&CommonParams { stop: Some(&empty), ..d }, "max_tokens", &LIMITS)), "stop");
        for (k, v) in [("x", 1.0), ("50", 1.0), ("3", 101.0), ("-1", 0.0)] {
            let bias = BTreeMap::from([(k.to_string(), v)]);
            let r = validate_common(&CommonParams { logit_bias: Some(&bias), ..d }, "max_tokens", &LIMITS);
            assert_eq!(param_of(r), "logit_bias", "{k}: {v}");
        }
        let bias = BTreeMap::from([("49".to_string(), -100.0)]);
        let ok = validate_common(&CommonParams { logit_bias: Some(&bias), ..d }, "max_tokens", &LIMITS).unwrap();
        assert_eq!(ok.sampling.logit_bias, vec![(49, -100.0)]);
        let ids = [50i64];
        assert_eq!(param_of(validate_common(&CommonParams { stop_token_ids: Some(&ids), ..d }, "max_tokens", &LIMITS)), "stop_token_ids");
    }

    #[test]
    fn extras_are_refused_by_name() {
        let mut extra = Map::new();
        extra.insert("functions".into(), serde_json::json!([]));
        let r = validate_common(&CommonParams { extra: Some(&extra), ..Default::default() }, "max_tokens", &LIMITS);
        let e = r.unwrap_err();
        assert_eq!(e.param().as_deref(), Some("functions"));
        assert!(e.to_string().contains("use tools"), "{e}");
        let mut nulls = Map::new();
        nulls.insert("function_call".into(), Value::Null);
        assert!(validate_common(&CommonParams { extra: Some(&nulls), ..Default::default() }, "max_tokens", &LIMITS).is_ok());
    }

    #[test]
    fn context_window() {
        assert_eq!(fit_context(10, None, 100, "messages").unwrap(), 90);
        assert_eq!(fit_context(10, Some(90), 100, "messages").unwrap(), 90);
        let e = fit_context(100, None, 100, "messages").unwrap_err();
        assert!(e.to_string().contains("100 tokens") && e.param().as_deref() == Some("messages"), "{e}");
        let e = fit_context(10, Some(91), 100, "prompt").unwrap_err();
        assert!(e.to_string().contains("101 tokens") && e.param().as_deref() == Some("max_tokens"), "{e}");
    }
}
