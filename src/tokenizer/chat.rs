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
    source: String,
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
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TokenizerError::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            source: source.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template reads the `tools` variable (Qwen2.5/3, Llama
    /// 3.1+, Mistral and Hermes templates do; SmolLM2's does not).
    pub fn uses_tools(&self) -> bool {
        let tmpl = match self.env.get_template(NAME) {
            Ok(t) => t,
            Err(_) => return false,
        };
        tmpl.undeclared_variables(false).contains("tools")
    }

    /// Renders messages given as JSON objects (so `content: null`,
    /// `tool_calls`, `tool_call_id` and `name` reach the template as
    /// transformers passes them), with `tools` when Some.
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = self.env.get_template(NAME).map_err(|e| TokenizerError::Template(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render(ctx).map_err(|e| TokenizerError::Template(describe(&e)))
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

/// `strftime_now(fmt)`: the current UTC date and time (Llama 3.x templates
/// print "Today Date: 26 Jul 2024" with it).
fn strftime_now(fmt: String) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime_utc(now, &fmt)
}

const MONTHS: [&str; 12] = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Python's `strftime` for a UTC time, codes %d %m %Y %y %b %B %a %A %H %M
/// %S %j %%; other codes are kept as written.
pub(crate) fn strftime_utc(unix_secs: i64, fmt: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01
/// (proleptic Gregorian; eras of 400 years).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Inverse of `civil_from_days`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

#[cfg(test)]
mod tests {
    use super::strftime_utc;

    /// Dates formatted by Python's `datetime.strftime` (tests/fixtures/tokenizer/templates.json).
    #[test]
    fn strftime_matches_python() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/templates.json");
        let gold: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let samples = gold["strftime"].as_array().unwrap();
        assert!(samples.len() >= 5);
        for s in samples {
            let ts = s["unix"].as_i64().unwrap();
            let fmt = s["format"].as_str().unwrap();
            assert_eq!(strftime_utc(ts, fmt), s["out"].as_str().unwrap(), "{ts} {fmt}");
        }
    }
}
