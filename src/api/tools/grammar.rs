//! The Lark grammar (llguidance's dialect) a tool plan generates under.
//!
//! Each call is a JSON object `{"name": <const>, "<args key>": <parameters
//! schema>}` written with kiln's JSON layout, inlined with `%json {...}`:
//!
//! ```text
//! hermes, required:  start: call ("\n" call)*        (one call without parallel_tool_calls)
//!                    call: "<tool_call>\n" body "\n</tool_call>"
//! hermes, auto:      start: (hd call)* TEXT           lazy: free text until "<tool_call>"
//!                    hd[lazy]: TEXT "<tool_call>"
//! llama3_json:       start: body ("; " body)*
//! mistral:           start: <[TOOL_CALLS id]> %json {array of bodies}
//! ```
//!
//! `auto` constrains a call from the point the output shows it is one; how
//! depends on where each format lets a call begin (the parser in
//! `format.rs` reads calls back by the same rules):
//!
//! ```text
//! llama3_json, auto: start: PT? calls | PROSE     calls at the start only: a
//!                    PROSE: text not opening with "{"  reply that opens with
//!                    (PT: the <|python_tag|> control    "{" is a call (Llama
//!                     token, when the vocabulary has it) 3.1's JSON tool format)
//! mistral, auto:     start: <[TOOL_CALLS id]> calls | TEXT
//!                    (the control token opens the reply; it is dropped from
//!                     the text, so calls after prose could not be read back)
//!                    with "[TOOL_CALLS]" as plain text instead: lazy, as hermes:
//!                    start: (hd calls)* TEXT, hd[lazy]: TEXT "[TOOL_CALLS]"
//! ```

use serde_json::{json, Value};

use super::{ToolChoice, ToolFormat, ToolPlan};
use crate::structured::spec::json_layout;
use crate::structured::GrammarSpec;

/// The schema of one call to `tool`.
fn call_schema(name: &str, parameters: &Value, args_key: &str) -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"const": name}, args_key: parameters},
        "required": ["name", args_key],
        "additionalProperties": false,
    })
}

/// One schema matching a call to any callable tool. A tool whose
/// parameters hold a `$ref` (pydantic writes `#/$defs/Model` for nested
/// models) is moved under the root's `$defs` as `kiln_tool_<i>`, its local
/// references rebased there, because inlined below the call wrapper they
/// would resolve against the wrapper instead of the parameters.
fn body_schema(plan: &ToolPlan) -> Value {
    let key = plan.format.args_key();
    let mut defs = serde_json::Map::new();
    let mut calls: Vec<Value> = Vec::new();
    for (i, t) in plan.callable().iter().enumerate() {
        if !has_ref(&t.parameters) {
            calls.push(call_schema(&t.name, &t.parameters, key));
            continue;
        }
        let name = format!("kiln_tool_{i}");
        let base = format!("#/$defs/{name}");
        let mut params = t.parameters.clone();
        rebase_refs(&mut params, &base);
        defs.insert(name, params);
        calls.push(call_schema(&t.name, &json!({ "$ref": base }), key));
    }
    let mut schema = if calls.len() == 1 { calls.remove(0) } else { json!({"anyOf": calls}) };
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    schema["x-guidance"] = json_layout();
    schema
}

/// Keywords whose values are data, not schemas: never rewritten.
const DATA_KEYWORDS: &[&str] = &["const", "enum", "default", "examples"];

fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| k == "$ref" || (!DATA_KEYWORDS.contains(&k.as_str()) && has_ref(x))),
        Value::Array(a) => a.iter().any(has_ref),
        _ => false,
    }
}

/// Rewrites every local `$ref` (`#`, `#/...`) in `v` to start at `base`.
fn rebase_refs(v: &mut Value, base: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        if let Some(rest) = r.strip_prefix('#') {
                            *r = format!("{base}{rest}");
                        }
                    }
                    (k, _) if DATA_KEYWORDS.contains(&k) => {}
                    (_, x) => rebase_refs(x, base),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rebase_refs(x, base)),
        _ => {}
    }
}

/// Mistral's calls: one JSON array of call bodies.
fn mistral_array(plan: &ToolPlan) -> Value {
    let mut item = body_schema(plan);
    let defs = item.as_object_mut().and_then(|m| m.remove("$defs"));
    let mut arr = json!({"type": "array", "items": item, "minItems": 1, "x-guidance": json_layout()});
    if let Some(defs) = defs {
        arr["$defs"] = defs;
    }
    if !plan.parallel {
        arr["maxItems"] = json!(1);
    }
    arr
}

/// Any text.
const TEXT: &str = "TEXT: /(.|\\n)*/";
/// Text that does not open (after white space) with "{": empty, or white
/// space then a first character that is neither.
const PROSE: &str = "PROSE: /(\\s*[^{\\s](.|\\n)*)?/";

/// The grammar for `plan`, or None when calls are not constrained.
/// `marker_token` is the id of the format's marker when the vocabulary has
/// it as one control token (Mistral's `[TOOL_CALLS]`, Llama's
/// `<|python_tag|>`); unused for Hermes, whose `<tool_call>` is matched as
/// text.
pub fn tool_grammar(plan: &ToolPlan, marker_token: Option<u32>) -> Option<GrammarSpec> {
    let forced = matches!(plan.choice, ToolChoice::Required | ToolChoice::Named(_));
    if plan.choice == ToolChoice::None {
        return None;
    }
    let body = format!("body: %json {}", body_schema(plan));
    let many = plan.parallel;
    let lark = match (plan.format, forced) {
        (ToolFormat::Hermes, true) => {
            let start = if many { "start: call (\"\\n\" call)*" } else { "start: call" };
            format!("{start}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n{body}\n")
        }
        (ToolFormat::Hermes, false) => format!(
            "start: (hd call)* TEXT\nhd[lazy]: TEXT \"<tool_call>\"\ncall: \"\\n\" body \"\\n</tool_call>\"\n{TEXT}\n{body}\n"
        ),
        (ToolFormat::Llama3Json, true) => {
            let start = if many { "start: body (\"; \" body)*" } else { "start: body" };
            format!("{start}\n{body}\n")
        }
        (ToolFormat::Llama3Json, false) => {
            let calls = if many { "calls: body (\"; \" body)*" } else { "calls: body" };
            let pt = marker_token.map(|id| format!("<[{id}]>? ")).unwrap_or_default();
            format!("start: {pt}calls | PROSE\n{calls}\n{PROSE}\n{body}\n")
        }
        (ToolFormat::Mistral, true) => {
            let tc = match marker_token {
                Some(id) => format!("<[{id}]>"),
                None => "\"[TOOL_CALLS]\"".to_string(),
            };
            format!("start: {tc} calls\ncalls: %json {}\n", mistral_array(plan))
        }
        (ToolFormat::Mistral, false) => {
            let calls = format!("calls: %json {}", mistral_array(plan));
            match marker_token {
                Some(id) => format!("start: <[{id}]> calls | TEXT\n{calls}\n{TEXT}\n"),
                None => format!("start: (hd calls)* TEXT\nhd[lazy]: TEXT \"[TOOL_CALLS]\"\n{calls}\n{TEXT}\n"),
            }
        }
    };
    Some(GrammarSpec::Lark(lark))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tools::ToolDef;

    fn plan(choice: ToolChoice, format: ToolFormat) -> ToolPlan {
        let t = |n: &str| ToolDef { name: n.into(), description: None, parameters: json!({"type": "object"}) };
        ToolPlan { tools: vec![t("a"), t("b")], choice, parallel: false, format }
    }

    #[test]
    fn named_choice_constrains_to_that_tool_only() {
        let g = tool_grammar(&plan(ToolChoice::Named("b".into()), ToolFormat::Hermes), None).unwrap();
        let GrammarSpec::Lark(l) = g else { panic!() };
        assert!(l.contains("\"const\":\"b\"") && !l.contains("\"const\":\"a\""), "{l}");
        assert!(l.starts_with("start: call\n"), "{l}");
    }

    #[test]
    fn none_has_no_grammar() {
        assert!(tool_grammar(&plan(ToolChoice::None, ToolFormat::Hermes), None).is_none());
        assert!(tool_grammar(&plan(ToolChoice::Auto, ToolFormat::Hermes), None).is_some());
        let GrammarSpec::Lark(m) = tool_grammar(&plan(ToolChoice::Required, ToolFormat::Mistral), Some(9)).unwrap() else {
            panic!()
        };
        assert!(m.starts_with("start: <[9]> calls"), "{m}");
    }

    #[test]
    fn parameters_with_refs_move_under_the_root_defs() {
        let params = json!({"type": "object", "$defs": {"City": {"type": "string"}},
                            "properties": {"city": {"$ref": "#/$defs/City"}, "tag": {"const": {"$ref": "#x"}}}});
        let mut p = plan(ToolChoice::Required, ToolFormat::Hermes);
        p.tools[1].parameters = params;
        let body = body_schema(&p);
        assert_eq!(body["anyOf"][1]["properties"]["arguments"], json!({"$ref": "#/$defs/kiln_tool_1"}));
        let moved = &body["$defs"]["kiln_tool_1"];
        assert_eq!(moved["properties"]["city"]["$ref"], "#/$defs/kiln_tool_1/$defs/City");
        assert_eq!(moved["properties"]["tag"]["const"], json!({"$ref": "#x"}), "data is not rewritten");
        assert_eq!(body["anyOf"][0]["properties"]["arguments"], json!({"type": "object"}), "no refs: inlined as before");
    }

    /// `auto` with the Llama and Mistral formats generated unconstrained;
    /// now a call is constrained once the output shows it is one.
    #[test]
    fn auto_constrains_llama_and_mistral_calls() {
        use crate::structured::compiler::test_vocab::{byte_compiler, bytes, walk_ids};
        let c = byte_compiler(&["[TOOL_CALLS]", "<|python_tag|>"]);
        let (tool_calls, python_tag) = (257u32, 258u32);
        let compile = |format, marker| {
            let spec = tool_grammar(&plan(ToolChoice::Auto, format), marker).expect("a grammar");
            c.compile(&spec).unwrap_or_else(|e| panic!("{e}")).grammar
        };
        // Llama 3 JSON: prose is free; a reply opening with "{" is a call.
        for marker in [None, Some(python_tag)] {
            let g = compile(ToolFormat::Llama3Json, marker);
            walk_ids(&g, &bytes("  Sure, {x} works")).unwrap();
            walk_ids(&g, &bytes("{\"name\": \"b\", \"parameters\": {}}")).unwrap();
            assert!(walk_ids(&g, &bytes("{\"nome\"")).is_err(), "a call's object is constrained");
            assert!(walk_ids(&g, &bytes("{\"name\": \"c\"")).is_err(), "only tools' names");
        }
        let g = compile(ToolFormat::Llama3Json, Some(python_tag));
        walk_ids(&g, &[&[python_tag][..], &bytes("{\"name\": \"a\", \"parameters\": {}}")].concat()).unwrap();
        // Mistral with its control token: the token opens constrained calls.
        let g = compile(ToolFormat::Mistral, Some(tool_calls));
        walk_ids(&g, &bytes("Plain [text] {here}")).unwrap();
        walk_ids(&g, &[&[tool_calls][..], &bytes("[{\"name\": \"a\", \"arguments\": {}}]")].concat()).unwrap();
        assert!(walk_ids(&g, &[&[tool_calls][..], &bytes("hello")].concat()).is_err());
        // Mistral with a plain-text marker: lazy, from the marker on.
        let g = compile(ToolFormat::Mistral, None);
        walk_ids(&g, &bytes("Let me see. [TOOL_CALLS][{\"name\": \"b\", \"arguments\": {}}]")).unwrap();
        assert!(walk_ids(&g, &bytes("Let me see. [TOOL_CALLS]{")).is_err());
    }
}
