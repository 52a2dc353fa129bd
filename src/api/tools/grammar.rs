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
//! `auto` with the Llama and Mistral formats generates unconstrained and
//! reads calls back with the parser only.

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

/// The grammar for `plan`, or None when calls are not constrained.
/// `mistral_token` is the id of Mistral's `[TOOL_CALLS]` control token.
pub fn tool_grammar(plan: &ToolPlan, mistral_token: Option<u32>) -> Option<GrammarSpec> {
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
            "start: (hd call)* TEXT\nhd[lazy]: TEXT \"<tool_call>\"\ncall: \"\\n\" body \"\\n</tool_call>\"\nTEXT: /(.|\\n)*/\n{body}\n"
        ),
        (ToolFormat::Llama3Json, true) => {
            let start = if many { "start: body (\"; \" body)*" } else { "start: body" };
            format!("{start}\n{body}\n")
        }
        (ToolFormat::Mistral, true) => {
            let mut item = body_schema(plan);
            let defs = item.as_object_mut().and_then(|m| m.remove("$defs"));
            let mut arr = json!({"type": "array", "items": item, "minItems": 1, "x-guidance": json_layout()});
            if let Some(defs) = defs {
                arr["$defs"] = defs;
            }
            if !many {
                arr["maxItems"] = json!(1);
            }
            let tc = match mistral_token {
                Some(id) => format!("<[{id}]>"),
                None => "\"[TOOL_CALLS]\"".to_string(),
            };
            format!("start: {tc} calls\ncalls: %json {arr}\n")
        }
        (_, false) => return None,
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
    fn none_and_unconstrained_auto_have_no_grammar() {
        assert!(tool_grammar(&plan(ToolChoice::None, ToolFormat::Hermes), None).is_none());
        assert!(tool_grammar(&plan(ToolChoice::Auto, ToolFormat::Mistral), None).is_none());
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
}
