//! Tools through a chat template that renders the `tools` variable (the
//! Qwen / Hermes way): the template is detected as tool-aware, the tools
//! reach it in OpenAI's shape, an assistant's calls arrive with their
//! arguments as JSON objects, null content stays null, map literals keep
//! their order (as Python's Jinja does), and the Hermes format is picked
//! from the template.

use kiln::api::tools::ToolFormat;
use kiln::tokenizer::ChatTemplate;
use serde_json::json;

/// A small Hermes-style template written for this test.
const HERMES_STYLE: &str = r#"{%- if tools %}<|im_start|>system
Tools:{% for t in tools %}
{{ t.function | tojson }}{% endfor %}
Call with <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>
{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}
</tool_call>{% endfor %}{% elif m.content is none %}(null){% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

#[test]
fn a_tool_aware_template_gets_tools_and_structured_history() {
    let t = ChatTemplate::new(HERMES_STYLE, None, None).unwrap();
    assert!(t.uses_tools());
    assert!(!ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", None, None).unwrap().uses_tools());
    assert_eq!(ToolFormat::from_template(Some(t.source())), ToolFormat::Hermes);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let messages = vec![
        json!({"role": "user", "content": "Weather?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": null}),
    ];
    let out = t.render_json(&messages, Some(&tools), true).unwrap();
    // trim_blocks: the newline after each block tag is dropped, as in transformers.
    let want = "<|im_start|>system\nTools:{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}\
        Call with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n\
        <|im_start|>user\nWeather?<|im_end|>\n\
        <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call><|im_end|>\n\
        <|im_start|>tool\n(null)<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(out, want);
    // Without tools the template's own branch is skipped.
    let plain = t.render_json(&messages[..1], None, false).unwrap();
    assert_eq!(plain, "<|im_start|>user\nWeather?<|im_end|>\n");
}
