//! The Responses API request, and its input, tools, tool choice and text
//! format translated into what chat completions already serve: template
//! messages, `tools::parse_plan`'s input and a `response_format`.
//!
//! Input items served: messages (`role` user, system, developer or
//! assistant; `content` a string or `input_text` / `output_text` parts),
//! `function_call` (`call_id`, `name`, `arguments`) and
//! `function_call_output` (`call_id`, `output`). Consecutive function calls
//! become one assistant turn with several `tool_calls`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::error::ApiError;
use crate::api::new_id;

/// `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateResponse {
    pub model: String,
    /// A string (one user message) or a list of input items.
    pub input: Value,
    /// A system message put first; not carried to later turns.
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    pub text: Option<Value>,
    pub stream: Option<bool>,
    /// Default true.
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn bad(message: impl Into<String>, param: impl Into<String>) -> ApiError {
    ApiError::invalid(message, param)
}

/// Input items as OpenAI lists them (`input_items`), each with an `id`,
/// and the chat messages they become.
pub struct Input {
    pub items: Vec<Value>,
    pub messages: Vec<Value>,
}

fn str_field<'a>(item: &'a Value, key: &str, param: &str) -> Result<&'a str, ApiError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| bad(format!("{param}.{key} is required and must be a string"), format!("{param}.{key}")))
}

/// The text of a message's content: a string or a list of text parts.
fn content_text(content: &Value, param: &str) -> Result<(String, Vec<Value>), ApiError> {
    match content {
        Value::String(s) => Ok((s.clone(), vec![json!({"type": "input_text", "text": s})])),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text") | Some("output_text") => texts.push(str_field(part, "text", &p)?.to_string()),
                    Some(other) => {
                        return Err(ApiError::unsupported(format!("{p}.type"), &format!("'{other}' is not supported by kiln (only input_text and output_text)")))
                    }
                    None => return Err(bad(format!("{p}.type is required"), format!("{p}.type"))),
                }
            }
            let parts = parts.iter().map(|p| json!({"type": p["type"], "text": p["text"]})).collect();
            Ok((texts.join("\n"), parts))
        }
        _ => Err(bad(format!("{param} must be a string or a list of content parts"), param.to_string())),
    }
}

fn message_item(item: &Value, param: &str) -> Result<(Value, Value), ApiError> {
    let role = str_field(item, "role", param)?;
    let role_out = match role {
        "user" | "system" | "developer" | "assistant" => role,
        other => return Err(bad(format!("{param}.role '{other}' is not one of user, system, developer, assistant"), format!("{param}.role"))),
    };
    let content = item.get("content").ok_or_else(|| bad(format!("{param}.content is required"), format!("{param}.content")))?;
    let (text, parts) = content_text(content, &format!("{param}.content"))?;
    let template_role = if role == "developer" { "system" } else { role };
    let msg = json!({"role": template_role, "content": text});
    let id = item.get("id").and_then(Value::as_str).map_or_else(|| new_id("msg"), str::to_string);
    let listed = json!({"type": "message", "id": id, "role": role_out, "content": parts, "status": "completed"});
    Ok((listed, msg))
}

/// The input of a request as items and template messages.
pub fn parse_input(input: &Value) -> Result<Input, ApiError> {
    let list = match input {
        Value::String(s) => vec![json!({"type": "message", "role": "user", "content": s})],
        Value::Array(l) if !l.is_empty() => l.clone(),
        Value::Array(_) => return Err(bad("input must not be empty", "input")),
        _ => return Err(bad("input must be a string or a list of input items", "input")),
    };
    let mut items = Vec::with_capacity(list.len());
    let mut messages: Vec<Value> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let p = format!("input[{i}]");
        if !item.is_object() {
            return Err(bad(format!("{p} must be an object"), p));
        }
        let kind = item.get("type").and_then(Value::as_str).unwrap_or(if item.get("role").is_some() { "message" } else { "" });
        match kind {
            "message" => {
                let (listed, msg) = message_item(item, &p)?;
                items.push(listed);
                messages.push(msg);
            }
            "function_call" => {
                let call_id = str_field(item, "call_id", &p)?;
                let name = str_field(item, "name", &p)?;
                let arguments = str_field(item, "arguments", &p)?;
                let id = item.get("id").and_then(Value::as_str).map_or_else(|| new_id("fc"), str::to_string);
                items.push(json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}));
                let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                match messages.last_mut() {
                    Some(m) if m["role"] == "assistant" && m.get("tool_calls").is_some() => {
                        m["tool_calls"].as_array_mut().map(|c| c.push(call));
                    }
                    _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let call_id = str_field(item, "call_id", &p)?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => content_text(v, &format!("{p}.output"))?.0,
                    _ => return Err(bad(format!("{p}.output is required and must be a string"), format!("{p}.output"))),
                };
                let id = item.get("id").and_then(Value::as_str).map_or_else(|| new_id("fco"), str::to_string);
                items.push(json!({"type": "function_call_output", "id": id, "call_id": call_id, "output": output, "status": "completed"}));
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            "" => return Err(bad(format!("{p}.type is required"), format!("{p}.type"))),
            other => return Err(ApiError::unsupported(format!("{p}.type"), &format!("'{other}' is not supported by kiln"))),
        }
    }
    Ok(Input { items, messages })
}

/// Responses function tools (`{"type": "function", "name", "description",
/// "parameters", "strict"}`) in chat's shape; built-in tools get 400.
pub fn chat_tools(tools: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(bad("tools must be an array", "tools")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::unsupported(format!("{p}.type"), &format!("'{other}': built-in tools are not supported by kiln; use function tools")))
            }
            None => return Err(bad(format!("{p}.type is required"), format!("{p}.type"))),
        }
        let mut f = Map::new();
        for key in ["name", "description", "parameters"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                f.insert(key.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Some(Value::Array(out)))
}

/// Responses' `tool_choice` in chat's shape.
pub fn chat_tool_choice(choice: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match choice {
        None | Some(Value::Null) => Ok(None),
        Some(s @ Value::String(_)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match (o.get("type").and_then(Value::as_str), o.get("name").and_then(Value::as_str)) {
            (Some("function"), Some(name)) => Ok(Some(json!({"type": "function", "function": {"name": name}}))),
            (Some("function"), None) => Err(bad("tool_choice.name is required", "tool_choice.name")),
            (Some(other), _) => Err(ApiError::unsupported("tool_choice.type", &format!("'{other}' is not supported by kiln"))),
            (None, _) => Err(bad("tool_choice.type is required", "tool_choice.type")),
        },
        Some(_) => Err(bad("tool_choice must be a string or an object", "tool_choice")),
    }
}

/// `text.format` as chat's `response_format`, and the format to echo.
pub fn chat_response_format(text: Option<&Value>) -> Result<(Option<Value>, Value), ApiError> {
    let default = json!({"type": "text"});
    let format = match text {
        None | Some(Value::Null) => return Ok((None, default)),
        Some(Value::Object(t)) => {
            if let Some((k, _)) = t.iter().find(|(k, v)| *k != "format" && !v.is_null()) {
                return Err(ApiError::unsupported(format!("text.{k}"), "is not supported by kiln"));
            }
            match t.get("format") {
                None | Some(Value::Null) => return Ok((None, default)),
                Some(f @ Value::Object(_)) => f.clone(),
                Some(_) => return Err(bad("text.format must be an object", "text.format")),
            }
        }
        Some(_) => return Err(bad("text must be an object", "text")),
    };
    let rf = match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let mut js = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    js.insert(key.into(), v.clone());
                }
            }
            if !js.contains_key("schema") {
                return Err(bad("text.format.schema is required for type json_schema", "text.format.schema"));
            }
            json!({"type": "json_schema", "json_schema": js})
        }
        _ => format.clone(),
    };
    Ok((Some(rf), format))
}

/// Errors of chat's response-format parser, renamed to `text.format`.
pub fn rename_format_error(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid { message, param: Some(p), code } if p.starts_with("response_format") => ApiError::Invalid {
            message: message.replace("response_format.json_schema", "text.format").replace("response_format", "text.format"),
            param: Some(p.replacen("response_format", "text.format", 1)),
            code,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_template_messages() {
        let input = json!([
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ]);
        let i = parse_input(&input).unwrap();
        assert_eq!(i.items.len(), 4);
        assert_eq!(i.messages.len(), 3);
        assert_eq!(i.messages[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(i.messages[2], json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}));
        assert!(i.items[0]["id"].as_str().unwrap().starts_with("msg_"));
        let e = parse_input(&json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])).err().unwrap();
        assert_eq!(e.param().as_deref(), Some("input[0].content[0].type"));
    }

    #[test]
    fn builtin_tools_and_formats() {
        let e = chat_tools(Some(&json!([{"type": "web_search_preview"}]))).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let (rf, echo) = chat_response_format(Some(&json!({"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}}))).unwrap();
        assert_eq!(rf.unwrap()["json_schema"]["name"], "x");
        assert_eq!(echo["type"], "json_schema");
    }
}
