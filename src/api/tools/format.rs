//! Tool-call formats (named as vLLM's `--tool-call-parser`) and the
//! incremental parser that turns generated text into content and calls.
//!
//! | parser        | a call is written as                                          |
//! |---------------|---------------------------------------------------------------|
//! | `hermes`      | `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`  |
//! | `llama3_json` | `{"name": ..., "parameters": {...}}` (several joined by `; `)   |
//! | `mistral`     | `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`          |
//!
//! The parser is fed text as it is generated and gives `ToolEvent`s: text
//! (content), the start of a call (its name) and fragments of its arguments,
//! which are the exact source text of the arguments value. The non-streamed
//! response runs the same parser over the whole text, so the streamed
//! fragments of a call always join into its non-streamed `arguments`.

use super::scan::scan_object;

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

/// The `--tool-call-parser` names kiln serves.
pub const PARSER_NAMES: &[&str] = &["hermes", "llama3_json", "mistral"];

impl ToolFormat {
    /// A vLLM parser name (`--tool-call-parser`).
    pub fn from_name(name: &str) -> Option<ToolFormat> {
        match name {
            "hermes" => Some(ToolFormat::Hermes),
            "llama3_json" => Some(ToolFormat::Llama3Json),
            "mistral" => Some(ToolFormat::Mistral),
            _ => None,
        }
    }

    /// The format a chat template writes calls in; Hermes (also the format
    /// of kiln's generic tool prompt) when the template shows none.
    pub fn from_template(source: Option<&str>) -> ToolFormat {
        let src = source.unwrap_or("");
        if src.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if src.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if src.contains("<|python_tag|>") || src.contains("\"parameters\": ") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// The member that holds a call's arguments.
    pub fn args_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }

    /// The text that opens the calls (special tokens are dropped from the
    /// text, so Mistral's and Llama's calls may also start bare).
    pub fn marker(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some("<tool_call>"),
            ToolFormat::Mistral => Some("[TOOL_CALLS]"),
            ToolFormat::Llama3Json => Some("<|python_tag|>"),
        }
    }

    /// Whether a response that starts with a JSON object (or array) is calls.
    fn bare_start(self) -> bool {
        !matches!(self, ToolFormat::Hermes)
    }

    /// Text between and around calls that is format, not content.
    fn separators(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &["</tool_call>", "<tool_call>"],
            ToolFormat::Mistral => &["[TOOL_CALLS]", "[", "]", ","],
            ToolFormat::Llama3Json => &["<|python_tag|>", ";", ","],
        }
    }
}

/// What the parser found in newly generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    Text(String),
    /// Call number `index` (0-based within the choice) begins.
    Start { index: usize, name: String },
    /// More of call `index`'s arguments text.
    Args { index: usize, fragment: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace seen yet (a bare start is still possible).
    Leading,
    Text,
    /// Between calls: separators are skipped, `{` opens a call.
    Between,
    /// Inside a call object (its text is in `obj`).
    Object,
}

/// How a choice's text is read for calls: the format, and for forced calls
/// (`tool_choice` required or a named function) the names a call may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReading {
    pub format: ToolFormat,
    /// Some when the whole output is calls under a grammar: then it has no
    /// content, and a call cut short (max_tokens) is still reported as a
    /// call with its partial arguments, as OpenAI does.
    pub forced: Option<Vec<String>>,
}

impl CallReading {
    pub fn auto(format: ToolFormat) -> CallReading {
        CallReading { format, forced: None }
    }
}

/// The incremental parser of one choice.
pub struct ToolStream {
    format: ToolFormat,
    /// The callable names when calls are forced (see `CallReading`).
    forced: Option<Vec<String>>,
    mode: Mode,
    /// Text received but not yet classified.
    buf: String,
    /// The current call object's text.
    obj: String,
    index: usize,
    started: bool,
    args_sent: usize,
}

impl ToolStream {
    pub fn new(format: ToolFormat) -> ToolStream {
        ToolStream::reading(CallReading::auto(format))
    }

    pub fn reading(r: CallReading) -> ToolStream {
        let (format, forced) = (r.format, r.forced);
        ToolStream { format, forced, mode: Mode::Leading, buf: String::new(), obj: String::new(), index: 0, started: false, args_sent: 0 }
    }

    /// Calls begun so far.
    pub fn num_calls(&self) -> usize {
        self.index + usize::from(self.started)
    }

    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out, false) {}
        self.forced_filter(out)
    }

    /// Flushes everything held back at the end of the choice. With forced
    /// calls, a call cut short before its name was complete is reported
    /// under the one callable name its text can still become (none when
    /// that is ambiguous), with the arguments written so far.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        while self.step(&mut out, true) {}
        if self.mode == Mode::Object && !self.obj.is_empty() {
            let obj = std::mem::take(&mut self.obj);
            if !self.started {
                match self.cut_call_name(&obj) {
                    Some(name) => out.push(ToolEvent::Start { index: self.index, name }),
                    None => out.push(ToolEvent::Text(obj)),
                }
            }
        } else if self.num_calls() == 0 {
            // Cut before the first call's object began (inside a marker).
            if let Some(name) = self.cut_call_name("") {
                out.push(ToolEvent::Start { index: self.index, name });
                out.push(ToolEvent::Args { index: self.index, fragment: String::new() });
            }
        }
        if !self.buf.is_empty() {
            out.push(ToolEvent::Text(std::mem::take(&mut self.buf)));
        }
        self.forced_filter(out)
    }

    /// Forced calls have no content: text events are dropped.
    fn forced_filter(&self, events: Vec<ToolEvent>) -> Vec<ToolEvent> {
        if self.forced.is_none() {
            return events;
        }
        events.into_iter().filter(|e| !matches!(e, ToolEvent::Text(_))).collect()
    }

    /// The name of a forced call whose object text `obj` (a prefix of
    /// `{"name": "<name>", ...}` in kiln's grammar layout) was cut: the
    /// only callable name it is consistent with.
    fn cut_call_name(&self, obj: &str) -> Option<String> {
        let names = self.forced.as_ref()?;
        let fits = |n: &&String| {
            let head = format!("{{\"name\": {}", serde_json::Value::String((*n).clone()));
            head.starts_with(obj) || obj.starts_with(&head)
        };
        let mut it = names.iter().filter(fits);
        match (it.next(), it.next()) {
            (Some(n), None) => Some(n.clone()),
            _ => None,
        }
    }

    /// One move of the state machine; false when it needs more text.
    fn step(&mut self, out: &mut Vec<ToolEvent>, last: bool) -> bool {
        match self.mode {
            Mode::Leading => self.leading(last),
            Mode::Text => self.text(out, last),
            Mode::Between => self.between(last),
            Mode::Object => self.object(out),
        }
    }

    fn leading(&mut self, last: bool) -> bool {
        let trimmed = self.buf.trim_start();
        let Some(first) = trimmed.chars().next() else { return false };
        let bare = self.format.bare_start() && (first == '{' || (first == '[' && self.format == ToolFormat::Mistral));
        if bare {
            self.buf = trimmed.to_string();
            self.mode = Mode::Between;
        } else if !last && self.format.marker().is_some_and(|m| m.starts_with(trimmed) && trimmed.len() < m.len()) {
            return false;
        } else {
            self.mode = Mode::Text;
        }
        true
    }

    /// Emits text up to the marker (or all but a possible marker prefix).
    fn text(&mut self, out: &mut Vec<ToolEvent>, last: bool) -> bool {
        let marker = self.format.marker().unwrap_or("\u{0}");
        if let Some(at) = self.buf.find(marker) {
            if at > 0 {
                out.push(ToolEvent::Text(self.buf[..at].to_string()));
            }
            self.buf.drain(..at + marker.len());
            self.mode = Mode::Between;
            return true;
        }
        let hold = if last { 0 } else { partial_suffix(&self.buf, marker) };
        let emit = self.buf.len() - hold;
        if emit > 0 {
            out.push(ToolEvent::Text(self.buf[..emit].to_string()));
            self.buf.drain(..emit);
        }
        false
    }

    fn between(&mut self, last: bool) -> bool {
        let t = self.buf.trim_start();
        let skipped = self.buf.len() - t.len();
        self.buf.drain(..skipped);
        if self.buf.is_empty() {
            return false;
        }
        if self.buf.starts_with('{') {
            self.mode = Mode::Object;
            return true;
        }
        if let Some(sep) = self.format.separators().iter().find(|s| self.buf.starts_with(**s)) {
            self.buf.drain(..sep.len());
            return true;
        }
        if !last && self.format.separators().iter().any(|s| s.starts_with(self.buf.as_str())) {
            return false;
        }
        self.mode = Mode::Text;
        true
    }

    fn object(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        self.obj.push_str(&std::mem::take(&mut self.buf));
        let sc = scan_object(&self.obj, self.format.args_key());
        if !self.started {
            if let Some(name) = sc.name.clone().filter(|_| sc.name_first || sc.end.is_some()) {
                out.push(ToolEvent::Start { index: self.index, name });
                self.started = true;
            }
        }
        if self.started {
            if let Some((a, b)) = sc.args {
                let avail = match b {
                    Some(b) => b,
                    None if sc.args_is_container => self.obj.len(),
                    None => a,
                };
                if avail > a + self.args_sent {
                    out.push(ToolEvent::Args { index: self.index, fragment: self.obj[a + self.args_sent..avail].to_string() });
                    self.args_sent = avail - a;
                }
            }
        }
        let Some(end) = sc.end else { return false };
        if !self.started {
            // A JSON object with no name is not a call: it is content.
            out.push(ToolEvent::Text(self.obj[..end].to_string()));
        } else {
            self.index += 1;
        }
        self.buf = self.obj.split_off(end);
        self.obj.clear();
        self.started = false;
        self.args_sent = 0;
        self.mode = Mode::Between;
        true
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    marker.char_indices().map(|(i, _)| i).skip(1).filter(|&k| text.ends_with(&marker[..k])).max().unwrap_or(0)
}

/// A whole choice's content and calls, from the same events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParsedOutput {
    pub content: String,
    /// (name, arguments text) of each call.
    pub calls: Vec<(String, String)>,
}

impl ParsedOutput {
    pub fn apply(&mut self, events: Vec<ToolEvent>) {
        for e in events {
            match e {
                ToolEvent::Text(t) => self.content.push_str(&t),
                ToolEvent::Start { name, .. } => self.calls.push((name, String::new())),
                ToolEvent::Args { fragment, .. } => {
                    if let Some(c) = self.calls.last_mut() {
                        c.1.push_str(&fragment);
                    }
                }
            }
        }
    }

    /// Parses a whole text.
    pub fn parse(reading: CallReading, text: &str) -> ParsedOutput {
        let mut s = ToolStream::reading(reading);
        let mut p = ParsedOutput::default();
        p.apply(s.push(text));
        p.apply(s.finish());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_chars(format: ToolFormat, text: &str) -> ParsedOutput {
        let mut s = ToolStream::new(format);
        let mut p = ParsedOutput::default();
        let mut buf = [0u8; 4];
        for c in text.chars() {
            p.apply(s.push(c.encode_utf8(&mut buf)));
        }
        p.apply(s.finish());
        p
    }

    #[test]
    fn hermes_calls_with_text_before() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let whole = ParsedOutput::parse(CallReading::auto(ToolFormat::Hermes), text);
        assert_eq!(whole.content, "Let me check.\n");
        assert_eq!(
            whole.calls,
            vec![("get_weather".into(), "{\"city\": \"Paris\"}".into()), ("get_time".into(), "{}".into())]
        );
        assert_eq!(by_chars(ToolFormat::Hermes, text), whole);
    }

    #[test]
    fn plain_text_passes_through_even_with_a_marker_prefix() {
        for text in ["Hello <tool", "a < b", "{\"name\": 1}", ""] {
            let p = by_chars(ToolFormat::Hermes, text);
            assert_eq!((p.content.as_str(), p.calls.len()), (text, 0), "{text}");
        }
    }

    #[test]
    fn mistral_and_llama_bare_calls() {
        let m = "[{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {\"y\": [2]}}]";
        let p = by_chars(ToolFormat::Mistral, m);
        assert_eq!(p.calls, vec![("a".into(), "{\"x\": 1}".into()), ("b".into(), "{\"y\": [2]}".into())]);
        assert_eq!(p.content, "");
        let l = "{\"name\": \"f\", \"parameters\": {\"q\": \"s\"}}; {\"name\": \"g\", \"parameters\": {}}";
        let p = by_chars(ToolFormat::Llama3Json, l);
        assert_eq!(p.calls, vec![("f".into(), "{\"q\": \"s\"}".into()), ("g".into(), "{}".into())]);
    }

    #[test]
    fn streamed_fragments_join_into_the_arguments() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"x}y\", \"b\": [1, 2]}}\n</tool_call>";
        let mut s = ToolStream::new(ToolFormat::Hermes);
        let mut frags = Vec::new();
        for chunk in text.as_bytes().chunks(3) {
            for e in s.push(std::str::from_utf8(chunk).unwrap()) {
                if let ToolEvent::Args { fragment, .. } = e {
                    frags.push(fragment);
                }
            }
        }
        assert!(frags.len() > 3);
        assert_eq!(frags.concat(), "{\"a\": \"x}y\", \"b\": [1, 2]}");
    }

    fn forced(format: ToolFormat, names: &[&str]) -> CallReading {
        CallReading { format, forced: Some(names.iter().map(|n| n.to_string()).collect()) }
    }

    fn parse_by_chars(r: CallReading, text: &str) -> ParsedOutput {
        let mut s = ToolStream::reading(r);
        let mut p = ParsedOutput::default();
        let mut buf = [0u8; 4];
        for c in text.chars() {
            p.apply(s.push(c.encode_utf8(&mut buf)));
        }
        p.apply(s.finish());
        p
    }

    /// max_tokens cutting a forced call: before this, the fragment became
    /// content; now it is the call (partial arguments), never content.
    #[test]
    fn a_forced_call_cut_short_stays_a_call() {
        let full = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let r = forced(ToolFormat::Hermes, &["get_weather", "get_time"]);
        for cut in 1..full.len() {
            let text = &full[..cut];
            let p = parse_by_chars(r.clone(), text);
            assert_eq!(p, ParsedOutput::parse(r.clone(), text), "streamed = whole at {text:?}");
            assert_eq!(p.content, "", "no content at {text:?}");
            // The name is decided once "get_w" is written.
            let decided = text.len() >= full.find("get_w").unwrap() + 5;
            assert_eq!(p.calls.len(), usize::from(decided), "{text:?}: {p:?}");
            if let Some((name, args)) = p.calls.first() {
                assert_eq!(name, "get_weather");
                assert!("{\"city\": \"Paris\"}".starts_with(args.as_str()), "{args:?}");
            }
        }
        // One callable name: decided from the first byte on.
        let one = forced(ToolFormat::Hermes, &["get_weather"]);
        assert_eq!(parse_by_chars(one.clone(), "<tool").calls, vec![("get_weather".to_string(), String::new())]);
        let l = forced(ToolFormat::Llama3Json, &["f"]);
        assert_eq!(parse_by_chars(l, "{\"name\": \"f\", \"parameters\": {\"q\": \"a").calls, vec![("f".into(), "{\"q\": \"a".into())]);
        // Not forced: the same cut text stays text, as before.
        assert_eq!(parse_by_chars(CallReading::auto(ToolFormat::Hermes), "<tool").content, "<tool");
    }

    #[test]
    fn parser_names_and_template_detection() {
        assert_eq!(ToolFormat::from_name("llama3_json"), Some(ToolFormat::Llama3Json));
        assert_eq!(ToolFormat::from_name("pythonic"), None);
        assert_eq!(ToolFormat::from_template(Some("... <tool_call> ...")), ToolFormat::Hermes);
        assert_eq!(ToolFormat::from_template(Some("[TOOL_CALLS] [")), ToolFormat::Mistral);
        assert_eq!(ToolFormat::from_template(Some("<|python_tag|>")), ToolFormat::Llama3Json);
        assert_eq!(ToolFormat::from_template(None), ToolFormat::Hermes);
    }
}
