//! `response_format` inside the Batch API: the batch runner calls the same
//! chat and completions handlers, so each line's output is constrained too.

mod batch_support;

use batch_support::{Kiln, MODEL};
use serde_json::{json, Value};

fn line(id: &str, url: &str, body: Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
}

/// Checks `v` against the test schema by hand (kind, enum, bounds).
fn valid_pet(v: &Value) -> bool {
    let o = v.as_object();
    o.is_some_and(|o| o.len() == 2)
        && ["cat", "dog", "fish"].contains(&v["kind"].as_str().unwrap_or(""))
        && v["legs"].as_i64().is_some_and(|n| (0..=8).contains(&n))
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_lines_follow_their_response_format() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kiln) = Kiln::start(dir.path(), &[]).await else { return };
    let api = kiln.api(None);
    let schema = json!({
        "type": "object",
        "properties": {"kind": {"enum": ["cat", "dog", "fish"]}, "legs": {"type": "integer", "minimum": 0, "maximum": 8}},
        "required": ["kind", "legs"],
        "additionalProperties": false
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "pet", "schema": schema, "strict": true}});
    let chat = |i: usize, temperature: f64| {
        let body = json!({"model": MODEL, "max_tokens": 48, "temperature": temperature, "seed": i,
            "messages": [{"role": "user", "content": "Describe a pet."}], "response_format": format});
        line(&format!("chat-{i}"), "/v1/chat/completions", body)
    };
    let mut lines: Vec<String> = (0..3).map(|i| chat(i, if i == 0 { 0.0 } else { 0.9 })).collect();
    lines.push(line("json-object", "/v1/chat/completions", json!({"model": MODEL, "max_tokens": 64, "temperature": 0,
        "messages": [{"role": "user", "content": "Reply with a JSON object with the keys name and age of a person."}], "response_format": {"type": "json_object"}})));
    let batch = api.start_batch(&lines.join("\n"), "/v1/chat/completions").await;
    let done = api.wait_final(batch["id"].as_str().unwrap(), 600).await;
    assert_eq!(done["status"], "completed", "{done}");
    let out = api.result_lines(&done["output_file_id"]).await;
    assert_eq!(out.len(), lines.len(), "{out:?}");
    for l in &out {
        let choice = &l["response"]["body"]["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{l}");
        let v: Value = serde_json::from_str(choice["message"]["content"].as_str().unwrap()).expect("JSON output");
        if l["custom_id"] == "json-object" {
            assert!(v.is_object(), "{v}");
        } else {
            assert!(valid_pet(&v), "{v}");
        }
    }
}
