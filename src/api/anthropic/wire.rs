//! Anthropic's Messages request translated into what chat completions
//! serve: `system` + `messages` (text, `tool_use`, `tool_result` blocks)
//! to template messages, `tools` / `tool_choice` to `tools::parse_plan`'s
//! input. Image and document blocks get 400 naming the block type.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::error::ApiError;

/// `POST /v1/messages` (and, without the generation fields, `count_tokens`).
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    /// Required by `/v1/messages`; absent from `count_tokens`.
    pub max_tokens: Option<i64>,
    pub messages: Vec<Value>,
    /// A string or a list of text blocks.
    pub system: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub stream: Option<bool>,
    /// `{"user_id": ...}`: accepted, not used.
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn bad(message: impl Into<String>, param: impl Into<String>) -> ApiError {
    ApiError::invalid(message, param)
}

fn unsupported_block(kind: &str, param: &str) -> ApiError {
    ApiError::unsupported(format!("{param}.type"), &format!("'{kind}' content blocks are not supported by kiln (text only)"))
}

/// The text of `content`: a string or text blocks.
fn text_of(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                let p = format!("{param}[{j}]");
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(b.get("text").and_then(Value::as_str).ok_or_else(|| bad(format!("{p}.text is required"), format!("{p}.text")))?),
                    Some(other) => return Err(unsupported_block(other, &p)),
                    None => return Err(bad(format!("{p}.type is required"), format!("{p}.type"))),
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(bad(format!("{param} must be a string or a list of content blocks"), param.to_string())),
    }
}

/// The system prompt, if any.
pub fn system_message(system: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match system {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(json!({"role": "system", "content": text_of(v, "system")?}))),
    }
}

/// One Anthropic message as template messages: tool results become tool
/// turns (first), the rest one user or assistant turn.
fn turn(m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let p = format!("messages.{i}");
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => return Err(bad(format!("{p}.role: unexpected role '{other}' (user or assistant)"), format!("{p}.role"))),
        None => return Err(bad(format!("{p}.role is required"), format!("{p}.role"))),
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(b)) if b.is_empty() && role == "user" => {
            return Err(bad(format!("{p}.content must not be empty"), format!("{p}.content")))
        }
        Some(Value::Array(b)) => b.clone(),
        _ => return Err(bad(format!("{p}.content must be a string or a list of content blocks"), format!("{p}.content"))),
    };
    let (mut texts, mut calls) = (Vec::new(), Vec::new());
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{p}.content.{j}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = b.get("text").and_then(Value::as_str);
                texts.push(text.ok_or_else(|| bad(format!("{bp}.text is required"), format!("{bp}.text")))?.to_string())
            }
            Some("tool_use") if role == "assistant" => {
                let id = b.get("id").and_then(Value::as_str).ok_or_else(|| bad(format!("{bp}.id is required"), format!("{bp}.id")))?;
                let name = b.get("name").and_then(Value::as_str).ok_or_else(|| bad(format!("{bp}.name is required"), format!("{bp}.name")))?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input}}));
            }
            Some("tool_result") if role == "user" => {
                let id = b.get("tool_use_id").and_then(Value::as_str);
                let id = id.ok_or_else(|| bad(format!("{bp}.tool_use_id is required"), format!("{bp}.tool_use_id")))?;
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => text_of(c, &format!("{bp}.content"))?,
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            Some(k @ ("tool_use" | "tool_result")) => {
                return Err(bad(format!("{bp}: '{k}' blocks belong in {} messages", if k == "tool_use" { "assistant" } else { "user" }), format!("{bp}.type")))
            }
            Some("thinking" | "redacted_thinking") if role == "assistant" => {}
            Some(other) => return Err(unsupported_block(other, &bp)),
            None => return Err(bad(format!("{bp}.type is required"), format!("{bp}.type"))),
        }
    }
    if texts.is_empty() && calls.is_empty() {
        return Ok(());
    }
    let mut t = json!({"role": role, "content": texts.join("\n")});
    if !calls.is_empty() {
        if texts.is_empty() {
            t["content"] = Value::Null;
        }
        t["tool_calls"] = Value::Array(calls);
    }
    out.push(t);
    Ok(())
}

/// `system` and `messages` as template messages.
pub fn template_messages(req: &MessagesRequest) -> Result<Vec<Value>, ApiError> {
    if req.messages.is_empty() {
        return Err(bad("messages: at least one message is required", "messages"));
    }
    let mut out: Vec<Value> = system_message(req.system.as_ref())?.into_iter().collect();
    for (i, m) in req.messages.iter().enumerate() {
        turn(m, i, &mut out)?;
    }
    Ok(out)
}

/// Anthropic tools (`name`, `description`, `input_schema`) in chat's shape.
pub fn chat_tools(tools: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(bad("tools must be an array", "tools")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools.{i}");
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => return Err(ApiError::unsupported(format!("{p}.type"), &format!("'{other}': server tools are not supported by kiln"))),
        }
        let mut f = Map::new();
        f.insert("name".into(), t.get("name").cloned().unwrap_or(Value::Null));
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            f.insert("description".into(), d.clone());
        }
        match t.get("input_schema") {
            Some(s @ Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("object") => f.insert("parameters".into(), s.clone()),
            Some(Value::Object(_)) => {
                return Err(bad(format!("{p}.input_schema.type must be 'object' (a tool's input is an object)"), format!("{p}.input_schema.type")))
            }
            _ => return Err(bad(format!("{p}.input_schema is required and must be a JSON schema object"), format!("{p}.input_schema"))),
        };
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Some(Value::Array(out)))
}

/// `tool_choice` in chat's shape, and whether calls may be parallel.
pub fn chat_tool_choice(choice: Option<&Value>) -> Result<(Option<Value>, bool), ApiError> {
    let Some(c) = choice.filter(|c| !c.is_null()) else { return Ok((None, true)) };
    let parallel = !c.get("disable_parallel_tool_use").and_then(Value::as_bool).unwrap_or(false);
    let chat = match (c.get("type").and_then(Value::as_str), c.get("name").and_then(Value::as_str)) {
        (Some("auto"), _) => json!("auto"),
        (Some("any"), _) => json!("required"),
        (Some("none"), _) => json!("none"),
        (Some("tool"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
        (Some("tool"), None) => return Err(bad("tool_choice.name is required for type tool", "tool_choice.name")),
        _ => return Err(bad("tool_choice.type must be one of auto, any, tool, none", "tool_choice.type")),
    };
    Ok((Some(chat), parallel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(messages: Value) -> MessagesRequest {
        serde_json::from_value(json!({"model": "m", "max_tokens": 8, "messages": messages, "system": [{"type": "text", "text": "Be brief."}]})).unwrap()
    }

    #[test]
    fn tool_use_and_results_become_tool_turns() {
        let r = req(json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]}]},
        ]));
        let m = template_messages(&r).unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn images_are_refused_by_block_type() {
        let r = req(json!([{"role": "user", "content": [{"type": "image", "source": {}}]}]));
        let e = template_messages(&r).unwrap_err();
        assert_eq!(e.param().as_deref(), Some("messages.0.content.0.type"));
        assert!(e.to_string().contains("'image'"), "{e}");
    }

    #[test]
    fn tool_choices() {
        assert_eq!(chat_tool_choice(Some(&json!({"type": "any"}))).unwrap(), (Some(json!("required")), true));
        let (c, parallel) = chat_tool_choice(Some(&json!({"type": "tool", "name": "w", "disable_parallel_tool_use": true}))).unwrap();
        assert_eq!((c.unwrap()["function"]["name"].clone(), parallel), (json!("w"), false));
    }
}
