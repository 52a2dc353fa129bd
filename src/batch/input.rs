//! Batch input files: one request per line,
//! `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
//!
//! `scan` checks a whole file once (each line's shape, unique custom_ids)
//! and returns where every line lives; the request `body` itself is
//! validated later, line by line, by the live endpoints' own code.

use std::collections::HashMap;
use std::io::BufRead;

use serde_json::{Map, Value};

use super::wire::Endpoint;

/// Where one request lives in its input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset and length of the line (without its newline).
    pub offset: u64,
    pub len: usize,
    pub custom_id: String,
    pub endpoint: Endpoint,
    /// Sequences the request asks for (`n`, at least 1): its share of the
    /// in-flight cap.
    pub weight: usize,
}

/// One parsed input line.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLine {
    pub custom_id: String,
    pub endpoint: Endpoint,
    pub body: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("line {line}: {reason}")]
    Line { line: u64, reason: String },
    #[error("the file contains no requests")]
    Empty,
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest custom_id accepted, in bytes.
pub const MAX_CUSTOM_ID: usize = 512;

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    obj.get(name).ok_or_else(|| format!("missing field '{name}'"))
}

/// Parses and checks one line's envelope (not its body's parameters).
pub fn parse_line(bytes: &[u8]) -> Result<InputLine, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut obj) = value else { return Err("expected a JSON object".into()) };
    if let Some(k) = obj.keys().find(|k| !["custom_id", "method", "url", "body"].contains(&k.as_str())) {
        return Err(format!("unknown field '{k}' (expected custom_id, method, url and body)"));
    }
    let custom_id = match field(&obj, "custom_id")? {
        Value::String(s) if s.is_empty() => return Err("custom_id must not be empty".into()),
        Value::String(s) if s.len() > MAX_CUSTOM_ID => return Err(format!("custom_id is longer than {MAX_CUSTOM_ID} bytes")),
        Value::String(s) => s.clone(),
        _ => return Err("custom_id must be a string".into()),
    };
    match field(&obj, "method")? {
        Value::String(m) if m == "POST" => {}
        other => return Err(format!("method must be \"POST\", got {other}")),
    }
    let endpoint = match field(&obj, "url")? {
        Value::String(u) => Endpoint::parse(u).ok_or_else(|| {
            let all: Vec<&str> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
            format!("url '{u}' is not supported: expected one of {}", all.join(", "))
        })?,
        _ => return Err("url must be a string".into()),
    };
    let body = match obj.remove("body") {
        Some(Value::Object(body)) => body,
        Some(_) => return Err("body must be a JSON object".into()),
        None => return Err("missing field 'body'".into()),
    };
    Ok(InputLine { custom_id, endpoint, body })
}

/// `n` as asked (1 when absent or not a positive integer: validation of
/// the body reports those).
fn weight(body: &Map<String, Value>) -> usize {
    body.get("n").and_then(Value::as_u64).map_or(1, |n| n.clamp(1, 1 << 16) as usize)
}

/// Checks every line of a file and returns their places. Blank lines are
/// skipped (they keep their line numbers); custom_ids must be unique.
pub fn scan(mut reader: impl BufRead) -> Result<Vec<LineRef>, InputError> {
    let mut lines = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut buf = Vec::new();
    let (mut offset, mut number) = (0u64, 0u64);
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf)?;
        if read == 0 {
            break;
        }
        number += 1;
        let start = offset;
        offset += read as u64;
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |reason: String| InputError::Line { line: number, reason };
        let parsed = parse_line(text).map_err(bad)?;
        if let Some(first) = seen.insert(parsed.custom_id.clone(), number) {
            return Err(bad(format!("duplicate custom_id '{}' (first used on line {first})", parsed.custom_id)));
        }
        lines.push(LineRef {
            line: number,
            offset: start,
            len: text.len(),
            custom_id: parsed.custom_id,
            endpoint: parsed.endpoint,
            weight: weight(&parsed.body),
        });
    }
    if lines.is_empty() {
        return Err(InputError::Empty);
    }
    Ok(lines)
}

/// Reads one line back from its file.
pub fn read_line(file: &std::fs::File, at: &LineRef) -> std::io::Result<InputLine> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; at.len];
    file.read_exact_at(&mut bytes, at.offset)?;
    parse_line(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", at.line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, url: &str) -> String {
        format!(r#"{{"custom_id": "{id}", "method": "POST", "url": "{url}", "body": {{"model": "m", "n": 2}}}}"#)
    }

    fn err_of(text: &str) -> (u64, String) {
        match scan(text.as_bytes()) {
            Err(InputError::Line { line, reason }) => (line, reason),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn good_file_offsets_round_trip() {
        let text = format!("{}\n\n{}\r\n{}", line("a", "/v1/completions"), line("b", "/v1/chat/completions"), line("c", "/v1/completions"));
        let refs = scan(text.as_bytes()).unwrap();
        assert_eq!(refs.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(refs[1].endpoint, Endpoint::ChatCompletions);
        assert_eq!(refs[0].weight, 2);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        for r in &refs {
            let l = read_line(&f, r).unwrap();
            assert_eq!(l.custom_id, r.custom_id);
            assert_eq!(l.body["model"], "m");
        }
    }

    #[test]
    fn bad_lines_name_line_and_reason() {
        let a = line("a", "/v1/completions");
        let (n, why) = err_of(&format!("{a}\n{{\"custom_id\": \"b\", \"method\": \"POST\""));
        assert_eq!(n, 2);
        assert!(why.starts_with("invalid JSON"), "{why}");
        let (n, why) = err_of(&format!("{a}\n{}", line("a", "/v1/completions")));
        assert_eq!(n, 2);
        assert!(why.contains("duplicate custom_id 'a'") && why.contains("line 1"), "{why}");
        let (n, why) = err_of(&format!("{a}\n\n{}", line("b", "/v1/moderations")));
        assert_eq!(n, 3);
        assert!(why.contains("/v1/moderations"), "{why}");
        let (_, why) = err_of(r#"{"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}"#);
        assert!(why.contains("POST"), "{why}");
        let (_, why) = err_of(r#"{"custom_id": 3, "method": "POST", "url": "/v1/completions", "body": {}}"#);
        assert!(why.contains("custom_id must be a string"), "{why}");
        let (_, why) = err_of(r#"{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": []}"#);
        assert!(why.contains("body must be a JSON object"), "{why}");
        let (_, why) = err_of(r#"{"custom_id": "x", "method": "POST", "url": "/v1/completions"}"#);
        assert!(why.contains("missing field 'body'"), "{why}");
        let (_, why) = err_of(r#"{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {}, "extra": 1}"#);
        assert!(why.contains("unknown field 'extra'"), "{why}");
        let (_, why) = err_of("[1, 2]");
        assert!(why.contains("JSON object"), "{why}");
        assert!(matches!(scan("\n \n".as_bytes()), Err(InputError::Empty)));
    }
}
