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
use super::tools::ToolPlan;
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
                Some(Value::Bool(true)) => Ok(Some(GrammarSpec::JsonSchema(serde_json::json!({})))),
                None => Err(bad("response_format.json_schema.schema is required: the JSON schema the output must match")),
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
    compile_checked(state, spec, param, None).await
}

/// `compile` for a tool-call grammar: each callable tool's parameters are
/// compiled alone first (cached like any schema), so that a schema
/// llguidance refuses is reported on `tools[i].function.parameters` with
/// the tool's name, never as an error inside kiln's combined call grammar.
pub async fn compile_tools(state: &Arc<AppState>, spec: GrammarSpec, plan: &ToolPlan) -> Result<Arc<CompiledGrammar>, ApiError> {
    let callable: Vec<(usize, String, Value)> = plan
        .tools
        .iter()
        .enumerate()
        .filter(|(_, t)| plan.callable().iter().any(|c| c.name == t.name))
        .map(|(i, t)| (i, t.name.clone(), t.parameters.clone()))
        .collect();
    compile_checked(state, spec, "tools", Some(callable)).await
}

async fn compile_checked(
    state: &Arc<AppState>,
    spec: GrammarSpec,
    param: &'static str,
    tools: Option<Vec<(usize, String, Value)>>,
) -> Result<Arc<CompiledGrammar>, ApiError> {
    let Some(compiler) = state.grammars.clone() else {
        return Err(ApiError::unsupported(param, "needs constrained decoding, which this model's tokenizer does not support"));
    };
    let compiled = blocking(move || {
        for (i, name, params) in tools.unwrap_or_default() {
            if let Err(GrammarError::Invalid(msg)) = compiler.compile(&GrammarSpec::JsonSchema(params)) {
                let p = format!("tools[{i}].function.parameters");
                return Err(ApiError::invalid(format!("Invalid parameters schema for function '{name}': {}", first_line(&msg)), p));
            }
        }
        Ok(compiler.compile(&spec))
    })
    .await?;
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
        // The combined call grammar is kiln's own text: say what failed, not where in it.
        Err(GrammarError::Invalid(msg)) if param == "tools" => {
            let msg = first_line(&msg);
            Err(ApiError::invalid(format!("Invalid tools: the tools' calls cannot be constrained: {msg}"), param))
        }
        Err(GrammarError::Invalid(msg)) => Err(ApiError::invalid(format!("Invalid {param}: {msg}"), param)),
        Err(e @ GrammarError::Vocabulary(_)) => Err(ApiError::Internal(e.to_string())),
    }
}

/// llguidance's messages carry parser state or grammar text after their
/// first line; clients get the first line, without llguidance's
/// "at LINE(COL): " position prefix (a place in kiln's generated grammar).
fn first_line(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or(msg).trim();
    match line.strip_prefix("at ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.chars().all(|c| c.is_ascii_digit() || "()".contains(c)) => rest.to_string(),
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_lines_lose_positions_in_kiln_grammars() {
        assert_eq!(first_line("at 2(7): failed to compile JSON schema: Invalid type: strng\nstart: body\n"), "failed to compile JSON schema: Invalid type: strng");
        assert_eq!(first_line("at the start: x"), "at the start: x");
    }

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
        // Without `schema` it was taken as "any JSON"; now a 400 naming it.
        let e = parse_response_format(Some(&json!({"type": "json_schema", "json_schema": {"name": "x"}}))).unwrap_err();
        assert!(e.to_string().contains("response_format.json_schema.schema is required"), "{e}");
    }
}
