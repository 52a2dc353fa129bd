//! Chat templates: the model's own Jinja template rendered with minijinja the
//! way transformers renders it (`trim_blocks`, `lstrip_blocks`, no trailing
//! newline kept, Python string methods, `raise_exception`, a `tojson` that
//! writes what Python's `json.dumps` writes).

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use super::TokenizerError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template with the BOS/EOS strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TokenizerError::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// Renders the conversation; with `add_generation_prompt` the template
    /// opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = self.env.get_template(NAME).map_err(|e| TokenizerError::Template(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render(ctx).map_err(|e| TokenizerError::Template(describe(&e)))
    }
}

/// The error with its source line, and the chain of causes.
fn describe(e: &Error) -> String {
    let mut msg = match e.line() {
        Some(line) => format!("{e} (template line {line})"),
        None => e.to_string(),
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// `raise_exception(msg)`: templates call it to reject a conversation.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `x | tojson(indent=N)`, as Python's `json.dumps(x, ensure_ascii=False)`:
/// ", " and ": " separators without indent, "," and newlines with it; maps
/// keep their order.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), Error> {
    use minijinja::value::ValueKind as K;
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        K::Seq | K::Iterable | K::Map => {
            let is_map = v.kind() == K::Map;
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str(if is_map { "{}" } else { "[]" });
                return Ok(());
            }
            out.push(if is_map { '{' } else { '[' });
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                if is_map {
                    out.push_str(&serde_json::Value::String(item.to_string()).to_string());
                    out.push_str(": ");
                    write_py_json(&v.get_item(item)?, indent, depth + 1, out)?;
                } else {
                    write_py_json(item, indent, depth + 1, out)?;
                }
            }
            newline(out, depth);
            out.push(if is_map { '}' } else { ']' });
        }
        K::Undefined | K::None => out.push_str("null"),
        _ => {
            let j = serde_json::to_value(v)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
            out.push_str(&j.to_string());
        }
    }
    Ok(())
}
