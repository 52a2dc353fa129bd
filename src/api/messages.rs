//! Chat messages from the wire to what the chat template renders.
//!
//! Roles: `system`, `developer` (OpenAI's new name for system, rendered as
//! system), `user`, `assistant`, `tool`. An assistant message may carry
//! `tool_calls` with null or missing `content`; a `tool` message needs
//! `tool_call_id`; any message may carry `name`. Calls' `arguments` strings
//! are parsed to JSON values, as templates (and transformers) expect.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::validate::refuse_extra;
use super::wire_in::{ChatMessageIn, MessageContent};

/// Roles passed to the chat template.
fn template_role(role: &str, i: usize) -> Result<&'static str, ApiError> {
    match role {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        "tool" => Ok("tool"),
        "function" => Err(ApiError::unsupported(
            format!("messages[{i}].role"),
            "'function' is deprecated by OpenAI and not served: use tool messages",
        )),
        other => Err(ApiError::invalid(
            format!("Invalid role '{other}' in messages[{i}]: expected system, developer, user, assistant or tool"),
            format!("messages[{i}].role"),
        )),
    }
}

/// The text of a message's content; None when it is null or absent.
fn message_text(m: &ChatMessageIn, i: usize) -> Result<Option<String>, ApiError> {
    match &m.content {
        None => Ok(None),
        Some(MessageContent::Text(t)) => Ok(Some(t.clone())),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                if part.kind != "text" {
                    let msg = format!("Only text content parts are supported; {param} has type '{}'", part.kind);
                    return Err(ApiError::invalid(msg, format!("{param}.type")));
                }
                refuse_extra(&part.extra, &format!("{param}."))?;
                let Some(text) = &part.text else {
                    return Err(ApiError::invalid(format!("{param}.text is required"), format!("{param}.text")));
                };
                texts.push(text.as_str());
            }
            Ok(Some(texts.join("\n")))
        }
    }
}

/// An assistant's `tool_calls`, checked, with `arguments` parsed to JSON
/// when they are JSON text.
fn template_calls(calls: &Value, i: usize) -> Result<Value, ApiError> {
    let param = format!("messages[{i}].tool_calls");
    let Some(list) = calls.as_array() else {
        return Err(ApiError::invalid(format!("{param} must be an array"), param));
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let name = c.pointer("/function/name").and_then(Value::as_str);
        let Some(name) = name else {
            return Err(ApiError::invalid(format!("{p}.function.name is required"), format!("{p}.function.name")));
        };
        let args = match c.pointer("/function/arguments") {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        let id = c.get("id").cloned().unwrap_or(Value::Null);
        out.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
    }
    Ok(Value::Array(out))
}

fn template_message(m: &ChatMessageIn, i: usize) -> Result<Value, ApiError> {
    let role = template_role(&m.role, i)?;
    refuse_extra(&m.extra, &format!("messages[{i}]."))?;
    let content = message_text(m, i)?;
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    let has_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_null());
    if content.is_none() && !(role == "assistant" && has_calls) {
        return Err(ApiError::invalid(format!("messages[{i}].content is required"), format!("messages[{i}].content")));
    }
    out.insert("content".into(), content.map_or(Value::Null, Value::String));
    if has_calls {
        if role != "assistant" {
            return Err(ApiError::invalid("only assistant messages may have tool_calls", format!("messages[{i}].tool_calls")));
        }
        out.insert("tool_calls".into(), template_calls(m.tool_calls.as_ref().unwrap_or(&Value::Null), i)?);
    }
    match (&m.tool_call_id, role) {
        (Some(id), "tool") => {
            out.insert("tool_call_id".into(), json!(id));
        }
        (None, "tool") => {
            let p = format!("messages[{i}].tool_call_id");
            return Err(ApiError::invalid(format!("{p} is required on tool messages"), p));
        }
        _ => {}
    }
    if let Some(name) = &m.name {
        out.insert("name".into(), json!(name));
    }
    Ok(Value::Object(out))
}

/// Every message as the template receives it.
pub fn template_messages(messages: &[ChatMessageIn]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must contain at least one message", "messages"));
    }
    messages.iter().enumerate().map(|(i, m)| template_message(m, i)).collect()
}
