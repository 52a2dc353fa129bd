//! An incremental server-sent-events decoder: bytes in as they arrive,
//! complete `data` payloads out. Lines end in LF, CRLF or CR; an event
//! ends at a blank line; `data:` lines of one event join with LF; comment
//! lines (`:` first) and other fields are skipped.

#[derive(Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Option<String>,
    /// A CR ended the last line; an LF right after it belongs to it.
    after_cr: bool,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = vec![];
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    if let Some(data) = self.line(&line) {
                        out.push(data);
                    }
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    /// Handles one line; returns an event's data when the line is blank.
    fn line(&mut self, line: &[u8]) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_line_endings() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: x\r\ndata: y\r\n\r\nevent: e\rdata:z\r\r";
        // Every split point gives the same events.
        for cut in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..cut]);
            got.extend(d.push(&stream[cut..]));
            assert_eq!(got, vec!["{\"a\":1}", "x\ny", "z"], "cut at {cut}");
        }
    }

    #[test]
    fn an_unfinished_event_is_not_emitted() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: [DONE]\n").is_empty());
        assert_eq!(d.push(b"\n"), vec!["[DONE]"]);
    }
}
