//! `response_format` and the compilation of every request grammar (response
//! formats and tool grammars), off the async threads, with metrics.
//!
//! `strict` is accepted and changes nothing: kiln always constrains a
//! `json_schema` response, and a schema it cannot enforce is refused (400)
//! rather than loosened.

use std::sync::Arc;

use serde_json::Value;

use super::admit::blocking;
use super::error::ApiError;
use super::port::TextCodec;
use super::AppState;
use crate::structured::{CompiledGrammar, GrammarCompiler, GrammarError, GrammarSpec, TokenizeFn};

/// The compiler over `codec`'s vocabulary, when the codec gives one.
pub fn grammar_compiler(codec: &Arc<dyn TextCodec>, cache_size: usize) -> Option<Arc<GrammarCompiler>> {
    let vocab = codec.grammar_vocab()?;
    let c = codec.clone();
    let tokenize: TokenizeFn = Arc::new(move |text: &str| c.encode(text, false).unwrap_or_default());
    match GrammarCompiler::new(&vocab, tokenize, cache_size) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            tracing::warn!(error = %e, "constrained decoding is unavailable");
            None
        }
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, "response_format")
}

/// `response_format` to a grammar: None for `text` (or absent).
pub fn parse_response_format(v: Option<&Value>) -> Result<Option<GrammarSpec>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad("response_format must be an object")),
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let Some(js) = obj.get("json_schema").and_then(Value::as_object) else {
                return Err(bad("response_format.json_schema is required for type json_schema"));
            };
            if let Some(name) = js.get("name") {
                if !name.is_string() {
                    return Err(bad("response_format.json_schema.name must be a string"));
                }
            }
            match js.get("schema") {
                Some(s @ Value::Object(_)) => Ok(Some(GrammarSpec::JsonSchema(s.clone()))),
                Some(Value::Bool(true)) | None => Ok(Some(GrammarSpec::JsonSchema(serde_json::json!({})))),
                Some(_) => Err(bad("response_format.json_schema.schema must be a JSON schema object")),
            }
        }
        Some(other) => Err(bad(format!("response_format.type '{other}' is not one of text, json_object, json_schema"))),
        None => Err(bad("response_format.type is required")),
    }
}

/// Compiles `spec` on the blocking pool; an invalid grammar is a 400 on
/// `param`. Records compile time and cache hits.
pub async fn compile(state: &Arc<AppState>, spec: GrammarSpec, param: &'static str) -> Result<Arc<CompiledGrammar>, ApiError> {
    let Some(compiler) = state.grammars.clone() else {
        return Err(ApiError::unsupported(param, "needs constrained decoding, which this model's tokenizer does not support"));
    };
    let compiled = blocking(move || Ok(compiler.compile(&spec))).await?;
    match compiled {
        Ok(c) => {
            let m = &state.metrics;
            if c.cache_hit {
                m.grammar_cache_hits.increment(1);
            } else {
                m.grammar_cache_misses.increment(1);
                m.grammar_compile_time.record(c.compile_time.as_secs_f64());
            }
            Ok(c.grammar)
        }
        Err(GrammarError::Invalid(msg)) => Err(ApiError::invalid(format!("Invalid {param}: {msg}"), param)),
        Err(e @ GrammarError::Vocabulary(_)) => Err(ApiError::Internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_formats_parse() {
        assert_eq!(parse_response_format(Some(&json!({"type": "text"}))).unwrap(), None);
        assert_eq!(parse_response_format(Some(&json!({"type": "json_object"}))).unwrap(), Some(GrammarSpec::JsonObject));
        let s = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}, "strict": true}});
        assert_eq!(parse_response_format(Some(&s)).unwrap(), Some(GrammarSpec::JsonSchema(json!({"type": "integer"}))));
        for bad in [json!("json"), json!({"type": "yaml"}), json!({"type": "json_schema"}), json!({"type": "json_schema", "json_schema": {"schema": 3}})] {
            let e = parse_response_format(Some(&bad)).unwrap_err();
            assert_eq!(e.param().as_deref(), Some("response_format"), "{bad}");
        }
    }
}
