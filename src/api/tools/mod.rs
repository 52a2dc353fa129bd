//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` parsed
//! into a `ToolPlan`; the prompt the tools reach the model through (the
//! model's own template, or kiln's generic tool prompt); the grammar that
//! constrains the calls; and the parser that reads them back.
//!
//! `tool_choice`:
//! - `none`: tools are left out of the prompt, output is text;
//! - `auto` (the default with tools): text or calls; a call is constrained
//!   from the point the output shows it is one (Hermes: lazily from each
//!   `<tool_call>`; Llama 3 JSON: a reply opening with `{`; Mistral: the
//!   `[TOOL_CALLS]` that opens the reply; see `grammar.rs`);
//! - `required` / `{"type": "function", "function": {"name": ...}}`: the
//!   whole output is generated under a grammar built from the tools'
//!   parameter schemas, so every call's arguments validate.

pub mod format;
pub mod grammar;
pub mod prompt;
mod scan;

use serde_json::Value;

use super::error::ApiError;
pub use format::{CallReading, ParsedOutput, ToolEvent, ToolFormat, ToolStream, PARSER_NAMES};

/// One function tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (an empty object schema when absent).
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The tools of a request and how they may be called.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPlan {
    pub tools: Vec<ToolDef>,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub format: ToolFormat,
}

impl ToolPlan {
    /// Whether the output is read for calls.
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// How the output is read for calls (None with `tool_choice: none`).
    pub fn reading(&self) -> Option<CallReading> {
        let forced = matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_));
        let names = || self.callable().iter().map(|t| t.name.clone()).collect();
        self.active().then(|| CallReading { format: self.format, forced: forced.then(names) })
    }

    /// The tools calls may name: all, or the one `tool_choice` names.
    pub fn callable(&self) -> Vec<&ToolDef> {
        match &self.choice {
            ToolChoice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            _ => self.tools.iter().collect(),
        }
    }

    /// The `tools` variable for a chat template (OpenAI's shape).
    pub fn template_tools(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    let mut f = serde_json::json!({"name": t.name, "parameters": t.parameters});
                    if let Some(d) = &t.description {
                        f["description"] = Value::String(d.clone());
                    }
                    serde_json::json!({"type": "function", "function": f})
                })
                .collect(),
        )
    }
}

fn bad(message: impl Into<String>, param: impl Into<String>) -> ApiError {
    ApiError::invalid(message, param)
}

/// A valid function name: OpenAI's `^[a-zA-Z0-9_-]{1,64}$`.
fn check_name(name: &str, param: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(bad(format!("'{name}' is not a valid function name (a-z, A-Z, 0-9, _ and -, at most 64)"), param));
    }
    Ok(())
}

fn parse_tool(v: &Value, i: usize) -> Result<ToolDef, ApiError> {
    let p = format!("tools[{i}]");
    let kind = v.get("type").and_then(Value::as_str);
    if kind != Some("function") {
        return Err(bad(format!("{p}.type must be 'function'"), format!("{p}.type")));
    }
    let Some(f) = v.get("function").filter(|f| f.is_object()) else {
        return Err(bad(format!("{p}.function is required"), format!("{p}.function")));
    };
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    check_name(&name, &format!("{p}.function.name"))?;
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(s @ Value::Object(_)) => s.clone(),
        Some(_) => return Err(bad(format!("{p}.function.parameters must be a JSON schema object"), format!("{p}.function.parameters"))),
    };
    // Arguments are a JSON object (OpenAI refuses other schemas too).
    match parameters.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(t) => {
            let msg = format!("{p}.function.parameters must describe an object ({{\"type\": \"object\", ...}}), got \"type\": {t}");
            return Err(bad(msg, format!("{p}.function.parameters")));
        }
    }
    let description = f.get("description").and_then(Value::as_str).map(str::to_string);
    Ok(ToolDef { name, description, parameters })
}

fn parse_choice(v: Option<&Value>, tools: &[ToolDef]) -> Result<ToolChoice, ApiError> {
    let choice = match v {
        None | Some(Value::Null) => return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => return Err(bad(format!("tool_choice '{other}' is not one of none, auto, required"), "tool_choice")),
        },
        Some(o @ Value::Object(_)) => {
            let name = o.pointer("/function/name").and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => ToolChoice::Named(n.to_string()),
                _ => return Err(bad("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")),
            }
        }
        Some(_) => return Err(bad("tool_choice must be a string or an object", "tool_choice")),
    };
    if choice != ToolChoice::None && tools.is_empty() {
        return Err(bad("tool_choice needs tools", "tool_choice"));
    }
    if let ToolChoice::Named(n) = &choice {
        if !tools.iter().any(|t| &t.name == n) {
            return Err(bad(format!("tool_choice names '{n}', which is not in tools"), "tool_choice"));
        }
    }
    Ok(choice)
}

/// Parses the request's tool fields. None when it has no tools.
pub fn parse_plan(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
    format: ToolFormat,
) -> Result<Option<ToolPlan>, ApiError> {
    let defs = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.iter().enumerate().map(|(i, t)| parse_tool(t, i)).collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("tools must be an array", "tools")),
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = defs.iter().find(|d| !seen.insert(d.name.clone())) {
        return Err(bad(format!("two tools are named '{}'", d.name), "tools"));
    }
    let choice = parse_choice(tool_choice, &defs)?;
    if defs.is_empty() {
        return Ok(None);
    }
    Ok(Some(ToolPlan { tools: defs, choice, parallel: parallel.unwrap_or(true), format }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(tools: Value, choice: Value) -> Result<Option<ToolPlan>, ApiError> {
        parse_plan(Some(&tools), Some(&choice), None, ToolFormat::Hermes)
    }

    #[test]
    fn choices_parse_and_name_their_param() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        assert_eq!(plan(tools.clone(), json!("required")).unwrap().unwrap().choice, ToolChoice::Required);
        assert_eq!(plan(tools.clone(), Value::Null).unwrap().unwrap().choice, ToolChoice::Auto);
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(plan(tools.clone(), named).unwrap().unwrap().choice, ToolChoice::Named("f".into()));
        let missing = json!({"type": "function", "function": {"name": "g"}});
        assert_eq!(plan(tools.clone(), missing).unwrap_err().param().as_deref(), Some("tool_choice"));
        assert_eq!(plan(json!([]), json!("required")).unwrap_err().param().as_deref(), Some("tool_choice"));
        let bad_name = json!([{"type": "function", "function": {"name": "a b"}}]);
        assert_eq!(plan(bad_name, Value::Null).unwrap_err().param().as_deref(), Some("tools[0].function.name"));
        // Accepted before: the arguments of a call are always an object.
        let string_params = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]);
        let e = plan(string_params, Value::Null).unwrap_err();
        assert_eq!(e.param().as_deref(), Some("tools[0].function.parameters"));
        assert!(e.to_string().contains("must describe an object"), "{e}");
        let bad_type = json!([{"type": "code_interpreter"}]);
        assert_eq!(plan(bad_type, Value::Null).unwrap_err().param().as_deref(), Some("tools[0].type"));
    }
}
