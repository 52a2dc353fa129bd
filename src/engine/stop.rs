//! Stop strings matched on generated text, as a pure function of the text
//! pushed so far (no tokenizer involved).
//!
//! Text is released only when no stop string can still begin inside it:
//! the longest suffix of the pending text that is a proper prefix of some
//! stop string is held back. So a stop string split across tokens is caught,
//! and neither it nor any part of it is ever emitted.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopScan {
    /// No stop string yet; this text is safe to emit.
    Emit(String),
    /// A stop string matched; this is the text before it, to emit last.
    Stopped(String),
}

#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not released (a possible start of a stop string).
    pending: String,
    /// The stop string that matched, once one did.
    matched: Option<String>,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match immediately).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new(), matched: None }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop string that ended the text (the earliest match; the first
    /// listed on a tie), once `push` returned `Stopped`.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan::Emit(text.to_string());
        }
        self.pending.push_str(text);
        // The earliest match wins (on a tie the text before is the same).
        let first = self.stops.iter().filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s))).min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = first {
            self.matched = Some(stop.clone());
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopScan::Stopped(before);
        }
        let hold = self.stops.iter().map(|s| partial_suffix(&self.pending, s)).max().unwrap_or(0);
        let emit_len = self.pending.len() - hold;
        let rest = self.pending.split_off(emit_len);
        StopScan::Emit(std::mem::replace(&mut self.pending, rest))
    }

    /// At the end of the sequence: the held-back text was not a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix
/// of `stop` (ending on a char boundary of `stop`).
fn partial_suffix(text: &str, stop: &str) -> usize {
    stop.char_indices().map(|(i, _)| i).skip(1).filter(|&k| text.ends_with(&stop[..k])).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopScan::Emit(t) => out.push_str(&t),
                StopScan::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    /// Reference: the text before the first occurrence of any stop string
    /// in the whole concatenation.
    fn reference(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let all: String = pieces.concat();
        match stops.iter().filter(|s| !s.is_empty()).filter_map(|s| all.find(s)).min() {
            Some(at) => (all[..at].to_string(), true),
            None => (all, false),
        }
    }

    #[test]
    fn split_stop_string_is_caught_and_never_emitted() {
        let stops = ["END", "\n\n"];
        let cases: &[&[&str]] = &[
            &["hello E", "N", "D more"],
            &["a\n", "\nb"],
            &["EN", "Xyz END"],
            &["ENENEN", "D"],
            &["no stop at all", " E"],
            &["日本", "語E", "ND"],
        ];
        for pieces in cases {
            assert_eq!(run(&stops, pieces), reference(&stops, pieces), "{pieces:?}");
        }
    }

    #[test]
    fn held_text_is_only_a_possible_stop_prefix() {
        let mut m = StopMatcher::new(&["abc".to_string()]);
        assert_eq!(m.push("xxab"), StopScan::Emit("xx".into()));
        assert_eq!(m.push("x"), StopScan::Emit("abx".into()));
        assert_eq!(m.push("a"), StopScan::Emit("".into()));
        assert_eq!(m.push("bc!"), StopScan::Stopped("".into()));
        assert_eq!(m.matched(), Some("abc"));
    }

    #[test]
    fn the_earliest_match_is_the_one_reported() {
        let mut m = StopMatcher::new(&["END".to_string(), "x".to_string()]);
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("a xEND"), StopScan::Stopped("a ".into()));
        assert_eq!(m.matched(), Some("x"));
    }

    #[test]
    fn exhaustive_small_alphabet_matches_reference() {
        // Every split of every string over {a, b} up to length 6.
        let stops = ["aba", "bb"];
        for len in 0..=6u32 {
            for bits in 0..(1u32 << len) {
                let s: String = (0..len).map(|i| if bits >> i & 1 == 1 { 'b' } else { 'a' }).collect();
                for cut in 0..=len as usize {
                    let pieces = [&s[..cut], &s[cut..]];
                    assert_eq!(run(&stops, &pieces), reference(&stops, &pieces), "{pieces:?}");
                }
                let chars: Vec<String> = s.chars().map(String::from).collect();
                let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
                assert_eq!(run(&stops, &pieces), reference(&stops, &pieces), "{pieces:?}");
            }
        }
    }
}
