//! What a request asks its output to match, before compilation.

use serde_json::{json, Value};

/// A constraint on generated text. JSON schemas are compiled by llguidance
/// (no schema compiler of kiln's own); Lark grammars use llguidance's Lark
/// dialect (`%json {...}` inline schemas, `<|special|>` tokens).
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any single JSON object (`response_format: json_object`).
    JsonObject,
    /// A JSON value valid against the schema.
    JsonSchema(Value),
    /// A Lark grammar.
    Lark(String),
    /// A whole output matching the regular expression (Rust `regex` syntax).
    Regex(String),
}

/// Compact JSON with the separators Python's `json.dumps` writes: one
/// space after `,` and `:`, no other whitespace (small models fill free
/// whitespace with newlines until max_tokens). A schema's own
/// `x-guidance` settings win.
pub fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// `schema` with kiln's JSON layout, when it sets none of its own.
pub fn with_layout(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Value::Object(m) = &mut s {
        m.entry("x-guidance").or_insert_with(json_layout);
    }
    s
}

impl GrammarSpec {
    /// The llguidance grammar for this spec.
    pub fn to_llguidance(&self) -> llguidance::api::TopLevelGrammar {
        use llguidance::api::TopLevelGrammar as G;
        match self {
            GrammarSpec::JsonObject => G::from_json_schema(with_layout(&json!({"type": "object"}))),
            GrammarSpec::JsonSchema(s) => G::from_json_schema(with_layout(s)),
            GrammarSpec::Lark(l) => G::from_lark(l.clone()),
            GrammarSpec::Regex(r) => G::from_regex(r),
        }
    }

    /// A stable key for the compiled-grammar cache (BLAKE3 of the kind and
    /// the canonical text).
    pub fn cache_key(&self) -> [u8; 32] {
        let text = match self {
            GrammarSpec::JsonObject => "json_object".to_string(),
            GrammarSpec::JsonSchema(s) => format!("json_schema\n{s}"),
            GrammarSpec::Lark(l) => format!("lark\n{l}"),
            GrammarSpec::Regex(r) => format!("regex\n{r}"),
        };
        *blake3::hash(text.as_bytes()).as_bytes()
    }
}
