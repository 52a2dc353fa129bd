//! A scanner for one JSON object as it is being written: where its `name`
//! string and its arguments value are, and where the object ends. It is run
//! over the whole prefix each time text arrives (calls are short), which
//! keeps it a pure function of the text.

/// What is known about a (possibly unfinished) JSON object `{...}`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObjectScan {
    /// Byte offset just past the closing `}` once the object is complete.
    pub end: Option<usize>,
    /// The decoded `name` value once its string is complete.
    pub name: Option<String>,
    /// Byte span of the arguments value: start, and end once it ended.
    pub args: Option<(usize, Option<usize>)>,
    /// Whether the arguments value is an object or array (its prefix is
    /// already part of the final text while it is written).
    pub args_is_container: bool,
    /// The name was complete before the arguments began.
    pub name_first: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Key,
    Colon,
    Value,
    /// Inside a top-level value (string, container or scalar).
    InValue,
    Comma,
}

/// Scans `s`, which starts with `{`. `args_key` is the member holding the
/// arguments ("arguments", or "parameters" for Llama 3).
pub fn scan_object(s: &str, args_key: &str) -> ObjectScan {
    let b = s.as_bytes();
    let mut out = ObjectScan::default();
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    let mut expect = Expect::Key;
    let mut key: Option<String> = None;
    let mut str_start = 0;
    // Start of the current top-level value and whether it is a scalar.
    let mut value_start = 0;
    let mut scalar = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
                if depth == 1 {
                    let text = &s[str_start..=i];
                    match expect {
                        Expect::Key => {
                            key = serde_json::from_str(text).ok();
                            expect = Expect::Colon;
                        }
                        Expect::InValue => {
                            if key.as_deref() == Some("name") {
                                out.name = serde_json::from_str(text).ok();
                                out.name_first = out.args.is_none();
                            }
                            end_value(&mut out, &key, args_key, i + 1);
                            expect = Expect::Comma;
                        }
                        _ => {}
                    }
                }
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                str_start = i;
                if depth == 1 && expect == Expect::Value {
                    begin_value(&mut out, &key, args_key, i, false);
                    expect = Expect::InValue;
                }
            }
            b'{' | b'[' => {
                if depth == 1 && expect == Expect::Value {
                    begin_value(&mut out, &key, args_key, i, true);
                    expect = Expect::InValue;
                }
                depth += 1;
            }
            b'}' | b']' => {
                if depth == 1 && scalar {
                    end_value(&mut out, &key, args_key, trim_end(b, value_start, i));
                    scalar = false;
                }
                depth = depth.saturating_sub(1);
                if depth == 1 && expect == Expect::InValue {
                    end_value(&mut out, &key, args_key, i + 1);
                    expect = Expect::Comma;
                }
                if depth == 0 {
                    out.end = Some(i + 1);
                    return out;
                }
            }
            b':' if depth == 1 && expect == Expect::Colon => expect = Expect::Value,
            b',' if depth == 1 => {
                if scalar {
                    end_value(&mut out, &key, args_key, trim_end(b, value_start, i));
                    scalar = false;
                }
                expect = Expect::Key;
            }
            c if c.is_ascii_whitespace() => {}
            _ => {
                if depth == 1 && expect == Expect::Value {
                    begin_value(&mut out, &key, args_key, i, false);
                    value_start = i;
                    scalar = true;
                    expect = Expect::InValue;
                }
            }
        }
        if depth == 0 && i == 0 && c != b'{' {
            return out;
        }
        i += 1;
    }
    out
}

fn trim_end(b: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && b[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    end
}

fn begin_value(out: &mut ObjectScan, key: &Option<String>, args_key: &str, at: usize, container: bool) {
    if key.as_deref() == Some(args_key) && out.args.is_none() {
        out.args = Some((at, None));
        out.args_is_container = container;
    }
}

fn end_value(out: &mut ObjectScan, key: &Option<String>, args_key: &str, at: usize) {
    if key.as_deref() == Some(args_key) {
        if let Some((start, None)) = out.args {
            out.args = Some((start, Some(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_name_arguments_and_end() {
        let s = r#"{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, {"a": "}"}]}} trailing"#;
        let sc = scan_object(s, "arguments");
        assert_eq!(sc.name.as_deref(), Some("get_weather"));
        let (a, b) = sc.args.unwrap();
        assert_eq!(&s[a..b.unwrap()], r#"{"city": "Paris", "n": [1, {"a": "}"}]}"#);
        assert_eq!(&s[..sc.end.unwrap()], &s[..s.len() - " trailing".len()]);
        assert!(sc.name_first && sc.args_is_container);
    }

    #[test]
    fn every_prefix_is_consistent_with_the_whole() {
        let s = r#"{"arguments": {"q": "a\"b"}, "name": "search"}"#;
        let whole = scan_object(s, "arguments");
        assert!(!whole.name_first);
        for cut in 1..s.len() {
            let p = scan_object(&s[..cut], "arguments");
            assert_eq!(p.end, None, "{cut}");
            if let Some((a, Some(b))) = p.args {
                assert_eq!((a, b), (whole.args.unwrap().0, whole.args.unwrap().1.unwrap()));
            }
        }
    }

    #[test]
    fn scalar_arguments_end_at_the_separator() {
        let s = r#"{"name": "f", "parameters": 42 , "x": 1}"#;
        let sc = scan_object(s, "parameters");
        let (a, b) = sc.args.unwrap();
        assert_eq!(&s[a..b.unwrap()], "42");
        assert!(!sc.args_is_container);
    }
}
