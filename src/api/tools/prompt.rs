//! Kiln's generic tool prompt, for chat templates that do not render the
//! `tools` variable (SmolLM2's, the default model's, among them).
//!
//! The tools are described in a system message, with the Hermes call
//! format; the history is rewritten into turns any template renders:
//! an assistant turn with `tool_calls` gets them appended to its text as
//! `<tool_call>` blocks, and a `tool` turn becomes a user turn holding
//! `<tool_response>...</tool_response>`.

use serde_json::{json, Value};

use super::ToolPlan;
use crate::api::port::{CodecError, TextCodec};

/// The prompt text of a conversation: through the template's own `tools`
/// support when it has it, else through the generic tool prompt (only when
/// tools or tool history are present; plain chats render unchanged).
pub fn render_prompt(
    codec: &dyn TextCodec,
    messages: Vec<Value>,
    plan: Option<&ToolPlan>,
    add_generation_prompt: bool,
) -> Result<String, CodecError> {
    let active = plan.filter(|p| p.active());
    if codec.template_supports_tools() {
        let tools = active.map(ToolPlan::template_tools);
        return codec.render_chat(&messages, tools.as_ref(), add_generation_prompt);
    }
    let tool_history = messages.iter().any(|m| m["role"] == "tool" || m.get("tool_calls").is_some());
    let messages = if active.is_some() || tool_history { generic_messages(&messages, active) } else { messages };
    codec.render_chat(&messages, None, add_generation_prompt)
}

/// The system text describing `plan`'s tools.
pub fn generic_tool_prompt(plan: &ToolPlan) -> String {
    let mut s = String::from(
        "You can call functions. To call one, answer with only this, with the function's name and its arguments as a JSON object:\n\
         <tool_call>\n{\"name\": \"<function name>\", \"arguments\": {<arguments>}}\n</tool_call>\n\
         Answer with text when no function is needed.\n\nFunctions:\n",
    );
    for t in &plan.tools {
        let mut f = json!({"name": t.name, "parameters": t.parameters});
        if let Some(d) = &t.description {
            f["description"] = Value::String(d.clone());
        }
        s.push_str(&f.to_string());
        s.push('\n');
    }
    s
}

/// A call as the generic format writes it.
fn hermes_call(call: &Value) -> String {
    let name = call.pointer("/function/name").cloned().unwrap_or(Value::Null);
    let args = call.pointer("/function/arguments").cloned().unwrap_or(json!({}));
    format!("<tool_call>\n{}\n</tool_call>", json!({"name": name, "arguments": args}))
}

fn text_of(m: &Value) -> String {
    m.get("content").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Rewrites template messages (see `messages::template_messages`) for a
/// template without tool support; adds the tool prompt when `plan` is Some.
pub fn generic_messages(messages: &[Value], plan: Option<&ToolPlan>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = match role {
            "assistant" => {
                let calls = m.get("tool_calls").and_then(Value::as_array).map(|c| c.iter().map(hermes_call).collect::<Vec<_>>());
                let mut text = text_of(m);
                for c in calls.unwrap_or_default() {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&c);
                }
                json!({"role": "assistant", "content": text})
            }
            "tool" => json!({"role": "user", "content": format!("<tool_response>\n{}\n</tool_response>", text_of(m))}),
            _ => json!({"role": role, "content": text_of(m)}),
        };
        out.push(content);
    }
    if let Some(p) = plan.filter(|p| p.active()) {
        let prompt = generic_tool_prompt(p);
        match out.first_mut() {
            Some(first) if first["role"] == "system" => {
                let merged = format!("{}\n\n{prompt}", text_of(first));
                first["content"] = Value::String(merged);
            }
            _ => out.insert(0, json!({"role": "system", "content": prompt})),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tools::{ToolChoice, ToolDef, ToolFormat};

    #[test]
    fn history_becomes_plain_turns_and_the_prompt_joins_the_system_turn() {
        let plan = ToolPlan {
            tools: vec![ToolDef { name: "get_weather".into(), description: Some("Weather".into()), parameters: json!({"type": "object"}) }],
            choice: ToolChoice::Auto,
            parallel: true,
            format: ToolFormat::Hermes,
        };
        let msgs = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"}),
        ];
        let out = generic_messages(&msgs, Some(&plan));
        assert_eq!(out.len(), 4);
        let sys = out[0]["content"].as_str().unwrap();
        assert!(sys.starts_with("Be brief.\n\n") && sys.contains("\"name\":\"get_weather\""), "{sys}");
        assert_eq!(out[2]["content"], "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>");
        assert_eq!(out[3], json!({"role": "user", "content": "<tool_response>\n18C\n</tool_response>"}));
    }
}
