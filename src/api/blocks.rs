//! Generated text as a sequence of output blocks, text or tool calls, for
//! the protocols that stream them as items that open, grow and close (the
//! Responses API's output items, Anthropic's content blocks). With tools
//! the text goes through the tool-call parser (`tools::ToolStream`);
//! whitespace before a first text block is held, so a reply that is only
//! calls has no empty text block.

use super::new_id;
use super::tools::{CallReading, ToolEvent, ToolStream};

/// A finished block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Text(String),
    Call { call_id: String, name: String, arguments: String },
}

/// What changed. Events come with their block's index (the number of
/// blocks closed before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    OpenText,
    Text(String),
    OpenCall { call_id: String, name: String },
    Args(String),
    Close(Block),
}

pub struct Blocks {
    tools: Option<ToolStream>,
    /// `call_id` prefix: "call" (OpenAI), "toolu" (Anthropic).
    call_prefix: &'static str,
    open: Option<Block>,
    held: String,
    pub closed: Vec<Block>,
}

impl Blocks {
    pub fn new(tools: Option<CallReading>, call_prefix: &'static str) -> Blocks {
        Blocks { tools: tools.map(ToolStream::reading), call_prefix, open: None, held: String::new(), closed: Vec::new() }
    }

    pub fn num_calls(&self) -> usize {
        self.closed.iter().filter(|b| matches!(b, Block::Call { .. })).count()
    }

    /// Takes newly generated text.
    pub fn push(&mut self, text: &str) -> Vec<(usize, BlockEvent)> {
        let events = match self.tools.as_mut() {
            Some(s) => s.push(text),
            None => vec![ToolEvent::Text(text.to_string())],
        };
        let mut out = Vec::new();
        for e in events {
            self.on_tool_event(e, &mut out);
        }
        out
    }

    /// Ends the output: flushes the parser and closes the open block.
    pub fn finish(&mut self) -> Vec<(usize, BlockEvent)> {
        let mut out = Vec::new();
        let events = self.tools.as_mut().map(ToolStream::finish).unwrap_or_default();
        for e in events {
            self.on_tool_event(e, &mut out);
        }
        self.close(&mut out);
        out
    }

    fn close(&mut self, out: &mut Vec<(usize, BlockEvent)>) {
        if let Some(b) = self.open.take() {
            out.push((self.closed.len(), BlockEvent::Close(b.clone())));
            self.closed.push(b);
        }
    }

    fn on_tool_event(&mut self, e: ToolEvent, out: &mut Vec<(usize, BlockEvent)>) {
        let at = self.closed.len();
        match e {
            ToolEvent::Text(t) if t.is_empty() => {}
            ToolEvent::Text(t) => {
                if let Some(Block::Text(open)) = self.open.as_mut() {
                    open.push_str(&t);
                    out.push((at, BlockEvent::Text(t)));
                    return;
                }
                self.close(out);
                self.held.push_str(&t);
                if self.held.trim().is_empty() {
                    return;
                }
                let text = std::mem::take(&mut self.held);
                self.open = Some(Block::Text(text.clone()));
                let at = self.closed.len();
                out.push((at, BlockEvent::OpenText));
                out.push((at, BlockEvent::Text(text)));
            }
            ToolEvent::Start { name, .. } => {
                self.close(out);
                self.held.clear();
                let call_id = new_id(self.call_prefix);
                self.open = Some(Block::Call { call_id: call_id.clone(), name: name.clone(), arguments: String::new() });
                out.push((self.closed.len(), BlockEvent::OpenCall { call_id, name }));
            }
            ToolEvent::Args { fragment, .. } => {
                if let Some(Block::Call { arguments, .. }) = self.open.as_mut() {
                    arguments.push_str(&fragment);
                    out.push((at, BlockEvent::Args(fragment)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_then_call_make_two_blocks() {
        let mut b = Blocks::new(Some(CallReading::auto(crate::api::tools::ToolFormat::Hermes)), "call");
        let mut events = Vec::new();
        for piece in ["Let me look.", " <tool_call>\n{\"name\": \"w\", ", "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"] {
            events.extend(b.push(piece));
        }
        events.extend(b.finish());
        assert_eq!(b.closed.len(), 2, "{events:?}");
        assert!(matches!(&b.closed[0], Block::Text(t) if t.starts_with("Let me look.")));
        match &b.closed[1] {
            Block::Call { name, arguments, call_id } => {
                assert_eq!(name, "w");
                assert_eq!(serde_json::from_str::<serde_json::Value>(arguments).unwrap()["city"], "Paris");
                assert!(call_id.starts_with("call_"));
            }
            other => panic!("{other:?}"),
        }
        let args: String = events.iter().filter_map(|e| if let (1, BlockEvent::Args(a)) = e { Some(a.as_str()) } else { None }).collect();
        assert!(events.iter().all(|(i, e)| *i == 1 || !matches!(e, BlockEvent::Args(_) | BlockEvent::OpenCall { .. })), "{events:?}");
        assert!(matches!(&b.closed[1], Block::Call { arguments, .. } if *arguments == args));
    }

    #[test]
    fn whitespace_alone_opens_nothing() {
        let mut b = Blocks::new(None, "call");
        assert!(b.push(" \n").is_empty());
        assert_eq!(b.push("Hi"), vec![(0, BlockEvent::OpenText), (0, BlockEvent::Text(" \nHi".into()))]);
        assert_eq!(b.finish(), vec![(0, BlockEvent::Close(Block::Text(" \nHi".into())))]);
    }
}
